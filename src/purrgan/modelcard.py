"""MODEL.md: what a trained generator is, how it was made, and what it is (not) for."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import __version__
from .config import to_toml


def write_model_card(generator, path: Path, run_dir: Path | None = None, export_format: str | None = None,
                     export_file: str | None = None) -> Path:
    """Write a model card for a TrainedGenerator (of a run folder, or beside an exported file)."""
    config = generator.config
    metrics_file = run_dir / "metrics.json" if run_dir else None
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file and metrics_file.is_file() else {}
    metric_lines = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float)))
    channels, res = config.data.channels, config.data.resolution
    usage = (f"This file is the generator alone, in {export_format} format (`{export_file}`).\n"
             if export_format else "Load it with purrgan: `purrgan.load_generator(\"RUN_DIR\")`.\n")
    lines = [
        f"# Model card: {config.description or config.model.arch} ({config.model.arch}, {res}x{res})",
        "",
        f"Made by purrgan {__version__} on {time.strftime('%Y-%m-%d')}. {usage}",
        "## Interface",
        f"- input `z`: float32 (N, {generator.z_dim}), drawn from a standard normal distribution"
        + (f"\n- input `labels`: int64 (N,), class indices: {', '.join(f'{i} = {c}' for i, c in enumerate(generator.classes))}"
           if generator.classes else ""),
        f"- output `images`: float32 (N, {channels}, {res}, {res}) in [-1, 1]; pixels = (images + 1) * 127.5",
        f"- weights: {'exponential moving average of G' if generator.uses_ema else 'G as trained'}",
        "",
        "## Training",
        f"- data: `{config.data.source}`" + (f", classes {', '.join(config.data.classes)}" if config.data.classes else ""),
        f"- steps: {generator.step} generator updates, batch size {config.train.batch_size}",
        f"- loss: {config.loss.name}; optimiser: {config.optim.name}, lr G {config.optim.lr_g:g} / D {config.optim.lr_d:g}",
        "",
        "## Metrics",
        ("| metric | value |\n|---|---|\n" + metric_lines) if metric_lines else
        "None recorded. Compute them with `purrgan evaluate RUN_DIR` (FID/KID/IS need the Inception weights).",
        "",
        "## Intended use and limits",
        "- For learning, experiments and art with small generated images. It imitates its training data: the",
        "  images show the biases and gaps of that data set, and may reproduce training images closely.",
        "- Not for identifying people or producing images that pass as real photographs of real people.",
        "- The training data's licence applies to what you do with the outputs (see `purrgan data list`).",
        "",
        "## Configuration",
        "```toml",
        to_toml(config).rstrip(),
        "```",
        "",
    ]
    from .checkpoint import write_atomic

    write_atomic(path, "\n".join(lines).encode("utf-8"), "no model card was written")
    return path
