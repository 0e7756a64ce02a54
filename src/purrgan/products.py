"""What a finished run leaves behind, made in one place after the loop: the final grid, the report, the
model card and, for a per-class run, one stand-alone generator per class."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .config import Config, to_dict
from .errors import PurrganError
from .generate import TrainedGenerator, fixed_noise, sample_fixed
from .monitor import save_grid

log = logging.getLogger(__name__)


def finish_run(run_dir: Path, config: Config, sampler: nn.Module, class_names: list[str], step: int,
               uses_ema: bool, data=None) -> Path:
    """Write samples/final.png, the memorisation check, report.html, MODEL.md (and generators/<class>.safetensors)."""
    from .modelcard import write_model_card
    from .report import write_report

    device = next(sampler.parameters()).device
    final = run_dir / "samples" / "final.png"
    classes = class_names if config.model.conditional != "none" else []
    trained = TrainedGenerator(sampler, config.model.z_dim, classes, config, step, uses_ema=uses_ema)  # no reload from disk
    was_training = sampler.training
    sampler.eval()
    try:  # each product on its own: a full disk here loses none of the training, which the checkpoint holds
        _make("samples/final.png", lambda: save_grid(sample_fixed(sampler, *fixed_noise(config, device)), final))
        if classes:  # one row per class
            _make("samples/classes.png", lambda: save_grid(
                torch.cat([trained.sample(8, seed=0, class_name=name) for name in classes]),
                run_dir / "samples" / "classes.png", nrow=8, rows=classes))
        if data is not None:
            _make("the memorisation check", lambda: check_memorisation(trained, data, run_dir))
    finally:
        sampler.train(was_training)
    _make("report.html", lambda: write_report(run_dir))
    _make("MODEL.md", lambda: write_model_card(trained, run_dir / "MODEL.md", run_dir=run_dir))
    if config.model.conditional == "per-class":
        _make("generators/<class>.safetensors (export them later with purrgan export)",
              lambda: export_members(sampler, config, class_names, step, run_dir / "generators"))
    return final


def _make(what: str, action) -> None:
    try:
        action()
    except (OSError, PurrganError) as error:
        log.warning("could not write %s (%s); the trained model is safe in the checkpoint", what,
                    getattr(error, "strerror", None) or error)


def check_memorisation(generator: TrainedGenerator, data, run_dir: Path, samples: int = 256,
                       most: int = 50_000) -> dict:
    """Write memorisation.json and samples/nearest.png: the 8 samples most like one training image (the likeliest
    copies), each beside its 3 nearest training images."""
    from .checkpoint import write_atomic
    from .memorisation import memorisation

    from .data import to_float
    from .memorisation import nearest, pixel_embedding

    # At most a fixed random part of a large set (stated in the result), embedded in chunks: the set's pixels are
    # never all in memory (50,000 images at 64x64 are 2.4 GB as floats), only their 16x16 embeddings (150 MB).
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:most]
    support = torch.cat([pixel_embedding(images) for images in data.batches(chosen, size=1024)])
    fake = generator.sample(samples, seed=0)
    result = memorisation(fake, support=support)
    shown = fake[result["closest"]]
    _, index = nearest(pixel_embedding(shown), support, k=3)  # (8, 3) positions in chosen
    rows = [torch.cat([shown[i:i + 1], to_float(data.batch(chosen[index[i]]))]) for i in range(len(index))]
    save_grid(torch.cat(rows), run_dir / "samples" / "nearest.png", nrow=4)
    write_atomic(run_dir / "memorisation.json", json.dumps(result, indent=1).encode(), "nothing else was changed")
    return result


def export_members(generator: nn.Module, config: Config, class_names: list[str], step: int, folder: Path) -> None:
    """Write one stand-alone, unconditional checkpoint per class, loadable by `purrgan sample` on its own."""
    member_config = replace(config, model=replace(config.model, conditional="none", num_classes=0))
    for name, member in zip(class_names, generator.members):
        target = folder / f"{name}.safetensors"
        if target.resolve().parent != folder.resolve():  # class names come from data: never write outside the folder
            raise PurrganError(f"class name {name!r} cannot be a file name in {folder}")
        state = {"step": step, "config": to_dict(member_config), "class_names": [], "generator": member.state_dict()}
        checkpoint.write_atomic(target, checkpoint.encode(state), "the run's checkpoints are untouched")
