"""A new user's first hour: the progress bar, quiet ranks, FID you can trust, downloads, a lighter install,
the report's new sections and the small things (issue 14)."""

import http.server
import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from purrgan import load_generator
from purrgan.cli import main
from purrgan.errors import PurrganError
from purrgan.monitor import read_metrics
from purrgan.loop import train

STANDIN = "standin_features:make"
SMALL = ["--set", "model.g_width=8", "--set", "model.d_width=8", "--batch-size", "32", "--set", "train.amp=off",
         "--logger", "none", "--set", "train.log_every=10"]


# ---------------------------------------------------------------- progress and output


def test_the_bar_starts_at_the_first_step_counts_every_step_and_resumes_where_training_is(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "30", *SMALL]) == 0
    err = capsys.readouterr().err
    assert "| 0/30 [" in err and "30/30" in err  # there before the first step, not at the first logged one
    assert "step/s" in err or "s/step" in err
    import re

    rates = [float(rate) for rate in re.findall(r"([\d.]+)step/s", err)]
    assert rates and max(rates) < 10_000  # not 771011.76step/s
    assert main(["train", "--out", str(run), "--resume", "--steps", "40"]) == 0
    err = capsys.readouterr().err
    assert "| 30/40 [" in err and "40/40" in err and "| 0/40" not in err


def test_epochs_in_the_csv_count_passes_done(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__epochs=1, train__batch_size=600, train__log_every=1), run)  # 1797 images: 2 batches an epoch
    assert [r["epoch"] for r in read_metrics(run)] == [0.5, 1.0]


