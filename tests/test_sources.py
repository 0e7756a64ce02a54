"""Every upstream format built in the test itself (no network), downloads against a local HTTP server."""

import gzip
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from purrgan.cli import main
from purrgan.data import load_images, split_validation
from purrgan.data.download import download
from purrgan.data.prepare import prepare, read_metadata, read_prepared
from purrgan.data.sources import parse_source
from purrgan.errors import PurrganError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _add(tar, name, blob):
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def make_cifar(path, per_batch=20, seed=0):
    """A CIFAR-10 python archive in the real layout; pixel [0, 0, 0] of each image encodes (batch, index)."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            data = rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8)
            data[:, 0] = b * 40 + np.arange(per_batch)
            labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, protocol=2)
            _add(tar, f"cifar-10-batches-py/{name}", blob)
        _add(tar, "cifar-10-batches-py/batches.meta",
             pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}, protocol=2))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return path


def _batches(path):
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            base = m.name.split("/")[-1]
            if base.startswith(("data_batch", "test_batch")):
                out[base] = pickle.loads(tar.extractfile(m).read(), encoding="bytes")
    return out


def test_cifar10_archive_loads_and_class_filter_keeps_exactly_the_right_images(tmp_path):
    archive = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    batches = _batches(archive)
    everything = load_images(f"cifar10:path={archive}", 32, 3)
    assert everything.images.shape == (100, 3, 32, 32) and everything.images.dtype == torch.uint8
    assert everything.class_names == CIFAR_CLASSES
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32)
    assert torch.equal(everything.images[0], torch.from_numpy(first))  # exact pixels at the native size

    dogs_cats = load_images(f"cifar10:path={archive}:classes=dog,cat", 32, 3)
    train_labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    assert len(dogs_cats) == int(np.isin(train_labels, [3, 5]).sum())
    assert dogs_cats.class_names == ["dog", "cat"]
    expected_dogs = int((train_labels == 5).sum())
    assert int((dogs_cats.labels == 0).sum()) == expected_dogs
    test_only = load_images(f"cifar10:path={archive}:split=test", 32, 1)
    assert test_only.images.shape == (20, 1, 32, 32)
    assert load_images(f"cifar10:path={archive}:split=all", 64, 3).images.shape == (120, 3, 64, 64)


def test_cifar10_wrong_class_lists_the_ten_and_bad_options_are_named(tmp_path):
    archive = make_cifar(tmp_path / "c.tar.gz")
    with pytest.raises(PurrganError, match="unknown class 'doge' in .*valid classes: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck"):
        load_images(f"cifar10:path={archive}:classes=doge", 32, 3)
    with pytest.raises(PurrganError, match="'split' of cifar10 is 'val'; allowed values: train, test, all"):
        parse_source("cifar10:split=val")
    with pytest.raises(PurrganError, match="bad option 'size=3' for cifar10; valid options: split=train|test|all"):
        parse_source("cifar10:size=3")


def test_a_cifar_batch_holding_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]:
            _add(tar, name, pickle.dumps({b"data": Exploit(), b"label_names": []}))
    with pytest.raises(PurrganError, match="not a CIFAR-10 python batch .*refusing to load builtins.print"):
        load_images(f"cifar10:path={archive}", 32, 3)


def _idx(array, kind):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def make_mnist(folder, train=30, test=10):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", train), ("t10k", test)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(rng.integers(1, 255, (n, 28, 28)), "images"))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(n) % 10, "labels"))
    return folder


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_idx_files_are_padded_to_32(tmp_path, name):
    folder = make_mnist(tmp_path / "raw")
    data = load_images(f"{name}:path={folder}", 32, 1)
    assert data.images.shape == (30, 1, 32, 32)
    assert data.images[:, :, :2].max() == 0 and data.images[:, :, 2:30, 2:30].min() > 0  # 2 black pixels a side
    assert data.labels.tolist() == [i % 10 for i in range(30)]
    assert len(load_images(f"{name}:path={folder}:split=all", 32, 3)) == 40
    resized = load_images(f"{name}:path={folder}:fit=resize", 32, 1)
    assert resized.images[:, :, :2].float().mean() > 50  # resized, not padded: no black border
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\x01" * 100))
    with pytest.raises(PurrganError, match="is truncated: expected 7056 values, found 100"):
        load_images(f"{name}:path={folder}:split=test", 32, 1)


def test_celeba_zip_is_centre_cropped_and_resized(tmp_path):
    archive = tmp_path / "img_align_celeba.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            face = np.zeros((218, 178, 3), dtype=np.uint8)
            face[55:163, 35:143] = 200 + i  # the centred 108x108 box is bright, the rest black
            buffer = io.BytesIO()
            Image.fromarray(face).save(buffer, "JPEG", quality=95)
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", buffer.getvalue())
        zf.writestr("__MACOSX/img_align_celeba/._000001.jpg", b"junk")
    data = load_images(f"celeba:path={archive}", 64, 3)
    assert data.images.shape == (3, 3, 64, 64) and data.labels is None
    assert data.images[:, :, 3:-3, 3:-3].float().mean() > 190  # only the box survives the crop


def test_cat_faces_tarballs(tmp_path):
    rng = np.random.default_rng(2)
    for part in (1, 2, 3):
        with tarfile.open(tmp_path / f"dataset-part{part}.tar.gz", "w:gz") as tar:
            for i in range(4):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
                _add(tar, f"dataset-part{part}/cat_{part}_{i}.png", buffer.getvalue())
    data = load_images(f"cats:path={tmp_path}", 64, 3)
    assert data.images.shape == (12, 3, 64, 64)


def test_archives_with_class_folders_duplicates_and_a_corrupt_file(tmp_path, caplog):
    archive = tmp_path / "pets.zip"
    rng = np.random.default_rng(3)
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("cat", "dog"):
            for i in range(3):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
                zf.writestr(f"pets/{cls}/{i}.png", buffer.getvalue())
        zf.writestr("pets/dog/copy.png", zf.read("pets/dog/0.png"))
        zf.writestr("pets/dog/broken.jpg", b"\xff\xd8 not a jpeg")
    data = load_images(str(archive), 32, 3)
    assert len(data) == 6 and data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "dropped 1 exact duplicate" in caplog.text and "skipped 1 of 8 files" in caplog.text
    info = read_metadata(prepare(parse_source(str(archive)), 32, 3))
    assert info["duplicates"] == 1 and info["skipped"] == 1 and info["class_counts"] == [3, 3]


def test_truncated_archive_gives_a_clear_message(tmp_path):
    archive = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PurrganError, match="is truncated or corrupt .*delete it and download or copy it again"):
        load_images(f"cifar10:path={archive}", 32, 3)


def test_prepared_file_round_trips_exactly_and_is_rebuilt_when_the_source_changes(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    spec = parse_source(str(folder))
    path = prepare(spec, 32, 3)
    images, labels, info = read_prepared(path)
    direct = np.stack([np.asarray(Image.open(folder / f"{i}.png").resize((32, 32), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
                       for i in range(5)])
    assert torch.equal(images, torch.from_numpy(direct))
    assert info["count"] == 5 and info["resolution"] == 32 and labels is None
    stamp = path.stat().st_mtime_ns
    assert prepare(spec, 32, 3) == path and path.stat().st_mtime_ns == stamp  # up to date: not rebuilt
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "new.png")
    assert len(load_images(str(folder), 32, 3)) == 6  # the source changed: rebuilt
    assert len(load_images(str(prepare(spec, 32, 3)), 32, 3)) == 6  # a prepared file is a source too
    with pytest.raises(PurrganError, match="holds .*3, 32, 32.* images, but the config asks for .*3, 64, 64"):
        load_images(str(path), 64, 3)


def test_validation_split_is_deterministic_and_disjoint():
    data = load_images("digits", 16, 1)
    train, val = split_validation(data, 0.1)
    train2, val2 = split_validation(data, 0.1)
    assert len(val) == 180 and len(train) == 1617
    assert torch.equal(val.images, val2.images) and torch.equal(train.images, train2.images)
    assert split_validation(data, 0.0)[1] is None
    with pytest.raises(PurrganError, match="leaves no images"):
        split_validation(data, 0.9999)


# ---------------------------------------------------------------- downloads against 127.0.0.1


class _Server:
    """Serves one payload; the first `break_after` bytes of the first response only, then hangs up; honours Range."""

    def __init__(self, payload: bytes, break_after: int | None = None):
        self.payload, self.break_after, self.ranges = payload, break_after, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                start = 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                server.ranges.append(start)
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.break_after is not None:
                    self.wfile.write(body[: server.break_after])
                    server.break_after = None
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


PAYLOAD = bytes(range(256)) * 20000  # 5 MB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_interrupted_download_is_resumed_and_verified(tmp_path):
    server = _Server(PAYLOAD, break_after=1_500_000)
    try:
        path = download(server.url, tmp_path / "file.bin", MD5, progress=False)
    finally:
        server.close()
    assert path.read_bytes() == PAYLOAD
    assert server.ranges[0] == 0 and server.ranges[1] > 0  # the second request asked for the rest only
    assert not (tmp_path / "file.bin.part").exists()


def test_a_partial_file_from_an_earlier_run_is_continued(tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1234])
    server = _Server(PAYLOAD)
    try:
        download(server.url, tmp_path / "file.bin", MD5, progress=False)
    finally:
        server.close()
    assert server.ranges == [1234]
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_file_and_says_so(tmp_path):
    server = _Server(PAYLOAD)
    try:
        with pytest.raises(PurrganError, match=f"file.bin.part has MD5 {MD5}, expected 0+; the damaged file was deleted"):
            download(server.url, tmp_path / "file.bin", "0" * 32, progress=False)
    finally:
        server.close()
    assert not list(tmp_path.iterdir())


def test_no_network_names_the_url_and_where_to_put_a_manual_copy(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(PurrganError) as error:
        download(url, tmp_path / "cifar10" / "cifar-10-python.tar.gz", progress=False, timeout=5)
    message = str(error.value)
    assert url in message and str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in message and "\n" not in message
    # The named set goes through the same path: its message names the cache location.
    monkeypatch.setattr("purrgan.data.sources.SOURCES", {
        **__import__("purrgan.data.sources", fromlist=["SOURCES"]).SOURCES})
    from purrgan.data import sources
    monkeypatch.setitem(sources.SOURCES, "cifar10", sources.NamedSource(
        "test", (sources.RemoteFile("cifar-10-python.tar.gz", url, None),), sources.SOURCES["cifar10"].options,
        sources.read_cifar10, "", ""))
    with pytest.raises(PurrganError, match=r"could not download .*put it at .*cifar10/cifar-10-python.tar.gz"):
        load_images("cifar10", 32, 3)


def test_a_manual_copy_in_the_cache_folder_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))
    (tmp_path / "cache" / "cifar10").mkdir(parents=True)
    make_cifar(tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz")
    assert len(load_images("cifar10:classes=dog", 32, 3)) > 0


# ---------------------------------------------------------------- the data commands


def test_data_commands(tmp_path, capsys):
    archive = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "cats", "cifar10", "mnist", "fashion-mnist", "celeba"):
        assert name in out
    assert main(["data", "info", f"cifar10:path={archive}:classes=cat,dog"]) == 0
    out = capsys.readouterr().out
    assert "classes:  2" in out and "cat" in out and "dog" in out
    assert main(["data", "show", f"cifar10:path={archive}", "--num", "16", "--out", str(tmp_path / "real.png")]) == 0
    assert Image.open(tmp_path / "real.png").size == (4 * 34 + 2, 4 * 34 + 2)
    out_file = tmp_path / "prepared.safetensors"
    assert main(["data", "prepare", f"cifar10:path={archive}", "--size", "64", "--out", str(out_file)]) == 0
    assert read_prepared(out_file)[0].shape == (100, 3, 64, 64)
    assert main(["data", "info", "digits"]) == 0 and "1797" in capsys.readouterr().out
    assert main(["data", "info", "nonsense-set"]) == 2


def test_data_prepare_keeps_only_the_asked_classes_of_a_named_set(tmp_path):
    from purrgan.cli import main

    archive = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    out = tmp_path / "dogs.safetensors"
    assert main(["data", "prepare", f"cifar10:path={archive}:classes=dog", "--out", str(out)]) == 0
    images, labels, info = read_prepared(out)
    whole = load_images(f"cifar10:path={archive}", 32, 3)
    assert info["class_names"] == ["dog"] and set(labels.tolist()) == {0}
    assert len(images) == int((whole.labels == whole.class_names.index("dog")).sum()) < len(whole)
