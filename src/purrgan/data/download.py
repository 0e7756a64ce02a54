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
            reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
            raise DownloadError(url, dest, str(reason)) from None
    else:
        raise PurrganError(f"download of {url} kept breaking off ({last_error}); run the command again to resume, "
                           f"or put the file at {dest} by hand")
    verify(part, md5)
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    pass


class DownloadError(PurrganError):
    """A download that could not be made (offline, refused, not found); names the URL once and where to put a copy."""

    def __init__(self, url: str, dest: Path, reason: str):
        self.url, self.dest, self.reason = url, dest, reason
        super().__init__(f"could not download {url} ({reason}); without a network, download it elsewhere and put it "
                         f"at {dest}")


def download_from_google_drive(file_id: str, dest: Path, md5: str | None) -> Path:
    """Download a Google Drive file (large ones answer with a confirmation page first) through torchvision, verified."""
    if dest.exists():
        return dest
    try:
        from torchvision.datasets.utils import download_file_from_google_drive
    except ImportError:  # pragma: no cover - torchvision is a dependency
        raise PurrganError("downloading from Google Drive needs torchvision") from None
    url = f"https://drive.google.com/file/d/{file_id}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        download_file_from_google_drive(file_id, str(dest.parent), dest.name, md5)
    except Exception as error:  # noqa: BLE001 - network, quota and HTML pages all mean "no file"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DownloadError(url, dest, first) from None
    if not dest.exists():
        raise DownloadError(url, dest, "Google Drive answered without the file (a download quota?)")
    verify(dest, md5)
    return dest


def check_archive(path: Path) -> int:
    """Return the number of images in a .tar(.gz) or .zip read end to end; PurrganError (and the file deleted) if cut short.

    For files whose publisher gives no checksum: a complete, readable archive is the check that is possible.
    """
    import tarfile
    import zipfile
    import zlib

    count = 0
    images = (".png", ".jpg", ".jpeg")
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()  # reads every member and checks its CRC
                if broken is not None:
                    raise zipfile.BadZipFile(f"member {broken} is damaged")
                count = sum(name.lower().endswith(images) for name in archive.namelist())
        else:
            with tarfile.open(path, "r|*") as archive:
                for member in archive:
                    count += member.isfile() and member.name.lower().endswith(images)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        path.unlink(missing_ok=True)
        raise PurrganError(f"{path.name} is not a complete archive ({error}); it was deleted, run the command again") from None
    if count == 0:
        path.unlink(missing_ok=True)
        raise PurrganError(f"{path.name} holds no images; it was deleted, run the command again")
    return count


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
