"""Evaluating generators: reference statistics of a data set (computed once, cached) against generated samples."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..data import load_images, split_validation, to_uint8
from ..data.download import cache_dir
from ..errors import PurrganError
from . import METRICS
from .features import FeatureExtractor, extract

log = logging.getLogger(__name__)
REAL_FEATURES_KEPT = 10_000  # real features kept in the cache for KID and precision/recall


def _batches(images: torch.Tensor, size: int = 250):
    for start in range(0, len(images), size):
        yield images[start:start + size]


def reference_statistics(config, split: str, extractor: FeatureExtractor, max_images: int = 50_000,
                         on_phase=None) -> dict[str, np.ndarray]:
    """Return mu, sigma and (up to 10k) features of a run's real images, cached by data set, split and size.

    split: "train" (what the run trains on), "val" (the held-out data.val_fraction) or "all".
    """
    from ..data.prepare import data_fingerprint

    data_config = config.data
    # Keyed on what the images are (the data's fingerprint: files, options, size), not on how the source was typed.
    key = json.dumps([data_fingerprint(data_config.source, data_config.resolution, data_config.channels),
                      list(data_config.classes), split, data_config.val_fraction, data_config.resolution,
                      data_config.channels, extractor.name, max_images])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = cache_dir() / "stats" / f"{extractor.name}-{data_config.resolution}px-{split}-{digest}.safetensors"
    if path.is_file():
        log.info("using cached reference statistics %s", path)
        return load_file(str(path))
    if split not in ("train", "val", "all"):
        raise PurrganError(f"unknown split '{split}'; use train, val or all")
    data = load_images(data_config.source, data_config.resolution, data_config.channels, data_config.classes)
    train_part, val_part = split_validation(data, data_config.val_fraction)
    chosen = {"train": train_part, "val": val_part, "all": data}[split]
    if chosen is None:
        raise PurrganError("--split val needs a held-out part: train with --set data.val_fraction=0.1 (for example)")
    index = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(0))[:max_images]
    log.info("computing reference statistics of %d real images (once; cached in %s)", len(index), path.parent)
    follow = (lambda done: on_phase("reference statistics of the real images", done, len(index))) if on_phase else None
    features = extract(extractor, chosen.batches(index, size=250), keep=REAL_FEATURES_KEPT, progress=follow)
    stats = {"mu": features["mu"], "sigma": features["sigma"], "features": np.ascontiguousarray(features["features"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(stats, str(path), metadata={"key": key})
    return stats


def generated_features(generator, num: int, extractor: FeatureExtractor, seed: int = 0, batch_size: int = 250,
                       on_phase=None) -> dict:
    """Return the FeatureStats of num samples of generator (classes in turn for a conditional one), streamed:
    each batch goes from the generator to the extractor on the device, and only statistics are kept."""
    follow = (lambda done: on_phase("measuring samples", done, num)) if on_phase else None
    return extract(extractor, (to_uint8(images) for images in generator.batches(num, seed=seed, batch_size=batch_size)),
                   progress=follow)


def compute(names: list[str], real: dict, fake: dict) -> dict[str, float]:
    """Return every named metric of real (statistics and features) against fake features."""
    results: dict[str, float] = {}
    for name in names:
        try:
            results.update(METRICS[name](real, fake))
        except ValueError as error:
            raise PurrganError(f"{name}: {error}") from None
    return results


def evaluate_generator(generator, names: list[str], num: int, split: str, extractor: FeatureExtractor,
                       on_phase=None) -> dict[str, float]:
    """Return the metrics of a TrainedGenerator against its training data's reference statistics."""
    real = reference_statistics(generator.config, split, extractor, on_phase=on_phase)
    return compute(names, real, generated_features(generator, num, extractor, on_phase=on_phase))


def evaluate_run(run: str | Path, names: list[str], num: int, split: str, extractor: FeatureExtractor,
                 on_phase=None) -> dict[str, float]:
    """Return the metrics of a run's generator (G_ema when present) and write them to metrics.json in the run."""
    from ..generate import load_generator

    generator = load_generator(run)
    check_extractor(names, extractor)
    if num < COMPARABLE:
        log.warning("%d generated images: below %d FID and KID are biased upwards and not comparable with published "
                    "numbers", num, COMPARABLE)
    results = evaluate_generator(generator, names, num, split, extractor, on_phase)
    folder = Path(run) if Path(run).is_dir() else None
    if folder is not None:
        record = {**results, "step": generator.step, "num": num, "split": split, "extractor": extractor.name,
                  "weights": "ema" if generator.uses_ema else "raw"}
        from ..checkpoint import write_atomic

        write_atomic(folder / "metrics.json", json.dumps(record, indent=2).encode(), "no metrics were saved")
    return results


COMPARABLE = 10_000  # published FID/KID use 50k (at least 10k) samples; fewer give higher, unstable numbers


def evaluate_paths(real: str, fake: str, names: list[str], extractor: FeatureExtractor, resolution: int | None = None) -> dict[str, float]:
    """Return the metrics of two folders, archives or prepared files of images against each other.

    Each is read at its own size (CIFAR stays 32x32 until the Inception network resizes it, as the
    standard protocol does) and decoded in memory: a folder looked at once leaves nothing in the cache.
    """
    from ..data.sources import native_shape, parse_source

    def load(source: str):
        size, channels, _ = native_shape(parse_source(source))
        return load_images(source, resolution or size, channels, cache=False).images

    real_images, fake_images = load(real), load(fake)
    fewest = min(len(real_images), len(fake_images))
    if fewest < COMPARABLE:
        log.warning("only %d images on one side: below %d the numbers are biased upwards and not comparable with "
                    "published ones (use them to compare runs measured alike)", fewest, COMPARABLE)
    return compute(names, extract(extractor, _batches(real_images)), extract(extractor, _batches(fake_images)))


def has_logits(extractor: FeatureExtractor) -> bool:
    """Return whether the extractor gives classifier logits (what the Inception Score needs), by a probe on 2 images."""
    return extractor(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).get("logits") is not None


def check_extractor(names: list[str], extractor: FeatureExtractor) -> None:
    """Fail before any long feature extraction when a metric needs what the extractor does not give (IS: logits)."""
    if "is" in names and not has_logits(extractor):
        raise PurrganError("the Inception Score needs classifier logits, which this feature extractor does not give; "
                           "leave 'is' out of --metrics")


class Evaluator:
    """Metrics during training (the run's own feature extractor and cached reference statistics) and the best FID."""

    def __init__(self, config, device: torch.device, on_phase=None):
        from . import parse_metrics
        from .features import load_extractor

        self.config, self.names = config, parse_metrics(config.train.eval_metrics)
        self.extractor = load_extractor(config.train.feature_extractor, config.train.inception_weights or None, device)
        check_extractor(self.names, self.extractor)
        self.real = reference_statistics(config, config.train.eval_split, self.extractor, on_phase=on_phase)

    def evaluate(self, network: torch.nn.Module, step: int, class_names: list[str]) -> dict[str, float]:
        """Return the metrics of network (G or G_ema) against the reference statistics, in eval mode."""
        from ..generate import TrainedGenerator

        was_training = network.training
        network.eval()
        try:
            generator = TrainedGenerator(network, self.config.model.z_dim,
                                         class_names if self.config.model.conditional != "none" else [], self.config, step)
            return compute(self.names, self.real, generated_features(generator, self.config.train.eval_num, self.extractor))
        finally:
            network.train(was_training)
