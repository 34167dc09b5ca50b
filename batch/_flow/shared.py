"""A few numbers every Python worker on one host reads and writes: where their learned rate is shared.

Spark runs one Python worker per task slot, and each would otherwise learn an
endpoint's rate limit on its own: each sees only its share of the 429s, their
shares drift apart, and when one task ends the others must climb to the freed
capacity alone. Mapping the same small file in every worker makes the workers of
a host one client to the endpoint. Linux's monotonic clock is system-wide, so
times stored here mean the same thing in every process.

A ``Slab`` is a fixed array of float64 cells, either in a file under a per-user
directory (``/dev/shm`` where there is one) or, when sharing is off or the file
cannot be made, private to the process: the code that uses it is the same.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import stat
import tempfile
import time
from array import array
from pathlib import Path
from typing import Protocol

try:
    import fcntl
except ImportError:  # not a POSIX system: every worker keeps its own pace
    fcntl = None  # type: ignore[assignment]

__all__ = ["Cells", "Slab", "path_for", "shared_dir", "private_dir"]

log = logging.getLogger("batch._flow.shared")

CELL = 8
STALE_FILE_S = 24 * 3600.0  # files untouched for a day belong to endpoints nobody asks any more


class Cells(Protocol):
    """What a slab's cells are to their users: float64 numbers by index (a mapped ``memoryview`` cast to
    doubles, or a private ``array('d')``)."""

    def __getitem__(self, index: int, /) -> float: ...

    def __setitem__(self, index: int, value: float, /) -> None: ...

    def __len__(self) -> int: ...


def shared_dir() -> Path:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    return base / f"spark-ai-query-{os.getuid()}"


def private_dir(folder: str | Path | None = None) -> Path:
    """``shared_dir()`` (or ``folder``), made if need be, and refused unless it is this user's alone (0700).

    /dev/shm and the temp directory are writable by everyone: a folder of that name made by
    someone else first would otherwise receive what this user's workers write there.
    """
    path = Path(folder) if folder is not None else shared_dir()
    path.mkdir(mode=0o700, parents=folder is not None, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} is not a folder private to this user (mode 0700)")
    return path


def path_for(key: str) -> Path:
    return shared_dir() / f"pace-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


class Slab:
    """``size`` float64 cells and a lock around changes to them.

    ``lock``/``unlock`` rather than a context manager: they are called on every request, and a
    plain call is cheaper. Changes that read and write several cells must hold the lock; the
    lock is an ``flock`` on the file, released by the kernel if a worker dies holding it.
    """

    def __init__(self, size: int, key: str | None = None) -> None:
        self.size = size
        self.path: Path | None = None
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._view: memoryview[float] | None = None
        self.values: Cells
        if key is not None and fcntl is not None:
            try:
                self._open(key)
            except OSError as exc:  # a read-only or full temp directory: still correct, just not shared
                log.debug("pace not shared across workers (%s)", exc)
                self.close()
        if self._map is None:
            self.values = array("d", bytes(size * CELL))
            self.lock = self.unlock = _nothing

    def _open(self, key: str) -> None:
        self.path = path_for(key)
        folder = private_dir()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size != self.size * CELL:  # new, or laid out by another version
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, self.size * CELL)
                _prune(folder, keep=self.path)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, self.size * CELL)
        self._view = view = memoryview(self._map).cast("d")
        self.values = view
        fd = self._fd
        self.lock = lambda: fcntl.flock(fd, fcntl.LOCK_EX)
        self.unlock = lambda: fcntl.flock(fd, fcntl.LOCK_UN)

    @property
    def shared(self) -> bool:
        return self._map is not None

    def clear(self) -> None:
        for i in range(self.size):
            self.values[i] = 0.0

    def close(self) -> None:
        if self._map is not None:
            if self._view is not None:
                self._view.release()
                self._view = None
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"Slab({self.size} cells, {'shared at ' + str(self.path) if self.shared else 'private'})"


def _nothing() -> None:
    return None


def _prune(folder: Path, keep: Path) -> None:
    cutoff = time.time() - STALE_FILE_S
    for path in folder.glob("pace-*"):
        try:
            if path != keep and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue
