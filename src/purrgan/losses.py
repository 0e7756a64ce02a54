"""GAN losses as plain functions of D and image batches; registered by name in LOSSES at the bottom.

Each function returns a dict of named tensors: the first entry ("loss") is what to backpropagate, the
rest are what the logger shows. Losses never call backward() or step an optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LossDict = dict[str, torch.Tensor]


def bce_d(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels=None) -> LossDict:
    """Return D's BCE loss: -log D(x) - log(1 - D(G(z))), with its real and fake halves."""
    real_logits = discriminator(real, labels).float()
    fake_logits = discriminator(fake, labels).float()
    d_loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    d_loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return {
        "loss": d_loss_real + d_loss_fake,
        "d_loss_real": d_loss_real.detach(),
        "d_loss_fake": d_loss_fake.detach(),
        "d_real": torch.sigmoid(real_logits).mean().detach(),  # mean D(x)
        "d_fake": torch.sigmoid(fake_logits).mean().detach(),  # mean D(G(z)) before G's update
    }


def bce_g(discriminator: nn.Module, fake: torch.Tensor, labels=None) -> LossDict:
    """Return G's non-saturating loss -log D(G(z)) (Goodfellow et al. 2014, section 3)."""
    fake_logits = discriminator(fake, labels).float()
    loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return {"loss": loss, "d_fake_g": torch.sigmoid(fake_logits).mean().detach()}


@dataclass(frozen=True)
class Loss:
    discriminator: Callable[..., LossDict]
    generator: Callable[..., LossDict]
    summary: str


LOSSES: dict[str, Loss] = {
    "bce": Loss(bce_d, bce_g, "non-saturating GAN loss with BCE on logits (the DCGAN default)"),
}
