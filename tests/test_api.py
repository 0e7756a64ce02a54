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


def test_the_bar_follows_a_time_budget_and_a_resumed_session_shows_losses_like_a_fresh_one(tmp_path, monkeypatch):
    from purrgan import api

    clock = [100.0]
    monkeypatch.setattr(api.time, "monotonic", lambda: clock[0])
    bar = api.ProgressBar(max_minutes=3.0)  # 180 s
    bar(500, 2000, None)  # a resumed session starts at step 500
    clock[0] += 10.0
    bar(510, 2000, {"d_loss": 1.2, "g_loss": 0.9, "d_real": 0.6, "d_fake": 0.4, "images_per_s": 128.0})
    assert bar.bar.total == 500 + 1 * 180  # 1 step/s for 3 minutes, not the run's 2,000 steps (ETA 3:39:36 before)
    assert "D 1.200" in bar.bar.postfix and "128 img/s" in bar.bar.postfix
    bar.close()
    rows = []
    overrides = {k: v for k, v in TINY.items() if k != "train.steps"}
    purrgan.train(out=tmp_path / "run", steps=10, overrides=overrides, progress=False)
    from purrgan.loop import train as loop_train

    config, out = run_config(out=tmp_path / "run", resume=True, steps=30)
    loop_train(config, out, resume=True, on_progress=lambda step, total, row, done: rows.append(row))
    shown = [r for r in rows if r is not None]
    assert shown and {"d_loss", "g_loss", "images_per_s"} <= set(shown[-1]) and shown[-1]["step"] == 30


def test_run_json_records_how_the_run_was_asked_for(tmp_path):
    import json
    import subprocess
    import sys

    tiny = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    subprocess.run([sys.executable, "-m", "purrgan", "train", "--out", str(tmp_path / "a"), "--steps", "2", "--quiet",
                    *tiny], check=True, capture_output=True)
    command = json.loads((tmp_path / "a" / "run.json").read_text())["environment"]["command"]
    assert command.startswith("python -m purrgan train --out ") and "--steps 2" in command
    purrgan.train(out=tmp_path / "b", steps=2, overrides={k: v for k, v in TINY.items() if k != "train.steps"},
                  progress=False)
    call = json.loads((tmp_path / "b" / "run.json").read_text())["environment"]["command"]
    assert call.startswith("purrgan.train(out=") and "steps=2" in call
