"""Checkpoints: one safetensors file per save, written atomically, verified on load, never unpickled.

Tensors (weights, optimiser moments, RNG states) are stored as safetensors; everything else (step,
config, optimiser hyper-parameters) as JSON in the file's metadata. Nested state is flattened with a
JSON "skeleton" whose leaves point at tensor names, so loading needs no pickle at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .errors import PurrganError

FORMAT = "purrgan-checkpoint-2"  # the SHA-256 covers every byte of the file
FORMAT_0_1 = "purrgan-checkpoint-1"  # purrgan 0.1: the SHA-256 covers the tensors only
LAST = "last.safetensors"
NEW = f".{LAST}.new"  # the next last.safetensors, complete on disk before any rotation starts
_NO_HASH = "0" * 64
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- (un)flattening nested state


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = prefix or "tensor"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"T": name}
    if isinstance(obj, dict):
        return {"d": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"t" if isinstance(obj, tuple) else "l": items}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError("a node of the skeleton is not a one-entry table")
    (kind, value), = node.items()
    if kind == "T":
        return tensors[value]
    if kind == "d":
        return {k: _unflatten(v, tensors) for k, v in value}
    if kind == "l":
        return [_unflatten(v, tensors) for v in value]
    if kind == "t":
        return tuple(_unflatten(v, tensors) for v in value)
    if kind == "v":
        return value
    raise ValueError(f"unknown node kind {kind!r}")


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        sha.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


# ---------------------------------------------------------------- files


def encode(state: dict[str, Any]) -> bytes:
    """Return the checkpoint file's bytes for a nested state dict of tensors and plain values.

    The SHA-256 stored in the header is that of the whole file with the hash itself written as zeros,
    so an edit anywhere (a tensor, the step in the header) is found.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    metadata = {"format": FORMAT, "purrgan_version": __version__, "skeleton": json.dumps(skeleton), "sha256": _NO_HASH}
    blob = st_save(tensors, metadata=metadata)
    start = _hash_position(blob)
    digest = hashlib.sha256(blob).hexdigest().encode()
    return blob[:start] + digest + blob[start + 64:]


def _hash_position(blob: bytes) -> int:
    """Return where the 64 hex digits of "sha256" start in a checkpoint's header (ValueError if it has none)."""
    header_end = 8 + int.from_bytes(blob[:8], "little")
    match = re.search(rb'"sha256":\s*"([0-9a-f]{64})"', blob[8:header_end])
    if match is None:
        raise ValueError("no sha256 in the header")
    return 8 + match.start(1)


def decode(blob: bytes, origin: str = "checkpoint") -> dict[str, Any]:
    """Return the nested state stored in checkpoint bytes; PurrganError if they are not a valid checkpoint."""
    if not blob:
        raise PurrganError(f"{origin} is empty (0 bytes); it was probably cut off while being written")
    try:
        tensors = st_load(blob)
        metadata = _read_metadata(blob)
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as error:
        raise PurrganError(f"{origin} is not a purrgan checkpoint or is truncated/corrupt ({error})") from None
    if metadata.get("format") not in (FORMAT, FORMAT_0_1):
        raise PurrganError(f"{origin} is a safetensors file but not a purrgan checkpoint")
    version = str(metadata.get("purrgan_version", "0"))
    if _version_tuple(version) > _version_tuple(__version__):
        raise PurrganError(f"{origin} was written by purrgan {version}, newer than this purrgan {__version__}; upgrade purrgan")
    if metadata["format"] == FORMAT_0_1:
        intact = _digest(tensors) == metadata.get("sha256")
    else:
        try:
            start = _hash_position(blob)
            intact = hashlib.sha256(blob[:start] + _NO_HASH.encode() + blob[start + 64:]).hexdigest() == metadata.get("sha256")
        except ValueError:
            intact = False
    if not intact:
        raise PurrganError(f"{origin} is corrupt or was edited: its content does not match the hash stored in it")
    try:
        return _unflatten(json.loads(metadata["skeleton"]), tensors)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as error:
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise PurrganError(f"{origin} has a damaged structure ({detail})") from None


