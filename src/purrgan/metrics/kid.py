"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel,
averaged over random subsets (torch-fidelity's defaults: 100 subsets of 1,000)."""

from __future__ import annotations

import numpy as np


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Return the unbiased MMD^2 between samples x (m, D) and y (n, D) with k(a, b) = (a.b / D + 1)^3."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(real: dict, fake: dict, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Return {"kid": mean, "kid_std": std} of MMD^2 over random subsets of the real and fake features."""
    x, y = np.asarray(real["features"], dtype=np.float64), np.asarray(fake["features"], dtype=np.float64)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError("KID needs at least 2 real and 2 generated images")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values))}
