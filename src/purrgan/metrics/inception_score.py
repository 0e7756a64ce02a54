"""Inception Score (Salimans et al. 2016): torch-fidelity's exp E_x KL(p(y|x) || p(y)) over 10 splits."""

from __future__ import annotations

import numpy as np
import torch


def inception_score(real: dict, fake: dict, splits: int = 10) -> dict[str, float]:
    """Return {"is": mean, "is_std": std} from the fake images' classifier logits (the real ones are not used)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if fake.get("logits") is None:
        raise ValueError("the Inception Score needs classifier logits, which this feature extractor does not give")
    # In order, as the original code splits (samples are drawn independently: shuffling changes nothing in expectation).
    out = isc_features_to_metric(torch.from_numpy(np.asarray(fake["logits"], dtype=np.float64)), splits=splits, shuffle=False)
    return {"is": out[KEY_METRIC_ISC_MEAN], "is_std": out[KEY_METRIC_ISC_STD]}
