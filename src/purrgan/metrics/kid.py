"""Kernel Inception Distance (Bińkowski et al. 2018): torch-fidelity's unbiased MMD^2 with the cubic polynomial
kernel over random subsets (100 of 1,000 by default), on purrgan's features."""

from __future__ import annotations

import numpy as np
import torch


def kid(real: dict, fake: dict, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Return {"kid": mean, "kid_std": std} of MMD^2 over random subsets of the real and fake features."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    x, y = np.asarray(real["features"], dtype=np.float64), np.asarray(fake["features"], dtype=np.float64)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError("KID needs at least 2 real and 2 generated images")
    out = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=subsets, kid_subset_size=size,
                                 rng_seed=seed, verbose=False)
    return {"kid": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD]}
