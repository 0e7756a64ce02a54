"""Decoding a stream of image files into uint8 arrays of one size: in order, on every core, in bounded memory.

The parent process reads the files (a folder, a zip, a tar stream), drops exact duplicates by their
SHA-1, and hands chunks of a few hundred files to worker processes, which decode and resize them with
Pillow. At most two chunks per worker are in flight, so a data set of any size passes through a few
megabytes of memory; results come back in the order the files were read.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from ..errors import PurrganError
from .images import decode_image

CHUNK = 256  # files per task: large enough to hide the hand-over, small enough to keep memory flat


@dataclass
class Chunk:
    """What one chunk of source files became."""
    images: np.ndarray  # (n, C, H, W) uint8: the images decoded, in source order
    names: list[str]  # their file names
    consumed: int  # source files this chunk covers: decoded, duplicates and unreadable alike
    digests: list[bytes] = field(default_factory=list)  # SHA-1 of every file that was not a duplicate
    skipped: int = 0
    duplicates: int = 0
    first_error: str = ""
    gray: bool = True  # every decoded image was grayscale
    sizes: set = field(default_factory=set)  # the (width, height) of the decoded originals


def default_workers() -> int:
    """Return how many decoding processes to use: every core this process may run on but one, which the main
    process needs to read, hash and write (on 2 cores, 2 workers were no faster than decoding in one process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return cores - 1 if cores > 2 else 1


def _decode(files: list[tuple[str, bytes]], resolution: int, channels: int, crop: float | None):
    """Decode one chunk (in a worker): (arrays, names, unreadable count, first error, all gray, sizes)."""
    arrays, names, skipped, first_error, gray, sizes = [], [], 0, "", True, set()
    for name, blob in files:
        try:
            array, was_gray, size = decode_image(blob, resolution, channels, crop=crop, name=name, report_mode=True)
        except PurrganError as error:
            skipped += 1
            first_error = first_error or str(error)
            continue
        arrays.append(array)
        names.append(name)
        gray = gray and was_gray
        sizes.add(size)
    stacked = np.stack(arrays) if arrays else np.zeros((0, channels, resolution, resolution), np.uint8)
    return stacked, names, skipped, first_error, gray, sizes


def decode_stream(pairs: Iterable[tuple[str, bytes | Exception]], resolution: int, channels: int,
                  crop: float | None = None, workers: int = 1, seen: set[bytes] | None = None,
                  chunk: int | None = None) -> Iterator[Chunk]:
    """Yield the decoded chunks of (name, bytes or the error reading it) pairs, in order.

    seen holds the SHA-1 digests of files already taken (a resumed job passes the ones it took before);
    a file whose bytes were seen is a duplicate and is dropped.
    """
    seen = set() if seen is None else seen
    pool = None
    if workers > 1:
        # spawn, not fork: the parent has PyTorch's thread pools running, which a forked child can deadlock on
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque[tuple[concurrent.futures.Future | tuple, Chunk]] = deque()
    try:
        for files, meta in _chunks(pairs, seen, chunk or CHUNK):
            args = (files, resolution, channels, crop)
            pending.append((pool.submit(_decode, *args) if pool else _decode(*args), meta))
            while len(pending) > (2 * workers if pool else 0):
                yield _finish(*pending.popleft())
        while pending:
            yield _finish(*pending.popleft())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _chunks(pairs, seen: set[bytes], size: int):
    """Yield (files to decode, a Chunk holding what the parent already knows) for each run of `size` source files."""
    files, meta = [], Chunk(np.zeros(0), [], 0)
    for name, blob in pairs:
        meta.consumed += 1
        if isinstance(blob, Exception):
            meta.skipped += 1
            meta.first_error = meta.first_error or str(blob)
        else:
            digest = hashlib.sha1(blob).digest()
            if digest in seen:  # byte-identical copies would be trained on twice as often
                meta.duplicates += 1
            else:
                seen.add(digest)
                meta.digests.append(digest)
                files.append((name, blob))
        if meta.consumed == size:
            yield files, meta
            files, meta = [], Chunk(np.zeros(0), [], 0)
    if meta.consumed:
        yield files, meta


def _finish(result, meta: Chunk) -> Chunk:
    images, names, skipped, first_error, gray, sizes = result.result() if hasattr(result, "result") else result
    meta.images, meta.names, meta.skipped = images, names, meta.skipped + skipped
    meta.first_error = meta.first_error or first_error
    meta.gray, meta.sizes = gray, sizes
    return meta
