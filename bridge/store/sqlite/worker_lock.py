"""Which process delivers from a SQLite store: the one holding the lock file beside it.

An exclusive flock() on `<store>-worker.lock`, taken by the first claim and held until the
store closes. The kernel lets go of it the moment its process dies, however it dies, so the
next process to take it knows that every lease still running in the store is a dead one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bridge.errors import StoreError


class WorkerLock:
    """The right to claim deliveries from one SQLite store: one process at a time."""

    def __init__(self, store: Path) -> None:
        self.path = store.with_name(f"{store.name}-worker.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> bool:
        """Take the lock if no other process holds it; whether this process holds it now."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only folder: the worker says so at each poll
            raise StoreError(f"cannot take the worker lock {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for the message of whoever waits
        self._fd = fd
        return True

    def holder(self) -> str:
        """The process that holds the lock, as the log names it ("pid 1234")."""
        with contextlib.suppress(OSError, ValueError):
            return f"pid {int(self.path.read_text().strip())}"
        return "another process"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the file ends the flock
            self._fd = None