def _read_metadata(blob: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then a JSON header holding "__metadata__".
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    return header.get("__metadata__", {}) or {}


def describe_load_error(error: Exception) -> str:
    """Return the informative line of a load_state_dict error (e.g. "size mismatch for main.0.weight ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line), lines[0] if lines else type(error).__name__)
    return detail.rstrip(".")


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def write_atomic(path: Path, blob: bytes, what: str = "the previous checkpoint is untouched") -> None:
    """Write blob to path so that path is either the old file or the complete new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself cannot be written: there is no temporary file to remove
        raise PurrganError(f"could not write {path}: {error.strerror or error}; {what}") from None
    _fsync_dir(path.parent)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writes left in folder (call only while holding the run's lock)."""
    removed = []
    for leftover in folder.glob(".*.tmp-*"):
        try:
            leftover.unlink()
            removed.append(leftover)
        except OSError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _older(index: int) -> str:
    return LAST if index == 0 else f"last-{index}.safetensors"


def save(folder: Path, state: dict[str, Any], extra_names: tuple[str, ...] = (), keep: int = 2) -> Path:
    """Write state as folder/last.safetensors, keeping the keep - 1 before it as last-1, last-2, ...

    Crash-consistent at every moment: the new file is complete on disk (as .last.safetensors.new)
    before anything moves; last.safetensors is never absent (it is hard-linked to last-1 before the
    new file replaces it); and loading takes a complete .new file as the newest. extra_names get a
    copy too (e.g. per-epoch checkpoints).
    """
    blob = encode(state)
    write_atomic(folder / NEW, blob)
    try:
        for index in range(keep - 2, 0, -1):  # last-1 -> last-2, ... (each replace drops the oldest)
            if (folder / _older(index)).exists():
                os.replace(folder / _older(index), folder / _older(index + 1))
        if keep >= 2 and (folder / LAST).exists():
            _link_or_copy(folder / LAST, folder / _older(1))  # last-1 is the old last; last stays in place
        os.replace(folder / NEW, folder / LAST)
    except OSError as error:
        raise PurrganError(f"could not rotate the checkpoints in {folder}: {error.strerror or error}; "
                           f"the newest complete one is kept and --resume finds it") from None
    _fsync_dir(folder)
    for name in extra_names:
        write_atomic(folder / name, blob)
    return folder / LAST


def _link_or_copy(source: Path, target: Path) -> None:
    """Make target a second name of source (a copy where the filesystem has no hard links), atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def checkpoints_newest_first(folder: Path) -> list[Path]:
    """Return .last.safetensors.new (a rotation cut short), last.safetensors, last-1.safetensors, ... that exist."""
    found = [folder / name for name in (NEW, LAST) if (folder / name).exists()]
    older = sorted(folder.glob("last-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else 1 << 30)
    return found + older


def load(path: Path) -> dict[str, Any]:
    """Return the state in a checkpoint file."""
    if not path.is_file():
        raise PurrganError(f"checkpoint {path} does not exist")
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise PurrganError(f"cannot read {path}: {error.strerror or error}") from None
    return decode(blob, str(path))


def find_checkpoint(path: str | Path) -> Path:
    """Return the checkpoint file for a run folder (its newest) or a checkpoint path."""
    return _candidates(path)[0]


def _candidates(path: str | Path) -> list[Path]:
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        raise PurrganError(f"{path} does not exist; give a run folder or a .safetensors checkpoint")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    existing = checkpoints_newest_first(folder)
    if not existing:
        raise PurrganError(f"no checkpoint in {folder}; train first with `purrgan train --out {path}`")
    return existing


def load_latest(path: str | Path, set_aside: bool = False) -> tuple[dict[str, Any], Path]:
    """Return the newest valid checkpoint of a run, falling back to older ones when it is damaged, and its path.

    With set_aside (a training about to write into the folder, holding its lock), a damaged file is renamed
    `<name>.rejected-<time>`: the next rotation would otherwise move it to last-1 and delete the good one,
    leaving a known-bad file as the run's only fallback.
    """
    candidates = _candidates(path)
    first_error = None
    for candidate in candidates:
        try:
            state = load(candidate)
        except PurrganError as error:
            first_error = first_error or error
            log.warning("%s; trying an older checkpoint", error)
            if set_aside and candidate.exists():
                aside = candidate.with_name(f"{candidate.name}.rejected-{time.strftime('%Y%m%d-%H%M%S')}")
                try:
                    os.replace(candidate, aside)
                    log.warning("set %s aside as %s (kept for you to look at; never loaded again)", candidate.name, aside.name)
                except OSError:
                    pass  # a read-only folder: the save that follows says so
            continue
        if candidate != candidates[0]:
            log.warning("using %s instead", candidate)
        elif candidate.name == NEW:
            log.info("%s is the newest complete checkpoint (a rotation was cut short); using it", candidate)
        return state, candidate
    raise first_error
