"""Reading image files out of folders, .zip and .tar(.gz) archives by relative name, in a stable order.

Nothing a data set holds can stop it or reach outside it: member names are normalised (absolute
names lose their leading slash, ".." is refused), each file is capped in size before it is read,
and files or folders that cannot be read, named in bytes that are not UTF-8, encrypted or packed
with an unsupported method are skipped and counted.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from ..errors import PurrganError
from .images import IMAGE_EXTENSIONS

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_FILE_BYTES = 256 * 2 ** 20  # no training image is this large; a bigger member is a bomb or a mistake


def is_archive(path: Path) -> bool:
    """Return whether path names a supported archive."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith("._") and base.lower().endswith(IMAGE_EXTENSIONS)  # skip macOS resource forks


def clean_member_name(name: str) -> str | None:
    """Return an archive member's name as a safe relative path ("a/b.png"), or None when it cannot be one."""
    name = name.replace("\\", "/")
    if len(name) > 1 and name[1] == ":":  # a Windows drive letter
        name = name[2:]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any(not _utf8(p) for p in parts):
        return None
    return "/".join(parts)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a name whose bytes were not UTF-8 (Python keeps them as surrogates)
        return False


def walk_images(root: Path) -> tuple[list[str], list[str]]:
    """Return the image files under a folder (sorted relative names) and what could not be listed.

    An explicit stack instead of recursion: a folder nested thousands deep must not overflow Python's stack;
    a symbolic link back up the tree is visited once.
    """
    found, problems, stack, seen = [], [], [root], set()
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            if (info.st_ino, info.st_dev) in seen:
                continue
            seen.add((info.st_ino, info.st_dev))
            entries = list(os.scandir(folder))
        except OSError as error:
            problems.append(f"{folder}: {error.strerror or error}")
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file() and is_image_name(entry.name):
                    relative = Path(entry.path).relative_to(root).as_posix()
                    if _utf8(relative):
                        found.append(relative)
                    else:
                        problems.append(f"{relative.encode('utf-8', 'backslashreplace').decode()}: name is not UTF-8")
            except OSError as error:
                problems.append(f"{entry.path}: {error.strerror or error}")
    return sorted(found), problems


