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
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .errors import PurrganError

FORMAT = "purrgan-checkpoint-1"
LAST = "last.safetensors"
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
    """Return the checkpoint file's bytes for a nested state dict of tensors and plain values."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    metadata = {
        "format": FORMAT,
        "purrgan_version": __version__,
        "skeleton": json.dumps(skeleton),
        "sha256": _digest(tensors),
    }
    return st_save(tensors, metadata=metadata)


def decode(blob: bytes, origin: str = "checkpoint") -> dict[str, Any]:
    """Return the nested state stored in checkpoint bytes; PurrganError if they are not a valid checkpoint."""
    if not blob:
        raise PurrganError(f"{origin} is empty (0 bytes); it was probably cut off while being written")
    try:
        tensors = st_load(blob)
        metadata = _read_metadata(blob)
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as error:
        raise PurrganError(f"{origin} is not a purrgan checkpoint or is truncated/corrupt ({error})") from None
    if metadata.get("format") != FORMAT:
        raise PurrganError(f"{origin} is a safetensors file but not a purrgan checkpoint")
    version = metadata.get("purrgan_version", "0")
    if _version_tuple(version) > _version_tuple(__version__):
        raise PurrganError(f"{origin} was written by purrgan {version}, newer than this purrgan {__version__}; upgrade purrgan")
    if _digest(tensors) != metadata.get("sha256"):
        raise PurrganError(f"{origin} is corrupt: its content does not match the hash stored in it")
    try:
        return _unflatten(json.loads(metadata["skeleton"]), tensors)
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise PurrganError(f"{origin} has a damaged structure ({error})") from None


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


def write_atomic(path: Path, blob: bytes) -> None:
    """Write blob to path so that path is either the old file or the complete new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise PurrganError(f"could not write {path}: {error.strerror or error}; the previous checkpoint is untouched") from None
    _fsync_dir(path.parent)


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

    The new file is complete on disk before any older one moves, so a crash at any moment leaves
    every file that exists whole. extra_names get a copy too (e.g. per-epoch checkpoints).
    """
    blob = encode(state)
    tmp = folder / f".{LAST}.new"
    write_atomic(tmp, blob)
    for index in range(keep - 2, -1, -1):  # last-1 -> last-2, last -> last-1 (each replace drops the oldest)
        if (folder / _older(index)).exists():
            os.replace(folder / _older(index), folder / _older(index + 1))
    os.replace(tmp, folder / LAST)
    _fsync_dir(folder)
    for name in extra_names:
        write_atomic(folder / name, blob)
    return folder / LAST


def checkpoints_newest_first(folder: Path) -> list[Path]:
    """Return last.safetensors, last-1.safetensors, ... that exist in folder."""
    found = [folder / LAST] if (folder / LAST).exists() else []
    older = sorted(folder.glob("last-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else 1 << 30)
    return found + older


def load(path: Path) -> dict[str, Any]:
    """Return the state in a checkpoint file."""
    if not path.is_file():
        raise PurrganError(f"checkpoint {path} does not exist")
    return decode(path.read_bytes(), str(path))


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


def load_latest(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Return the newest valid checkpoint of a run, falling back to older ones when it is damaged, and its path."""
    candidates = _candidates(path)
    first_error = None
    for candidate in candidates:
        try:
            state = load(candidate)
        except PurrganError as error:
            first_error = first_error or error
            log.warning("%s; trying an older checkpoint", error)
            continue
        if candidate != candidates[0]:
            log.warning("using %s instead", candidate)
        return state, candidate
    raise first_error
