"""Training from Python (a notebook, a script) as `purrgan train` trains from a shell: the same Config from the
same inputs, the same messages, a progress bar, the latest grid shown in a notebook, and a clean stop on an
interrupt that leaves a resumable checkpoint.

    import purrgan
    run = purrgan.train(data="cats.zip", preset="best-cats64", max_minutes=15, out="runs/cats")
    run.samples(16)                      # a grid of 16 new samples (a PIL image: a notebook shows it)
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import PurrganError

# The options both ways of training take, and the config key each sets.
OPTIONS = {"data": "data.source", "steps": "train.steps", "epochs": "train.epochs", "batch_size": "train.batch_size",
           "seed": "train.seed", "device": "train.device", "logger": "train.logger", "eval_every": "train.eval_every",
           "eval_num": "train.eval_num", "inception_weights": "train.inception_weights", "max_minutes": "train.max_minutes"}
POSITIVE = ("steps", "epochs", "batch_size", "eval_num", "max_minutes")


def run_config(preset: str | None = None, config: str | Path | None = None, out: str | Path | None = None,
               resume: bool = False, overrides: dict[str, Any] | None = None,
               spell: Callable[[str], str] = lambda name: "resume=True" if name == "resume" else name, **options: Any):
    """Return (Config, run folder) for a training: what `purrgan train` and purrgan.train() both build.

    options are those of OPTIONS (data, steps, epochs, max_minutes, ...), None meaning "not given";
    overrides are dotted keys (`{"model.g_width": 32}`). With resume and neither preset nor config, the
    run folder's own config.toml is the base. A time budget (max_minutes) belongs to one session: a
    resumed run trains to its end unless given a new one. spell(name) is how a message names an
    option (`--max-minutes` on the command line).
    """
    from .config import DEFAULT_PRESET, load_config

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise PurrganError(f"unknown option {unknown[0]!r}; valid ones: {', '.join(OPTIONS)} (or overrides={{...}})")
    for name in POSITIVE:
        value = options.get(name)
        if value is not None and not value > 0:
            raise PurrganError(f"{spell(name)} must be positive, got {value}")
    values = dict(overrides or {})
    values.update({OPTIONS[name]: value for name, value in options.items() if value is not None})  # named options win
    base = preset or (Path(config).stem if config else DEFAULT_PRESET)
    out = Path(out) if out else Path("runs") / base
    if resume and not preset and not config:
        if not (out / "config.toml").is_file():
            raise PurrganError(f"nothing to resume in {out}: it has no config.toml; train there first without "
                               f"{spell('resume')}")
        values.setdefault("train.max_minutes", 0.0)  # the last session's budget is not this one's
        return load_config(config_file=out / "config.toml", overrides=values), out
    return load_config(preset, config, values), out


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, say: Callable[[str], None]):
    """While inside, Ctrl-C (or a kernel interrupt), SIGTERM and SIGHUP (a closed terminal or SSH session) set stop:
    training finishes its step and writes a checkpoint. A second Ctrl-C quits at once. Outside the main
    thread (where Python allows no signal handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def request_stop(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        stop.set()
        say(f"{signal.Signals(signum).name} received: finishing this step and writing a checkpoint"
            + (" (press Ctrl-C again to quit at once)" if signum == signal.SIGINT else ""))

    for sig in signals:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ProgressBar:
    """The training bar: steps, D's and G's losses, D(x), D(G(z)) and images/s; with a time budget, its total and
    time left follow the budget (the steps it will reach at the current speed), not the run's last step."""

    def __init__(self, max_minutes: float = 0.0, enabled: bool = True):
        self.budget_s, self.enabled = max_minutes * 60, enabled
        self.bar, self.shown, self.started, self.first = None, None, 0.0, 0

    def __call__(self, step: int, total: int, row: dict[str, float] | None, finished: bool = False) -> None:
        from tqdm.auto import tqdm

        if not self.enabled:
            return
        if self.bar is None:  # starts at the step training continues from: rate and time left count this session only
            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, desc="train")
            self.started, self.first = time.monotonic(), step
        if self.budget_s and step > self.first:
            rate = (step - self.first) / max(time.monotonic() - self.started, 1e-9)
            self.bar.total = min(total, max(step, int(self.first + rate * self.budget_s)))
        self.bar.update(step - self.bar.n)
        if row is not None and row is not self.shown:
            self.shown = row
            self.bar.set_postfix_str(f"D {row['d_loss']:.3f}  G {row['g_loss']:.3f}  D(x) {row.get('d_real', 0):.2f}  "
                                     f"D(G(z)) {row.get('d_fake', 0):.2f}  {row['images_per_s']:.0f} img/s", refresh=False)
        if finished:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Run:
    """A finished (or stopped) training: where it is, how far it got, and its generator."""
    dir: Path
    steps: int
    total_steps: int
    stopped: bool
    checkpoint: Path

    @property
    def generator(self):
        """The trained generator (G_ema when the run keeps one), loaded from the run's newest checkpoint."""
        from .generate import load_generator

        return load_generator(self.dir)

    def samples(self, n: int = 16, seed: int | None = None, class_name: str | None = None, nrow: int | None = None):
        """Return a grid of n new samples as a PIL image (a notebook shows it; .save("grid.png") writes it)."""
        from .monitor import grid_image

        return grid_image(self.generator.sample(n, seed=seed, class_name=class_name), nrow=nrow)

    def image(self, name: str = "samples/final.png"):
        """Return one of the run's pictures (samples/final.png, loss.png, progress.gif, ...) as a PIL image."""
        from PIL import Image

        path = self.dir / name
        if not path.is_file():
            raise PurrganError(f"{path} does not exist (the run writes samples/, loss.png, progress.gif and real.png)")
        with Image.open(path) as image:
            image.load()
            return image

    def interpolate(self, rows: int = 4, steps: int = 8, seed: int = 0, spherical: bool = True, class_name: str | None = None):
        """Return a grid of rows walks between random latents, steps images each, as a PIL image."""
        from .generate import interpolation_grid
        from .monitor import grid_image

        return grid_image(interpolation_grid(self.generator, rows, steps, seed, spherical, class_name), nrow=steps)

    def export(self, path: str | Path, format: str | None = None) -> Path:
        """Write the generator alone as ONNX, TorchScript or safetensors (from path's extension: .onnx, .pt, .safetensors)."""
        from .export import export

        path = Path(path)
        chosen = format or {".onnx": "onnx", ".pt": "torchscript", ".safetensors": "safetensors"}.get(path.suffix.lower())
        if chosen is None:
            raise PurrganError(f"{path}: name the file .onnx, .pt (TorchScript) or .safetensors, or give format=")
        return export(self.generator, chosen, path)

    @property
    def report(self) -> Path:
        """The run's report.html (open it in a browser)."""
        return self.dir / "report.html"

    def __repr__(self) -> str:
        state = f"stopped at step {self.steps:,} of {self.total_steps:,}" if self.stopped else f"{self.steps:,} steps"
        return f"Run({str(self.dir)!r}, {state})"


def train(data: str | None = None, preset: str | None = None, out: str | Path | None = None, *,
          config: str | Path | None = None, resume: bool = False, overrides: dict[str, Any] | None = None,
          progress: bool = True, show: bool = True, **options: Any) -> Run:
    """Train a GAN as `purrgan train` does and return the Run.

    data, preset, out, config, resume: as the command's options; further options are steps, epochs,
    max_minutes, batch_size, seed, device, logger, eval_every, eval_num, inception_weights, and
    overrides takes any config key (`{"model.g_width": 32}`). progress shows a bar (a notebook bar in
    Jupyter); show displays the latest sample grid in a notebook as training makes it. An interrupt
    (the notebook's stop button, Ctrl-C) finishes the step and writes a checkpoint: continue with
    train(out=..., resume=True).
    """
    import logging

    from .loop import train as run_training

    config_, out = run_config(preset, config, out, resume, overrides, data=data, **options)
    _show_messages(logging.getLogger("purrgan"))
    bar = ProgressBar(config_.train.max_minutes, progress)
    grids = _InlineGrids(out) if show and _in_notebook() else None

    def on_progress(step: int, total: int, row, finished: bool) -> None:
        bar(step, total, row, finished)
        if grids is not None:
            grids.update(step)

    stop = threading.Event()
    log = logging.getLogger("purrgan")
    try:
        with stop_on_signals(stop, log.info), bar_safe_logging():
            given = {"data": data, "preset": preset, "out": str(out), "config": config, "resume": resume or None,
                     "overrides": overrides, **options}
            call = "purrgan.train(" + ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None) + ")"
            result = run_training(config_, out, resume=resume, on_progress=on_progress, stop=stop,
                                  on_phase=PhaseBars(progress), command=call)
    finally:
        bar.close()
    if result.stopped:
        log.info("stopped at step %d of %d with a checkpoint; continue with: purrgan.train(out=%r, resume=True)",
                 result.steps, result.total_steps, str(out))
    return Run(out, result.steps, result.total_steps, result.stopped, result.checkpoint)


