"""Feature extractors for the metrics: the standard FID Inception-v3, or any module from images to vectors.

The Inception network is torch-fidelity's port of the TF graph used by the FID paper (the same weights
file as pytorch-fid, 2048-d pool features and 1008 logits, 299x299 bilinear resize inside), so numbers
compare with published tables. Its weights come from --inception-weights, $PURRGAN_INCEPTION, the
cache, or the usual download.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from ..data.download import DownloadError, cache_dir, download
from ..errors import PurrganError

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # the file name carries the start of its SHA-256


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: uint8 (N, 3, H, W) -> {"features": (N, D), optionally "logits": (N, K)}."""


def inception_weights(explicit: str | None = None) -> Path:
    """Return a verified local copy of the FID Inception weights, downloading it when needed and possible."""
    given = explicit or os.environ.get("PURRGAN_INCEPTION")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise PurrganError(f"Inception weights file {path} does not exist")
        _check_weights(path)
        return path
    path = cache_dir() / "inception" / INCEPTION_FILE
    if not path.exists():
        try:
            download(INCEPTION_URL, path)
        except DownloadError as error:
            raise PurrganError(f"the FID Inception weights are missing and could not be downloaded ({error.reason}); "
                               f"download {INCEPTION_URL} elsewhere and put it at {path}, or pass --inception-weights "
                               f"PATH (or set PURRGAN_INCEPTION)") from None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(INCEPTION_SHA256_PREFIX):
            path.unlink()
            raise PurrganError(f"the downloaded Inception weights have SHA-256 {digest[:8]}..., expected "
                               f"{INCEPTION_SHA256_PREFIX}...; the file was deleted, try again")
    _check_weights(path)
    return path


def _check_weights(path: Path) -> None:
    # torch-fidelity unpickles the file fully; first make sure it holds nothing but tensors.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means "not a plain weights file"
        raise PurrganError(f"{path} is not a plain PyTorch weights file ({type(error).__name__}); refusing to load it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PurrganError(f"{path} does not hold a state dict of tensors")


class InceptionExtractor:
    name = "inception"

    def __init__(self, weights: str | None = None, device: str | torch.device = "cpu"):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise PurrganError("the Inception metrics need torch-fidelity: pip install torch-fidelity") from None
        path = inception_weights(weights)
        try:
            self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                     feature_extractor_weights_path=str(path)).to(device)
        except RuntimeError as error:
            raise PurrganError(f"{path} is not the FID Inception-v3 weights ({str(error).splitlines()[0]})") from None
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.model(images.to(self.device))
        return {"features": features, "logits": logits}


def load_extractor(spec: str = "inception", weights: str | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Return the extractor named by spec: "inception", or "package.module:factory" for any callable module."""
    if spec == "inception":
        return InceptionExtractor(weights, device)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr) if attr else None
    except Exception:  # noqa: BLE001 - a module that fails to import is "not found" for the user
        factory = None
    if not callable(factory):
        raise PurrganError(f"feature extractor '{spec}' not found or not a factory; use 'inception' or "
                           f"'package.module:factory' naming a function that returns an images-to-vectors module")
    try:
        extractor = factory()
    except Exception as error:  # noqa: BLE001
        raise PurrganError(f"feature extractor factory '{spec}' failed: {type(error).__name__}: {error}") from None
    if not callable(extractor):
        raise PurrganError(f"feature extractor factory '{spec}' returned {type(extractor).__name__}, not a callable module")
    return CheckedExtractor(extractor, spec)


class CheckedExtractor:
    """A user's images-to-vectors module, its outputs checked: a (N, D) tensor is the features (deeper ones are
    flattened), a dict must hold "features" (and "logits" for the Inception Score); anything else is one line."""

    def __init__(self, extractor, spec: str):
        self.extractor, self.spec = extractor, spec
        self.name = str(getattr(extractor, "name", spec.replace(":", ".")))

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        what = f"feature extractor '{self.spec}'"
        try:
            out = self.extractor(images)
        except Exception as error:  # noqa: BLE001 - the user's code: say what it raised, in one line
            raise PurrganError(f"{what} failed on uint8 images {tuple(images.shape)}: {type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else 'no detail'}") from None
        if isinstance(out, torch.Tensor):
            out = {"features": out}
        if not isinstance(out, dict) or not isinstance(out.get("features"), torch.Tensor):
            raise PurrganError(f"{what} returned {type(out).__name__}; return a (N, D) tensor of features, or a dict "
                               f"with a 'features' tensor (and 'logits' for the Inception Score)")
        out = {key: value.flatten(1) if isinstance(value, torch.Tensor) and value.ndim > 2 else value
               for key, value in out.items()}
        if out["features"].ndim != 2 or len(out["features"]) != len(images):
            raise PurrganError(f"{what} returned features of shape {tuple(out['features'].shape)} for {len(images)} "
                               f"images; return one vector per image, (N, D)")
        return out


KEPT = 50_000  # rows of every output kept for KID, IS and precision/recall (the papers' 50k); FID sees every image


class FeatureStats:
    """What the metrics need of an extractor's outputs over a stream of batches, in memory that does not grow with it.

    "features" is summarised exactly, over every image, by its mean and covariance (float64 sums
    around the first batch's mean, which keeps the sums small: no cancellation after millions of
    images); the first `keep` rows of every output are kept as they came, for the metrics that need
    samples (KID, IS, precision/recall).
    """

    def __init__(self, keep: int = KEPT):
        self.keep, self.count = keep, 0
        self.shift = self.total = self.outer = None
        self.kept: dict[str, list[np.ndarray]] = {}

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        features = outputs["features"].detach().to(torch.float64)  # (N, D)
        if self.shift is None:
            self.shift = features.mean(dim=0)
            self.total = torch.zeros_like(self.shift)
            self.outer = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64, device=features.device)
        centred = features - self.shift
        self.total += centred.sum(dim=0)
        self.outer += centred.T @ centred
        room = self.keep - min(self.count, self.keep)
        self.count += len(features)
        if room > 0:
            for key, value in outputs.items():
                self.kept.setdefault(key, []).append(value[:room].detach().cpu().numpy())

    def result(self) -> dict[str, np.ndarray]:
        """Return {"mu", "sigma" (unbiased, as np.cov), "count", and the kept rows of each output}."""
        if self.count == 0:
            raise PurrganError("no images to compute features of")
        mean = self.total / self.count
        sigma = (self.outer - self.count * torch.outer(mean, mean)) / max(self.count - 1, 1)
        if self.count < 2:
            sigma = torch.full_like(sigma, float("nan"))  # a covariance needs two images (the FID then says so)
        return {"mu": (self.shift + mean).cpu().numpy(), "sigma": sigma.cpu().numpy(), "count": np.array(self.count),
                **{key: np.concatenate(parts) for key, parts in self.kept.items()}}


def extract(extractor: FeatureExtractor, batches: Iterable[torch.Tensor], keep: int = KEPT,
            progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Return the FeatureStats result of the extractor's outputs for uint8 batches (N, C, H, W), one batch at a time;
    progress(images done) follows it."""
    stats = FeatureStats(keep)
    for batch in batches:
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)  # Inception expects RGB
        stats.add(extractor(batch))
        if progress:
            progress(stats.count)
    return stats.result()
