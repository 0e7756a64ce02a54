import pytest
import torch

from purrgan.augment import check_policy, color, cutout, diff_augment, random_hflip, translation
from purrgan.ema import make_ema, update_ema
from purrgan.errors import PurrganError


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_translation_shifts_content_and_pads_with_zeros():
    x = torch.ones(64, 1, 16, 16)
    out = translation(x, _gen())
    assert out.shape == x.shape
    zero_fraction = (out == 0).float().mean(dim=(1, 2, 3))
    assert (zero_fraction > 0).float().mean() > 0.5  # most images moved
    assert zero_fraction.max() <= 1 - (14 / 16) ** 2 + 1e-6  # by at most 1/8 of the side (2 px) each way


def test_cutout_zeroes_a_square_of_half_the_side():
    out = cutout(torch.ones(32, 3, 16, 16), _gen())
    zeros = (out[:, 0] == 0).float().sum(dim=(1, 2))
    assert zeros.max() == 64 and zeros.min() > 0  # an 8x8 square, clipped at the borders


def test_color_changes_images_and_is_differentiable():
    x = torch.rand(8, 3, 8, 8, requires_grad=True)
    out = color(x * 2 - 1, _gen())
    assert not torch.allclose(out, x * 2 - 1)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_policy_is_deterministic_for_a_generator_and_rejects_unknown_names():
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(diff_augment(x, "color,translation,cutout", _gen(1)), diff_augment(x, "color,translation,cutout", _gen(1)))
    assert torch.equal(diff_augment(x, "", _gen()), x)
    with pytest.raises(PurrganError, match="unknown augment.policy operation 'blur'; use any of: color, translation, cutout"):
        check_policy("color,blur")


def test_hflip_mirrors_about_half():
    x = torch.arange(16.0).view(1, 1, 1, 16).repeat(200, 1, 1, 1)
    out = random_hflip(x, _gen())
    flipped = (out[:, 0, 0, 0] == 15).float().mean()
    assert 0.35 < flipped < 0.65
    assert torch.equal(out[out[:, 0, 0, 0] == 15], x.flip(-1)[out[:, 0, 0, 0] == 15])


def test_ema_follows_the_weights_with_the_given_decay():
    model = torch.nn.Linear(2, 2)
    ema = make_ema(model)
    before = ema.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, before + 0.1)
    assert not ema.weight.requires_grad


# ---------------------------------------------------------------- ADA (Karras et al. 2020)


def _observe(augment, scores, times):
    for _ in range(times):
        augment.observe({"real_scores": scores})


def test_ada_probability_rises_on_an_overfitting_signal_and_stays_at_0_on_a_balanced_one():
    from purrgan.augment import AdaptiveAugment

    memorised = AdaptiveAugment((), 0.0, target=0.6, kimg=1.0, interval=4)
    _observe(memorised, torch.full((50,), 3.0), 8)  # D is sure of every real: r_t = 1 > 0.6
    assert memorised.r_t.item() == 1.0
    assert memorised.p.item() == pytest.approx(2 * 200 / 1000)  # two adjustments of 200 images each, at 1 per 1000
    balanced = AdaptiveAugment((), 0.0, target=0.6, kimg=1.0, interval=4)
    _observe(balanced, torch.linspace(-1, 1, 50), 40)  # as many reals above 0 as below: r_t = 0
    assert balanced.p.item() == 0.0 and abs(balanced.r_t.item()) < 0.05
    assert set(memorised.policy) == {"color", "translation", "cutout"}  # an empty policy means all operations


def test_ada_applies_each_operation_with_probability_p():
    from purrgan.augment import AdaptiveAugment

    augment = AdaptiveAugment(("cutout",), 0.0, 0.6, 100.0, 4)
    images = torch.ones(2000, 1, 8, 8)
    rng = torch.Generator().manual_seed(0)
    assert torch.equal(augment(images, rng, 0.0), images)  # p = 0 at the start: nothing changes
    augment.p = torch.tensor(0.3)
    changed = (augment(images, rng, 0.0) != images).flatten(1).any(1).float().mean()
    assert abs(changed.item() - 0.3) < 0.04


def test_ada_p_rises_when_d_memorises_a_tiny_set_and_is_logged(tmp_path):
    from conftest import tiny_config
    from purrgan.monitor import read_metrics
    from purrgan.loop import train

    run = tmp_path / "run"
    train(tiny_config(data__classes="0", train__batch_size="16", train__steps="150", optim__lr_d="1e-3",
                      augment__adaptive="true", augment__ada_kimg="2", data__val_fraction="0.9"), run)
    rows = read_metrics(run)
    assert rows[0]["ada_p"] < 0.2 and rows[-1]["ada_p"] > 0.3 and rows[-1]["ada_rt"] > 0.6
    assert "ada_p" in (run / "metrics.csv").read_text().splitlines()[0]


def test_resume_with_ada_is_bit_exact(tmp_path):
    from safetensors.torch import load_file

    from conftest import tiny_config
    from purrgan.loop import train

    settings = dict(augment__adaptive="true", augment__ada_kimg="1", train__checkpoint_every="1000")
    train(tiny_config(train__steps=40, **settings), tmp_path / "whole")
    train(tiny_config(train__steps=20, **settings), tmp_path / "halves")
    train(tiny_config(train__steps=40, **settings), tmp_path / "halves", resume=True)
    a = load_file(tmp_path / "whole" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "halves" / "checkpoints" / "last.safetensors")
    assert any("augment" in key for key in a) and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_ema_ramp_up_keeps_a_short_runs_average_close_behind():
    from purrgan.ema import ema_decay

    assert ema_decay(0.999, 5, start=10) == 0.0  # before ema_start G_ema copies G
    assert ema_decay(0.999, 50_000, rampup=0.05) == pytest.approx(0.999)  # long runs: the configured decay
    half_life = torch.log(torch.tensor(0.5)) / torch.log(torch.tensor(ema_decay(0.999, 599, rampup=0.05)))
    assert half_life.item() == pytest.approx(30.0, rel=1e-4)  # 600 steps in: a 30-step half-life, not 693
    assert ema_decay(0.999, 599, rampup=0.0) == 0.999
