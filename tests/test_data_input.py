"""What `--data` means: options on paths, train/test layouts, the images' own size, named sets before folders,
one prepared file per source, prepared files used at their size, and a run labelled by its real data."""

import io
import logging
import os
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from purrgan import load_generator
from purrgan.cli import main
from purrgan.config import load_config
from purrgan.data import load_images
from purrgan.data.prepare import prepare
from purrgan.data.sources import native_shape, parse_source
from purrgan.errors import PurrganError

SMALL = ["--quiet", "--steps", "1", "--batch-size", "4", "--set", "model.g_width=4", "--set", "model.d_width=4",
         "--set", "train.num_samples=4", "--set", "train.amp=off", "--logger", "none"]


def _png(size=32, value=None, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    array = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def _cifar_like(root, classes=("cat", "dog"), per_class=3, size=32):
    """train/<class>/ and test/<class>/ as in the CIFAR-10 and MNIST image copies."""
    for split, count in (("train", per_class), ("test", 2)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                (root / split / name / f"{i}.png").write_bytes(_png(size, seed=100 * c + 10 * (split == "test") + i))
    return root


def _tar(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def test_train_and_test_folders_are_splits_with_classes_under_them(tmp_path):
    folder = _cifar_like(tmp_path / "cifar")
    for source in (str(folder), str(_tar(folder, tmp_path / "cifar.tar.gz"))):
        train = load_images(source, 32, 3)
        assert train.class_names == ["cat", "dog"] and len(train) == 6
        assert len(load_images(source + ":split=test", 32, 3)) == 4
        assert len(load_images(source + ":split=all", 32, 3)) == 10
        dogs = load_images(source + ":classes=dog", 32, 3)
        assert dogs.class_names == ["dog"] and len(dogs) == 3
    with pytest.raises(PurrganError, match="has no train/, test/ or val/ folders, so :split=test has nothing to pick"):
        load_images(str(folder / "train") + ":split=test", 32, 3)
    with pytest.raises(PurrganError, match="bad option 'size=3' for .*valid options: classes=..., split=train|test|all"):
        parse_source(str(folder) + ":size=3")


def test_a_folder_of_32px_images_trains_at_32_and_says_so(tmp_path, caplog):
    folder = _cifar_like(tmp_path / "cifar")
    assert native_shape(parse_source(str(folder)))[:2] == (32, 3)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["train", "--data", str(folder), "--out", str(run), *SMALL]) == 0
    assert load_generator(run).sample(1, seed=0).shape == (1, 3, 32, 32)
    assert "at 32x32 RGB (the images' own size), flips on" in caplog.text
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(4):
        (gray / f"{i}.png").write_bytes(_png(28, mode="L", seed=i))
    assert native_shape(parse_source(str(gray)))[:2] == (32, 1)  # 28 is rounded up to a size the models build


def test_a_run_on_a_folder_is_described_by_its_data_and_flips_follow_the_data(tmp_path):
    photos, scans = tmp_path / "photos", tmp_path / "scans"
    photos.mkdir()
    scans.mkdir()
    for i in range(4):
        (photos / f"{i}.png").write_bytes(_png(40, seed=i))
        (scans / f"{i}.png").write_bytes(_png(40, mode="L", seed=i))
    for folder, flip in ((photos, "on"), (scans, "off")):
        run = tmp_path / f"run-{folder.name}"
        assert main(["train", "--data", str(folder), "--out", str(run), *SMALL]) == 0
        config = load_config(config_file=run / "config.toml")
        assert config.data.hflip == flip and str(folder) in config.description and "digits" not in config.description
        assert "digits" not in (run / "MODEL.md").read_text()


def test_a_named_set_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "0.png").write_bytes(_png(32, seed=1))
    with caplog.at_level(logging.WARNING):
        assert main(["data", "info", "digits"]) == 0
    assert "1797" in capsys.readouterr().out and "write ./digits" in caplog.text
    assert main(["data", "info", "./digits"]) == 0
    assert "images:   1 of" in capsys.readouterr().out
    assert main(["data", "download", "digits"]) == 0  # no KeyError: 'path'
    assert main(["data", "download", "./digits"]) == 2
    assert "is a path, not a named data set" in capsys.readouterr().err


def test_one_prepared_file_per_source_however_the_path_is_typed(tmp_path, monkeypatch):
    folder = _cifar_like(tmp_path / "cifar")
    monkeypatch.chdir(tmp_path)
    first = prepare(parse_source("cifar"), 32, 3)
    stamp = first.stat().st_mtime_ns
    again = prepare(parse_source(str(folder.resolve())), 32, 3)
    assert again == first and again.stat().st_mtime_ns == stamp  # not prepared twice


def test_a_prepared_file_is_used_at_its_own_size_whatever_the_preset(tmp_path, capsys):
    folder = _cifar_like(tmp_path / "cifar")
    dogs = tmp_path / "dogs.safetensors"
    assert main(["data", "prepare", f"{folder}:classes=dog", "--size", "32", "--out", str(dogs)]) == 0
    run = tmp_path / "run"
    # the file holds the 3 dogs alone (it held all 6 images before: `data prepare` ignored :classes=)
    assert main(["train", "--preset", "dcgan-cats64", "--data", str(dogs), "--out", str(run), *SMALL[:-2], "--batch-size", "3"]) == 0
    assert load_generator(run).sample(1, seed=0).shape == (1, 3, 32, 32)


def test_empty_data_is_refused(capsys, tmp_path):
    assert main(["train", "--data", "", "--out", str(tmp_path / "r")]) == 2
    assert "--data is empty (an unset shell variable?)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_data_info_shows_duplicates_and_skips(tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(32, seed=i))
    (folder / "copy.png").write_bytes(_png(32, seed=0))
    (folder / "bad.png").write_bytes(b"not a picture")
    assert main(["data", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "dropped:  1 exact duplicates" in out and "skipped:  1 unreadable files" in out and "own size: 32x32" in out


def test_an_unreadable_file_is_named_plainly_and_counted_once(tmp_path, caplog):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "good.png").write_bytes(_png(32))
    (folder / "bad.png").write_bytes(b"not a picture")
    with caplog.at_level(logging.INFO):
        load_images(str(folder), 32, 3)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "bad.png: not a readable image" in warnings[0] and "BytesIO" not in warnings[0]


def test_split_folders_beside_other_folders_are_refused_and_the_first_line_says_how_splits_were_read(tmp_path, capsys, caplog):
    # train/ and test/ beside cats/ trained on "3 classes: cats, test, train": the test set mixed in, silently.
    folder = _cifar_like(tmp_path / "data")
    (folder / "cats").mkdir()
    for i in range(4):
        (folder / "cats" / f"{i}.png").write_bytes(_png(seed=50 + i))
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "holds split folders (test/, train/) beside other folders (cats/)" in err and ":split=none" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    everything = load_images(f"{folder}:split=none", 32, 3)  # asked for: every top folder is a class
    assert everything.class_names == ["cats", "test", "train"] and len(everything) == 4 + 6 + 4
    with caplog.at_level(logging.INFO):
        assert main(["train", "--data", str(tmp_path / "data" / "train"), "--out", str(tmp_path / "ok"), *SMALL]) == 0
    split_only = _cifar_like(tmp_path / "splits")
    with caplog.at_level(logging.INFO):
        assert main(["train", "--data", str(split_only), "--out", str(tmp_path / "run2"), *SMALL]) == 0
    assert "(the train/ folder (test/ left out: :split=NAME or :split=all to choose)): 6 images in 2 classes" in caplog.text


def test_a_train_and_val_layout_is_read_as_splits_too(tmp_path):
    folder = tmp_path / "pets"
    for split, count in (("train", 3), ("valid", 2)):
        for name in ("cat", "dog"):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                (folder / split / name / f"{i}.png").write_bytes(_png(seed=hash((split, name, i)) % 1000))
    train = load_images(str(folder), 32, 3)
    assert train.class_names == ["cat", "dog"] and len(train) == 6 and "valid" not in train.class_names
    assert len(load_images(f"{folder}:split=val", 32, 3)) == 4
    with pytest.raises(PurrganError, match=r"has no test/ folder \(it has train/, val/\); add :split=train or :split=all"):
        load_images(f"{folder}:split=test", 32, 3)


def test_data_prepare_with_classes_keeps_only_those_classes(tmp_path, capsys):
    from purrgan.data.prepare import read_prepared

    folder = _cifar_like(tmp_path / "cifar", classes=("cat", "dog", "frog"))
    out = tmp_path / "dogs.safetensors"
    assert main(["data", "prepare", f"{folder}:classes=dog", "--out", str(out)]) == 0
    images, labels, info = read_prepared(out)
    assert len(images) == 3 and info["class_names"] == ["dog"] and labels.tolist() == [0, 0, 0]
    assert main(["data", "prepare", f"{folder}:classes=fox", "--out", str(tmp_path / "fox.safetensors")]) == 2
    assert "unknown class 'fox'" in capsys.readouterr().err and not (tmp_path / "fox.safetensors").exists()
