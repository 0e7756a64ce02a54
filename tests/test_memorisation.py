"""Is it copying? Only a sample close to one training image and far from the rest is a copy; noise is never one."""

import json

import torch

from purrgan import load_generator
from purrgan.data import load_images, to_float
from purrgan.memorisation import memorisation
from purrgan.products import check_memorisation


class _Replay(torch.nn.Module):
    """A 'generator' that draws its images from a fixed set (the training set: a memoriser; noise: an early G)."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images = images

    def sample(self, n, seed=0, **kwargs):
        index = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))[:n]
        return self.images[index]


def test_a_generator_that_replays_its_training_images_is_copying(tmp_path):
    data = load_images("digits", 32, 1)
    result = check_memorisation(_Replay(to_float(data.images)), data, tmp_path)
    assert result["verdict"] == "copying" and result["copies"] > 0.9, result["why"]
    assert json.loads((tmp_path / "memorisation.json").read_text())["verdict"] == "copying"
    assert (tmp_path / "samples" / "nearest.png").is_file()


def test_noise_is_never_called_a_copy_even_though_it_sits_close_to_everything(tmp_path):
    # Flat grey and faint noise sit nearer to many training images than those do to each other: an absolute
    # threshold called them "100% copies". Here they are too early to judge, with no copy among them.
    data = load_images("digits", 32, 1)
    for images in (0.02 * torch.randn(256, 1, 32, 32) - 0.6, 0.3 * torch.randn(256, 1, 32, 32).clamp(-1, 1)):
        result = check_memorisation(_Replay(images), data, tmp_path)
        assert result["copies"] == 0 and result["verdict"] == "too early to judge", result["why"]


def test_a_trained_generator_is_not_flagged(trained_run, tmp_path):
    data = load_images("digits", 32, 1)
    result = check_memorisation(load_generator(trained_run), data, tmp_path)
    assert result["verdict"] in ("not copying", "too early to judge") and result["copies"] < 0.03, result["why"]


def test_copies_of_an_image_with_a_near_twin_in_the_set_are_still_copies():
    training = torch.randint(0, 255, (400, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    twins = torch.cat([training, training[:40] ^ 1])  # 40 images with a near-twin in the set (one grey level off)
    result = memorisation(twins[:40], twins, reference=440)
    assert result["copies"] == 1.0  # nearest at 0, the twin next, but the following eight are far
    assert 0.03 < result["data_copies"] <= 0.06  # the set's own near-twins (80 of 440), as far as the 5% closeness bar lets
    assert result["verdict"] == "copying"
    assert memorisation(training[:128], training)["copies"] == 1.0
    fresh = torch.randint(0, 255, (128, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert memorisation(fresh, training)["copies"] == 0


def test_the_words_count_a_single_near_copy_instead_of_rounding_it_to_zero():
    from purrgan.memorisation import _verdict

    verdict, why = _verdict(1 / 256, 0.0, 0.92, 256, 100)
    assert verdict == "not copying" and why.startswith("1 of 256 samples (0.4%) are near-copies")
    assert "0 of 100 real images (0%)" in why
