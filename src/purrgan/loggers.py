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
    def rewind(self, step: int) -> None: ...
    def close(self) -> None: ...


def parse_loggers(names) -> list[str]:
    """Return the logger names of ("tensorboard", "wandb") or "tensorboard,wandb" ("none" dropped), failing on an unknown one."""
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise PurrganError(f"unknown logger '{name}'; use any of: {', '.join(LOGGERS)} (comma-separated)")
    return [n for n in names if n != "none"]


class TensorBoardLogger:
    def __init__(self, run_dir: Path, resume_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PurrganError("the tensorboard logger needs the tensorboard package: pip install tensorboard, "
                               "or use --logger none") from None
        self.SummaryWriter, self.folder = SummaryWriter, str(run_dir / "tensorboard")
        self.writer = self._open(resume_step)

    def _open(self, step: int):
        # purge_step: TensorBoard hides the events a crashed or rolled-back run logged after the step it continues from.
        return self.SummaryWriter(log_dir=self.folder, purge_step=step + 1 if step else None)

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

    def rewind(self, step: int) -> None:
        self.writer.close()
        self.writer = self._open(step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict, resume_step: int = 0):
        try:
            import wandb
        except ImportError:
            raise PurrganError("the wandb logger needs wandb: pip install 'purrgan[wandb]' (set WANDB_MODE=offline "
                               "to log without an account)") from None
        self.wandb = wandb
        check_wandb_credentials()
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "purrgan"), name=run_dir.name, dir=str(run_dir),
                                  config=config, mode=os.environ.get("WANDB_MODE"), resume="allow")
        except Exception as error:  # noqa: BLE001 - wandb raises its own types for login, network and quota
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise PurrganError(f"wandb could not start ({first}); run `wandb login`, or set WANDB_MODE=offline to log "
                               f"without an account, or use --logger tensorboard") from None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def histograms(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        self.run.log({tag: self.wandb.Histogram(t.detach().float().cpu().numpy()) for tag, t in tensors.items()}, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: text}, step=step)

    def rewind(self, step: int) -> None:
        pass  # wandb keeps its history; it ignores steps it has already seen

    def close(self) -> None:
        try:
            self.run.finish(quiet=True)  # no summary table with a sparkline per logged name
        except TypeError:
            self.run.finish()


def check_wandb_credentials() -> None:
    """Raise PurrganError before anything is written when wandb would have to ask for a login."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "wandb" in netrc.read_text(errors="replace"):
            return
    except OSError:
        pass
    raise PurrganError("wandb has no credentials here: run `wandb login` (or set WANDB_API_KEY), or set "
                       "WANDB_MODE=offline to log without an account, or use --logger tensorboard")


def make_loggers(names: list[str], run_dir: Path, config: dict, resume_step: int = 0) -> list[Logger]:
    """Return the loggers named, each writing into run_dir (wandb first: it is the one that can refuse to start)."""
    made: list[Logger] = []
    for name in sorted(names, key=lambda n: n != "wandb"):
        made.append(WandbLogger(run_dir, config, resume_step) if name == "wandb" else TensorBoardLogger(run_dir, resume_step))
    return made
