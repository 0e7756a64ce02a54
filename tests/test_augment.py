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
