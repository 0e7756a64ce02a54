"""Is it copying my data? Each sample's nearest training images, and a memorisation score.

A GAN trained on a small set can reproduce its training images; FID does not see it (a perfect copy of
the data has a perfect FID). Here every generated sample is compared with every training image, in a
space stated with the result: the FID Inception features when they are available, else the pixels of
both images shrunk to 16x16 (L2 distance), which catches copies and near-copies, not look-alikes.

The score is the share of samples that are closer to a training image than almost every real image is
to its own nearest other training image (the 5th percentile of those real-to-real distances): about
5% for a generator that makes new images, near 100% for one that replays its data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import to_float

PIXELS = "pixels shrunk to 16x16 (L2)"


def pixel_embedding(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [-1, 1] images (N, C, H, W) -> (N, D) vectors: the images shrunk to 16x16, as floats."""
    x = to_float(images) if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != 16:
        x = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    return x.flatten(1)


def nearest(queries: torch.Tensor, support: torch.Tensor, k: int = 1, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the distances and indices (N, k) of each query's k nearest support vectors."""
    distances, indices = [], []
    k = min(k, len(support))
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], support)  # (n, M)
        value, index = d.topk(k, dim=1, largest=False)
        distances.append(value)
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def memorisation(generated: torch.Tensor, training: torch.Tensor | None = None, embed=pixel_embedding,
                 space: str = PIXELS, reference: int = 1000, seed: int = 0, support: torch.Tensor | None = None) -> dict:
    """Return the memorisation score of generated images against the training images (both uint8 or [-1, 1]).

    support: the training images already embedded (N, D), instead of training (a large set, embedded in chunks).
    Also returned: the median distance from a sample to its nearest training image divided by the median
    real-to-real nearest distance (below 1: closer to the data than the data is to itself), and the counts.
    """
    support = embed(training) if support is None else support
    training = support
    fake_distance, _ = nearest(embed(generated), support)
    order = torch.randperm(len(training), generator=torch.Generator().manual_seed(seed))[:reference]
    real_distance = _nearest_other(support, order)  # each real image's nearest *other* training image
    threshold = torch.quantile(real_distance, 0.05)
    return {
        "score": float((fake_distance[:, 0] < threshold).float().mean()),
        "median_ratio": float(fake_distance[:, 0].median() / real_distance.median().clamp(min=1e-12)),
        "threshold": float(threshold), "samples": len(generated), "training_images": len(training),
        "reference_images": len(order), "space": space,
    }


def _nearest_other(support: torch.Tensor, chosen: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(chosen), chunk):
        rows = chosen[start:start + chunk]
        d = torch.cdist(support[rows], support)
        d[torch.arange(len(rows)), rows] = float("inf")
        out.append(d.min(dim=1).values)
    return torch.cat(out)
