"""What a finished run leaves behind, made in one place after the loop: the final grid, the report, the
model card and, for a per-class run, one stand-alone generator per class."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from . import checkpoint
from .config import Config, to_dict
from .generate import TrainedGenerator, fixed_noise, sample_fixed
from .monitor import save_grid


def finish_run(run_dir: Path, config: Config, sampler: nn.Module, class_names: list[str], step: int,
               uses_ema: bool) -> Path:
    """Write samples/final.png, report.html, MODEL.md (and generators/<class>.safetensors); return the grid's path."""
    from .modelcard import write_model_card
    from .report import write_report

    device = next(sampler.parameters()).device
    final = save_grid(sample_fixed(sampler, *fixed_noise(config, device)), run_dir / "samples" / "final.png")
    write_report(run_dir)
    classes = class_names if config.model.conditional != "none" else []
    trained = TrainedGenerator(sampler, config.model.z_dim, classes, config, step, uses_ema=uses_ema)  # no reload from disk
    write_model_card(trained, run_dir / "MODEL.md", run_dir=run_dir)
    if config.model.conditional == "per-class":
        export_members(sampler, config, class_names, step, run_dir / "generators")
    return final


def export_members(generator: nn.Module, config: Config, class_names: list[str], step: int, folder: Path) -> None:
    """Write one stand-alone, unconditional checkpoint per class, loadable by `purrgan sample` on its own."""
    member_config = replace(config, model=replace(config.model, conditional="none", num_classes=0))
    for name, member in zip(class_names, generator.members):
        state = {"step": step, "config": to_dict(member_config), "class_names": [], "generator": member.state_dict()}
        checkpoint.write_atomic(folder / f"{name}.safetensors", checkpoint.encode(state))
