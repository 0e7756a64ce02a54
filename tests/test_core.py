"""The reshaped core: TrainState, the step, open-ended statistics, rewinding on roll-back, 0.1.0 compatibility."""

import csv
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from purrgan import checkpoint, load_generator, losses
from purrgan.cli import main
from purrgan.config import from_dict, load_config, parse_toml, to_toml
from purrgan.data import load_images
from purrgan.dist import Distributed
from purrgan.errors import PurrganError
from purrgan.gif import frames
from purrgan.monitor import read_metrics
from purrgan.state import TrainState, check_config
from purrgan.loop import train, train_step

DATA = Path(__file__).parent / "data"


def test_state_dict_round_trip_continues_identically():
    config = tiny_config(train__steps=10, augment__policy="color,translation")
    data = load_images("digits", 32, 1)
    a = TrainState.create(config, data, torch.device("cpu"), Distributed())
    for _ in range(3):
        train_step(a)
    saved = checkpoint.decode(checkpoint.encode(a.state_dict()))
    b = TrainState.create(config, data, torch.device("cpu"), Distributed())
    b.load_state_dict(saved)
    assert b.step == 3
    out_a, out_b = train_step(a), train_step(b)
    torch.testing.assert_close(out_a["d_loss"], out_b["d_loss"], rtol=0, atol=0)
    for (name, p), q in zip(a.generator.named_parameters(), b.generator.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_step_returns_statistics_and_gradient_flow_only_when_asked():
    config = tiny_config(loss__r1_gamma="1.0")
    state = TrainState.create(config, load_images("digits", 32, 1), torch.device("cpu"), Distributed())
    quiet = train_step(state)
    assert {"d_loss", "g_loss", "d_loss_real", "d_loss_fake", "d_real", "d_fake", "r1_penalty"} <= set(quiet)
    assert not any(k.startswith("grad_norm/") for k in quiet)
    loud = train_step(state, log_now=True, histograms=True)
    assert any(k.startswith("grad_norm/G/") for k in loud) and any(k.startswith("weights/D/") for k in loud)
    assert all(v.ndim == 0 for k, v in loud.items() if not k.startswith(("weights/", "grads/")))


def test_a_new_penalty_reaches_the_csv_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=20, loss__r1_gamma="1.0", loss__r2_gamma="1.0"), run)
    with open(run / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert "r1_penalty" in header and "r2_penalty" in header
    assert all(r["r1_penalty"] >= 0 for r in read_metrics(run))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss/r1_penalty", "loss/r2_penalty"} <= set(events.Tags()["scalars"])


def test_lazy_regularisation_runs_the_penalty_every_k_steps_weighted_by_k(monkeypatch):
    calls = []
    real_r1 = losses._r1

    def counted(*args):
        calls.append(1)
        return real_r1(*args)

    monkeypatch.setattr(losses, "_r1", counted)
    config = tiny_config(loss__r1_gamma="2.0", loss__reg_every="4")
    state = TrainState.create(config, load_images("digits", 32, 1), torch.device("cpu"), Distributed())
    logged = [train_step(state) for _ in range(8)]
    assert len(calls) == 2 and ["r1_penalty" in out for out in logged] == [True, False, False, False] * 2
    regulariser = losses.LOSSES["bce"].regularisers(config.loss)[0]
    assert regulariser.weight * regulariser.every == pytest.approx(4.0)  # gamma/2 * k


def test_roll_back_leaves_no_duplicate_rows_frames_or_grids(tmp_path, monkeypatch):
    real_bce, calls = losses.bce_d, {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_bce(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 75:  # once, after the checkpoint and the grid at step 50 and the rows up to 70
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setitem(losses.LOSSES, "bce", losses.Loss(poisoned, losses.bce_g, "poisoned"))
    run = tmp_path / "run"
    train(tiny_config(train__steps=100, train__sample_every=25, train__checkpoint_every=50), run)
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(10, 101, 10))  # rows 60 and 70 were logged, rewound, and logged again once
    with open(run / "metrics.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == steps
    assert [f.step for f in frames((run / "progress.gif").read_bytes())] == [0, 25, 50, 75, 100]
    assert Image.open(run / "progress.gif").n_frames == 5
    assert "rolled back to step 50" in (run / "warnings.jsonl").read_text()


def test_toml_arrays_and_the_old_comma_strings_read_the_same(tmp_path):
    old = load_config(overrides={"augment.policy": "color,translation", "train.logger": "tensorboard,wandb"})
    new = from_dict(parse_toml('[augment]\npolicy = ["color", "translation"]\n[train]\nlogger = ["tensorboard", "wandb"]', "x"))
    assert old.augment.policy == new.augment.policy == ("color", "translation")
    assert old.train.logger == new.train.logger == ("tensorboard", "wandb")
    assert 'policy = ["color", "translation"]' in to_toml(old)
    with pytest.raises(PurrganError, match=r"'data.classes' must be a list of names"):
        from_dict({"data": {"classes": [1, 2]}})


def test_architecture_options_are_checked_by_the_architecture():
    config = load_config(overrides={"model.options.depth": "3"})
    assert config.model.options == {"depth": 3}
    with pytest.raises(PurrganError, match="model 'dcgan' has no option 'depth'; its model.options: none"):
        check_config(config)


def test_a_checkpoint_written_by_purrgan_0_1_0_samples_and_resumes(tmp_path):
    generator = load_generator(DATA / "purrgan-0.1.0-step10.safetensors")
    assert generator.step == 10 and generator.uses_ema and generator.sample(2, seed=0).shape == (2, 1, 32, 32)
    run = tmp_path / "old-run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(DATA / "purrgan-0.1.0-step10.safetensors", run / "checkpoints" / "last.safetensors")
    shutil.copy(DATA / "purrgan-0.1.0-config.toml", run / "config.toml")
    assert main(["train", "--out", str(run), "--resume", "--steps", "20", "--quiet"]) == 0
    assert load_generator(run).step == 20
    assert load_config(config_file=run / "config.toml").augment.policy == ("color", "translation")


def test_amp_auto_on_the_cpu_is_measured_once_recorded_and_kept_on_resume(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))  # no verdict cached by another test
    monkeypatch.setattr("purrgan.loop.cpu_has_native_bf16", lambda: True)  # measure, whatever this CPU is
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        train(tiny_config(train__steps=5, train__amp="auto"), run)
    assert "mixed precision on this CPU: bf16 steps take" in caplog.text
    chosen = load_config(config_file=run / "config.toml").train.amp
    assert chosen in ("off", "bf16") and checkpoint.load_latest(run)[0]["config"]["train"]["amp"] == chosen
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(tiny_config(train__steps=8, train__amp="auto"), run, resume=True)
    assert "mixed precision on this CPU" not in caplog.text  # a resumed run keeps its precision
    assert checkpoint.load_latest(run)[0]["config"]["train"]["amp"] == chosen


def test_amp_auto_without_native_bf16_trains_in_float32_without_measuring(tmp_path, caplog, monkeypatch):
    import logging

    import purrgan.loop as loop

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(loop, "_time_steps_both_ways", lambda *a: pytest.fail("measured on a CPU without bf16"))
    with caplog.at_level(logging.INFO):
        train(tiny_config(train__steps=3, train__amp="auto"), tmp_path / "run")
    assert "this CPU has no native bf16; training in float32" in caplog.text
    assert load_config(config_file=tmp_path / "run" / "config.toml").train.amp == "off"


def test_amp_auto_stops_timing_a_bf16_that_has_already_lost(tmp_path, caplog, monkeypatch):
    import logging

    import purrgan.loop as loop

    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))  # no verdict cached by another test
    real_step, bf16_steps = loop.train_step, []

    def step(state, *args, **kwargs):
        if state.precision == torch.bfloat16:
            bf16_steps.append(1)
            time.sleep(0.6)  # an emulated bf16 double backward, in miniature
        return real_step(state, *args, **kwargs)

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(loop, "train_step", step)
    with caplog.at_level(logging.INFO):
        train(tiny_config(train__steps=3, train__amp="auto"), tmp_path / "run")
    assert "bf16 steps take over twice the float32 time; training in float32" in caplog.text
    assert len(bf16_steps) < 8  # 2 warm-up + 3 rounds of 2 would be 8: it gave up early


