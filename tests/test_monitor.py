"""What a run shows: TensorBoard events, loss.png, progress.gif, report.html, and the health checks."""

import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from purrgan import losses
from purrgan.cli import main
from purrgan.errors import PurrganError
from purrgan.gif import append_frame, captioned
from purrgan.health import HealthMonitor, TrainingDiverged
from purrgan.monitor import read_metrics
from purrgan.loop import train


def _warnings(run):
    path = run / "warnings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("logged") / "run"
    train(tiny_config(train__steps=60, train__histogram_every=20), run)
    return run


def test_tensorboard_events_hold_every_scalar_image_and_histogram(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/g", "loss/d", "loss/d_real", "loss/d_fake", "d_output/real", "d_output/fake",
                "lr/g", "lr/d", "speed/images_per_s"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in events.Scalars(tag)] == [10, 20, 30, 40, 50, 60]
    grad_tags = [t for t in tags["scalars"] if t.startswith("grad_norm/")]
    assert any(t.startswith("grad_norm/G/") for t in grad_tags) and any(t.startswith("grad_norm/D/") for t in grad_tags)
    assert all(e.value > 0 for t in grad_tags for e in events.Scalars(t))  # gradients flow to every layer
    assert "samples/fixed_noise" in tags["images"] and len(events.Images("samples/fixed_noise")) == 1
    assert any(t.startswith("weights/G/") for t in tags["histograms"]) and any(t.startswith("grads/D/") for t in tags["histograms"])
    assert [e.step for e in events.Histograms([t for t in tags["histograms"] if t.startswith("weights/D/")][0])] == [20, 40, 60]
    rows = read_metrics(logged_run)
    torch.testing.assert_close(torch.tensor([e.value for e in events.Scalars("loss/d")]),
                               torch.tensor([r["d_loss"] for r in rows]))


def test_pictures_and_report_are_written(logged_run):
    loss_png = Image.open(logged_run / "loss.png")
    assert loss_png.width > 500
    gif = Image.open(logged_run / "progress.gif")
    # 60 steps, grids every 50: the untrained G at step 0, step 50, and the last step (issue 14: a timelapse
    # even for a run shorter than sample_every)
    assert gif.n_frames == 3 and gif.info.get("loop") == 0
    assert (logged_run / "real.png").is_file()
    page = (logged_run / "report.html").read_text()
    # real, generated, nearest training images, timelapse, losses, gradient flow
    assert page.count("data:image/") == 6 and "no health check fired" in page and "[model]" in page
    assert "A near-copy is a sample" in page and "Environment" in page and "torch" in page


def test_gif_is_appended_frame_by_frame(tmp_path):
    path = tmp_path / "p.gif"
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)) for _ in range(4)]
    sizes = []
    for i, frame in enumerate(frames):
        append_frame(path, captioned(frame, f"step {i}"))
        sizes.append(path.stat().st_size)
    assert sizes == sorted(sizes)  # the file grows; earlier frames are never rewritten
    gif = Image.open(path)
    assert gif.n_frames == 4 and gif.size == (30, 34)
    for i, frame in enumerate(frames):
        gif.seek(i)
        decoded = np.asarray(gif.convert("RGB"), dtype=float)[14:]
        assert np.abs(decoded - np.asarray(frame, dtype=float)).mean() < 12  # palette quantisation only


def test_a_healthy_run_raises_no_warning(trained_run):
    assert _warnings(trained_run) == []


def test_d_wins_warning_when_d_learns_much_faster(tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny_config(train__steps=150, optim__lr_d="5e-3", optim__lr_g="1e-6"), run)
    kinds = [w["kind"] for w in _warnings(run)]
    assert kinds == ["d_wins"]
    assert "D is winning" in caplog.text and "label_smoothing" in caplog.text
    assert "D is winning" in (run / "report.html").read_text()


