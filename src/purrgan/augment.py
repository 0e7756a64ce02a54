"""Augmentations applied to whole batches on the training device (no per-image Python)."""

from __future__ import annotations

import torch


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return images with each one mirrored left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5  # (N,)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