class PhaseBars:
    """on_phase(what, done, total) for training: a bar (files/s, time left) for each long phase, gone when it ends."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bars = enabled, {}

    def __call__(self, what: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if not self.enabled:
            return
        if what not in self.bars:
            if done >= total:
                return  # nothing to wait for: an up-to-date cache, say
            unit = "file" if what.startswith("preparing") else "step" if what.startswith("measuring bf16") else "image"
            self.bars[what] = tqdm(total=total, initial=done, desc=what, unit=unit, dynamic_ncols=True, leave=False)
        self.bars[what].update(done - self.bars[what].n)
        if done >= total:
            self.bars.pop(what).close()


@contextlib.contextmanager
def bar_safe_logging():
    """Route purrgan's log lines through tqdm.write, so that a warning printed mid-bar starts on a line of its own."""
    import logging
    import sys

    from tqdm.contrib.logging import logging_redirect_tqdm

    # Only loggers that print: one without a handler would get a bare one and print each line twice.
    printing = [logger for logger in (logging.getLogger(), logging.getLogger("purrgan"))
                if any(getattr(h, "stream", None) in (sys.stdout, sys.stderr) for h in logger.handlers)]
    with logging_redirect_tqdm(printing):
        yield


def _show_messages(log) -> None:
    # In a notebook or script nothing may have configured logging: say what `purrgan train` says, the same way.
    import logging
    import sys

    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("purrgan: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _InlineGrids:
    """The run's latest fixed-noise grid in the notebook's output, replaced as training writes new ones."""

    def __init__(self, run_dir: Path):
        from IPython.display import display

        self.run_dir, self.shown, self.looked = run_dir, None, 0.0
        self.handle = display(display_id=True)

    def update(self, step: int) -> None:
        from IPython.display import Image as Picture

        if time.monotonic() - self.looked < 1.0:  # a fast GPU makes dozens of steps a second: look once a second
            return
        self.looked = time.monotonic()
        grids = sorted((self.run_dir / "samples").glob("step-*.png"))
        if grids and grids[-1] != self.shown:
            self.shown = grids[-1]
            self.handle.update(Picture(filename=str(grids[-1])))