def test_nan_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_bce = losses.bce_d
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_bce(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 55:  # after the checkpoint at step 50
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setitem(losses.LOSSES, "bce", losses.Loss(poisoned, losses.bce_g, "poisoned"))
    with pytest.raises(PurrganError, match=r"d_loss and g_loss became nan, nan at step 60: training diverged 3 times.*last good checkpoint is kept"):
        train(tiny_config(train__steps=100), run)
    from purrgan import checkpoint
    state, _ = checkpoint.load_latest(run)
    assert state["step"] == 50
    assert all(torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point())
    assert _warnings(run)[-1]["kind"] == "nan"


def _varied(n):
    return torch.rand(n, 1, 32, 32) * 2 - 1


def _collapsed(n):
    return (torch.rand(1, 1, 32, 32) * 2 - 1).repeat(n, 1, 1, 1) + 0.01 * torch.randn(n, 1, 32, 32)


@pytest.mark.parametrize("kind, make", [
    ("blank", lambda z, step: torch.full((z.shape[0], 1, 32, 32), -1.0)),
    ("collapse", lambda z, step: _varied(z.shape[0]) if step < 2 else _collapsed(z.shape[0])),  # varied, then alike
])
def test_blank_and_collapse_warnings_from_the_samples(kind, make, tmp_path, monkeypatch):
    calls = []

    def sampler(generator, z, labels):
        calls.append(1)
        return make(z, len(calls) - 1)

    monkeypatch.setattr("purrgan.loop.sample_fixed", sampler)
    run = tmp_path / "run"
    train(tiny_config(train__steps=60, train__sample_every=20), run)
    assert [w["kind"] for w in _warnings(run)] == [kind]


def test_on_a_small_set_the_advice_for_a_winning_d_or_a_collapse_starts_with_what_works_there():
    row = {"d_loss": 0.01, "g_loss": 7.0, "d_real": 0.99, "d_fake": 0.01}

    def d_wins(**kwargs):
        monitor = HealthMonitor("bce", total_steps=100, real_spread=0.5, window=3, **kwargs)
        return sum((monitor.check_losses(s, row) for s in (20, 30, 40)), [])[0].message

    bare = d_wins(training_images=100)
    assert "What helps: with 100 training images D can memorise them: augment what D sees first (--set " \
           "augment.policy=color,translation,cutout;" in bare and "); else a lower D learning rate" in bare
    assert "even through the augmentation: all three DiffAugment" in d_wins(training_images=100, augmented=True)
    assert "What helps: a lower D learning rate" in d_wins(training_images=9303)  # a large set: as before
    assert "What helps: a lower D learning rate" in d_wins()
    collapse = HealthMonitor("bce", 100, 0.5, training_images=300)
    collapse.check_samples(50, _varied(16))
    assert "What helps: with 300 training images" in collapse.check_samples(60, _collapsed(16))[0].message


def test_health_monitor_units():
    monitor = HealthMonitor("bce", total_steps=100, real_spread=0.5, window=3)
    row = {"d_loss": 0.01, "g_loss": 7.0, "d_real": 0.99, "d_fake": 0.01}
    assert monitor.check_losses(5, row) == []  # warm-up
    assert [w.kind for w in sum((monitor.check_losses(s, row) for s in (20, 30, 40)), [])] == ["d_wins"]
    assert monitor.check_losses(50, row) == []  # said once
    with pytest.raises(TrainingDiverged, match="g_loss became inf at step 60"):
        monitor.check_losses(60, {**row, "g_loss": float("inf")})
    assert HealthMonitor("wgan", 100, 0.5, window=1).check_losses(50, {**row, "d_loss": -5.0}) == []
    samples = HealthMonitor("bce", 100, 0.5)
    assert samples.check_samples(50, _varied(16)) == []
    assert samples.check_samples(60, _collapsed(16))[0].kind == "collapse"
    assert HealthMonitor("bce", 100, 0.5).check_samples(50, _collapsed(16)) == []  # alike from the start: not collapse


def test_a_long_run_warns_within_a_cpu_users_first_ten_minutes():
    # keras-cifar-catdog: 200 epochs are 15,600 steps, 10 CPU-minutes about 480; its D won from step 125
    monitor = HealthMonitor("bce", total_steps=15_600, real_spread=0.5)
    row = {"d_loss": 0.002, "g_loss": 7.0, "d_real": 0.999, "d_fake": 0.001}
    fired = [(w.kind, w.step) for step in range(125, 500, 25) for w in monitor.check_losses(step, row)]
    assert fired == [("d_wins", 300)]  # the eighth row of the window
    assert monitor.check_samples(0, _varied(16)) == []  # varied at step 0, inside the warm-up
    assert [w.kind for w in monitor.check_samples(250, _collapsed(16))] == ["collapse"]


def test_wandb_logger_with_a_stand_in_module(tmp_path, monkeypatch):
    logged = []
    fake_run = types.SimpleNamespace(log=lambda values, step: logged.append((step, values)), finish=lambda: logged.append("finish"))
    fake = types.SimpleNamespace(init=lambda **kwargs: fake_run, Image=lambda image: ("image", image.size),
                                 Histogram=lambda array: ("histogram", array.shape))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")  # no credentials on a test machine
    run = tmp_path / "run"
    train(tiny_config(train__steps=20, train__logger="wandb,tensorboard", train__sample_every=10), run)
    steps = [entry[0] for entry in logged if entry != "finish"]
    assert 10 in steps and 20 in steps and logged[-1] == "finish"
    assert any("loss/d" in values for _, values in (e for e in logged if e != "finish"))
    assert (run / "tensorboard").is_dir()


def test_logger_none_and_unknown_logger(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(train__steps=10, train__logger="none"), run)
    assert not (run / "tensorboard").exists() and (run / "metrics.csv").is_file()
    assert main(["train", "--logger", "comet", "--out", str(tmp_path / "x")]) == 2
    assert "unknown logger 'comet'; use any of: tensorboard, wandb, none" in capsys.readouterr().err


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_report_opens_in_headless_chromium_with_every_image_loaded(logged_run, tmp_path):
    page = (logged_run / "report.html").read_text()
    probe = ("<script>window.addEventListener('load', () => { const images = [...document.images];"
             "document.body.setAttribute('data-loaded', images.filter(i => i.complete && i.naturalWidth > 0).length"
             " + '/' + images.length); });</script></body>")
    copy = tmp_path / "report.html"
    copy.write_text(page.replace("</body>", probe))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-loaded="6/6"' in dom


def test_report_command(logged_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(logged_run), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_d_leading_for_a_few_logged_steps_is_not_d_winning():
    # The default run: D leads around step 150-225 and G catches up. The window's mean crossed the bar for 25 steps
    # on one machine ("D is winning", then nothing); a warning that clears itself is noise to a user.
    monitor = HealthMonitor("bce", total_steps=2000, real_spread=0.5)
    lead, near = {"d_loss": 0.01, "g_loss": 7.0, "d_real": 0.999, "d_fake": 0.001}, \
        {"d_loss": 0.3, "g_loss": 3.0, "d_real": 0.93, "d_fake": 0.07}
    rows = [lead, lead, lead, near, lead, lead, lead, near] * 3  # the mean of every 8 meets the bar; not every row does
    assert [w for step, row in zip(range(100, 700, 25), rows) for w in monitor.check_losses(step, row)] == []
    assert monitor.checked  # it did look


def test_a_run_too_short_to_check_says_not_checked_instead_of_no_warnings(tmp_path, trained_run):
    run = tmp_path / "short"
    train(tiny_config(train__steps=20), run)
    page = (run / "report.html").read_text()
    assert "not checked: the run ended at step 20, before the health checks start" in page
    assert "no health check fired" not in page
    assert "no health check fired" in (trained_run / "report.html").read_text()  # 300 steps: it looked, and found none


def test_a_warning_printed_while_the_bar_runs_starts_on_its_own_line(tmp_path):
    import subprocess
    import sys

    from conftest import TINY

    tiny = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    out = subprocess.run([sys.executable, "-m", "purrgan", "train", "--out", str(tmp_path / "run"), "--steps", "150",
                          "--logger", "none", *tiny, "--set", "optim.lr_d=5e-3", "--set", "optim.lr_g=1e-6"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.split("\n") if "D is winning" in line]
    assert lines and "train:" in out.stderr  # the bar was there
    before = lines[0][:lines[0].index("purrgan: ")]
    assert before.replace("\r", "").strip() == "", repr(before[-120:])  # not glued to the end of the bar


def test_the_report_header_after_a_resume_shows_the_final_step_and_every_sessions_time(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=20), run)
    train(tiny_config(train__steps=33), run, resume=True)
    page = (run / "report.html").read_text()
    summary = json.loads((run / "run.json").read_text())["run"]
    assert summary["step"] == 33 and summary["sessions"] == 2 and summary["training_seconds"] > 0
    assert "<th>steps</th><td>33 of 33</td>" in page and "over 2 sessions" in page  # not the first session's 20
