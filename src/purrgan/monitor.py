"""What a run shows while it trains: the metrics files, loggers, sample grids, the GIF, loss.png and warnings."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from .data import to_uint8

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "epoch", "d_loss", "g_loss", "d_loss_real", "d_loss_fake", "d_real", "d_fake",
                 "gradient_penalty", "r1_penalty", "images_per_s", "elapsed_s"]


def grid_image(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """Return a PIL image of a grid of images in [-1, 1] (N, C, H, W), square by default."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(to_uint8(images).cpu(), nrow=nrow, padding=2, pad_value=0)  # (3, H', W') uint8
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """Write images in [-1, 1] as one PNG grid and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow).save(path)
    return path


class MetricsWriter:
    """Appends one row per logged step to metrics.csv and metrics.jsonl (the source of truth)."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.csv_path, self.jsonl_path = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
        # On resume, drop rows logged after the checkpoint so the file reads as one uninterrupted run.
        self._truncate_after(resume_step)
        new_csv = not self.csv_path.exists()
        self._csv = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._csv, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if new_csv:
            self._writer.writeheader()
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        if self.jsonl_path.exists():
            rows = [json.loads(line) for line in self.jsonl_path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [row for row in rows if row.get("step", 0) <= step]
            self.jsonl_path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        if self.csv_path.exists():
            with open(self.csv_path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            with open(self.csv_path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(row for row in rows if int(row["step"]) <= step)

    def write(self, row: dict[str, float]) -> None:
        self._writer.writerow({k: _round(v) for k, v in row.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._csv.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Return the rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _round(value: float) -> float:
    return round(value, 6) if isinstance(value, float) else value


def layer_grad_norms(model: torch.nn.Module, prefix: str) -> dict[str, float]:
    """Return the L2 norm of each parameter's gradient ("gradient flow"), tagged grad_norm/<prefix>/<name>."""
    norms = {name: p.grad.detach().norm() for name, p in model.named_parameters() if p.grad is not None}
    values = torch.stack(list(norms.values())).tolist() if norms else []  # one host sync for all layers
    return {f"grad_norm/{prefix}/{name}": value for name, value in zip(norms, values)}


def weights_and_grads(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Return the tensors to histogram: weights/<prefix>/<name> and grads/<prefix>/<name>."""
    out = {}
    for name, p in model.named_parameters():
        out[f"weights/{prefix}/{name}"] = p.detach().cpu()
        if p.grad is not None:
            out[f"grads/{prefix}/{name}"] = p.grad.detach().cpu()
    return out


class RunMonitor:
    """Everything a run shows: metrics files, loggers, grids, the GIF, loss.png, health warnings."""

    def __init__(self, run_dir: Path, config, total_steps: int, resume_step: int, real_images: torch.Tensor):
        from .config import to_dict
        from .health import HealthMonitor, mean_pairwise_distance
        from .loggers import make_loggers, parse_loggers

        self.run_dir, self.config = run_dir, config
        self.metrics = MetricsWriter(run_dir, resume_step)
        self.loggers = make_loggers(parse_loggers(config.train.logger), run_dir, to_dict(config))
        self.health = HealthMonitor(config.loss.name, total_steps, mean_pairwise_distance(real_images))
        self.warnings_path = run_dir / "warnings.jsonl"
        self._truncate_warnings(resume_step)
        for previous in self._read_warnings():  # a resumed run does not repeat what it already said
            self.health.raised.add(previous["kind"])
        save_grid(real_images, run_dir / "real.png")

    def log(self, step: int, row: dict[str, float], extra_scalars: dict[str, float],
            histograms: dict[str, torch.Tensor] | None) -> None:
        """Record one metrics row everywhere and run the loss-based health checks."""
        self.metrics.write(row)
        scalars = {"loss/g": row["g_loss"], "loss/d": row["d_loss"], "loss/d_real": row["d_loss_real"],
                   "loss/d_fake": row["d_loss_fake"], "d_output/real": row["d_real"], "d_output/fake": row["d_fake"],
                   "speed/images_per_s": row["images_per_s"], **extra_scalars}
        scalars.update({f"loss/{k}": v for k, v in row.items() if k in ("gradient_penalty", "r1_penalty")})
        for logger in self.loggers:
            logger.scalars(step, scalars)
            if histograms:
                logger.histograms(step, histograms)
        for warning in self.health.check_losses(step, row):
            self.warn(warning)

    def samples(self, step: int, images: torch.Tensor) -> None:
        """Save the fixed-noise grid (PNG, GIF frame, loggers) and run the sample-based health checks."""
        from .gif import append_frame, captioned

        image = grid_image(images)
        path = self.run_dir / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        append_frame(self.run_dir / "progress.gif", captioned(image, f"step {step}"))
        for logger in self.loggers:
            logger.image(step, "samples/fixed_noise", image)
        for warning in self.health.check_samples(step, images):
            self.warn(warning)

    def evaluation(self, step: int, results: dict[str, float]) -> None:
        """Record metrics computed during training: eval.csv and the loggers."""
        path = self.run_dir / "eval.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *results])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **{k: round(v, 6) for k, v in results.items()}})
        for logger in self.loggers:
            logger.scalars(step, {f"metrics/{k}": v for k, v in results.items()})
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))

    def warn(self, warning) -> None:
        log.warning("%s", warning.message)
        with open(self.warnings_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": warning.kind, "step": warning.step, "message": warning.message}) + "\n")
        for logger in self.loggers:
            logger.text(warning.step, f"warnings/{warning.kind}", warning.message)

    def checkpointed(self) -> None:
        from .plots import plot_losses

        plot_losses(read_metrics(self.run_dir), self.run_dir / "loss.png")

    def close(self) -> None:
        self.metrics.close()
        for logger in self.loggers:
            logger.close()

    def _read_warnings(self) -> list[dict]:
        if not self.warnings_path.exists():
            return []
        return [json.loads(line) for line in self.warnings_path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _truncate_warnings(self, step: int) -> None:
        if self.warnings_path.exists():
            kept = [w for w in self._read_warnings() if w["step"] <= step]
            self.warnings_path.write_text("".join(json.dumps(w) + "\n" for w in kept), encoding="utf-8")


class NullMonitor:
    """What ranks other than 0 use: they train but show and write nothing."""

    def log(self, *args, **kwargs) -> None: ...
    def samples(self, *args, **kwargs) -> None: ...
    def evaluation(self, *args, **kwargs) -> None: ...
    def warn(self, *args, **kwargs) -> None: ...
    def checkpointed(self) -> None: ...
    def close(self) -> None: ...
