import pickle

import pytest
import torch

from purrgan import checkpoint
from purrgan.errors import PurrganError


def _state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return {"step": 7, "model": model.state_dict(), "opt": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "nested": {"tuple": (1, 2.5, "x"), "none": None}}


def test_round_trip_keeps_every_value_and_type():
    state = _state()
    back = checkpoint.decode(checkpoint.encode(state))
    assert back["step"] == 7 and back["nested"] == {"tuple": (1, 2.5, "x"), "none": None}
    assert set(back["opt"]["state"]) == set(state["opt"]["state"])  # integer keys survive
    for key, value in state["model"].items():
        torch.testing.assert_close(back["model"][key], value)
    torch.testing.assert_close(back["rng"], state["rng"])
    optimizer = torch.optim.Adam(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).parameters())
    optimizer.load_state_dict(back["opt"])


def test_truncated_empty_and_tampered_files_are_reported():
    blob = checkpoint.encode(_state())
    with pytest.raises(PurrganError, match="truncated/corrupt"):
        checkpoint.decode(blob[: len(blob) // 2], "cut.safetensors")
    with pytest.raises(PurrganError, match="is empty"):
        checkpoint.decode(b"", "empty.safetensors")
    tampered = bytearray(blob)
    tampered[-3] ^= 0xFF
    with pytest.raises(PurrganError, match="does not match the hash"):
        checkpoint.decode(bytes(tampered))


def test_a_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoints" / "last.safetensors"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"generator": Exploit()}))
    with pytest.raises(PurrganError, match="not a purrgan checkpoint"):
        checkpoint.load_latest(tmp_path)
    assert not marker.exists()


def test_save_keeps_previous_and_falls_back_to_it(tmp_path):
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, {"step": 1, "w": torch.ones(2)})
    checkpoint.save(folder, {"step": 2, "w": torch.ones(2)})
    assert checkpoint.load(folder / "last-1.safetensors")["step"] == 1
    (folder / "last.safetensors").write_bytes(b"\x00" * 10)  # a last file destroyed after the fact
    state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 1 and path.name == "last-1.safetensors"
    assert not list(folder.glob(".*tmp*"))


def test_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, {"step": 1, "w": torch.ones(2)})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(PurrganError, match="No space left on device; the previous checkpoint is untouched"):
        checkpoint.save(folder, {"step": 2, "w": torch.ones(2)})
    monkeypatch.undo()
    assert checkpoint.load_latest(tmp_path)[0]["step"] == 1
    assert not list(folder.glob(".*tmp*"))


def test_missing_checkpoint_messages(tmp_path):
    with pytest.raises(PurrganError, match="does not exist; give a run folder"):
        checkpoint.find_checkpoint(tmp_path / "nope")
    with pytest.raises(PurrganError, match="no checkpoint in .*train first"):
        checkpoint.find_checkpoint(tmp_path)


def test_keep_k_rotates_and_falls_back_through_every_older_file(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in range(1, 6):
        checkpoint.save(folder, {"step": step, "w": torch.ones(2)}, keep=3)
    assert sorted(p.name for p in folder.iterdir()) == ["last-1.safetensors", "last-2.safetensors", "last.safetensors"]
    assert [checkpoint.load(p)["step"] for p in checkpoint.checkpoints_newest_first(folder)] == [5, 4, 3]
    (folder / "last.safetensors").write_bytes(b"")
    blob = (folder / "last-1.safetensors").read_bytes()
    (folder / "last-1.safetensors").write_bytes(blob[: len(blob) - 5])
    state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 3 and path.name == "last-2.safetensors"


def test_a_checkpoint_from_a_newer_purrgan_is_refused(monkeypatch):
    monkeypatch.setattr(checkpoint, "__version__", "99.0.0")
    blob = checkpoint.encode({"step": 1})
    monkeypatch.undo()
    with pytest.raises(PurrganError, match="written by purrgan 99.0.0, newer than this purrgan .*; upgrade purrgan"):
        checkpoint.decode(blob, "future.safetensors")