def test_sample_without_a_seed_says_which_seed_it_drew(trained_run, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        assert main(["sample", str(trained_run), "--num", "4", "--out", str(tmp_path / "a.png")]) == 0
    seed = int(caplog.text.split("(seed ")[1].split(":")[0])
    assert main(["sample", str(trained_run), "--num", "4", "--seed", str(seed), "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


# ---------------------------------------------------------------- FID you can trust


def _folder(root, shift, count=30, size=32):
    rng = np.random.default_rng(int(shift))
    root.mkdir(parents=True)
    for i in range(count):
        array = np.clip(rng.normal(100 + shift, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(root / f"{i}.png")
    return root


def test_reference_statistics_belong_to_the_data_not_to_its_name(tmp_path, monkeypatch):
    from purrgan.config import load_config
    from purrgan.metrics.evaluate import reference_statistics
    from purrgan.metrics.features import load_extractor

    extractor = load_extractor(STANDIN)
    means = []
    for place, shift in (("a", 0), ("b", 120)):
        _folder(tmp_path / place / "imgs", shift)
        monkeypatch.chdir(tmp_path / place)
        config = load_config(overrides={"data.source": "imgs", "data.resolution": "32", "data.channels": "3"})
        means.append(reference_statistics(config, "train", extractor)["mu"])
    assert np.abs(means[0] - means[1]).max() > 1e-3  # two folders both called imgs: two sets of statistics
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(tmp_path / "b" / "imgs" / "new.png")
    changed = reference_statistics(config, "train", extractor)["mu"]
    assert np.abs(changed - means[1]).max() > 1e-6  # the folder changed: the statistics too


def test_evaluate_two_folders_at_their_own_size_warns_below_10k_and_caches_nothing(tmp_path, caplog, capsys, monkeypatch):
    seen = []
    import standin_features

    real_call = standin_features.PixelFeatures.__call__
    monkeypatch.setattr(standin_features.PixelFeatures, "__call__", lambda self, images: seen.append(images.shape) or real_call(self, images))
    real, fake = _folder(tmp_path / "real", 0), _folder(tmp_path / "fake", 60)
    cache = os.environ["PURRGAN_DATA"]
    before = {p for p in __import__("pathlib").Path(cache).rglob("*")}
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--metrics", "fid",
                     "--feature-extractor", STANDIN]) == 0
    assert all(shape[-1] == 32 for shape in seen)  # CIFAR-sized images are not upsampled to 64 first
    assert "only 30 images on one side: below 10000 the numbers are biased upwards" in caplog.text
    assert {p for p in __import__("pathlib").Path(cache).rglob("*")} == before  # no prepared copy of throwaway folders


def test_is_with_an_extractor_without_logits_fails_before_extracting(tmp_path, capsys, trained_run, monkeypatch):
    import standin_features

    monkeypatch.setattr(standin_features.PixelFeatures, "__call__",
                        lambda self, images: {"features": images.float().flatten(1)[:, :8]})
    assert main(["evaluate", str(trained_run), "--metrics", "fid,is", "--feature-extractor", STANDIN]) == 2
    assert "needs classifier logits, which this feature extractor does not give" in capsys.readouterr().err


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_messages_name_each_url_once_and_every_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("purrgan.metrics.features.INCEPTION_URL", f"http://127.0.0.1:{_closed_port()}/weights.pth")
    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("PURRGAN_INCEPTION", raising=False)
    assert main(["evaluate", "--real", str(tmp_path), "--fake", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("http://127.0.0.1") == 1
    from purrgan.data import sources

    base = f"http://127.0.0.1:{_closed_port()}/"
    monkeypatch.setitem(sources.SOURCES, "mnist", sources.SOURCES["mnist"].__class__(
        **{**sources.SOURCES["mnist"].__dict__, "files": sources._idx_files(base, ("0" * 32,) * 4)}))
    assert main(["data", "download", "mnist"]) == 2
    err = capsys.readouterr().err
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in err
    assert "these 4 files" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- downloads on the real hosts


def test_celeba_goes_through_torchvisions_google_drive_download(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    from purrgan.data import sources

    calls = []

    def fake_drive(file_id, root, filename, md5):
        calls.append(file_id)
        import zipfile

        with zipfile.ZipFile(os.path.join(root, filename), "w") as archive:
            buffer = io.BytesIO()
            Image.fromarray(np.zeros((218, 178, 3), np.uint8)).save(buffer, "JPEG")
            archive.writestr("img_align_celeba/000001.jpg", buffer.getvalue())

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", fake_drive)
    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(sources.SOURCES, "celeba", sources.SOURCES["celeba"].__class__(
        **{**sources.SOURCES["celeba"].__dict__, "files": (sources.RemoteFile(
            "img_align_celeba.zip", "https://drive.google.com/file/d/X", None, gdrive_id="X"),)}))
    files = sources.verify_download("celeba")
    assert calls == ["X"] and files[0].is_file()

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    (tmp_path / "cache" / "celeba" / "img_align_celeba.zip").unlink()
    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", offline)
    with pytest.raises(PurrganError, match="could not download celeba .*Network is unreachable.*put it at .*img_align_celeba.zip"):
        sources.verify_download("celeba")


def test_a_cat_tarball_without_a_checksum_is_read_end_to_end(tmp_path):
    from purrgan.data.download import check_archive

    whole = tmp_path / "dataset-part1.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        for i in range(3):
            buffer = io.BytesIO()
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
            info = tarfile.TarInfo(f"part1/cat_{i}.png")
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    assert check_archive(whole) == 3
    blob = whole.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PurrganError, match="is not a complete archive .*it was deleted, run the command again"):
        check_archive(cut)
    assert not cut.exists()


# ---------------------------------------------------------------- a lighter install


def test_the_cli_starts_without_torch_and_the_package_needs_no_scikit_learn():
    probe = ("import sys, purrgan.cli; from purrgan.cli import _parser; _parser();"
             "print('torch' in sys.modules, end=' ');"
             "from purrgan.data import load_images; load_images('digits', 16, 1); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ}).stdout.split()
    assert out == ["False", "False"]  # --help without torch; the digits without scikit-learn
    from purrgan.data import load_images

    assert len(load_images("digits", 32, 1)) == 1797


def test_an_exported_file_gets_the_users_normal_mode(trained_run, tmp_path):
    assert main(["export", str(trained_run), "--format", "safetensors", "--out", str(tmp_path / "g.safetensors")]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "g.safetensors").stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- the report


def test_the_report_answers_is_it_copying_and_shows_flow_curve_classes_data_and_environment(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=40, train__eval_every=20, train__eval_num=200, train__feature_extractor=STANDIN,
                      model__conditional="projection", data__classes="1,7"), run)
    memorised = json.loads((run / "memorisation.json").read_text())
    assert 0 <= memorised["copies"] <= 1 and memorised["space"].startswith("pixels") and memorised["training_images"] > 300
    assert memorised["verdict"] in ("copying", "some near-copies", "not copying", "too early to judge")
    assert Image.open(run / "samples" / "nearest.png").size == (4 * 34 + 2, 8 * 34 + 2)  # 8 rows: sample + 3 neighbours
    assert Image.open(run / "samples" / "classes.png").size[1] == 2 * 34 + 2  # one row per class
    flow = json.loads((run / "gradient_flow.json").read_text())
    assert any(k.startswith("grad_mean/G/") for k in flow) and any(k.startswith("grad_max/D/") for k in flow)
    summary = json.loads((run / "run.json").read_text())
    assert summary["data"]["images"] > 300 and set(summary["data"]["classes"]) == {"1", "7"}
    assert summary["environment"]["torch"] == torch.__version__ and "device" in summary["environment"]
    assert summary["environment"]["device_name"].endswith(f"CPU, {os.cpu_count()} cores")  # CPU model named
    assert not summary["environment"]["device_name"].startswith(" CPU")
    page = (run / "report.html").read_text()
    for text in ("Is it copying the training data?", "A near-copy is a sample", "Gradient flow", "One row per class",
                 "metrics during training", "Data", "Environment", "duplicates dropped"):
        assert text in page, text


