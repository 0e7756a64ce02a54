"""FastGAN (Liu et al. 2021, "Towards Faster and Stabilized GAN Training for High-fidelity Few-shot Image Synthesis",
the architecture of lucidrains/lightweight-gan): a light G with skip-layer excitation, and a self-supervised D
that must reconstruct what it sees, for small data sets.

G: a 4x4 start from z (transposed conv, BatchNorm, GLU), then one stage per doubling: nearest upsampling,
3x3 conv to twice the channels, BatchNorm, GLU (every other stage has a second such conv). Skip-layer
excitation (SLE) gates a high-resolution feature map channel by channel with a signal computed from a
feature map 8 or 16 times smaller (pooled to 4x4, a 4x4 conv, Swish, a 1x1 conv, sigmoid), so large-scale
structure steers fine detail through a short path.

D: strided residual blocks ((4x4 conv, 3x3 conv) beside (avg-pool, 1x1 conv), averaged) from the image
down to 8x8, with SLE from high to low resolutions, then a logit head; a second, small path sees the image
at half size. Three small decoders reconstruct, from D's features, the real image (from its 8x8 map), the
half-size image (from the small path's 8x8 map) and a random quadrant (from its 16x16 map): the
reconstruction loss is a D regulariser this architecture declares (`Discriminator.regularisers`), which
the step adds to D's loss on real images only, so D must keep describing the images, not just telling
real from fake, which is what lets it learn from 100 images without memorising them.

Where purrgan differs from the paper's code, and why:
- No noise injection in G: purrgan's generator is a function of z (a seed always draws the same images, and
  an exported ONNX file gives what PyTorch gives).
- The reconstruction is L1 on pixels, not LPIPS: LPIPS needs VGG weights that cannot be downloaded offline.
- D returns one score per image, the mean of its two heads' 5x5 patch logits (every purrgan loss and the
  projection expect one score per image); the paper's hinge takes each patch apart. The hinge margin is
  the usual 1, not the paper's random 0.8-1.0.
- Sizes 32 to 256 (the paper: 256 to 1024): stages are added or removed at the top; the SLE in G gates a
  stage by the one 16x smaller where it exists (4 -> 64, 8 -> 128, 16 -> 256) and by the one 8x smaller
  below 64 (4 -> 32), so every size has one; reconstructions are at most 128x128, as in the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import maybe_sn

CHANNELS = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5}  # the paper's nfc, as multiples of the width


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
    return maybe_sn(nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias), True)  # spectral norm everywhere, as the paper


def _width(side: int, width: int) -> int:
    return max(int(CHANNELS[side] * width), 4)


class SLE(nn.Module):
    """Skip-layer excitation: (low-resolution map, high-resolution map) -> the high map gated per channel."""

    def __init__(self, low_channels: int, high_channels: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(4), _conv(low_channels, high_channels, 4), nn.SiLU(),
                                  _conv(high_channels, high_channels, 1), nn.Sigmoid())

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)  # (N, C_high, H, W) * (N, C_high, 1, 1)


def _up(cin: int, cout: int, twice: bool) -> nn.Sequential:
    layers = [nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout * 2, 3, 1, 1, bias=False),
              nn.BatchNorm2d(cout * 2), nn.GLU(dim=1)]
    if twice:  # the paper's UpBlockComp, without its noise injection
        layers += [_conv(cout, cout * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(cout * 2), nn.GLU(dim=1)]
    return nn.Sequential(*layers)


def sle_pairs(resolution: int) -> dict[int, int]:
    """Return {high side: low side} of G's skip-layer excitations for an image size."""
    pairs = {high: high // 16 for high in (64, 128, 256) if high <= resolution}
    return pairs or {resolution: 4}  # 32x32: gated by the 4x4 map


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, z_dim: int = 256, channels: int = 3, resolution: int = 64, width: int = 64):
        super().__init__()
        sides = [4 * 2 ** i for i in range(int(math.log2(resolution)) - 1)]  # 4, 8, ..., resolution
        self.start = nn.Sequential(nn.ConvTranspose2d(z_dim, _width(4, width) * 2, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(_width(4, width) * 2), nn.GLU(dim=1))  # (N, C4, 4, 4)
        self.stages = nn.ModuleDict({str(side): _up(_width(side // 2, width), _width(side, width), twice=i % 2 == 0)
                                     for i, side in enumerate(sides[1:])})
        self.pairs = sle_pairs(resolution)
        self.sle = nn.ModuleDict({str(high): SLE(_width(low, width), _width(high, width)) for high, low in self.pairs.items()})
        self.to_image = _conv(_width(resolution, width), channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.start(z[:, :, None, None])
        maps = {4: x}
        for side, stage in self.stages.items():
            x = stage(x)
            if int(side) in self.pairs:
                x = self.sle[side](maps[self.pairs[int(side)]], x)
            maps[int(side)] = x
        return torch.tanh(self.to_image(x))


class _Down(nn.Module):
    """The paper's DownBlockComp: (4x4 stride-2 conv, 3x3 conv) and (avg-pool, 1x1 conv), averaged."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(_conv(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
                                  _conv(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))
        self.direct = nn.Sequential(nn.AvgPool2d(2), _conv(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                    nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.direct(x)) / 2


class _Decoder(nn.Module):
    """An 8x8 feature map -> a picture of `size` (nearest upsampling, 3x3 conv, BatchNorm, GLU; then 3x3 conv, tanh)."""

    def __init__(self, cin: int, channels: int, size: int, width: int):
        super().__init__()
        layers, c = [], cin
        for side in [16 * 2 ** i for i in range(int(math.log2(size // 8)))]:  # 16, 32, ... size
            out = _width(min(side, 256), width // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(c, out * 2, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(out * 2), nn.GLU(dim=1)]
            c = out
        self.net = nn.Sequential(*layers, _conv(c, channels, 3, 1, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """images (N, channels, resolution, resolution) -> raw scores (N,); regularisers() declares the reconstruction."""

    def __init__(self, channels: int = 3, resolution: int = 64, width: int = 64, recon_weight: float = 1.0):
        super().__init__()
        sides = [resolution // 2 ** i for i in range(int(math.log2(resolution // 8)) + 1)]  # resolution, ..., 8
        self.resolution, self.recon_weight = resolution, recon_weight
        self.from_image = nn.Sequential(_conv(channels, _width(min(resolution, 256), width), 3, 1, 1), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleDict({str(low): _Down(_width(min(high, 256), width), _width(low, width))
                                    for high, low in zip(sides, sides[1:])})  # keyed by the side they make
        # SLE from a map 8x larger, where both exist (the paper: 256 -> 32, 128 -> 16, 64 -> 8)
        self.sle = nn.ModuleDict({str(side): SLE(_width(min(side * 8, 256), width), _width(side, width))
                                  for side in sides if side * 8 in sides})
        self.head = nn.Sequential(_conv(_width(8, width), _width(8, width) // 2, 1, bias=False),
                                  nn.BatchNorm2d(_width(8, width) // 2), nn.LeakyReLU(0.2),
                                  _conv(_width(8, width) // 2, 1, 4))  # (N, 1, 5, 5)
        small = resolution // 2
        small_sides = [small // 2 ** i for i in range(int(math.log2(small // 8)) + 1)]  # the half-size path
        layers, c = [], channels
        for low in small_sides[1:]:  # the paper's DownBlock: 4x4 stride-2 conv, BatchNorm, leaky ReLU
            out = _width(min(low, 256), width)
            layers += [_conv(c, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            c = out
        self.small = nn.Sequential(*layers)  # (N, c, 8, 8)
        self.small_head = _conv(c, 1, 4)
        size = min(resolution, 128)
        self.decode_big = _Decoder(_width(8, width), channels, size, width)
        self.decode_small = _Decoder(c, channels, size, width)
        self.decode_part = _Decoder(_width(16, width), channels, size, width)

    def features(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Return D's feature maps by side (the big path), from the image down to 8x8."""
        x = self.from_image(images)
        maps = {self.resolution: x}
        for side, down in self.downs.items():
            x = down(x)
            if side in self.sle:
                x = self.sle[side](maps[int(side) * 8], x)
            maps[int(side)] = x
        return maps

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        big = self.head(self.features(images)[8]).mean(dim=(1, 2, 3))
        small = self.small_head(self.small(_half(images))).mean(dim=(1, 2, 3))
        return (big + small) / 2  # (N,)

    def reconstruction_loss(self, real: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Return the mean L1 error of D's three reconstructions of real images: the whole (from its 8x8 map), the
        half-size image (from the small path) and a random quadrant of each (from a quarter of its 16x16 map)."""
        maps = self.features(real)
        size = min(self.resolution, 128)
        which = torch.randint(0, 4, (len(real),), generator=rng, device=real.device)  # a quadrant per image, no host sync
        rows = torch.arange(len(real), device=real.device)
        part_map = _quadrants(maps[16])[rows, which]  # (N, C, 8, 8)
        part = _quadrants(real)[rows, which]  # (N, C, H/2, W/2)
        pairs = ((self.decode_big(maps[8]), real), (self.decode_small(self.small(_half(real))), _half(real)),
                 (self.decode_part(part_map), part))
        return sum(F.l1_loss(made.float(), _resized(target, size).float()) for made, target in pairs) / 3

    def regularisers(self) -> list:
        """The reconstruction, as a D penalty on real images that the step runs with the loss's own."""
        from ..losses import Regulariser

        return [Regulariser("reconstruction_loss", "D", self.recon_weight, 1, _reconstruction)]


def _reconstruction(discriminator: nn.Module, batch, out, rng) -> torch.Tensor:
    return discriminator.reconstruction_loss(batch.real.detach(), rng)


def _quadrants(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4, C, H/2, W/2): top-left, top-right, bottom-left, bottom-right."""
    n, c, h, w = x.shape
    return x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(n, 4, c, h // 2, w // 2)


def _half(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images, 2)  # a 2x2 box filter: antialiased, and defined for bf16 on a CPU (bilinear-aa is not)


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=images.shape[-1] > size,
                         align_corners=False)
