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
        images = self.apply_policy(images, rng)
        sigma = self.instance_noise * (1 - progress)
        if sigma > 0:
            images = images + sigma * torch.randn(images.shape, device=images.device, generator=rng, dtype=images.dtype)
        return images

    def apply_policy(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Return images with every operation of the policy applied."""
        return diff_augment(images, self.policy, rng) if self.policy else images

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


class AdaptiveAugment(Augment):
    """ADA (Karras et al. 2020): each operation hits an image with probability p, steered by D's overfitting.

    r_t = E[sign(D(x))] over the real images of the last `interval` D updates; p moves up when
    r_t > target (D is too sure of the reals: it is memorising them) and down otherwise, by at most
    1 per `kimg` thousand images, starting at 0. p, like the statistics being gathered, stays on the
    device (no host sync) and is saved in every checkpoint.
    """

    def __init__(self, policy: tuple[str, ...], instance_noise: float, target: float, kimg: float, interval: int):
        super().__init__(policy or tuple(POLICIES), instance_noise)
        self.target, self.kimg, self.interval = target, kimg, interval
        self.p = torch.zeros(())
        self.r_t = torch.zeros(())
        self.gathered = torch.zeros(2)  # (sum of sign(D(x)), number of real images) since the last adjustment
        self.updates = 0

    def apply_policy(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Return images with each operation applied to each image with probability p."""
        for name in self.policy:
            hit = torch.rand(images.shape[0], 1, 1, 1, device=images.device, generator=rng) < self.p  # (N, 1, 1, 1)
            images = torch.where(hit, POLICIES[name](images, rng), images)
        return images

    def observe(self, d_out: dict[str, torch.Tensor], average=None) -> None:
        scores = d_out.get("real_scores")
        if scores is None:
            return  # a loss that does not report D's raw outputs leaves p where it is
        self.gathered[0] += scores.detach().sign().sum().float()
        self.gathered[1] += scores.numel()
        self.updates += 1
        if self.updates % self.interval:
            return
        total = average(self.gathered) if average is not None else self.gathered  # the same p on every rank
        ranks = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.r_t = total[0] / total[1].clamp(min=1)
        step = torch.sign(self.r_t - self.target) * total[1] * ranks / (self.kimg * 1000)
        self.p = (self.p + step).clamp(0.0, 1.0)
        self.gathered = torch.zeros_like(self.gathered)

    def stats(self) -> dict[str, torch.Tensor]:
        return {"ada_p": self.p, "ada_rt": self.r_t}

    def state_dict(self) -> dict:
        return {"p": self.p, "r_t": self.r_t, "gathered": self.gathered, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if state:
            device = self.p.device
            self.p, self.r_t = state["p"].to(device), state["r_t"].to(device)
            self.gathered, self.updates = state["gathered"].to(device), int(state["updates"])

    def to(self, device: torch.device) -> "AdaptiveAugment":
        self.p, self.r_t, self.gathered = self.p.to(device), self.r_t.to(device), self.gathered.to(device)
        return self


def build_augment(config: "AugmentConfig") -> Augment:
    """Return the augmentation pipeline that config describes (adaptive when asked: all operations by default)."""
    check_policy(config.policy)
    if config.adaptive:
        return AdaptiveAugment(config.policy, config.instance_noise, config.ada_target, config.ada_kimg, config.ada_interval)
    return Augment(config.policy, config.instance_noise)
