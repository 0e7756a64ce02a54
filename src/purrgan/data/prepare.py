"""Prepared data sets: every image decoded and resized once into one uint8 safetensors file.

The file holds `images` (N, C, H, W) uint8 and `labels` (N,) int64, and in its metadata the class
names and provenance (source, its fingerprint, size, counts). Training reuses it while the
fingerprint of the source and the size match, and prepares it again when either changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .. import __version__
from ..checkpoint import write_atomic
from ..errors import PurrganError
from .archives import walk_images
from .download import cache_dir
from .sources import SOURCES, SourceSpec, local_files, read_source

FORMAT = "purrgan-prepared-2"
READABLE = ("purrgan-prepared-1", FORMAT)  # 0.1's files still load; the cache rebuilds them (the fingerprint changed)
log = logging.getLogger(__name__)


def fingerprint(spec: SourceSpec, resolution: int, channels: int) -> str:
    """Return a hash of what the prepared file depends on: the source's files (names, sizes, times) and the size.

    Names are taken relative to the source, so the same folder typed as `cifar/train` or as an
    absolute path has one fingerprint (and one prepared file).
    """
    options = sorted((k, v) for k, v in spec.options.items() if k != "classes")  # classes are picked after loading
    sha = hashlib.sha256(f"{FORMAT}|{spec.name}|{options}|{resolution}|{channels}".encode())
    if spec.path is not None and spec.path.is_dir():
        root = spec.path.resolve()
        files = [(name, root / name) for name in walk_images(root)[0]]
    elif spec.path is not None:
        files = [(spec.path.name, spec.path)]
    elif SOURCES[spec.name].packaged:
        files = [(p.name, p) for p in local_files(spec, fetch=False)]
    else:
        folder = Path(spec.options["path"]).expanduser() if "path" in spec.options else cache_dir() / spec.name
        files = [(folder.name, folder)] if folder.is_file() else [(f.filename, folder / f.filename)
                                                                   for f in SOURCES[spec.name].files]
    for name, file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        sha.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns};".encode("utf-8", "backslashreplace"))
    return sha.hexdigest()


def data_fingerprint(source: str, resolution: int, channels: int) -> str:
    """Return a hash of what a source's images are at this size: its files (names, sizes, times) and options.

    Two folders typed alike from different places differ; a folder whose files changed differs from before.
    """
    from .sources import parse_source

    spec = parse_source(source)
    if spec.path is not None and is_prepared_file(spec.path):
        stat = spec.path.stat()
        return hashlib.sha256(f"{spec.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|"
                              f"{read_metadata(spec.path).get('fingerprint')}".encode("utf-8", "backslashreplace")).hexdigest()
    where = str(spec.path.resolve()) if spec.path is not None else ""
    return hashlib.sha256(f"{where}|{fingerprint(spec, resolution, channels)}".encode("utf-8", "backslashreplace")).hexdigest()


def default_path(spec: SourceSpec, resolution: int, channels: int) -> Path:
    """Return where the prepared file of a source lives in the cache (one file per resolved source, options and size)."""
    return cache_dir() / "prepared" / f"{spec.key()}-{resolution}px-{channels}c.safetensors"


def read_prepared(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Return (images, labels or None, metadata) of a prepared file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") not in READABLE:
                raise PurrganError(f"{path} is not a purrgan prepared data file")
            images = handle.get_tensor("images")
            labels = handle.get_tensor("labels") if "labels" in handle.keys() else None
    except (SafetensorError, OSError) as error:
        raise PurrganError(f"{path} is not a readable prepared data file ({error}); delete it to prepare again") from None
    return images, labels, _decode_info(path, metadata)


def _decode_info(path: Path, metadata: dict[str, str]) -> dict:
    try:
        return {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    except (ValueError, RecursionError):
        raise PurrganError(f"{path} has damaged metadata; delete it to prepare again") from None


def prepare(spec: SourceSpec, resolution: int, channels: int, out: Path | None = None, force: bool = False) -> Path:
    """Return a prepared file of the source at this size, building it unless an up-to-date one exists."""
    path = out or default_path(spec, resolution, channels)
    want = fingerprint(spec, resolution, channels)
    if path.exists() and not force:
        try:
            if read_metadata(path).get("fingerprint") == want:
                return path
            log.info("the source of %s changed; preparing it again", path.name)
        except PurrganError:
            log.warning("%s is damaged; preparing it again", path)
    started = time.perf_counter()
    images, labels, info = to_prepared(spec, resolution, channels, want)
    tensors = {"images": images, **({"labels": labels} if labels is not None else {})}
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in info.items()}}
    write_atomic(path, st_save(tensors, metadata=metadata), "no prepared file was written")
    log.info("prepared %d images of %s at %dx%d in %.1f s -> %s", info["count"], info["source"], resolution, resolution,
             time.perf_counter() - started, path)
    return path


def to_prepared(spec: SourceSpec, resolution: int, channels: int, want: str = "") -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Return (images, labels, metadata) of a source decoded in memory, as a prepared file would hold them."""
    decoded = read_source(spec, resolution, channels)
    images = torch.from_numpy(np.ascontiguousarray(decoded.images))
    labels = torch.from_numpy(decoded.labels) if decoded.labels is not None else None
    counts = np.bincount(decoded.labels, minlength=len(decoded.class_names)).tolist() if decoded.labels is not None else []
    info = {
        "fingerprint": want, "source": str(spec.path) if spec.path else spec.name, "options": spec.options,
        "resolution": resolution, "channels": channels, "count": int(decoded.images.shape[0]),
        "class_names": decoded.class_names, "class_counts": counts, "skipped": decoded.skipped,
        "duplicates": decoded.duplicates, "grayscale": decoded.grayscale, "own_size": decoded.own_size,
        "flippable": not decoded.grayscale if spec.path is not None else SOURCES[spec.name].flippable,
        "purrgan_version": __version__,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return images, labels, info


def read_metadata(path: Path) -> dict:
    """Return the provenance metadata of a prepared file without reading its images."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise PurrganError(f"{path} is not a readable prepared data file ({error})") from None
    if metadata.get("format") not in READABLE:
        raise PurrganError(f"{path} is not a purrgan prepared data file")
    return _decode_info(path, metadata)


def is_prepared_file(path: Path) -> bool:
    """Return whether path is a prepared data file (by name and header)."""
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    try:
        read_metadata(path)
        return True
    except PurrganError:
        return False
