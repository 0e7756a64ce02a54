"""Fréchet Inception Distance (Heusel et al. 2017): torch-fidelity's computation on purrgan's features, in float64."""

from __future__ import annotations

import numpy as np
import torch


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean (D,) and covariance (D, D) of features (N, D), in float64 (torch-fidelity's statistics)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(torch.as_tensor(np.asarray(features, dtype=np.float64)))
    return np.asarray(stats["mu"], dtype=np.float64), np.atleast_2d(np.asarray(stats["sigma"], dtype=np.float64))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Return |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) as torch-fidelity computes it (eigenvalues of S1 S2)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    first = {"mu": np.atleast_1d(mu1).astype(np.float64), "sigma": np.atleast_2d(sigma1).astype(np.float64)}
    second = {"mu": np.atleast_1d(mu2).astype(np.float64), "sigma": np.atleast_2d(sigma2).astype(np.float64)}
    value = fid_statistics_to_metric(first, second, verbose=False)[KEY_METRIC_FID]
    if not np.isfinite(value):
        raise ValueError("the Fréchet distance is not finite (features with NaN or Inf?)")
    return float(value)


def fid(real: dict, fake: dict) -> dict[str, float]:
    """Return {"fid": ...} from real statistics (mu, sigma) and fake statistics (or features)."""
    mu, sigma = (fake["mu"], fake["sigma"]) if "mu" in fake else gaussian_statistics(fake["features"])
    return {"fid": frechet_distance(real["mu"], real["sigma"], mu, sigma)}
