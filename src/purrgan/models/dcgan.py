"""DCGAN (Radford et al. 2016) as in pytorch/examples/dcgan, for any power-of-two resolution >= 16.

At 64x64 with g_width = d_width = 64, z_dim = 100 and 3 channels this is exactly the reference:
G has 3,576,704 parameters and D 2,765,568 (the published 3.58M / 2.77M). Options beyond the
reference: class-conditional BatchNorm in G with a projection head in D (num_classes > 0), spectral
norm in D, and D's normalisation ("batch" as in the paper, "layer" or "none" for a gradient penalty).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Norm2d, Projection, d_norm, maybe_sn


def _widths(resolution: int) -> list[int]:
    # Channel multipliers from the 4x4 stage upwards: 64 -> [8, 4, 2, 1], 32 -> [4, 2, 1], 128 -> [16, 8, 4, 2, 1];
    # capped at 16 (256 -> [16, 16, 8, 4, 2, 1]) so that a 256x256 G does not start at 2,048 channels.
    stages = int(math.log2(resolution)) - 2
    return [min(2 ** i, 16) for i in reversed(range(stages))]


class Generator(nn.Module):
    """z (N, z_dim) [+ labels (N,)] -> images (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, z_dim: int = 100, channels: int = 3, resolution: int = 64, width: int = 64, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.channels, self.resolution = z_dim, channels, resolution
        mults = _widths(resolution)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, width * mults[0], 4, 1, 0, bias=False),  # (N, w*m0, 4, 4)
            Norm2d(width * mults[0], num_classes),
            nn.ReLU(True),
        ]
        for a, b in zip(mults, mults[1:]):  # each stage doubles the side
            layers += [nn.ConvTranspose2d(width * a, width * b, 4, 2, 1, bias=False), Norm2d(width * b, num_classes), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(width * mults[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = z[:, :, None, None]  # (N, z_dim, 1, 1)
        for layer in self.main:
            x = layer(x, labels) if isinstance(layer, Norm2d) else layer(x)
        return x


class Discriminator(nn.Module):
    """images (N, channels, resolution, resolution) [+ labels (N,)] -> raw logits (N,)."""

    def __init__(self, channels: int = 3, resolution: int = 64, width: int = 64, num_classes: int = 0,
                 norm: str = "batch", sn: bool = False):
        super().__init__()
        mults = list(reversed(_widths(resolution)))  # 64 -> [1, 2, 4, 8]
        layers: list[nn.Module] = [maybe_sn(nn.Conv2d(channels, width, 4, 2, 1, bias=False), sn), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(mults, mults[1:]):  # each stage halves the side; normalised on all but the first
            layers += [maybe_sn(nn.Conv2d(width * a, width * b, 4, 2, 1, bias=False), sn), d_norm(norm, width * b),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.main = nn.Sequential(*layers)  # (N, w*m, 4, 4)
        self.head = maybe_sn(nn.Conv2d(width * mults[-1], 1, 4, 1, 0, bias=False), sn)  # (N, 1, 1, 1)
        self.projection = Projection(width * mults[-1], num_classes, sn)
        init_weights(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.main(images)
        return self.head(features).flatten() + self.projection(features.sum(dim=(2, 3)), labels)


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv, linear and projection weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02) and shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(_weight(m), 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, Projection) and m.embed is not None:
            # Left at nn.Embedding's N(0, 1), the class term outweighed the head's logit about 100x at
            # step 0, and the conditional DCGAN trained far worse than the unconditional one.
            nn.init.normal_(_weight(m.embed), 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _weight(m: nn.Module) -> torch.Tensor:
    return m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
