"""A run folder in use: one training at a time (an exclusive lock), no new run over an old one, no leftovers.

The lock is an flock on RUN/.purrgan.lock, which the system releases when the process ends, however
it ends (kill -9 included), so a lock is never stale; the file also names the process that holds it.
Where flock does not exist (Windows), the file itself is the lock, and one naming a process that is
gone is recognised as stale.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from . import checkpoint
from .errors import PurrganError

LOCK = ".purrgan.lock"
log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def holds_a_run(run_dir: Path) -> bool:
    """Return whether run_dir holds a checkpoint or logged metrics of an earlier run.

    A folder whose first session died before either (a full disk at the first checkpoint, a kill -9)
    holds nothing to lose: a new run may start there, and --resume starts it at step 0 with its config.
    """
    from .monitor import read_metrics

    folder = run_dir / "checkpoints"
    return bool(any(folder.glob("*.safetensors")) or (folder / checkpoint.NEW).exists() or read_metrics(run_dir))


class RunFolder:
    """Context manager for the run folder of one training process (rank 0 of several)."""

    def __init__(self, run_dir: Path, resume: bool, data_source: str | None = None):
        self.run_dir, self.resume, self.data_source = run_dir, resume, data_source
        self.created, self.handle = False, None

    def __enter__(self) -> "RunFolder":
        self._check_location()
        if not self.resume and holds_a_run(self.run_dir):
            raise PurrganError(f"{self.run_dir} already holds a run; add --resume to continue it or choose another --out")
        try:
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as error:
            self._remove_if_empty()
            raise PurrganError(f"cannot use {self.run_dir} as the run folder: {error.strerror or error}; "
                               f"choose another --out") from None
        for folder in (self.run_dir, self.run_dir / "checkpoints"):
            for leftover in checkpoint.remove_leftovers(folder):
                log.info("removed %s, left by a write that was cut short", leftover.name)
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()
        if exc[0] is not None:
            self._remove_if_empty()  # a start that failed before writing anything leaves no folder behind

    def _check_location(self) -> None:
        from .data.sources import parse_source

        if not self.data_source:
            return
        try:
            spec = parse_source(self.data_source)
        except PurrganError:
            return  # loading the data reports it
        if spec.path is None or not spec.path.is_dir():
            return
        data, out = spec.path.resolve(), self.run_dir.resolve()
        if out == data or data in out.parents:
            raise PurrganError(f"--out {self.run_dir} is inside the data folder {spec.path}: the run's own pictures "
                               f"would become training data; choose an --out outside it")

    def _lock(self) -> None:
        path = self.run_dir / LOCK
        if fcntl is not None:
            self.handle = open(path, "a+")
            try:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.seek(0)
                holder = self.handle.read().strip() or "another process"
                self.handle.close()
                self.handle = None
                raise PurrganError(f"{self.run_dir} is in use by another training ({holder}); wait for it to finish "
                                   f"or choose another --out") from None
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(_me())
            self.handle.flush()
            return
        for _ in range(2):  # pragma: no cover - Windows: the file is the lock
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = path.read_text(errors="replace").strip()
                pid = int(holder.split("pid ")[1].split()[0]) if "pid " in holder else -1
                if _alive(pid):
                    raise PurrganError(f"{self.run_dir} is in use by another training ({holder}); wait for it to "
                                       f"finish or choose another --out") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            os.write(fd, _me().encode())
            os.close(fd)
            self.handle = path
            return

    def _unlock(self) -> None:
        if self.handle is None:
            return
        if fcntl is not None:
            try:
                (self.run_dir / LOCK).unlink(missing_ok=True)
            except OSError:
                pass
            self.handle.close()
        else:  # pragma: no cover
            Path(self.handle).unlink(missing_ok=True)
        self.handle = None

    def _remove_if_empty(self) -> None:
        if self.created:
            try:
                (self.run_dir / LOCK).unlink(missing_ok=True)
                self.run_dir.rmdir()
            except OSError:
                pass  # something was written: keep it


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _alive(pid: int) -> bool:  # pragma: no cover - Windows only
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
