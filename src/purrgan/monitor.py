"""What a run leaves behind to be looked at: the metrics file and fixed-noise sample grids."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from .data import to_uint8

METRIC_FIELDS = ["step", "epoch", "d_loss", "g_loss", "d_loss_real", "d_loss_fake", "d_real", "d_fake",
                 "images_per_s", "elapsed_s"]


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
