"""DCGAN (Radford et al. 2016) as in the PyTorch reference example, for any power-of-two resolution >= 16.

At 64x64 with g_width = d_width = 64, z_dim = 100 and 3 channels this is exactly pytorch/examples/dcgan:
G has 3,576,704 parameters and D 2,765,568 (the published 3.58M / 2.77M).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _widths(resolution: int) -> list[int]:
    # Channel multipliers from the 4x4 stage upwards: 64 -> [8, 4, 2, 1], 32 -> [4, 2, 1].
    stages = int(math.log2(resolution)) - 2
    return [2 ** i for i in reversed(range(stages))]


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, z_dim: int = 100, channels: int = 3, resolution: int = 64, width: int = 64):
        super().__init__()
        self.z_dim, self.channels, self.resolution = z_dim, channels, resolution
        mults = _widths(resolution)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, width * mults[0], 4, 1, 0, bias=False),  # (N, w*m0, 4, 4)
            nn.BatchNorm2d(width * mults[0]),
            nn.ReLU(True),
        ]
        for a, b in zip(mults, mults[1:]):  # each stage doubles the side
            layers += [nn.ConvTranspose2d(width * a, width * b, 4, 2, 1, bias=False), nn.BatchNorm2d(width * b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(width * mults[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(z[:, :, None, None])


class Discriminator(nn.Module):
    """images (N, channels, resolution, resolution) -> raw logits (N,)."""

    def __init__(self, channels: int = 3, resolution: int = 64, width: int = 64):
        super().__init__()
        mults = list(reversed(_widths(resolution)))  # 64 -> [1, 2, 4, 8]
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(mults, mults[1:]):  # each stage halves the side; BatchNorm on all but the first
            layers += [nn.Conv2d(width * a, width * b, 4, 2, 1, bias=False), nn.BatchNorm2d(width * b), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(width * mults[-1], 1, 4, 1, 0, bias=False)]  # (N, 1, 1, 1)
        self.main = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(images).flatten()


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02) and shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
