"""Augmentations applied to whole batches on the training device (no per-image Python).

DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training") is
applied to everything D sees, real and fake alike, and is differentiable so G learns through it;
the operations are a port of the authors' DiffAugment_pytorch.py with an explicit random generator.

`build_augment(config.augment)` returns the object the training step calls on D's inputs. It may
own state (saved in every checkpoint through state_dict) and may learn from D's outputs (observe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .errors import PurrganError

if TYPE_CHECKING:
    from .config import AugmentConfig


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


def check_policy(policy: tuple[str, ...] | str) -> None:
    """Raise PurrganError for an unknown DiffAugment operation name."""
    names = policy.split(",") if isinstance(policy, str) else policy
    for name in filter(None, (p.strip() for p in names)):
        if name not in POLICIES:
            raise PurrganError(f"unknown augment.policy operation '{name}'; use any of: {', '.join(POLICIES)}")


def diff_augment(x: torch.Tensor, policy: tuple[str, ...] | str, generator: torch.Generator) -> torch.Tensor:
    """Return x with each operation of policy ("color,translation,cutout") applied in order."""
    names = policy.split(",") if isinstance(policy, str) else policy
    for name in filter(None, (p.strip() for p in names)):
        x = POLICIES[name](x, generator)
    return x


class Augment:
    """What D's inputs go through: DiffAugment's operations, then instance noise annealed to 0 over the run."""

    def __init__(self, policy: tuple[str, ...] = (), instance_noise: float = 0.0):
        self.policy, self.instance_noise = tuple(policy), instance_noise

    def __call__(self, images: torch.Tensor, rng: torch.Generator, progress: float) -> torch.Tensor:
        """Return images as D should see them; progress is the fraction of the run done, in [0, 1]."""
        if self.policy:
            images = diff_augment(images, self.policy, rng)
        sigma = self.instance_noise * (1 - progress)
        if sigma > 0:
            images = images + sigma * torch.randn(images.shape, device=images.device, generator=rng, dtype=images.dtype)
        return images

    def observe(self, d_out: dict[str, torch.Tensor], average=None) -> None:
        """Learn from D's outputs on one update (average: a function that means a tensor over the ranks)."""

    def stats(self) -> dict[str, torch.Tensor]:
        """Return the values to log (none for a fixed pipeline)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def to(self, device: torch.device) -> "Augment":
        return self


def build_augment(config: "AugmentConfig") -> Augment:
    """Return the augmentation pipeline that config describes."""
    check_policy(config.policy)
    return Augment(config.policy, config.instance_noise)
