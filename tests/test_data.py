import logging

import numpy as np
import pytest
import torch
from PIL import Image

from purrgan.data import load_images, to_float, to_uint8
from purrgan.data.images import decode_image
from purrgan.data.loader import DeviceLoader
from purrgan.errors import PurrganError


def _write_mixed_folder(folder):
    rng = np.random.default_rng(0)
    (folder / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (120, 40), dtype=np.uint8), "L").save(folder / "sub" / "tall_gray.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(folder / "sub" / "alpha.PNG")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "sub" / "deeper" / "small.webp")
    Image.fromarray(rng.integers(0, 255, (33, 31, 3), dtype=np.uint8)).save(folder / "x.bmp")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    (folder / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [32, 64])
def test_folder_of_mixed_sizes_and_modes(tmp_path, channels, resolution):
    _write_mixed_folder(tmp_path)
    data = load_images(str(tmp_path), resolution, channels)
    assert data.images.shape == (6, channels, resolution, resolution)
    assert data.images.dtype == torch.uint8
    assert data.skipped == 0


def test_centre_crop_keeps_the_middle(tmp_path):
    # A wide image whose centre square is white and sides are black: the crop must be all white.
    array = np.zeros((32, 96, 3), dtype=np.uint8)
    array[:, 32:64] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 16, 3)
    assert out.shape == (3, 16, 16)
    assert out[:, :, 2:-2].min() >= 250


def test_corrupt_file_among_good_ones_is_skipped_and_counted(tmp_path, caplog):
    _write_mixed_folder(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        data = load_images(str(tmp_path), 32, 3)
    assert len(data) == 6 and data.skipped == 2
    assert "skipped 2 of 8 files" in caplog.text


def test_empty_folder_missing_path_and_file_path(tmp_path):
    with pytest.raises(PurrganError, match="no images in .*png, .jpg"):
        load_images(str(tmp_path), 32, 3)
    with pytest.raises(PurrganError, match="data path .*nope does not exist"):
        load_images(str(tmp_path / "nope"), 32, 3)
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(PurrganError, match=r"is a file but not a .zip or .tar\(.gz\) archive; give a folder or an archive"):
        load_images(str(tmp_path / "a.png"), 32, 3)
    with pytest.raises(PurrganError, match="none of the 1 image files .* could be read"):
        load_images(str(tmp_path), 32, 3)


def test_digits_builtin():
    data = load_images("digits", 32, 1)
    assert data.images.shape == (1797, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.shape == (1797,) and data.class_names == [str(d) for d in range(10)]
    assert data.images.max() == 255 and data.images.min() == 0
    assert load_images("digits", 32, 3).images.shape == (1797, 3, 32, 32)


def test_float_conversion_round_trips():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    floats = to_float(images)
    assert floats.min() == -1 and floats.max() == 1
    assert torch.equal(to_uint8(floats), images)


def test_loader_covers_each_epoch_once_and_resumes_in_place():
    data = load_images("digits", 16, 1)
    loader = DeviceLoader(data, 100, seed=3, device=torch.device("cpu"))
    assert loader.batches_per_epoch == 17
    seen = torch.cat([loader.next()[1] for _ in range(17)])
    assert seen.shape == (1700,)
    first_epoch_labels = seen
    batches = [loader.next()[0] for _ in range(5)]
    state = loader.state()
    later = [loader.next()[0] for _ in range(20)]
    again = DeviceLoader(data, 100, seed=3, device=torch.device("cpu"))
    again.load_state(state)
    for a, b in zip(later, (again.next()[0] for _ in range(20))):
        assert torch.equal(a, b)
    assert not torch.equal(batches[0], later[0])
    assert first_epoch_labels.bincount().min() > 100  # a shuffled pass sees every class


def test_too_few_images_for_the_batch(tmp_path):
    _write_mixed_folder(tmp_path)
    with pytest.raises(PurrganError, match="only 6 images, fewer than the batch size 128; use --batch-size 6"):
        DeviceLoader(load_images(str(tmp_path), 32, 3), 128, 0, torch.device("cpu"))
