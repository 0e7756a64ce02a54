"""Sample-quality metrics, registered by name; each takes real and fake feature dicts and returns numbers.

Feature dicts hold "features" (N, D) and, for the Inception Score, "logits" (N, K); the real side
may hold precomputed "mu" and "sigma" instead of recomputing them.
"""

from __future__ import annotations

from typing import Callable

from ..errors import PurrganError
from .fid import fid
from .inception_score import inception_score
from .kid import kid
from .precision_recall import precision_recall

METRICS: dict[str, Callable[[dict, dict], dict[str, float]]] = {
    "fid": fid,
    "kid": kid,
    "is": inception_score,
    "pr": precision_recall,
}


def parse_metrics(text) -> list[str]:
    """Return the metric names of "fid,kid" (or a list of names), failing on an unknown one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for name in names:
        if name not in METRICS:
            raise PurrganError(f"unknown metric '{name}'; choose from: {', '.join(METRICS)}")
    if not names:
        raise PurrganError(f"no metric given; choose from: {', '.join(METRICS)}")
    return names
