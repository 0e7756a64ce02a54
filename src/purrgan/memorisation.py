"""Is it copying my data? Each sample's nearest training images, and a verdict that is only "copying" when it is.

A GAN trained on a small set can reproduce its training images; FID does not see it (a perfect copy of
the data has a perfect FID). Here every generated sample is compared with the training images in a
space stated with the result: the pixels of both shrunk to 16x16 (L2 distance), which catches copies
and near-copies, not look-alikes.

A sample is a near-copy when it is close to ONE training image and far from the rest: its nearest
training image is closer than 95% of real images are to their own nearest other one, and at most a
third of the mean distance to its next nine (the "1/3 of the neighbours" rule of Carlini et al. 2023).
Closeness alone is not enough: a flat grey or noisy early sample is close to every training image (at
16x16, grey noise sits nearer to the cat faces than the faces do to each other), which an absolute
threshold called "100% copies"; being about as close to its second to tenth neighbours as to its first
says it is near none of them in particular. The data's own rate is measured the same way (real images
against the rest of the set: a set with near-duplicates has some), and the verdict compares with it.
When the samples' distances to the data are far from the real images' own (under 0.75x or over 2x
the median), they do not look like the data yet, and the verdict is "too early to judge".
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


NEIGHBOURS = 10  # the nearest training image against the mean of the next nine
COPY_RATIO = 1 / 3


def memorisation(generated: torch.Tensor, training: torch.Tensor | None = None, embed=pixel_embedding,
                 space: str = PIXELS, reference: int = 1000, seed: int = 0, support: torch.Tensor | None = None) -> dict:
    """Return the memorisation check of generated images against the training images (both uint8 or [-1, 1]).

    support: the training images already embedded (N, D), instead of training (a large set, embedded in
    chunks). Returned: "copies" (the share of samples that are near-copies), "data_copies" (the same
    share among real images against the rest of the set), "median_ratio" (a sample's distance to its
    nearest training image over a real image's, medians), "verdict" and "why" in words, and the counts.
    """
    support = embed(training) if support is None else support
    fake_distances, _ = nearest(embed(generated), support, k=NEIGHBOURS)
    order = torch.randperm(len(support), generator=torch.Generator().manual_seed(seed))[:reference]
    real_distances = _nearest_others(support, order, NEIGHBOURS)  # each real image against the rest of the set
    threshold = torch.quantile(real_distances[:, 0], 0.05)
    copied, twins = near_copies(fake_distances, threshold), near_copies(real_distances, threshold)
    copies, data_copies = float(copied.float().mean()), float(twins.float().mean())
    median_ratio = float(fake_distances[:, 0].median() / real_distances[:, 0].median().clamp(min=1e-12))
    verdict, why = _verdict(copies, data_copies, median_ratio, len(generated), len(order))
    closeness = fake_distances[:, 0] / fake_distances[:, 1:].mean(dim=1).clamp(min=1e-12)  # small: near ONE image
    return {"verdict": verdict, "why": why, "copies": copies, "data_copies": data_copies, "median_ratio": median_ratio,
            "threshold": float(threshold), "samples": len(generated), "training_images": len(support),
            "reference_images": len(order), "space": space, "copied": copied.nonzero().flatten().tolist(),
            "closest": closeness.argsort()[:8].tolist()}


def near_copies(distances: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Return which rows of (N, k) distances to the nearest training images are near-copies: close to one, far from the rest."""
    first, rest = distances[:, 0], distances[:, 1:].mean(dim=1)
    return (first < threshold) & (first < COPY_RATIO * rest)


def _verdict(copies: float, data_copies: float, median_ratio: float, samples: int, reals: int) -> tuple[str, str]:
    """Return the verdict ("copying", "some near-copies", "not copying", "too early to judge") and why, in words."""
    # Counts, not only rounded percentages: "0% of 256" for one near-copy out of 256 would be false.
    share = f"{_of(copies, samples, 'samples')} are near-copies of one training image ({_of(data_copies, reals, 'real images')} " \
            f"have such a near-twin in the set itself)"
    if copies >= max(0.10, 3 * data_copies):
        return "copying", share
    if copies >= max(0.03, 2 * data_copies):
        return "some near-copies", share
    if median_ratio > 2.0:
        return "too early to judge", (f"the samples do not look like the training images yet: their nearest training "
                                      f"image is {median_ratio:.2f}x as far as a real image's, so near-copies cannot be "
                                      f"told from chance; {share}")
    if median_ratio < 0.75:  # blurred, grey or average-looking samples sit close to many images at once
        return "too early to judge", (f"the samples are nearer the training images than real images are to each other "
                                      f"({median_ratio:.2f}x), as blurred or average-looking samples are, so near-copies "
                                      f"cannot be told from chance; {share}")
    return "not copying", share


def _of(share: float, total: int, what: str) -> str:
    count = round(share * total)
    return f"{count} of {total} {what} ({share:.0%})" if count == 0 or share >= 0.01 else f"{count} of {total} {what} ({share:.1%})"


def _nearest_others(support: torch.Tensor, chosen: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """Return the distances (len(chosen), k) from each chosen support vector to its k nearest *other* ones."""
    out = []
    for start in range(0, len(chosen), chunk):
        rows = chosen[start:start + chunk]
        d = torch.cdist(support[rows], support)
        d[torch.arange(len(rows)), rows] = float("inf")
        out.append(d.topk(min(k, len(support) - 1), dim=1, largest=False).values)
    return torch.cat(out)
