"""Reading images out of folders, .zip and .tar(.gz) archives, as (name, bytes) pairs in a stable order."""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from ..errors import PurrganError
from .images import IMAGE_EXTENSIONS

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    """Return whether path names a supported archive."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith("._") and base.lower().endswith(IMAGE_EXTENSIONS)  # skip macOS resource forks


def iter_images(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (relative name, file bytes) of every image in a folder or archive, sorted by name."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p.name)):
            yield file.relative_to(path).as_posix(), file.read_bytes()
        return
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for name in sorted(n for n in archive.namelist() if _is_image(n) and not n.startswith("__MACOSX/")):
                    yield name, archive.read(name)
        else:
            # One sequential pass (random access into a .tar.gz decompresses from the start every time).
            yield from sorted(read_members(path, _is_image).items())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as error:
        raise PurrganError(f"archive {path} is truncated or corrupt ({error}); delete it and download or copy it again") from None


def read_members(path: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Return {member name: bytes} of the files of a tar(.gz) archive whose name passes wanted, in one pass."""
    found = {}
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and wanted(member.name):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found[member.name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise PurrganError(f"archive {path} is truncated or corrupt ({error}); delete it and download or copy it again") from None
    return found
