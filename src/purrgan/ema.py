"""Exponential moving average of G's weights (Yazici et al. 2019; Karras et al.): smoother samples for free."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_ema(generator: nn.Module) -> nn.Module:
    """Return a frozen copy of generator to hold the average."""
    ema = copy.deepcopy(generator).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    return ema


def ema_decay(decay: float, step: int, start: int = 0, rampup: float = 0.0) -> float:
    """Return the decay to use after `step` steps: 0 (copy G) before `start`, then `decay`, its half-life capped at
    `rampup` x the steps averaged so far, so that a short run's average does not lag far behind (StyleGAN2's ramp-up)."""
    if step < start or decay <= 0:
        return 0.0
    if rampup <= 0:
        return decay
    half_life = math.log(0.5) / math.log(decay)  # in steps
    return 0.5 ** (1 / max(min(half_life, rampup * (step - start + 1)), 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, decay: float) -> None:
    """Move ema's weights towards generator's: w_ema = decay * w_ema + (1 - decay) * w; buffers are copied."""
    # One multi-tensor kernel per list, not one launch per tensor (dozens of tiny kernels per step on a GPU).
    torch._foreach_lerp_(list(ema.parameters()), list(generator.parameters()), 1.0 - decay)
    buffers = list(ema.buffers())
    if buffers:  # BatchNorm statistics are followed, not averaged
        torch._foreach_copy_(buffers, list(generator.buffers()))
