"""Building blocks shared by the architectures: conditional BatchNorm, the projection head, SN and norms."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up per class (de Vries et al. 2017; Miyato & Koyama 2018)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class Norm2d(nn.Module):
    """BatchNorm2d, or its class-conditional version when num_classes > 0; takes labels either way."""

    def __init__(self, channels: int, num_classes: int = 0):
        super().__init__()
        self.conditional = num_classes > 0
        self.norm = ConditionalBatchNorm2d(channels, num_classes) if self.conditional else nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            return self.norm(x, labels)
        return self.norm(x)


class Projection(nn.Module):
    """The projection discriminator's class term <embed(y), h> (Miyato & Koyama 2018); zero when unconditional."""

    def __init__(self, features: int, num_classes: int, sn: bool):
        super().__init__()
        self.embed = maybe_sn(nn.Embedding(num_classes, features), sn) if num_classes > 0 else None

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | float:
        if self.embed is None:
            return 0.0
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass labels")
        return (self.embed(labels) * features).sum(dim=1)  # (N,)


def maybe_sn(module: nn.Module, sn: bool) -> nn.Module:
    """Return module with spectral normalisation (Miyato et al. 2018) on its weight when sn is true."""
    return spectral_norm(module) if sn else module


def d_norm(kind: str, channels: int) -> nn.Module:
    """Return the discriminator normalisation layer: "batch", "layer" (per-sample) or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # per-sample normalisation: allowed with a gradient penalty
    return nn.Identity()
