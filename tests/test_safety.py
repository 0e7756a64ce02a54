"""Never lose a run, never run untrusted code: kill -9, signals, NaN roll-back, bad inputs, fuzzing."""

import io
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY, tiny_config
from purrgan import checkpoint, load_generator, losses
from purrgan.config import from_dict, load_config, parse_toml, validate
from purrgan.data import load_images
from purrgan.data.images import decode_image
from purrgan.errors import PurrganError
from purrgan.monitor import read_metrics
from purrgan.loop import train

STEPS = 200  # long enough that a kill 0.3-1.5 s after the first checkpoint lands mid-run
CLI_TINY = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def _command(run, *extra):
    return [sys.executable, "-m", "purrgan", "train", "--out", str(run), "--quiet", "--logger", "none",
            *CLI_TINY, "--set", "train.checkpoint_every=7", "--set", "train.sample_every=1000", *extra]


def _wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)


def _assert_same_weights(run_a, run_b):
    a, b = load_file(run_a / "checkpoints" / "last.safetensors"), load_file(run_b / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(_command(run, "--steps", str(STEPS)), check=True, capture_output=True)
    return run


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_a_random_moment_then_resume_equals_an_uninterrupted_run(seed, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(_command(run, "--steps", str(STEPS)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoints" / "last.safetensors", process)
    time.sleep(random.Random(seed).uniform(0.3, 1.5))
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = checkpoint.load_latest(run)[0]["step"]
    assert killed_at < STEPS
    assert not list((run / "checkpoints").glob("last*.safetensors.*"))  # no half-written file under a real name
    subprocess.run(_command(run, "--steps", str(STEPS), "--resume"), check=True, capture_output=True)
    _assert_same_weights(uninterrupted, run)
    assert [r["step"] for r in read_metrics(run)] == [r["step"] for r in read_metrics(uninterrupted)]


@pytest.mark.parametrize("sent", ["SIGTERM", "SIGHUP"])  # SIGHUP: the terminal or SSH session was closed
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_0(uninterrupted, tmp_path, sent):
    run = tmp_path / "run"
    process = subprocess.Popen(_command(run, "--steps", str(STEPS)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "checkpoints" / "last.safetensors", process)
    time.sleep(0.5)
    process.send_signal(getattr(signal, sent))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"{sent} received: finishing this step" in err
    assert "continue with: purrgan train --out" in err and "--resume" in err
    stopped = checkpoint.load_latest(run)[0]["step"]
    assert 0 < stopped < STEPS and f"stopped at step {stopped}" in err
    subprocess.run(_command(run, "--steps", str(STEPS), "--resume"), check=True, capture_output=True)
    _assert_same_weights(uninterrupted, run)


def _poison_bce(monkeypatch, bad_calls):
    real_bce, calls = losses.bce_d, {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_bce(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setitem(losses.LOSSES, "bce", losses.Loss(poisoned, losses.bce_g, "poisoned"))


def test_nan_rolls_back_lowers_the_learning_rates_and_carries_on(tmp_path, monkeypatch):
    _poison_bce(monkeypatch, bad_calls=set(range(56, 61)))  # steps 56-60 go bad once
    run = tmp_path / "run"
    result = train(tiny_config(train__steps=100), run)
    assert result.steps == 100
    state, _ = checkpoint.load_latest(run)
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # 2e-4 halved once
    nan_warnings = [line for line in (run / "warnings.jsonl").read_text().splitlines() if '"nan"' in line]
    assert len(nan_warnings) == 1 and "rolled back to step 50" in nan_warnings[0]


def test_each_roll_back_lowers_the_learning_rates_further(tmp_path, monkeypatch):
    _poison_bce(monkeypatch, bad_calls={56, 63})  # two separate failures, both after the step-50 checkpoint
    run = tmp_path / "run"
    train(tiny_config(train__steps=100), run)
    state, _ = checkpoint.load_latest(run)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(5e-5)  # 2e-4 * 0.5 * 0.5


def test_nan_that_keeps_coming_back_stops_after_k_tries(tmp_path, monkeypatch):
    _poison_bce(monkeypatch, bad_calls=set(range(1, 10_000)))
    run = tmp_path / "run"
    with pytest.raises(PurrganError, match=r"training diverged 3 times; lower the learning rates.*last good checkpoint is kept"):
        train(tiny_config(train__steps=100), run)
    state, _ = checkpoint.load_latest(run)
    assert state["step"] == 0 and all(torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point())


# ---------------------------------------------------------------- bad input, case by case


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _cmyk_jpeg():
    buffer = io.BytesIO()
    Image.new("CMYK", (30, 30), (0, 128, 255, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def _animated_gif():
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (20, 20), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


GOOD_PNG = _png(Image.new("RGB", (40, 40), (10, 200, 30)))
IMAGE_CASES = [
    # (case, file name, bytes, expected message or None when it loads)
    ("truncated", "cut.png", GOOD_PNG[: len(GOOD_PNG) // 2], "not a readable image"),
    ("zero bytes", "empty.jpg", b"", "not a readable image"),
    ("text with an image extension", "notes.png", b"hello, I am not a picture", "not a readable image"),
    ("png named .jpg", "actually_png.jpg", GOOD_PNG, None),
    ("decompression bomb", "bomb.png", _png(Image.new("1", (9000, 9000))), "9000x9000 is too large to be a training image"),
    ("16-bit grayscale", "deep.png", _png(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))), None),
    ("palette", "palette.png", _png(Image.new("RGB", (20, 20), (255, 0, 0)).convert("P")), None),
    ("CMYK jpeg", "print.jpg", _cmyk_jpeg(), None),
    ("animated gif (first frame)", "anim.png", _animated_gif(), None),
]


@pytest.mark.parametrize("case, name, blob, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_table(case, name, blob, expected, tmp_path):
    path = tmp_path / name
    path.write_bytes(blob)
    if expected is None:
        array = decode_image(path, 32, 3)
        assert array.shape == (3, 32, 32) and array.dtype == np.uint8
        if case == "16-bit grayscale":
            assert abs(int(array.mean()) - 40000 // 257) <= 1  # scaled to 8 bits, not clipped to white
    else:
        with pytest.raises(PurrganError, match=expected) as error:
            decode_image(path, 32, 3)
        assert "\n" not in str(error.value) and name in str(error.value)


def test_folder_with_only_bad_files_and_a_path_that_is_a_file(tmp_path):
    for case, name, blob, expected in IMAGE_CASES:
        if expected is not None:
            (tmp_path / name).write_bytes(blob)
    with pytest.raises(PurrganError, match="none of the 4 image files in .* could be read"):
        load_images(str(tmp_path), 32, 3)
    with pytest.raises(PurrganError, match="is a file but not a .zip"):
        load_images(str(tmp_path / "cut.png"), 32, 3)


def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=2), run)
    state, _ = checkpoint.load_latest(run)
    state["config"]["model"]["g_width"] = 16  # a tampered or mixed-up file
    (run / "checkpoints" / "last.safetensors").write_bytes(checkpoint.encode(state))
    with pytest.raises(PurrganError, match="does not hold a generator this purrgan can build .*size mismatch"):
        load_generator(run / "checkpoints" / "last.safetensors")


# ---------------------------------------------------------------- fuzzing: nothing but PurrganError escapes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_config_parser_on_random_text(text):
    try:
        config = from_dict(parse_toml(text, "fuzz"))
        validate(config)
    except PurrganError:
        pass


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["data", "model", "loss", "optim", "augment", "train", "description", "x"]),
                       st.one_of(SCALARS, st.dictionaries(st.sampled_from(
                           ["source", "resolution", "channels", "arch", "name", "lr_g", "steps", "batch_size",
                            "device", "policy", "ema", "conditional", "d_norm", "z_dim", "bogus"]), SCALARS, max_size=5)),
                       max_size=6))
def test_config_builder_on_random_tables(table):
    try:
        validate(from_dict(table))
    except PurrganError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF"]))
def test_image_decoder_on_random_bytes(blob, header):
    try:
        decode_image(header + blob, 16, 3)
    except PurrganError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_checkpoint_decoder_on_random_bytes(blob):
    valid = checkpoint.encode({"step": 3, "w": torch.ones(3)})
    for candidate in (blob, valid[:len(blob) % len(valid)] + blob, blob + valid):
        try:
            checkpoint.decode(candidate)
        except PurrganError:
            pass


def test_load_config_survives_missing_preset_and_bad_cli_values():
    for overrides in ({"train.steps": "-1"}, {"data.resolution": "0"}, {"train.ema": "1.5"}, {"optim.name": "sgd"}):
        with pytest.raises(PurrganError):
            load_config(overrides=overrides)
    assert os.environ.get("PURRGAN_DATA")  # tests never touch the user's cache


def test_the_printed_resume_command_trains_on_after_a_time_budget(tmp_path):
    # --max-minutes belongs to one session: the resume command printed at the stop must train, not stop again at once.
    run = tmp_path / "run"
    first = subprocess.run(_command(run, "--steps", str(STEPS), "--max-minutes", "0.02"), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    stopped = checkpoint.load_latest(run)[0]["step"]
    assert stopped < STEPS and "continue with: purrgan train --out" in first.stderr
    printed = first.stderr.split("continue with: ")[1].split(" (to the end")[0].split()  # purrgan train --out RUN --resume
    again = subprocess.run([sys.executable, "-m", "purrgan", *printed[1:], "--quiet"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert checkpoint.load_latest(run)[0]["step"] == STEPS  # to the end of the run
