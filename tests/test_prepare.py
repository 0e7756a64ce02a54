"""Prepared files: memory-mapped, written as they are decoded, on several processes, resumable after a kill."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from purrgan.data import load_images
from purrgan.data import decode as decode_module
from purrgan.data import prepare as prepare_module
from purrgan.data.prepare import PreparedWriter, prepare, read_metadata, read_prepared
from purrgan.data.sources import parse_source
from purrgan.errors import PurrganError


def _folder(root, per_class=40):
    """cat/ and dog/ of random 24x24 PNGs, plus one exact duplicate and one broken file."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    (root / "dog" / "copy.png").write_bytes((root / "dog" / "000.png").read_bytes())
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _anonymous_kb() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("RssAnon:"))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads RssAnon from /proc (Linux)")
def test_a_prepared_set_is_memory_mapped_not_loaded(tmp_path):
    path = tmp_path / "big.safetensors"
    writer = PreparedWriter(path, "synthetic", 64, 3)
    block = np.random.default_rng(0).integers(0, 255, (2048, 3, 64, 64), dtype=np.uint8)
    for _ in range(12):  # 24,576 images, 302 MB
        writer.append(block, None)
    writer.finish({"source": "synthetic", "count": 12 * 2048, "resolution": 64, "channels": 3})
    before = _anonymous_kb()
    data = load_images(str(path), 64, 3)
    batch = data.batch(torch.randperm(len(data))[:512])
    grown = (_anonymous_kb() - before) / 1024
    assert len(data) == 24576 and batch.shape == (512, 3, 64, 64)
    assert grown < 60, f"reading a 302 MB prepared set took {grown:.0f} MB of process memory"
    torch.testing.assert_close(data.batch(torch.tensor([2048 * 5 + 7])), torch.from_numpy(block[7:8]), rtol=0, atol=0)
    # Mapped read-only and shared: a private writable map is charged against memory by the kernel, which refuses one
    # larger than RAM + swap ("Cannot allocate memory", as safetensors' own safe_open did on a 26 GiB file).
    maps = [line.split() for line in open("/proc/self/maps") if line.rstrip().endswith(str(path))]
    assert maps and all("w" not in fields[1] for fields in maps), maps


def _prepared(path):
    images, labels, info = read_prepared(path)
    return images.clone(), labels, {k: v for k, v in info.items() if k != "prepared_at"}


def test_a_prepare_killed_midway_continues_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, caplog):
    source = parse_source(str(_folder(tmp_path / "pets")))
    monkeypatch.setattr(decode_module, "CHUNK", 16)
    reference = _prepared(prepare(source, 32, 3, out=tmp_path / "reference.safetensors"))
    target = tmp_path / "resumed.safetensors"
    real_write, records = prepare_module.write_atomic, []

    def killed_on_the_third_record(path, blob, what=""):  # the chunk's pixels are on disk, its record is not
        records.append(path)
        if len(records) == 3:
            raise KeyboardInterrupt
        real_write(path, blob, what)

    monkeypatch.setattr(prepare_module, "write_atomic", killed_on_the_third_record)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, 32, 3, out=target)
    assert not target.exists()  # nothing half-written is ever taken as complete
    monkeypatch.setattr(prepare_module, "write_atomic", real_write)
    with caplog.at_level(logging.INFO):
        prepare(source, 32, 3, out=target)
    assert "continuing an interrupted prepare" in caplog.text and "32 of 82 files were done" in caplog.text
    images, labels, info = _prepared(target)
    assert torch.equal(images, reference[0]) and torch.equal(labels, reference[1])
    assert info == reference[2] and info["duplicates"] == 1 and info["skipped"] == 1 and info["class_counts"] == [40, 40]
    assert not (tmp_path / ".resumed.safetensors.partial").exists()


def test_a_partial_prepare_of_another_size_is_not_continued(tmp_path, monkeypatch):
    source = parse_source(str(_folder(tmp_path / "pets", per_class=20)))
    monkeypatch.setattr(decode_module, "CHUNK", 8)
    target = tmp_path / "p.safetensors"
    writer = PreparedWriter(target, "another source", 32, 3)
    writer.append(np.zeros((8, 3, 32, 32), np.uint8), np.zeros(8, np.int64), consumed=8)
    prepare(source, 32, 3, out=target)
    images, labels, info = read_prepared(target)
    assert len(images) == 40 and info["count"] == 40 and images.float().mean() > 50  # the zeros were not kept


def test_decoding_on_two_processes_gives_the_same_file_as_on_one(tmp_path, monkeypatch):
    source = parse_source(str(_folder(tmp_path / "pets")))
    monkeypatch.setattr(decode_module, "CHUNK", 16)
    serial = _prepared(prepare(source, 32, 3, out=tmp_path / "one.safetensors", workers=1))
    parallel = _prepared(prepare(source, 32, 3, out=tmp_path / "two.safetensors", workers=2))
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1]) and serial[2] == parallel[2]


def test_progress_is_reported_as_files_are_done(tmp_path, monkeypatch):
    source = parse_source(str(_folder(tmp_path / "pets", per_class=20)))
    monkeypatch.setattr(decode_module, "CHUNK", 10)
    seen = []
    prepare(source, 32, 3, out=tmp_path / "p.safetensors", progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 42) and seen[-1] == (42, 42) and len(seen) == 6


def test_a_cut_off_prepared_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "p.safetensors"
    writer = PreparedWriter(path, "x", 16, 1)
    writer.append(np.zeros((10, 1, 16, 16), np.uint8), None)
    writer.finish({"source": "x", "count": 10, "resolution": 16, "channels": 1})
    assert read_metadata(path)["count"] == 10
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PurrganError, match="shorter than its header says"):
        read_prepared(path)