class ImageFiles:
    """The image files of a folder or archive: names (relative, '/'-separated) and their bytes on demand.

    Folders and zips are read in sorted name order, by random access. A tar(.gz) is read as a stream,
    in the order its members were written, so that an archive larger than memory is never held in it
    (random access into a .tar.gz would decompress from the start every time): listing it is one
    pass that keeps only the names, and pairs() is another.

    `problems` counts what could not even be listed or named (unreadable folders, bad names, oversized
    or unreadable members); read() raises PurrganError for a file that cannot be read.
    """

    def __init__(self, path: Path):
        self.path, self.problems, self.first_problem = path, 0, ""
        self.streamed = False  # a tar archive: names in archive order, bytes only through pairs()
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: dict[str, str] = {}
        self._tar_names: dict[str, str] = {}  # clean name -> member name
        try:
            if path.is_dir():
                self.names = self._walk()
            elif path.name.lower().endswith(".zip"):
                self.names = self._list_zip()
            else:
                self.streamed = True
                self.names = self._list_tar()
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as error:
            raise self._corrupt(error) from None

    def _corrupt(self, error: Exception) -> PurrganError:
        return PurrganError(f"archive {self.path} is truncated or corrupt ({error}); delete it and download or copy it again")

    def _problem(self, what: str) -> None:
        self.problems += 1
        self.first_problem = self.first_problem or what

    def _walk(self) -> list[str]:
        names, problems = walk_images(self.path)
        for problem in problems:
            self._problem(problem)
        return names

    def _admit(self, raw_name: str, size: int) -> str | None:
        """Return a member's safe relative name, or None (counted as a problem) for an unsafe or oversized one."""
        name = clean_member_name(raw_name)
        if name is None:
            self._problem(f"{raw_name!r}: not a safe relative name")
        elif size > MAX_FILE_BYTES:
            self._problem(f"{name}: {size / 2 ** 20:.0f} MB, too large for an image")
        else:
            return name
        return None

    def _list_zip(self) -> list[str]:
        self._zip = zipfile.ZipFile(self.path)  # kept open: reopening per member rereads the directory
        for info in self._zip.infolist():
            if info.is_dir() or not is_image_name(info.filename) or info.filename.startswith("__MACOSX/"):
                continue
            name = self._admit(info.filename, info.file_size)
            if name is not None:
                self._zip_names[name] = info.filename
        return sorted(self._zip_names)

    def _list_tar(self) -> list[str]:
        # One sequential pass that reads headers and skips the data.
        with tarfile.open(self.path, "r|*") as archive:
            for member in archive:
                if member.isfile() and is_image_name(member.name):
                    name = self._admit(member.name, member.size)
                    if name is not None and name not in self._tar_names:
                        self._tar_names[name] = member.name
        return list(self._tar_names)

    def read(self, name: str) -> bytes:
        """Return the bytes of one file (not of a streamed tar: use pairs()); PurrganError when it cannot be read."""
        try:
            if self.streamed:
                raise OSError("a tar archive is read in one pass (pairs())")
            if self._zip is not None:
                with self._zip.open(self._zip_names[name]) as handle:
                    blob = handle.read(MAX_FILE_BYTES + 1)
            else:
                with open(self.path / name, "rb") as handle:
                    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                        raise OSError("not a regular file")
                    blob = handle.read(MAX_FILE_BYTES + 1)
        except (OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, EOFError) as error:
            # RuntimeError: an encrypted zip member; NotImplementedError: an unsupported method such as deflate64
            raise PurrganError(f"{name}: cannot be read ({type(error).__name__}: {str(error) or 'no detail'})") from None
        if len(blob) > MAX_FILE_BYTES:
            raise PurrganError(f"{name}: larger than {MAX_FILE_BYTES // 2 ** 20} MB, too large for an image")
        return blob

    def pairs(self, names: list[str] | None = None, skip: int = 0):
        """Yield (name, bytes or PurrganError) for names (default: all), in their order, leaving out the first skip.

        A streamed tar yields its members in archive order (the order of `names` as listed) and stops
        once every name asked for has been read.
        """
        wanted = self.names if names is None else names
        try:
            if self.streamed:
                yield from self._tar_pairs(wanted[skip:])
                return
            for name in wanted[skip:]:
                try:
                    yield name, self.read(name)
                except PurrganError as error:
                    yield name, error
        finally:
            self.close()

    def _tar_pairs(self, names: list[str]):
        members = {self._tar_names[n]: n for n in names}
        try:
            with tarfile.open(self.path, "r|*") as archive:
                for member in archive:
                    name = members.pop(member.name, None)
                    if name is None:
                        continue
                    try:
                        handle = archive.extractfile(member)
                        if handle is None:
                            raise OSError("not a regular file")
                        yield name, handle.read(MAX_FILE_BYTES + 1)
                    except OSError as error:
                        yield name, PurrganError(f"{name}: cannot be read ({type(error).__name__}: {error})")
                    if not members:
                        return
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise self._corrupt(error) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def iter_images(path: Path):
    """Yield (relative name, file bytes) of every readable image in a folder or archive, sorted by name."""
    for name, blob in ImageFiles(path).pairs():
        if not isinstance(blob, Exception):
            yield name, blob


def read_members(path: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Return {member name: bytes} of the files of a tar(.gz) archive whose name passes wanted, in one pass."""
    found = {}
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and wanted(member.name) and member.size <= MAX_FILE_BYTES:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        found[member.name] = handle.read(MAX_FILE_BYTES + 1)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise PurrganError(f"archive {path} is truncated or corrupt ({error}); delete it and download or copy it again") from None
    return found
