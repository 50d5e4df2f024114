"""The embedded backend: SQLite in WAL mode, every write committed by one group-commit thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from bridge.clock import Clock, SystemClock
from bridge.errors import StoreBusy, StoreError
from bridge.store.delegations import Delegations
from bridge.store.protocols import ChannelBudgets
from bridge.store.records import (
    Accept,
    Acceptance,
    Backup,
    ClaimedDelivery,
    ConversationRecord,
    NewEvent,
    StoreInfo,
)
from bridge.store.sqlite import console, conversations, operations, queue, settings_in_use
from bridge.store.sqlite.schema import connect, schema_version
from bridge.store.sqlite.worker_lock import WorkerLock
from bridge.store.sqlite.writer import Job, Write, Writer
from bridge.store.url import SETTING

T = TypeVar("T")
log = logging.getLogger("bridge.store")
DEFAULT_TIMEOUT = 30.0
# Readiness writes about as many pages as an accept, so it fails when an accept would.
PROBE = "UPDATE readiness_probe SET checked_at = ?, payload = randomblob(32768) WHERE id = 1"


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store's folder {path.parent}: "
                         f"{exc.strerror or exc}; check {SETTING}") from None


class SQLiteStore(Delegations):
    """The embedded backend: SQLite in WAL mode, fsync on every commit by default."""

    queue_sql: ClassVar[ModuleType] = queue
    conversation_sql: ClassVar[ModuleType] = conversations
    operations_sql: ClassVar[ModuleType] = operations
    settings_sql: ClassVar[ModuleType] = settings_in_use
    console_sql: ClassVar[ModuleType] = console

    def __init__(self, path: Path, synchronous: str = "FULL", commit_timeout: float = 3.0,
                 clock: Clock | None = None, upgrade: bool = True) -> None:
        _make_folder(path)
        self.path = path
        self.commit_timeout = commit_timeout
        self.clock = clock or SystemClock()
        self._writer = Writer(lambda: connect(path, synchronous, self.clock, upgrade), str(path))
        self._writer.start()
        self._worker_lock = WorkerLock(path)
        self._waiting = False

    async def _run(self, work: Write[T] | Accept, timeout: float | None = None) -> T:
        limit = timeout or DEFAULT_TIMEOUT
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writer.enqueue(Job(work, future, loop))
        expiry = loop.call_later(limit, _expire, future, limit)
        try:
            return await future
        finally:
            expiry.cancel()

    # EventIntake

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        return await self._run(Accept(event, now, window), timeout=self.commit_timeout)

    async def check_writable(self) -> None:
        # Ready means a webhook would be stored in time: the same deadline as accept(), and a
        # real commit, so a full disk or a lost file fails it (and has the writer reopen).
        await self._run(lambda conn: conn.execute(PROBE, (self.clock.now(),)),
                        timeout=self.commit_timeout)

    # DeliveryQueue

    async def claim(self, owner: str, now: float, limit: int,
                    lease: float) -> list[ClaimedDelivery]:
        if not await self._deliver_from_here(now):
            return []
        return await self._run(lambda conn: queue.claim(conn, owner, now, limit, now + lease))

    async def _deliver_from_here(self, now: float) -> bool:
        """Whether this process delivers from the store: it holds, or has just taken, the lock."""
        if self._worker_lock.held:
            return True
        if not self._worker_lock.take():
            if not self._waiting:
                log.warning("store %s: %s delivers from it; this worker waits, and takes over"
                            " when that process stops", self.path, self._worker_lock.holder(),
                            extra={"outcome": "waiting"})
            self._waiting = True
            return False
        taken = await self._run(lambda conn: queue.take_over(conn, now))
        if taken or self._waiting:
            log.info("store %s: this process delivers from it now; %d deliveries left by a"
                     " stopped worker are taken over", self.path, taken,
                     extra={"outcome": "taken over", "count": taken})
        self._waiting = False
        return True

    async def next_due(self, after: float) -> float | None:
        """The first retry time later than `after`: when the worker should look again.

        What is due already is claim()'s business; what waits behind another delivery of its
        conversation, or behind a lease, is woken by that delivery's finish or by the poll.
        """
        return await self._run(lambda conn: conn.execute(queue.NEXT_DUE, (after,)).fetchone()[0])

    # Echoes: what Delegations does not

    async def forget_echo(self, source: str) -> None:
        await self._run(lambda conn: conn.execute(
            "DELETE FROM reply_echoes WHERE source = ?", (source,)))

    # Operations: what Delegations does not

    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None:
        found = await self._run(lambda conn: conversations.conversations(
            conn, "WHERE chatbot_id = ? AND thread_id = ?", (chatbot_id, thread_id), 1))
        return found[0] if found else None

    async def waiting_by_destination(self) -> dict[str, int]:
        return await self._run(lambda conn: dict(conn.execute(
            "SELECT destination, COUNT(*) FROM deliveries WHERE status = 'pending'"
            " GROUP BY destination").fetchall()))

    async def oldest_pending(self) -> float | None:
        """When the oldest pending delivery was created (its event accepted), if any."""
        return await self._run(lambda conn: conn.execute(
            "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'").fetchone()[0])

    async def backup(self, target: Path) -> Backup:
        """Copy the store to `target` on its own read connection: writers are not held up."""
        return await asyncio.to_thread(operations.backup, self.path, target)

    async def info(self) -> StoreInfo:
        version = await self._run(schema_version)
        return StoreInfo("sqlite", str(self.path), version)

    # Lifecycle, NewWork, Serialised, SharedPacing: one process alone works a SQLite store

    async def open(self) -> None:
        """Nothing to do: the store opened (and migrated) when it was built."""

    async def migrate_now(self) -> None:
        """Nothing to do: the store opened (and migrated) when it was built."""

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)
        self._worker_lock.release()

    def on_new_work(self, wake: Callable[[], None]) -> None:
        """Nothing to hear: work another process (`serve --no-worker`) stored waits for the poll."""

    def serialised(self, key: str) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # no other process delivers from this store

    def shared_pacing(self) -> ChannelBudgets | None:
        return None


def _expire(future: asyncio.Future[Any], limit: float) -> None:
    if not future.done():
        future.set_exception(StoreBusy(f"the store did not commit within {limit:g} s"))
