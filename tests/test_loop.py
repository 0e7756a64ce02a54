import csv

import numpy as np

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_config
from purrgan import load_generator
from purrgan.errors import PurrganError
from purrgan.monitor import read_metrics
from purrgan.loop import train, train_step


def test_short_training_run_learns_and_leaves_every_file(trained_run):
    run = trained_run
    for name in ("config.toml", "metrics.csv", "metrics.jsonl", "checkpoints/last.safetensors",
                 "checkpoints/last-1.safetensors", "samples/step-000050.png", "samples/step-000300.png",
                 "samples/final.png"):
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(10, 301, 10))
    with open(run / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert {"step", "d_loss", "g_loss", "d_loss_real", "d_loss_fake", "d_real", "d_fake", "images_per_s"} <= set(header)
    first, last = rows[0], rows[-1]
    # At the start D cannot tell real from fake (loss ~ 2 log 2); training must move both losses away.
    assert abs(first["d_loss"] - 1.386) < 0.6
    early = sum(r["d_loss"] for r in rows[:3]) / 3
    late = sum(r["d_loss"] for r in rows[-5:]) / 5
    assert abs(late - early) > 0.1
    assert abs(sum(r["g_loss"] for r in rows[-5:]) / 5 - sum(r["g_loss"] for r in rows[:3]) / 3) > 0.1
    assert all(torch.isfinite(torch.tensor([r["d_loss"], r["g_loss"]])).all() for r in rows)


def test_fixed_noise_samples_change_during_training(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=1), run)
    before = load_generator(run).sample(8, seed=0)
    train(tiny_config(train__steps=100), run, resume=True)
    after = load_generator(run).sample(8, seed=0)
    assert (after - before).abs().mean() > 0.05
    grids = [np.asarray(Image.open(run / "samples" / f"step-{s:06d}.png"), dtype=np.float32) for s in (50, 100)]
    assert np.abs(grids[0] - grids[1]).mean() > 5  # the fixed-noise grid itself changes over training


def test_resume_gives_the_same_weights_as_one_uninterrupted_run(tmp_path):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    train(tiny_config(train__steps=40, data__hflip="on"), whole)
    train(tiny_config(train__steps=20, data__hflip="on"), halves)
    train(tiny_config(train__steps=40, data__hflip="on"), halves, resume=True)
    a = load_file(whole / "checkpoints" / "last.safetensors")
    b = load_file(halves / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The metrics file of the resumed run reads as one run: same steps, same losses.
    assert [(r["step"], r["d_loss"]) for r in read_metrics(whole)] == [(r["step"], r["d_loss"]) for r in read_metrics(halves)]


def test_epochs_and_epoch_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(train__epochs=2, train__batch_size=600, train__epoch_checkpoints="true"), run)
    assert result.steps == 2 * (1797 // 600)
    assert (run / "checkpoints" / "epoch-0001.safetensors").is_file()
    assert (run / "checkpoints" / "epoch-0002.safetensors").is_file()


def test_refuses_to_overwrite_a_run_without_resume(trained_run):
    with pytest.raises(PurrganError, match="already holds a run; add --resume"):
        train(tiny_config(), trained_run)


def test_resume_with_a_different_architecture_says_which_value(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=2), run)
    with pytest.raises(PurrganError, match="trained with model.g_width = 8, but this run asks for 16"):
        train(tiny_config(train__steps=4, model__g_width=16), run, resume=True)


def test_gradient_accumulation_gives_the_whole_batchs_update_without_batchnorm():
    # R3GAN has no normalisation layer, so 4 micro-batches of 8 must update exactly as one batch of 32 does.
    from purrgan.data import load_images
    from purrgan.dist import Distributed
    from purrgan.state import TrainState

    data = load_images("digits", 32, 1)
    runs = []
    for per_device in ("0", "8"):
        config = tiny_config(model__arch="r3gan", model__g_width="16", model__d_width="16", loss__name="rpgan",
                             loss__r1_gamma="0.1", loss__r2_gamma="0.1", optim__g_steps="2",
                             train__batch_per_device=per_device)
        state = TrainState.create(config, data, torch.device("cpu"), Distributed())
        assert state.micro_batches == (4 if per_device == "8" else 1)
        logged = [train_step(state, log_now=True) for _ in range(3)]
        runs.append((state, logged))
    (whole, whole_log), (micro, micro_log) = runs
    for (name, a), b in zip(whole.discriminator.named_parameters(), micro.discriminator.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(whole.generator.named_parameters(), micro.generator.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for key in ("d_loss", "g_loss", "r1_penalty", "d_real", "grad_norm/D/head.weight"):
        torch.testing.assert_close(micro_log[-1][key], whole_log[-1][key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("per_device, says", [("5", "does not divide"), ("8", "cannot accumulate")])
def test_a_batch_that_does_not_split_into_micro_batches_is_refused_in_one_line(tmp_path, per_device, says):
    overrides = {"train__batch_per_device": per_device}
    if per_device == "8":
        overrides.update(optim__d_update="split", model__arch="keras-cifar", data__channels="3")
    with pytest.raises(PurrganError, match=says):
        train(tiny_config(**overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_small_folder_gets_augmentation_and_a_batch_it_can_fill_and_says_so(tmp_path, caplog):
    import logging

    from purrgan.loop import small_data

    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(100):  # a folder of 100 pictures of the user's cat
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with caplog.at_level(logging.INFO):
        train(tiny_config(data__source=str(folder), train__batch_size="128", train__steps="2", data__channels="3"),
              tmp_path / "run")
    assert "100 training images is a small set, so: DiffAugment color, translation and cutout" in caplog.text
    assert "batch 64 (the preset's 128 is more than the set)" in caplog.text and "--preset best-cats64 with this augmentation did best" in caplog.text
    from purrgan.config import load_config

    saved = load_config(config_file=tmp_path / "run" / "config.toml")
    assert saved.augment.policy == ("color", "translation", "cutout") and saved.train.batch_size == 64
    big = tiny_config()
    assert small_data(big, 5000) == big  # nothing changes silently for a large set
    assert small_data(tiny_config(augment__small_data="off"), 100).augment.policy == ()
    caplog.clear()
    with caplog.at_level(logging.INFO):  # a preset that already augments changes nothing, and still says why
        fitted = tiny_config(augment__policy="translation")
        assert small_data(fitted, 100) == fitted
    assert "100 training images is a small set; the run's augmentation (translation) already" in caplog.text
