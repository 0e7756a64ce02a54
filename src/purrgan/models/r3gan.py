"""The R3GAN generator and discriminator (Huang et al. 2025, "The GAN is dead; long live the GAN! A Modern GAN
Baseline"): a ResNeXt-style network with no normalisation, for 32x32 to 256x256 images.

Each stage is a few inverted-bottleneck residual blocks (1x1 conv widening by `expansion`, grouped 3x3
conv with `group_size` channels per group, 1x1 conv back), with biased leaky ReLU 0.2 and no
normalisation. Weights use He init scaled by L^(-1/4) for L blocks (fix-up style) and the last conv of
every block starts at zero, so every block starts as the identity. G: a learned 4x4 basis modulated by
a linear map of z, then stages joined by bilinear 2x upsampling. D mirrors it: stages joined by [1,2,1]
blur-and-subsample (bilinear downsampling, written as a fixed convolution so R1/R2 can differentiate
through it twice), ending in a depthwise 4x4 basis and a linear score. Widths are constant per stage
(`width`) up to 32x32 and halved at each doubling beyond, as in the paper's FFHQ-64 and FFHQ-256
configurations. Beyond the paper: tanh on G's output, to keep purrgan's [-1, 1] image convention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PurrganError

SLOPE = 0.2
GAIN = math.sqrt(2 / (1 + SLOPE ** 2))  # He gain of leaky ReLU 0.2


def _he(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    return layer


class BiasedActivation(nn.Module):
    """leaky_relu(x + b, 0.2) with a learned per-channel bias b (the layers before it have none)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.to(x.dtype).view(1, -1, 1, 1), SLOPE)


class ResidualBlock(nn.Module):
    """x + 1x1(act(grouped 3x3(act(1x1(x))))): the inverted bottleneck, starting as the identity."""

    def __init__(self, channels: int, expansion: int, group_size: int, total_blocks: int):
        super().__init__()
        hidden = channels * expansion
        group_size = min(group_size, hidden)  # a very narrow stage is one group
        if hidden % group_size:
            raise PurrganError(f"r3gan: {hidden} channels (width x expansion) do not split into groups of {group_size}; "
                               f"set model.options.group_size to a divisor of {hidden}")
        gain = GAIN * total_blocks ** (-1 / 4)  # variance scaling for L blocks of 3 layers: L^(-1/(2*3-2))
        self.expand = _he(nn.Conv2d(channels, hidden, 1, bias=False), gain)
        self.act1 = BiasedActivation(hidden)
        self.mix = _he(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden // group_size, bias=False), gain)
        self.act2 = BiasedActivation(hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.mix(self.act1(self.expand(x)))))


class Downsample(nn.Module):
    """Blur with the [1, 2, 1] filter and keep every other pixel: bilinear downsampling by 2."""

    def __init__(self):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (taps[:, None] * taps[None, :] / 16)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.kernel.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(x, weight, stride=2, padding=1, groups=x.shape[1])


def stage_widths(resolution: int, width: int) -> list[int]:
    """Return the channels of each stage from 4x4 upwards: constant up to 32x32, then halved at every doubling.

    The paper's FFHQ-256 configuration: 768 up to 32x32, then 384, 192, 96 at 64, 128, 256 (FFHQ-64 stops at 384).
    """
    sides = [4 * 2 ** i for i in range(int(math.log2(resolution)) - 1)]  # 32: 4, 8, 16, 32
    return [max(width // max(side // 32, 1), 1) for side in sides]


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, z_dim: int = 64, channels: int = 3, resolution: int = 32, width: int = 128, blocks: int = 2,
                 group_size: int = 16, expansion: int = 2):
        super().__init__()
        widths = stage_widths(resolution, width)
        total = blocks * len(widths)
        self.basis = nn.Parameter(torch.randn(widths[0], 4, 4))
        self.project = _he(nn.Linear(z_dim, widths[0], bias=False))
        self.stages = nn.ModuleList()
        for i, w in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
                if widths[i - 1] != w:
                    layers.insert(0, _he(nn.Conv2d(widths[i - 1], w, 1, bias=False)))
            layers += [ResidualBlock(w, expansion, group_size, total) for _ in range(blocks)]
            self.stages.append(nn.Sequential(*layers))
        self.to_image = _he(nn.Conv2d(widths[-1], channels, 1))
        nn.init.zeros_(self.to_image.bias)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.basis[None] * self.project(z)[:, :, None, None]  # (N, w, 4, 4)
        for stage in self.stages:
            x = stage(x)
        return torch.tanh(self.to_image(x))


class Discriminator(nn.Module):
    """images (N, channels, resolution, resolution) -> raw scores (N,)."""

    def __init__(self, channels: int = 3, resolution: int = 32, width: int = 128, blocks: int = 2,
                 group_size: int = 16, expansion: int = 2):
        super().__init__()
        widths = stage_widths(resolution, width)[::-1]  # from the image down to 4x4
        total = blocks * len(widths)
        self.from_image = _he(nn.Conv2d(channels, widths[0], 1))
        nn.init.zeros_(self.from_image.bias)
        self.stages = nn.ModuleList()
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [ResidualBlock(w, expansion, group_size, total) for _ in range(blocks)]
            if i + 1 < len(widths):
                layers.append(Downsample())
                if widths[i + 1] != w:
                    layers.append(_he(nn.Conv2d(w, widths[i + 1], 1, bias=False)))
            self.stages.append(nn.Sequential(*layers))
        self.basis = _he(nn.Conv2d(widths[-1], widths[-1], 4, groups=widths[-1], bias=False))  # (N, w, 1, 1)
        self.head = _he(nn.Linear(widths[-1], 1, bias=False))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.from_image(images)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.basis(x).flatten(1)).flatten()
