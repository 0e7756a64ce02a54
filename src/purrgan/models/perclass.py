"""One independent G/D pair per class, trained in one run (the "classDCGAN" idea).

Each sample is routed to the member network of its label, so every member only ever sees its own
class (its BatchNorm statistics too); with Adam's per-parameter state, training the bundle is the
same as training the members one by one on their own classes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _route(members: nn.ModuleList, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError("a per-class model needs labels to choose the member network")
    pieces, order = [], []
    for index, member in enumerate(members):
        chosen = (labels == index).nonzero().flatten()
        if chosen.numel():
            pieces.append(member(inputs[chosen]))
            order.append(chosen)
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]  # back in the input's order


class PerClass(nn.Module):
    """num_classes independent copies of a network (G or D); each input goes to the copy of its label."""

    def __init__(self, build: Callable[[], nn.Module], num_classes: int):
        super().__init__()
        self.members = nn.ModuleList(build() for _ in range(num_classes))

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return _route(self.members, inputs, labels)
