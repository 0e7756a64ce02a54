"""Prepared data sets: every image decoded and resized once into one uint8 safetensors file.

The file holds `images` (N, C, H, W) uint8 and `labels` (N,) int64, and in its metadata the class
names and provenance (source, its fingerprint, size, counts). Training reuses it while the
fingerprint of the source and the size match, and prepares it again when either changes; it reads
the images through a memory map, so a set larger than memory costs page cache, not process memory.
Images are stored in the order the source is read: sorted names for a folder or zip, the order of
the members for a tar archive (read as a stream).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..checkpoint import write_atomic
from ..errors import PurrganError
from .archives import walk_images
from .download import cache_dir
from .decode import decode_stream, default_workers
from .sources import (SOURCES, FileSource, SourceSpec, file_source, keep_classes, local_files, read_source, report_tally,
                      tally_chunks)

Progress = Callable[[int, int], None]  # (source files done, total)
PARALLEL_FROM = 2000  # image files from which decoding is spread over processes by default

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


def default_path(spec: SourceSpec, resolution: int, channels: int, classes: tuple[str, ...] = ()) -> Path:
    """Return where the prepared file of a source lives in the cache (one file per resolved source, options and size)."""
    chosen = "-" + hashlib.sha1(",".join(classes).encode()).hexdigest()[:8] if classes else ""
    return cache_dir() / "prepared" / f"{spec.key()}{chosen}-{resolution}px-{channels}c.safetensors"


def read_prepared(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Return (images, labels or None, metadata) of a prepared file; the images are memory-mapped, not read.

    The uint8 pixels stay in the file and the page cache: batches gather the pages they need, so a set
    larger than memory trains in little anonymous memory, and several processes share one copy.
    """
    header, data_start = _header(path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") not in READABLE:
        raise PurrganError(f"{path} is not a purrgan prepared data file")
    try:
        pixels = _mapped(path, header, "images", data_start, "U8", np.uint8)
        if pixels.ndim != 4 or not all(pixels.shape):
            raise ValueError("images are not a non-empty (N, C, H, W) array")
        labels = _mapped(path, header, "labels", data_start, "I64", np.dtype("<i8")) if "labels" in header else None
        labels = torch.from_numpy(np.array(labels)) if labels is not None else None  # small: read into memory
    except (TypeError, KeyError, ValueError, OSError) as error:
        raise PurrganError(f"{path} is not a readable prepared data file ({error}); delete it to prepare again") from None
    with warnings.catch_warnings():  # a read-only map: nothing ever writes into a data set's pixels
        warnings.filterwarnings("ignore", message=".*not writable.*")
        images = torch.from_numpy(pixels)
    return images, labels, _decode_info(path, metadata)


def _mapped(path: Path, header: dict, name: str, data_start: int, dtype: str, numpy_dtype) -> np.memmap:
    """Return one tensor of a safetensors file as a read-only memory map.

    Read-only and shared, never copy-on-write: a private writable map of a file larger than the
    machine's memory is refused by the kernel's overcommit check (as safetensors' own safe_open
    is, for the whole file), while a read-only one costs nothing until its pages are read.
    """
    entry = header[name]
    shape = tuple(int(n) for n in entry["shape"])
    begin, end = (int(n) for n in entry["data_offsets"])
    if entry["dtype"] != dtype or end - begin != int(np.prod(shape)) * np.dtype(numpy_dtype).itemsize:
        raise ValueError(f"{name} is not the {dtype} array its header describes")
    if data_start + end > path.stat().st_size:
        raise ValueError("the file is shorter than its header says (cut off?)")
    return np.memmap(path, dtype=numpy_dtype, mode="r", offset=data_start + begin, shape=shape)


def _header(path: Path) -> tuple[dict, int]:
    """Return a safetensors file's JSON header and where its data starts."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= 100 * 2 ** 20:
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a table")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PurrganError(f"{path} is not a readable prepared data file ({error}); delete it to prepare again") from None
    return header, 8 + length


def _decode_info(path: Path, metadata: dict[str, str]) -> dict:
    try:
        return {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    except (ValueError, RecursionError):
        raise PurrganError(f"{path} has damaged metadata; delete it to prepare again") from None


def prepare(spec: SourceSpec, resolution: int, channels: int, out: Path | None = None, force: bool = False,
            workers: int | None = None, progress: Progress | None = None, classes: tuple[str, ...] = ()) -> Path:
    """Return a prepared file of the source at this size, building it unless an up-to-date one exists.

    Image files are decoded on `workers` processes (default: every core but one) and written as they
    come, so memory stays flat whatever the set's size; a killed prepare continues where it stopped
    (PreparedWriter). progress(done, total) is called as source files are done. classes keeps only
    those classes (a training run prepares the whole source once and picks its classes from it).
    """
    path = out or default_path(spec, resolution, channels, classes)
    want = fingerprint(spec, resolution, channels) + (f"|classes={','.join(classes)}" if classes else "")
    with _exclusive(path):  # a second process preparing the same file waits for the first, then finds it done
        if path.exists() and not force:
            try:
                if read_metadata(path).get("fingerprint") == want:
                    return path
                log.info("the source of %s changed; preparing it again", path.name)
            except PurrganError:
                log.warning("%s is damaged; preparing it again", path)
        started = time.perf_counter()
        files = file_source(spec, classes)
        if files is None:  # a named set stored as arrays (CIFAR-10's pickles, MNIST's idx files, the digits)
            decoded = read_source(spec, resolution, channels)
            if classes:
                decoded = keep_classes(decoded, classes, spec.name)
            writer = PreparedWriter(path, want, resolution, channels, resume=False)
            writer.append(decoded.images, decoded.labels)
            info = _info(spec, resolution, channels, want, len(decoded.images), decoded.class_names, decoded.labels,
                         decoded.skipped, decoded.duplicates, decoded.grayscale, decoded.own_size, decoded.layout)
            writer.finish(info)
        else:
            # Starting processes costs seconds: a small set decodes faster in this one.
            workers = workers or (default_workers() if len(files.names) > PARALLEL_FROM else 1)
            info = _prepare_files(spec, files, resolution, channels, path, want, workers, progress)
        seconds = time.perf_counter() - started
    log.info("prepared %d images of %s at %dx%d in %.1f s (%.0f images/s) -> %s", info["count"], info["source"],
             resolution, resolution, seconds, info["count"] / max(seconds, 1e-9), path)
    return path


def _prepare_files(spec: SourceSpec, files: FileSource, resolution: int, channels: int, path: Path, want: str,
                   workers: int, progress: Progress | None) -> dict:
    """Decode a FileSource chunk by chunk into a PreparedWriter, continuing an earlier killed pass; return the metadata."""
    writer = PreparedWriter(path, want, resolution, channels)
    done = writer.progress
    total = len(files.names)
    if done["consumed"]:
        log.info("continuing an interrupted prepare of %s: %d of %d files were done", files.origin, done["consumed"], total)
    else:
        log.info("preparing %d image files of %s at %dx%d on %d process(es)", total, files.origin, resolution, resolution,
                 workers)
    tally = done.get("tally")
    if progress:
        progress(done["consumed"], total)
    for chunk in decode_stream(files.reader(done["consumed"]), resolution, channels, files.crop, workers, writer.seen):
        labels = np.array([files.labels[n] for n in chunk.names], dtype=np.int64) if files.labels else None
        tally = tally_chunks(files, [chunk], tally)
        writer.append(chunk.images, labels, chunk.consumed, chunk.digests, tally)
        if progress:
            progress(writer.progress["consumed"], total)
    tally = tally or tally_chunks(files, [])
    report_tally(files, tally)
    info = _info(spec, resolution, channels, want, tally["kept"], files.class_names if files.labels else [],
                 writer.labels() if files.labels else None, tally["skipped"], tally["duplicates"], tally["gray"],
                 tally["own_size"], files.layout)
    writer.finish(info)
    return info


def _info(spec: SourceSpec, resolution: int, channels: int, want: str, count: int, class_names: list[str],
          labels: np.ndarray | None, skipped: int, duplicates: int, grayscale: bool, own_size, layout: str = "") -> dict:
    counts = np.bincount(labels, minlength=len(class_names)).tolist() if labels is not None else []
    return {
        "fingerprint": want, "source": str(spec.path) if spec.path else spec.name, "options": spec.options,
        "resolution": resolution, "channels": channels, "count": int(count),
        "class_names": class_names, "class_counts": counts, "skipped": skipped,
        "duplicates": duplicates, "grayscale": grayscale, "own_size": list(own_size) if own_size else None,
        "layout": layout,
        "flippable": not grayscale if spec.path is not None else SOURCES[spec.name].flippable,
        "purrgan_version": __version__,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def to_prepared(spec: SourceSpec, resolution: int, channels: int, want: str = "") -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Return (images, labels, metadata) of a source decoded in memory, as a prepared file would hold them."""
    decoded = read_source(spec, resolution, channels)
    images = torch.from_numpy(np.ascontiguousarray(decoded.images))
    labels = torch.from_numpy(decoded.labels) if decoded.labels is not None else None
    info = _info(spec, resolution, channels, want, len(images), decoded.class_names, decoded.labels, decoded.skipped,
                 decoded.duplicates, decoded.grayscale, decoded.own_size, decoded.layout)
    return images, labels, info


class PreparedWriter:
    """Writes a prepared file as images arrive, in bounded memory, so that a killed prepare continues.

    The work happens in a hidden folder beside the target (`.NAME.partial/`): `data` is the future
    file, its header space reserved and its pixels appended; labels and the SHA-1 digests of the
    files taken (for dropping duplicates) go to files of their own; and `progress.json`, rewritten
    atomically after each chunk is on disk, says how many source files are done. A new writer for
    the same target and source continues from there (anything written after the last record is cut
    off); one for another source starts over. The target appears only when finish() renames a
    complete file onto it, so nothing half-written is ever taken as a prepared file.
    """

    RESERVED = 1 << 20  # bytes kept for the header at the start of `data`; a larger header is copied at the end

    def __init__(self, path: Path, fingerprint: str, resolution: int, channels: int, resume: bool = True):
        self.path, self.image_bytes = path, channels * resolution * resolution
        self.work = path.with_name(f".{path.name}.partial")
        self.files = {name: self.work / name for name in ("data", "labels", "digests")}
        self.progress = {"fingerprint": fingerprint, "shape": [channels, resolution, resolution], "consumed": 0,
                         "written": 0, "digests": 0, "tally": None}
        saved = self._saved() if resume else None
        if saved is not None and {k: saved.get(k) for k in ("fingerprint", "shape")} == \
                {k: self.progress[k] for k in ("fingerprint", "shape")}:
            self.progress = saved
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            # Cut off whatever was written after the last record: a kill between the data and the record.
            for name, size in (("data", self.RESERVED + self.progress["written"] * self.image_bytes),
                               ("labels", 8 * self.progress["written"]), ("digests", 20 * self.progress["digests"])):
                with open(self.files[name], "ab") as handle:
                    handle.truncate(size)
            self.seen = set(self._chunks_of(self.files["digests"].read_bytes(), 20))
        except OSError as error:
            raise PurrganError(f"cannot prepare into {path.parent}: {error.strerror or error}") from None

    def _saved(self) -> dict | None:
        try:
            saved = json.loads((self.work / "progress.json").read_text())
            return saved if isinstance(saved, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _chunks_of(blob: bytes, size: int) -> list[bytes]:
        return [blob[i:i + size] for i in range(0, len(blob), size)]

    def append(self, images: np.ndarray, labels: np.ndarray | None, consumed: int = 0, digests: list[bytes] = (),
               tally: dict | None = None) -> None:
        """Add decoded images (n, C, H, W) uint8 and their labels; record that `consumed` more source files are done."""
        try:
            for name, blob in (("data", np.ascontiguousarray(images, dtype=np.uint8).tobytes()),
                               ("labels", b"" if labels is None else np.asarray(labels, dtype="<i8").tobytes()),
                               ("digests", b"".join(digests))):
                if blob:
                    with open(self.files[name], "ab") as handle:
                        handle.write(blob)
                        handle.flush()
                        os.fsync(handle.fileno())
            self.progress.update(consumed=self.progress["consumed"] + consumed, digests=self.progress["digests"] + len(digests),
                                 written=self.progress["written"] + len(images), tally=tally)
            write_atomic(self.work / "progress.json", json.dumps(self.progress).encode(), "the prepare can be continued")
        except OSError as error:
            raise PurrganError(f"could not write {self.work}: {error.strerror or error}; run the command again to "
                               f"continue where it stopped") from None

    def labels(self) -> np.ndarray:
        return np.fromfile(self.files["labels"], dtype="<i8")

    def finish(self, info: dict) -> None:
        """Write the header and the labels, and rename the complete file onto the target."""
        count = self.progress["written"]
        has_labels = self.files["labels"].stat().st_size > 0
        pixels = count * self.image_bytes
        header = {"__metadata__": {"format": FORMAT, **{k: json.dumps(v) for k, v in info.items()}},
                  "images": {"dtype": "U8", "shape": [count, *self.progress["shape"]], "data_offsets": [0, pixels]}}
        if has_labels:
            header["labels"] = {"dtype": "I64", "shape": [count], "data_offsets": [pixels, pixels + 8 * count]}
        text = json.dumps(header, separators=(",", ":")).encode()
        data = self.files["data"]
        try:
            if len(text) + 8 > self.RESERVED:  # a very long class list: move the pixels behind a larger header
                data = self._copied_behind(text)
            else:
                text += b" " * (self.RESERVED - 8 - len(text))  # the safetensors format allows a header padded with spaces
            with open(data, "r+b") as handle:
                handle.write(len(text).to_bytes(8, "little") + text)
                handle.seek(0, os.SEEK_END)
                if has_labels:
                    handle.write(self.files["labels"].read_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(data, self.path)
        except OSError as error:
            raise PurrganError(f"could not write {self.path}: {error.strerror or error}; no prepared file was written") from None
        shutil.rmtree(self.work, ignore_errors=True)

    def _copied_behind(self, header: bytes) -> Path:
        target = self.work / "data.large-header"
        with open(self.files["data"], "rb") as source, open(target, "wb") as out:
            out.write(b"\0" * (8 + len(header)))
            source.seek(self.RESERVED)
            shutil.copyfileobj(source, out, 16 * 2 ** 20)
        return target


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock for preparing path (flock: released however the process ends)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock; write_atomic still keeps the file whole
        yield
        return
    # The lock lives in the cache, not beside a file the user named (removing a lock file after use would race).
    name = hashlib.sha1(str(path.resolve()).encode("utf-8", "backslashreplace")).hexdigest()[:16]
    lock = cache_dir() / "locks" / f"prepare-{name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as error:
        raise PurrganError(f"cannot prepare into {path.parent}: {error.strerror or error}") from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def read_metadata(path: Path) -> dict:
    """Return the provenance metadata of a prepared file without reading (or mapping) its images."""
    metadata = _header(path)[0].get("__metadata__") or {}
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
