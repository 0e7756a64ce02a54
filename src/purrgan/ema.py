"""Exponential moving average of G's weights (Yazici et al. 2019; Karras et al.): smoother samples for free."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(generator: nn.Module) -> nn.Module:
    """Return a frozen copy of generator to hold the average."""
    ema = copy.deepcopy(generator).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, decay: float) -> None:
    """Move ema's weights towards generator's: w_ema = decay * w_ema + (1 - decay) * w; buffers are copied."""
    for averaged, current in zip(ema.parameters(), generator.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), generator.buffers()):
        averaged.copy_(current)  # BatchNorm statistics are not averaged, only followed
