"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), over 10 splits."""

from __future__ import annotations

import numpy as np


def inception_score(real: dict, fake: dict, splits: int = 10) -> dict[str, float]:
    """Return {"is": mean, "is_std": std} from the fake images' classifier logits (the real ones are not used)."""
    if fake.get("logits") is None:
        raise ValueError("the Inception Score needs classifier logits, which this feature extractor does not give")
    logits = np.asarray(fake["logits"], dtype=np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return {"is": float(np.mean(scores)), "is_std": float(np.std(scores))}
