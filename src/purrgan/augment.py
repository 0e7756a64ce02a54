"""Augmentations applied to whole batches on the training device (no per-image Python).

DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training") is
applied to everything D sees, real and fake alike, and is differentiable so G learns through it;
this is a port of the authors' DiffAugment_pytorch.py with an explicit random generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import PurrganError


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return images with each one mirrored left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5  # (N,)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _rand(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return x with random brightness, saturation and contrast per image."""
    x = x + (_rand(x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Return x shifted by up to ratio of its size in each direction, padding with zeros."""
    n, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device, generator=generator)
    ty = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device, generator=generator)
    gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Return x with one random square of side ratio * size set to zero in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device, generator=generator)
    oy = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device, generator=generator)
    gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


POLICIES = {"color": color, "translation": translation, "cutout": cutout}


def check_policy(policy: str) -> None:
    """Raise PurrganError for an unknown DiffAugment operation name."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        if name not in POLICIES:
            raise PurrganError(f"unknown augment.policy operation '{name}'; use any of: {', '.join(POLICIES)}")


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """Return x with each operation of policy ("color,translation,cutout") applied in order."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        x = POLICIES[name](x, generator)
    return x
