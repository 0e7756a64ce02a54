"""Where metrics go besides metrics.csv: TensorBoard (the default), wandb (optional), or nowhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from .errors import PurrganError

LOGGERS = ("tensorboard", "wandb", "none")


class Logger(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def image(self, step: int, tag: str, image: Image.Image) -> None: ...
    def histograms(self, step: int, tensors: dict[str, torch.Tensor]) -> None: ...
    def text(self, step: int, tag: str, text: str) -> None: ...
    def close(self) -> None: ...


def parse_loggers(text: str) -> list[str]:
    """Return the logger names of "tensorboard,wandb" (or "none"), failing on an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise PurrganError(f"unknown logger '{name}'; use any of: {', '.join(LOGGERS)} (comma-separated)")
    return [n for n in names if n != "none"]


class TensorBoardLogger:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PurrganError("the tensorboard logger needs the tensorboard package: pip install tensorboard, "
                               "or use --logger none") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def histograms(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        for tag, tensor in tensors.items():
            self.writer.add_histogram(tag, tensor.detach().float().cpu(), step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise PurrganError("the wandb logger needs wandb: pip install 'purrgan[wandb]' (set WANDB_MODE=offline "
                               "to log without an account)") from None
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "purrgan"), name=run_dir.name, dir=str(run_dir),
                              config=config, mode=os.environ.get("WANDB_MODE"), resume="allow")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def histograms(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        self.run.log({tag: self.wandb.Histogram(t.detach().float().cpu().numpy()) for tag, t in tensors.items()}, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: text}, step=step)

    def close(self) -> None:
        self.run.finish()


def make_loggers(names: list[str], run_dir: Path, config: dict) -> list[Logger]:
    """Return the loggers named, each writing into run_dir."""
    made: list[Logger] = []
    for name in names:
        made.append(TensorBoardLogger(run_dir) if name == "tensorboard" else WandbLogger(run_dir, config))
    return made
