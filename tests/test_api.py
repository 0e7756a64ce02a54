"""The Python API: the same run as the command line builds from the same inputs, trained from a script or notebook."""

import numpy as np
import pytest
import torch
from PIL import Image

import purrgan
from conftest import TINY
from purrgan import cli
from purrgan.api import run_config
from purrgan.data.prepare import prepare
from purrgan.data.sources import parse_source
from purrgan.errors import PurrganError


def _folder(root, size=48, count=6):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _sources(tmp_path):
    import zipfile

    folder = _folder(tmp_path / "cats", size=64)
    archive = tmp_path / "cats.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.iterdir()):
            handle.write(path, f"cats/{path.name}")
    prepared = prepare(parse_source(str(_folder(tmp_path / "small", size=32))), 32, 3, out=tmp_path / "small.safetensors")
    return {"folder": str(folder), "archive": str(archive), "named": "cifar10", "prepared": str(prepared)}


@pytest.mark.parametrize("kind", ["folder", "archive", "named", "prepared"])
def test_python_and_the_command_line_build_the_same_config(tmp_path, kind):
    source = _sources(tmp_path)[kind]
    line = cli._train_config(cli._parser().parse_args(["train", "--data", source, "--steps", "7"]))
    python = run_config(data=source, steps=7)
    assert line == python
    config = purrgan.load_config(overrides={"data.source": source, "train.steps": 7})
    assert config == python[0]
    expected = {"folder": (64, 3), "archive": (64, 3), "named": (32, 3), "prepared": (32, 3)}[kind]
    assert (config.data.resolution, config.data.channels) == expected  # the data's own size and colour, not 32x32 gray
    assert config.train.epochs == 0 and config.train.steps == 7


def test_options_are_checked_in_one_line_each_way(tmp_path):
    with pytest.raises(PurrganError, match="^steps must be positive, got 0$"):
        run_config(steps=0)
    with pytest.raises(PurrganError, match="unknown option 'step'"):
        run_config(step=5)
    with pytest.raises(PurrganError, match="nothing to resume in .*without resume=True"):
        run_config(out=tmp_path / "none", resume=True)


def test_train_from_python_returns_a_run_to_sample_and_resume(tmp_path):
    overrides = {k: v for k, v in TINY.items() if k != "train.steps"}
    run = purrgan.train(out=tmp_path / "run", steps=20, overrides=overrides, progress=False)
    assert run.steps == 20 and not run.stopped and run.checkpoint.is_file()
    grid = run.samples(4, seed=0)
    assert grid.size == (2 * 34 + 2, 2 * 34 + 2)
    assert run.image("loss.png").size[0] > 100 and run.report.is_file()
    more = purrgan.train(out=tmp_path / "run", resume=True, steps=30, progress=False)
    assert more.steps == 30 and torch.equal(more.generator.sample(2, seed=1), more.generator.sample(2, seed=1))


def test_an_interrupt_stops_cleanly_with_a_resumable_checkpoint(tmp_path, monkeypatch):
    # The notebook's stop button sends SIGINT to the kernel: the step finishes, a checkpoint is written, the Run returns.
    import os
    import signal

    from purrgan import api

    overrides = {k: v for k, v in TINY.items() if k != "train.steps"}
    sent = []

    def interrupt_once_training(bar, step, total, row, finished=False):  # the loop calls the bar after each step
        if step >= 5 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(api.ProgressBar, "__call__", interrupt_once_training)
    run = purrgan.train(out=tmp_path / "run", steps=100_000, overrides=overrides, progress=False)
    assert run.stopped and 5 <= run.steps < 100_000
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    monkeypatch.undo()
    resumed = purrgan.train(out=tmp_path / "run", resume=True, steps=run.steps + 3, progress=False)
    assert resumed.steps == run.steps + 3 and not resumed.stopped