def test_amp_auto_alternates_its_trials_shows_them_and_keeps_its_verdict_for_the_next_run(tmp_path, caplog, monkeypatch):
    import logging

    import purrgan.loop as loop

    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    real_step, order = loop.train_step, []
    monkeypatch.setattr(loop, "train_step", lambda state, *a, **k: order.append(state.precision) or real_step(state, *a, **k))
    phases = []
    with caplog.at_level(logging.INFO):
        train(tiny_config(train__steps=2, train__amp="auto"), tmp_path / "a", on_phase=lambda *p: phases.append(p))
    trial = order[:16]  # warm-up 2 + 2, then 3 rounds of 2 + 2, alternating
    assert trial == ([None] * 2 + [torch.bfloat16] * 2) * 4
    assert phases[-1] == ("measuring bf16 against float32", 16, 16) and "measuring bf16 against float32 on this CPU" in caplog.text
    chosen = load_config(config_file=tmp_path / "a" / "config.toml").train.amp
    caplog.clear()
    order.clear()
    with caplog.at_level(logging.INFO):
        train(tiny_config(train__steps=2, train__amp="auto"), tmp_path / "b")
    assert order == [torch.bfloat16 if chosen == "bf16" else None] * 2  # only the run's own steps: nothing measured
    assert "delete" in caplog.text and load_config(config_file=tmp_path / "b" / "config.toml").train.amp == chosen


