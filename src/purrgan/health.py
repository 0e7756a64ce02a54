"""Health checks that say in plain words when training goes wrong, and what usually helps."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch

from .config import SMALL_DATA

PROBABILITY_LOSSES = ("bce", "bce-saturating", "lsgan")  # D's outputs read as P(real)


@dataclass(frozen=True)
class HealthWarning:
    kind: str  # "d_wins", "nan", "collapse", "blank"
    step: int
    message: str


class TrainingDiverged(Exception):
    """A loss or weight became NaN/Inf; carries the plain-language message."""


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Return the mean L2 distance between distinct images of a batch (N, C, H, W) in [-1, 1], per pixel."""
    flat = images.flatten(1).float()
    distances = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    n = flat.shape[0]
    return float(distances.sum() / max(n * (n - 1), 1))


class HealthMonitor:
    """Watches logged metrics and fixed-noise samples; each kind of warning is raised once per run."""

    def __init__(self, loss_name: str, total_steps: int, real_spread: float, window: int = 8,
                 d_wins_margin: float = 0.02, collapse_fraction: float = 0.15, blank_std: float = 0.02,
                 training_images: int | None = None, augmented: bool = False):
        self.loss_name, self.real_spread = loss_name, real_spread
        self.training_images, self.augmented = training_images, augmented
        # Short: a CPU user's 10-minute run is 400-500 steps, and D can win from step 125 (keras-cifar-catdog).
        self.warmup = min(100, max(total_steps // 10, 1))
        self.window, self.margin = window, d_wins_margin
        self.collapse_fraction, self.blank_std = collapse_fraction, blank_std
        self.recent: deque[dict] = deque(maxlen=window)
        self.raised: set[str] = set()
        self.checked = False  # whether any check has looked yet (none does before the warm-up and a full window)
        self.best_spread = 0.0  # the most diverse the fixed-noise samples have been

    def check_losses(self, step: int, row: dict[str, float]) -> list[HealthWarning]:
        """Return new warnings from one metrics row; raise TrainingDiverged on NaN/Inf."""
        bad = [k for k in ("d_loss", "g_loss") if not math.isfinite(row.get(k, 0.0))]
        if bad:
            raise TrainingDiverged(
                f"{' and '.join(bad)} became {row[bad[0]]} at step {step}: training diverged. "
                f"Lower the learning rates (e.g. --set optim.lr_d=1e-4 --set optim.lr_g=1e-4), "
                f"or resume from the last good checkpoint with --resume")
        self.recent.append(row)
        if step < self.warmup or len(self.recent) < self.window:
            return []
        self.checked = True
        if "d_wins" in self.raised:
            return []
        # Every row of the window, not their mean: early in a DCGAN run D often leads for a few logged steps and G
        # catches up (four runs of the default preset came within 0.005 of the mean's bar at step 225, and one
        # crossed it and cleared 25 steps later); a D that has really won stays ahead (keras-cifar-catdog: 350 steps).
        if self.loss_name in PROBABILITY_LOSSES:
            winning = all(r["d_real"] > 1 - self.margin and r["d_fake"] < self.margin for r in self.recent)
            detail = (f"D(x) stayed above {1 - self.margin:.2f} and D(G(z)) below {self.margin:.2f} (now "
                      f"{row['d_real']:.3f} and {row['d_fake']:.3f})")
        elif self.loss_name == "hinge":
            winning = all(r["d_loss"] < self.margin for r in self.recent)
            detail = f"D's hinge loss stayed below {self.margin} (now {row['d_loss']:.3f})"
        else:
            return []  # a Wasserstein critic has no "winning" level
        if not winning:
            return []
        return [self._raise("d_wins", step,
                            f"D is winning: over the last {len(self.recent)} logged steps {detail}, so G gets almost "
                            f"no useful gradient. What helps: {self._small_set_first()}a lower D learning rate "
                            f"(--set optim.lr_d=1e-4), one-sided label smoothing (--set loss.label_smoothing=0.1), instance "
                            f"noise (--set augment.instance_noise=0.1), or augmentation (--set augment.policy=color,translation,cutout)")]

    def _small_set_first(self) -> str:
        # On a few hundred images D wins by memorising them (best-cats64 on 100 cat faces: D(x) 0.99 by step
        # 2,875 in both seeds; with DiffAugment it never won); what D sees must vary, so that advice comes first.
        if self.training_images is None or self.training_images >= SMALL_DATA:
            return ""
        if self.augmented:
            return (f"with {self.training_images} training images D can memorise them even through the augmentation: "
                    f"all three DiffAugment operations (--set augment.policy=color,translation,cutout), stopping at an "
                    f"earlier checkpoint, ")
        return (f"with {self.training_images} training images D can memorise them: augment what D sees first (--set "
                f"augment.policy=color,translation,cutout; on 100 cat faces D won without it and not with it); else ")

    def check_samples(self, step: int, samples: torch.Tensor) -> list[HealthWarning]:
        """Return new warnings from the fixed-noise samples (N, C, H, W) in [-1, 1]."""
        distance = mean_pairwise_distance(samples)
        # Collapse is a loss of variety G once had (an untrained G's samples all look alike too), so the
        # most varied grid counts from the first one, warm-up included.
        lost = distance < 0.5 * self.best_spread
        self.best_spread = max(self.best_spread, distance)
        if step < self.warmup:
            return []
        self.checked = True
        warnings = []
        spread = float(samples.float().std())
        if spread < self.blank_std and "blank" not in self.raised:
            warnings.append(self._raise("blank", step,
                                        f"the samples are all one colour (pixel std {spread:.4f}) at step {step}. This usually "
                                        f"means G's output saturated: check that images are scaled to [-1, 1] with tanh at "
                                        f"G's end, that BatchNorm is in G, and the N(0, 0.02) init; lower optim.lr_g"))
        if distance < self.collapse_fraction * self.real_spread and lost and "collapse" not in self.raised and "blank" not in self.raised:
            warnings.append(self._raise("collapse", step,
                                        f"mode collapse: the fixed-noise samples are nearly identical (mean distance "
                                        f"{distance:.3f}, real images {self.real_spread:.3f}) at step {step}. What helps: "
                                        f"{self._small_set_first()}a lower G learning rate, more D steps (--set optim.d_steps=2), the hinge or "
                                        f"wgan-gp loss, or augmentation; a collapsed run rarely recovers, resume from an earlier checkpoint"))
        return warnings

    def _raise(self, kind: str, step: int, message: str) -> HealthWarning:
        self.raised.add(kind)
        return HealthWarning(kind, step, message)


def first_non_finite(*modules: torch.nn.Module) -> str | None:
    """Return the name of the first parameter or buffer holding NaN/Inf, or None when all are finite."""
    for module in modules:
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"{type(module).__name__}.{name}"
    return None
