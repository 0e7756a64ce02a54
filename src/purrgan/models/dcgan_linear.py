"""DCGAN whose D ends in a linear layer (the common "DCGAN with a dense head" of Keras/TF tutorials).

G: a linear projection of z to a (res/8)x(res/8) map, 3 transposed convs (stride 2) with BatchNorm
and ReLU, then a plain 3x3 conv to the image with tanh. D: 4 strided convs with BatchNorm and
LeakyReLU(0.1), flattened, then one linear layer to a logit.
"""

from __future__ import annotations

import torch
from torch import nn

from .dcgan import init_weights


class Generator(nn.Module):
    def __init__(self, z_dim: int = 100, channels: int = 3, resolution: int = 32, width: int = 64):
        super().__init__()
        self.side = resolution // 8
        self.project = nn.Sequential(nn.Linear(z_dim, width * 4 * self.side ** 2, bias=False),
                                     nn.BatchNorm1d(width * 4 * self.side ** 2), nn.ReLU(True))
        layers: list[nn.Module] = []
        for a, b in ((4, 4), (4, 2), (2, 1)):  # three transposed convs, each doubling the side
            layers += [nn.ConvTranspose2d(width * a, width * b, 4, 2, 1, bias=False), nn.BatchNorm2d(width * b), nn.ReLU(True)]
        layers += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.width = width
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.width * 4, self.side, self.side)  # (N, 4w, res/8, res/8)
        return self.main(x)


class Discriminator(nn.Module):
    def __init__(self, channels: int = 3, resolution: int = 32, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((channels, width), (width, width * 2), (width * 2, width * 4), (width * 4, width * 8)):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.1, inplace=True)]
        self.main = nn.Sequential(*layers, nn.Flatten())  # (N, 8w * (res/16)^2)
        self.head = nn.Linear(width * 8 * (resolution // 16) ** 2, 1)
        init_weights(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.main(images)).flatten()
