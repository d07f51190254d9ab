"""The lock that makes one worker per data directory: an exclusive ``flock`` on ``worker.lock``.

The OS releases an ``flock`` when its holder dies, so a crashed or killed worker never blocks the
next one, and no stale-lock cleanup is needed. The holder's pid is written into the file for
whoever investigates.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["WorkerLock"]


class WorkerLock:
    """An exclusive, non-blocking flock on ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
