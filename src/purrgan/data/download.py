"""Downloading data set files once: a progress bar, resumable partial files, checksums, clear offline errors."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import PurrganError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def cache_dir() -> Path:
    """Return the data cache folder: $PURRGAN_DATA, else the platform's user cache folder + /purrgan."""
    if os.environ.get("PURRGAN_DATA"):
        return Path(os.environ["PURRGAN_DATA"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "purrgan"


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Return the hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, md5: str | None) -> None:
    """Raise PurrganError (and delete the file) if path does not have the expected MD5."""
    if md5 is None:
        return
    actual = file_digest(path)
    if actual != md5:
        path.unlink(missing_ok=True)
        raise PurrganError(f"{path.name} has MD5 {actual}, expected {md5}; the damaged file was deleted, run the command again")


def download(url: str, dest: Path, md5: str | None = None, progress: bool = True, attempts: int = 5,
             timeout: float = 60.0) -> Path:
    """Download url to dest (resuming a partial dest.part), verify its MD5, and return dest."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            _fetch(url, part, progress, timeout)
            break
        except _Interrupted as error:  # the connection broke mid-file: go on from where it stopped
            last_error = error
            log.warning("download of %s interrupted at %d bytes; resuming", url, part.stat().st_size if part.exists() else 0)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise PurrganError(f"could not download {url} ({reason}); without a network, download it elsewhere "
                               f"and put it at {dest}") from None
    else:
        raise PurrganError(f"download of {url} kept breaking off ({last_error}); run the command again to resume, "
                           f"or put the file at {dest} by hand")
    verify(part, md5)
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    pass


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "purrgan", **({"Range": f"bytes={have}-"} if have else {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = _progress_bar(part.name.removesuffix(".part"), total, have) if progress else None
        received = have
        try:
            with open(part, "ab" if have else "wb") as handle:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, ValueError) as error:
                        raise _Interrupted(str(error)) from None
                    if not block:
                        break
                    handle.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received < total:
        raise _Interrupted(f"got {received} of {total} bytes")


def _progress_bar(name: str, total: int | None, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)
