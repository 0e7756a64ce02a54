"""Improved precision and recall (Kynkäänniemi et al. 2019): torch-fidelity's k-NN manifold estimate (k = 3)."""

from __future__ import annotations

import numpy as np
import torch


def precision_recall(real: dict, fake: dict, k: int = 3) -> dict[str, float]:
    """Return {"precision": share of fakes inside the real manifold, "recall": share of reals inside the fake one}."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    x = torch.from_numpy(np.asarray(real["features"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(fake["features"], dtype=np.float32))
    if len(x) <= k or len(y) <= k:
        raise ValueError(f"precision/recall needs more than k={k} real and generated images")
    out = prc_features_to_metric(y, x, prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return {"precision": out[KEY_METRIC_PRECISION], "recall": out[KEY_METRIC_RECALL]}
