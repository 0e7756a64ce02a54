"""The SNGAN models of Miyato et al. 2018 ("Spectral Normalization for GANs"): the standard CNN (Table 3)
and the ResNet (Table 4, as in the authors' chainer code and torch-mimicry), spectral norm on every D layer.

Built for CIFAR's 32x32; at 64x64 one more up/down stage is added. With num_classes > 0, G uses
class-conditional BatchNorm and D a projection head (Miyato & Koyama 2018). At 32x32 with z_dim 128,
g_width 64 (G's 256 channels) and d_width 64 (D's 128 channels), the ResNet G has 4,276,739 parameters
and D 1,053,825 (torch-mimicry's SNGAN-CIFAR10: 4.3M and 1.1M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Norm2d, Projection, spectral_norm


def _stages(resolution: int) -> int:
    return int(math.log2(resolution)) - 2  # 4x4 -> resolution


# ---------------------------------------------------------------- standard CNN


class CNNGenerator(nn.Module):
    def __init__(self, z_dim: int = 128, channels: int = 3, resolution: int = 32, width: int = 64, num_classes: int = 0):
        super().__init__()
        widths = [max(width * 8 // 2 ** i, width // 2) for i in range(_stages(resolution) + 1)]  # 32: 512, 256, 128, 64
        self.first = widths[0]
        self.project = nn.Linear(z_dim, widths[0] * 16)
        self.norm0 = Norm2d(widths[0], num_classes)
        self.blocks = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, 2, 1) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(Norm2d(b, num_classes) for b in widths[1:])
        self.out = nn.Conv2d(widths[-1], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.norm0(self.project(z).view(z.shape[0], self.first, 4, 4), labels))  # (N, 8w, 4, 4)
        for block, norm in zip(self.blocks, self.norms):
            x = F.relu(norm(block(x), labels))
        return torch.tanh(self.out(x))


class CNNDiscriminator(nn.Module):
    def __init__(self, channels: int = 3, resolution: int = 32, width: int = 64, num_classes: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for i in range(_stages(resolution)):  # (3x3 stride 1, 4x4 stride 2) pairs: 64, 128, 256 at 32x32
            w = width * 2 ** i
            layers += [spectral_norm(nn.Conv2d(c, w, 3, 1, 1)), nn.LeakyReLU(0.1, inplace=True),
                       spectral_norm(nn.Conv2d(w, w, 4, 2, 1)), nn.LeakyReLU(0.1, inplace=True)]
            c = w
        layers += [spectral_norm(nn.Conv2d(c, width * 8, 3, 1, 1)), nn.LeakyReLU(0.1, inplace=True)]
        self.main = nn.Sequential(*layers)  # (N, 8w, 4, 4)
        self.head = spectral_norm(nn.Linear(width * 8 * 16, 1))
        self.projection = Projection(width * 8, num_classes, sn=True)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.main(images)
        return self.head(features.flatten(1)).flatten() + self.projection(features.sum(dim=(2, 3)), labels)


# ---------------------------------------------------------------- ResNet


class UpBlock(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm1, self.norm2 = Norm2d(channels, num_classes), Norm2d(channels, num_classes)
        self.conv1, self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1), nn.Conv2d(channels, channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, labels)), scale_factor=2)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, down: bool, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = spectral_norm(nn.Conv2d(in_channels, out_channels, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(out_channels, out_channels, 3, 1, 1))
        learnable = down or in_channels != out_channels
        self.shortcut = spectral_norm(nn.Conv2d(in_channels, out_channels, 1)) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)  # the first ("optimized") block sees raw pixels
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        if self.first:  # pool before the 1x1 conv, as in the reference optimized block
            return h + self.shortcut(F.avg_pool2d(x, 2))
        skip = self.shortcut(x)
        return h + (F.avg_pool2d(skip, 2) if self.down else skip)


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int = 128, channels: int = 3, resolution: int = 32, width: int = 64, num_classes: int = 0):
        super().__init__()
        self.width = width * 4  # 256 channels at the default width
        self.project = nn.Linear(z_dim, self.width * 16)
        self.blocks = nn.ModuleList(UpBlock(self.width, num_classes) for _ in range(_stages(resolution)))
        self.norm = nn.BatchNorm2d(self.width)
        self.out = nn.Conv2d(self.width, channels, 3, 1, 1)
        for m in self.modules():  # Xavier init as in the reference code
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, math.sqrt(2) if m is not self.out else 1.0)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.width, 4, 4)
        for block in self.blocks:
            x = block(x, labels)
        return torch.tanh(self.out(F.relu(self.norm(x))))


class ResNetDiscriminator(nn.Module):
    def __init__(self, channels: int = 3, resolution: int = 32, width: int = 64, num_classes: int = 0):
        super().__init__()
        c = width * 2  # 128 channels at the default width
        downs = _stages(resolution) - 1  # 32x32: optimized block + 1 down block -> 8x8, then 2 plain blocks
        blocks = [DownBlock(channels, c, down=True, first=True)]
        blocks += [DownBlock(c, c, down=True) for _ in range(downs - 1)]
        blocks += [DownBlock(c, c, down=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.head = spectral_norm(nn.Linear(c, 1))
        self.projection = Projection(c, num_classes, sn=True)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = F.relu(self.blocks(images)).sum(dim=(2, 3))  # global sum pooling: (N, C)
        return self.head(features).flatten() + self.projection(features, labels)