def test_max_minutes_stops_with_a_resumable_checkpoint(tmp_path, caplog):
    import logging

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--quiet", "--steps", "100000", "--max-minutes", "0.02", "--logger", "none",
            "--set", "train.amp=off", "--set", "model.g_width=8", "--set", "model.d_width=8", "--batch-size", "32"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    stopped = load_generator(run).step
    assert 0 < stopped < 100000 and f"stopped at step {stopped} of 100000" in caplog.text
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--max-minutes", "0.02"]) == 0
    assert load_generator(run).step > stopped


def test_epoch_files_hold_the_generator_alone_and_sample(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__epochs=2, train__batch_size=600, train__epoch_checkpoints="true"), run)
    epoch = run / "checkpoints" / "epoch-0001.safetensors"
    state = checkpoint.load(epoch)
    assert set(state) == {"step", "config", "class_names", "generator", "generator_ema"} and state["step"] == 2
    assert epoch.stat().st_size < 0.5 * (run / "checkpoints" / "last.safetensors").stat().st_size
    assert load_generator(epoch).sample(2, seed=0).shape == (2, 1, 32, 32)


def test_compile_with_a_gradient_penalty_compiles_g_only(caplog):
    import logging

    config = tiny_config(train__compile="true", loss__r1_gamma="1.0", model__g_width="4", model__d_width="4")
    with caplog.at_level(logging.INFO):
        state = TrainState.create(config, load_images("digits", 32, 1), torch.device("cpu"), Distributed())
    assert state.D is state.discriminator and "compiling G only" in caplog.text


class _Recorder(torch.nn.Module):
    """Wraps D, noting each call's batch size and D's first weight at that moment."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, images, labels=None):
        self.calls.append((images.shape[0], next(self.inner.parameters()).detach().clone()))
        return self.inner(images, labels)


@pytest.mark.parametrize("update", ["joint", "split"])
def test_split_d_update_steps_on_half_the_reals_then_on_fakes_as_keras_does(update):
    config = tiny_config(optim__d_update=update, model__arch="keras-cifar", data__channels="3")
    state = TrainState.create(config, load_images("digits", 32, 3), torch.device("cpu"), Distributed())
    state.D = recorder = _Recorder(state.D)
    out = train_step(state)
    (n_real, w_real), (n_fake, w_fake), (n_g, w_g) = recorder.calls
    adam_steps = state.opt_d.state[next(state.discriminator.parameters())]["step"]
    if update == "split":  # 16 reals, one Adam step, then 16 fakes scored by the moved D, one more step; G on 32
        assert (n_real, n_fake, n_g, int(adam_steps)) == (16, 16, 32, 2)
        assert not torch.equal(w_real, w_fake) and not torch.equal(w_fake, w_g)
    else:  # one D update on 32 reals and 32 fakes
        assert (n_real, n_fake, n_g, int(adam_steps)) == (32, 32, 32, 1)
        assert torch.equal(w_real, w_fake) and not torch.equal(w_fake, w_g)
    torch.testing.assert_close(out["d_loss"], out["d_loss_real"] + out["d_loss_fake"])
    assert 0 < out["d_real"] < 1 and 0 < out["d_fake"] < 1  # BCE's scores shown as probabilities either way


@pytest.mark.parametrize("overrides, says", [
    ({"loss__name": "wgan-gp", "model__d_norm": "layer"}, "cannot carry D's gradient_penalty, which needs"),
    ({"loss__r1_gamma": "1.0"}, "cannot carry D's r1_penalty"),
    ({"loss__name": "rpgan", "loss__r1_gamma": "1.0", "loss__r2_gamma": "1.0"}, "use one of bce, bce-saturating"),
])
def test_split_d_update_refuses_losses_it_cannot_halve_in_one_line(overrides, says):
    with pytest.raises(PurrganError, match=says) as caught:
        check_config(tiny_config(optim__d_update="split", **overrides))
    assert "\n" not in str(caught.value)
