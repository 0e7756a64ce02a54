"""What a run shows while it trains: the metrics files, loggers, sample grids, the GIF, loss.png and warnings.

Statistics are open-ended: whatever name a loss, a regulariser or the augmentation reports becomes a
column of metrics.csv and a TensorBoard tag. Everything the monitor writes can be rewound to a step
(a NaN roll-back or a resume), so no row or frame is ever duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from .data import to_uint8

log = logging.getLogger(__name__)

FIRST_FIELDS = ["step", "epoch", "d_loss", "g_loss", "d_loss_real", "d_loss_fake", "d_real", "d_fake"]
LAST_FIELDS = ["images_per_s", "elapsed_s"]
TAGS = {"g_loss": "loss/g", "d_loss": "loss/d", "d_loss_real": "loss/d_real", "d_loss_fake": "loss/d_fake",
        "d_real": "d_output/real", "d_fake": "d_output/fake", "images_per_s": "speed/images_per_s"}


def tag(name: str) -> str:
    """Return the logger tag of a statistic: the classic names keep their tags, penalties go under loss/."""
    if name in TAGS:
        return TAGS[name]
    if "/" in name:
        return name
    return f"loss/{name}" if name.endswith(("_penalty", "_loss")) else f"train/{name}"


def grid_image(images: torch.Tensor, nrow: int | None = None, columns: list[str] | None = None,
               rows: list[str] | None = None) -> Image.Image:
    """Return a PIL image of a grid of images in [-1, 1] (N, C, H, W), square by default.

    columns / rows: names written above each column / left of each row (a class per column or per row).
    """
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(to_uint8(images).cpu(), nrow=nrow, padding=2, pad_value=0)  # (3, H', W') uint8
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy())
    return _labelled(picture, images.shape[-1] + 2, columns, rows) if columns or rows else picture


def _labelled(grid: Image.Image, cell: int, columns: list[str] | None, rows: list[str] | None) -> Image.Image:
    """Return grid with a strip of names above its columns and/or left of its rows (PIL's built-in 6x11 font)."""
    from PIL import ImageDraw, ImageFont

    font, char = ImageFont.load_default(), 6
    left = min(max(len(n) for n in rows) * char + 6, 160) if rows else 0
    top = 14 if columns else 0
    out = Image.new("RGB", (grid.width + left, grid.height + top), (255, 255, 255))
    out.paste(grid, (left, top))
    draw = ImageDraw.Draw(out)
    for index, name in enumerate(columns or []):
        fits = max((cell - 2) // char, 1)  # a narrow column shows the start of a long name
        draw.text((left + index * cell + 2, 1), name[:fits], fill=(0, 0, 0), font=font)
    for index, name in enumerate(rows or []):
        draw.text((2, top + index * cell + cell // 2 - 6), name[:(left - 6) // char], fill=(0, 0, 0), font=font)
    return out


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, columns: list[str] | None = None,
              rows: list[str] | None = None) -> Path:
    """Write images in [-1, 1] as one grid picture (atomically: never a half-written one) and return its path."""
    save_image(grid_image(images, nrow, columns, rows), path)
    return path


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def save_image(image: Image.Image, path: Path) -> None:
    """Write a PIL image atomically in the format its name says (.png, .jpg, .webp, .bmp); PurrganError (one line)
    for another name or a path that cannot be written."""
    import io

    from .checkpoint import write_atomic
    from .errors import PurrganError

    path = Path(path)
    if path.is_dir():
        raise PurrganError(f"{path} is a folder; give a file name ending in .png")
    image_format = IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise PurrganError(f"{path}: give a picture file name ending in {', '.join(IMAGE_FORMATS)}")
    buffer = io.BytesIO()
    (image.convert("RGB") if image_format == "JPEG" and image.mode not in ("RGB", "L") else image).save(buffer, image_format)
    write_atomic(path, buffer.getvalue(), "nothing else was changed")


# ---------------------------------------------------------------- metrics files


def read_jsonl(path: Path) -> list[dict]:
    """Return the rows of a JSON-lines file, skipping a last line cut off by a crash or a full disk."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Return the rows of a run's metrics.jsonl."""
    return [row for row in read_jsonl(Path(run_dir) / "metrics.jsonl") if isinstance(row.get("step"), (int, float))]


def _columns(rows: list[dict]) -> list[str]:
    names = [k for k in FIRST_FIELDS if any(k in r for r in rows)]
    for row in rows:
        names += [k for k in row if k not in names and k not in LAST_FIELDS]
    return names + [k for k in LAST_FIELDS if any(k in r for r in rows)]


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


class MetricsWriter:
    """metrics.jsonl (the source of truth) and metrics.csv, one row per logged step; any new name becomes a column."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.csv_path, self.jsonl_path = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
        self.rows = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
        self._rewrite()

    def _rewrite(self) -> None:
        # Both files are rebuilt from the kept rows (a rewind, a repaired last line or a new column), atomically.
        from .checkpoint import write_atomic

        self.columns = _columns(self.rows)
        write_atomic(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in self.rows).encode(), "metrics unchanged")
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _round(v) for k, v in row.items()} for row in self.rows)
        write_atomic(self.csv_path, table.getvalue().encode(), "metrics unchanged")

    def rewind(self, step: int) -> None:
        self.rows = [r for r in self.rows if r["step"] <= step]
        self._rewrite()

    def write(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if any(k not in self.columns for k in row):
            self._rewrite()
            return
        with open(self.jsonl_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n").writerow(
                {k: _round(v) for k, v in row.items()})


def layer_grad_norms(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Return the gradient flow of each parameter as 0-dim tensors: its L2 norm (grad_norm/<prefix>/<name>) and,
    for weights, the mean and max of |grad| (grad_mean/..., grad_max/...: the per-layer chart in the report)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        grad = p.grad.detach()
        out[f"grad_norm/{prefix}/{name}"] = grad.norm()
        if p.dim() > 1:
            out[f"grad_mean/{prefix}/{name}"] = grad.abs().mean()
            out[f"grad_max/{prefix}/{name}"] = grad.abs().max()
    return out


def weights_and_grads(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Return the tensors to histogram: weights/<prefix>/<name> and grads/<prefix>/<name>."""
    out = {}
    for name, p in model.named_parameters():
        out[f"weights/{prefix}/{name}"] = p.detach().cpu()
        if p.grad is not None:
            out[f"grads/{prefix}/{name}"] = p.grad.detach().cpu()
    return out


class RunMonitor:
    """Everything a run shows: metrics files, loggers, grids, the GIF, loss.png, health warnings.

    Creating it starts the loggers (which can fail, e.g. wandb without credentials) and writes nothing
    else; start() then rewinds the run's files to the step training continues from.
    """

    def __init__(self, run_dir: Path, config, total_steps: int, resume_step: int, real_images: torch.Tensor,
                 summary: dict | None = None):
        from .config import active_loggers, to_dict
        from .health import HealthMonitor, mean_pairwise_distance
        from .loggers import make_loggers

        self.run_dir, self.config, self.real_images = run_dir, config, real_images
        self.loggers = make_loggers(active_loggers(config), run_dir, to_dict(config), resume_step)
        self.health = HealthMonitor(config.loss.name, total_steps, mean_pairwise_distance(real_images),
                                    training_images=(summary or {}).get("data", {}).get("images"),
                                    augmented=config.augment.varies_inputs)
        self.warnings_path = run_dir / "warnings.jsonl"
        self.metrics: MetricsWriter | None = None
        self.resume_step, self.summary = resume_step, summary or {}
        self.failed: set[str] = set()

    def _guarded(self, what: str, action) -> None:
        """Run one side write; a full disk or a vanished folder warns once and training goes on (checkpoints matter)."""
        from .errors import PurrganError

        try:
            action()
        except (OSError, PurrganError) as error:
            if what not in self.failed:
                self.failed.add(what)
                reason = getattr(error, "strerror", None) or str(error)
                log.warning("could not write %s (%s); training goes on without it", what, reason)

    def start(self) -> None:
        """Rewind every file to the step training continues from and show the real images."""
        self.metrics = MetricsWriter(self.run_dir, self.resume_step)
        self._rewind_files(self.resume_step)
        for previous in read_jsonl(self.warnings_path):  # a resumed run does not repeat what it already said
            self.health.raised.add(previous.get("kind"))
        self._guarded("real.png", lambda: save_grid(self.real_images, self.run_dir / "real.png"))
        if self.summary:  # the data and the environment, for the report
            self._guarded("run.json", lambda: _write_json(self.run_dir / "run.json", self.summary))

    def rewind(self, step: int) -> None:
        """Forget everything logged after step (a roll-back): rows, frames, grids, evaluations, logger events."""
        self.metrics.rewind(step)
        self._rewind_files(step)
        for logger in self.loggers:
            logger.rewind(step)

    def _rewind_files(self, step: int) -> None:
        from .gif import repair

        from .checkpoint import write_atomic

        kept = [w for w in read_jsonl(self.warnings_path) if isinstance(w.get("step", 0), int) and w.get("step", 0) <= step]
        if self.warnings_path.exists():
            write_atomic(self.warnings_path, "".join(json.dumps(w) + "\n" for w in kept).encode(), "warnings unchanged")
        repair(self.run_dir / "progress.gif", keep_through_step=step)
        for grid in (self.run_dir / "samples").glob("step-*.png"):
            if grid.stem[5:].isdigit() and int(grid.stem[5:]) > step:
                grid.unlink()
        self._rebuild_frames(step)
        evaluations = self.run_dir / "eval.csv"
        if evaluations.is_file():
            with open(evaluations, newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle) if (r.get("step") or "").isdigit() and int(r["step"]) <= step]
            if rows:
                table = io.StringIO()
                writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
                write_atomic(evaluations, table.getvalue().encode(), "evaluations unchanged")
            else:
                evaluations.unlink()

    def _rebuild_frames(self, step: int) -> None:
        # Frames a crash cut off the GIF come back from the grids saved beside it.
        from .gif import append_frame, captioned, frames

        gif = self.run_dir / "progress.gif"
        present = [f.step for f in frames(gif.read_bytes())] if gif.exists() else []
        last = max((s for s in present if s is not None), default=-1)
        grids = sorted((int(p.stem[5:]), p) for p in (self.run_dir / "samples").glob("step-*.png") if p.stem[5:].isdigit())
        for grid_step, path in grids:
            if last < grid_step <= step:
                with Image.open(path) as image:
                    append_frame(gif, captioned(image.convert("RGB"), f"step {grid_step}"), step=grid_step)

    def log(self, step: int, row: dict[str, float], extra_scalars: dict[str, float],
            histograms: dict[str, torch.Tensor] | None) -> None:
        """Record one metrics row everywhere (every name in it) and run the loss-based health checks."""
        self._guarded("metrics.csv and metrics.jsonl", lambda: self.metrics.write(row))
        scalars = {tag(k): v for k, v in row.items() if k not in ("step", "epoch", "elapsed_s")}
        flow = {k: v for k, v in extra_scalars.items() if k.startswith(("grad_mean/", "grad_max/"))}
        scalars.update({k: v for k, v in extra_scalars.items() if k not in flow})
        if flow:  # the last gradient flow, for the report's per-layer chart
            self._guarded("gradient_flow.json", lambda: _write_json(self.run_dir / "gradient_flow.json",
                                                                    {"step": step, **flow}))
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
        self._guarded("the sample grids", lambda: save_image(image, self.run_dir / "samples" / f"step-{step:06d}.png"))
        self._guarded("progress.gif", lambda: append_frame(self.run_dir / "progress.gif", captioned(image, f"step {step}"),
                                                           step=step))
        for logger in self.loggers:
            logger.image(step, "samples/fixed_noise", image)
        for warning in self.health.check_samples(step, images):
            self.warn(warning)

    def frame(self, step: int, images: torch.Tensor) -> None:
        """Add a timelapse frame outside the sampling schedule (the untrained G at step 0, the last step of the run)."""
        from .gif import append_frame, captioned

        self._guarded("progress.gif", lambda: append_frame(self.run_dir / "progress.gif",
                                                           captioned(grid_image(images), f"step {step}"), step=step))

    def evaluation(self, step: int, results: dict[str, float]) -> None:
        """Record metrics computed during training: eval.csv and the loggers."""
        def write() -> None:
            path = self.run_dir / "eval.csv"
            new = not path.exists()
            with open(path, "a", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=["step", *results])
                if new:
                    writer.writeheader()
                writer.writerow({"step": step, **{k: round(v, 6) for k, v in results.items()}})

        self._guarded("eval.csv", write)
        for logger in self.loggers:
            logger.scalars(step, {f"metrics/{k}": v for k, v in results.items()})
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))

    def warn(self, warning) -> None:
        log.warning("%s", warning.message)

        def write() -> None:
            with open(self.warnings_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"kind": warning.kind, "step": warning.step, "message": warning.message}) + "\n")

        self._guarded("warnings.jsonl", write)
        for logger in self.loggers:
            logger.text(warning.step, f"warnings/{warning.kind}", warning.message)

    def finish(self, step: int, total_steps: int, seconds: float, sessions: int) -> None:
        """Record how far the run got, in run.json (the report's header): its step, its training time over all sessions,
        and whether the health checks had a chance to look."""
        self.summary["run"] = {"step": step, "total_steps": total_steps, "stopped": step < total_steps,
                               "training_seconds": round(seconds, 1), "sessions": sessions,
                               "health_checked": self.health.checked, "health_checks_from": self.health.warmup}
        self._guarded("run.json", lambda: _write_json(self.run_dir / "run.json", self.summary))

    def checkpointed(self) -> None:
        from .plots import plot_losses

        self._guarded("loss.png", lambda: plot_losses(self.metrics.rows if self.metrics else read_metrics(self.run_dir),
                                                      self.run_dir / "loss.png"))

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _write_json(path: Path, value: dict) -> None:
    from .checkpoint import write_atomic

    write_atomic(path, json.dumps(value, indent=1).encode(), "nothing else was changed")


class NullMonitor:
    """What ranks other than 0 use: they train but show and write nothing."""

    def start(self) -> None: ...
    def rewind(self, step: int) -> None: ...
    def log(self, *args, **kwargs) -> None: ...
    def samples(self, *args, **kwargs) -> None: ...
    def frame(self, *args, **kwargs) -> None: ...
    def evaluation(self, *args, **kwargs) -> None: ...
    def warn(self, *args, **kwargs) -> None: ...
    def finish(self, *args, **kwargs) -> None: ...
    def checkpointed(self) -> None: ...
    def close(self) -> None: ...
