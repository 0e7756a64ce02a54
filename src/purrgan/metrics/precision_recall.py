"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls around each set's features."""

from __future__ import annotations

import numpy as np
import torch


def _radii(features: torch.Tensor, k: int, batch: int = 2048) -> torch.Tensor:
    # Distance to the k-th nearest other point: the radius of each point's ball in the manifold estimate.
    out = []
    for chunk in features.split(batch):
        distances = torch.cdist(chunk, features)
        out.append(distances.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch: int = 2048) -> float:
    inside = []
    for chunk in queries.split(batch):
        inside.append((torch.cdist(chunk, support) <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: dict, fake: dict, k: int = 3) -> dict[str, float]:
    """Return {"precision": share of fakes inside the real manifold, "recall": share of reals inside the fake one}."""
    x = torch.from_numpy(np.asarray(real["features"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(fake["features"], dtype=np.float32))
    if len(x) <= k or len(y) <= k:
        raise ValueError(f"precision/recall needs more than k={k} real and generated images")
    return {"precision": _coverage(y, x, _radii(x, k)), "recall": _coverage(x, y, _radii(y, k))}
