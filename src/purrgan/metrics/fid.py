"""Fréchet Inception Distance (Heusel et al. 2017), computed in float64 as pytorch-fid does."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean (D,) and covariance (D, D) of features (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Return |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); near-singular products get eps on the diagonal."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    with np.errstate(all="ignore"):
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the FID square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real: dict, fake: dict) -> dict[str, float]:
    """Return {"fid": ...} from real statistics (mu, sigma) and fake features."""
    mu, sigma = gaussian_statistics(fake["features"])
    return {"fid": frechet_distance(real["mu"], real["sigma"], mu, sigma)}
