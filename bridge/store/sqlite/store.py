"""The embedded backend: SQLite in WAL mode, every write committed by one group-commit thread."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from bridge.clock import Clock, SystemClock
from bridge.errors import StoreBusy
from bridge.store.records import (
    Accept,
    Acceptance,
    Attempt,
    Backup,
    ClaimedDelivery,
    ConversationRecord,
    DeliveryRow,
    DeliveryStatus,
    Echo,
    FollowUp,
    Lease,
    NewEvent,
    Pruned,
    RetryKind,
    StoredMessage,
    StoreInfo,
)
from bridge.store.settings_in_use import SettingsInUse
from bridge.store.sqlite import conversations, operations, queue, settings_in_use
from bridge.store.sqlite.schema import connect, schema_version
from bridge.store.sqlite.writer import Job, Write, Writer

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
# Readiness writes about as many pages as an accept, so it fails when an accept would.
PROBE = "UPDATE readiness_probe SET checked_at = ?, payload = randomblob(16384) WHERE id = 1"


class SQLiteStore:
    """The embedded backend: SQLite in WAL mode, fsync on every commit by default."""

    def __init__(self, path: Path, synchronous: str = "FULL", commit_timeout: float = 3.0,
                 clock: Clock | None = None, upgrade: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.commit_timeout = commit_timeout
        self.clock = clock or SystemClock()
        self._writer = Writer(lambda: connect(path, synchronous, self.clock, upgrade), str(path))
        self._writer.start()

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
        return await self._run(lambda conn: queue.claim(conn, owner, now, limit, now + lease))

    async def heartbeat(self, leases: Sequence[Lease], until: float) -> set[int]:
        return await self._run(lambda conn: queue.heartbeat(conn, leases, until))

    async def finish(self, lease: Lease, status: DeliveryStatus, now: float,
                     note: str | None = None, follow_ups: Sequence[FollowUp] = (),
                     coalesced: Sequence[Lease] = ()) -> bool:
        return await self._run(
            lambda conn: queue.finish(conn, lease, status, now, note, follow_ups, coalesced))

    async def reschedule(self, lease: Lease, at: float, error: str, now: float,
                         retry_kind: RetryKind | None = None) -> bool:
        return await self._run(
            lambda conn: queue.reschedule(conn, lease, at, error, now, retry_kind))

    async def bring_forward(self, destination: str, retry_kind: RetryKind, now: float) -> int:
        return await self._run(
            lambda conn: queue.bring_forward(conn, destination, retry_kind, now))

    async def take_queued(self, lease: Lease, kinds: frozenset[str], limit: int,
                          now: float) -> list[ClaimedDelivery]:
        return await self._run(lambda conn: queue.take_queued(conn, lease, kinds, limit, now))

    async def release(self, leases: Sequence[Lease]) -> int:
        return await self._run(lambda conn: queue.release(conn, leases))

    async def next_due(self, after: float) -> float | None:
        """The first retry time later than `after`: when the worker should look again.

        What is due already is claim()'s business; what waits behind another delivery of its
        conversation, or behind a lease, is woken by that delivery's finish or by the poll.
        """
        return await self._run(lambda conn: conn.execute(queue.NEXT_DUE, (after,)).fetchone()[0])

    # ConversationLinks, Transcripts, Echoes

    async def link_state(self, chatbot_id: str, thread_id: str,
                         destination: str) -> dict[str, Any] | None:
        return await self._run(
            lambda conn: conversations.link_state(conn, chatbot_id, thread_id, destination))

    async def save_link(self, chatbot_id: str, thread_id: str, destination: str,
                        state: dict[str, Any], ref: str | None = None) -> None:
        now = self.clock.now()
        await self._run(lambda conn: conversations.save_link(
            conn, chatbot_id, thread_id, destination, state, ref, now))

    async def conversation_by_ref(self, destination: str, ref: str) -> tuple[str, str] | None:
        return await self._run(
            lambda conn: conversations.conversation_by_ref(conn, destination, ref))

    async def transcript(self, chatbot_id: str, thread_id: str,
                         after_id: int = 0) -> list[StoredMessage]:
        return await self._run(
            lambda conn: conversations.transcript(conn, chatbot_id, thread_id, after_id))

    async def remember_echo(self, echo: Echo, now: float, keep_for: float) -> None:
        """Keep `echo` until it comes back or `keep_for` passes; one memory per source."""
        await self._run(lambda conn: conversations.remember_echo(conn, echo, now, now + keep_for))

    async def forget_echo(self, source: str) -> None:
        await self._run(lambda conn: conn.execute(
            "DELETE FROM slack_echoes WHERE source = ?", (source,)))

    async def consume_echo(self, echo: Echo, now: float) -> bool:
        """Whether `echo` was remembered (any source, text stripped); the memory is used up."""
        return await self._run(lambda conn: conversations.consume_echo(conn, echo, now))

    # Operations

    async def deliveries(self, status: str | None = None, conversation: str | None = None,
                         limit: int = 100, ids: Sequence[int] = ()) -> list[DeliveryRow]:
        return await self._run(
            lambda conn: operations.deliveries(conn, status, conversation, limit, ids))

    async def attempts(self, delivery_id: int, limit: int = 3) -> list[Attempt]:
        return await self._run(lambda conn: operations.attempts(conn, delivery_id, limit))

    async def retry(self, ids: Sequence[int] = (), failed: bool = False,
                    destination: str | None = None, now: float = 0.0) -> int:
        return await self._run(lambda conn: operations.retry(conn, ids, failed, destination, now))

    async def conversations(self, limit: int = 50) -> list[ConversationRecord]:
        return await self._run(lambda conn: conversations.conversations(conn, "", (), limit))

    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None:
        found = await self._run(lambda conn: conversations.conversations(
            conn, "WHERE chatbot_id = ? AND thread_id = ?", (chatbot_id, thread_id), 1))
        return found[0] if found else None

    async def queue_depth(self) -> dict[str, int]:
        return await self._run(operations.queue_depth)

    async def waiting_by_destination(self) -> dict[str, int]:
        return await self._run(lambda conn: dict(conn.execute(
            "SELECT destination, COUNT(*) FROM deliveries WHERE status = 'pending'"
            " GROUP BY destination").fetchall()))

    async def oldest_pending(self) -> float | None:
        """When the oldest pending delivery was created (its event accepted), if any."""
        return await self._run(lambda conn: conn.execute(
            "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'").fetchone()[0])

    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned:
        """Remove up to `limit` finished events older than `cutoff`, and expired dedup rows."""
        return await self._run(lambda conn: operations.prune(conn, cutoff, now, limit))

    async def backup(self, target: Path) -> Backup:
        """Copy the store to `target` on its own read connection: writers are not held up."""
        return await asyncio.to_thread(operations.backup, self.path, target)

    async def info(self) -> StoreInfo:
        version = await self._run(schema_version)
        return StoreInfo("sqlite", str(self.path), version)

    # SettingsRecords

    async def record_settings(self, in_use: SettingsInUse) -> None:
        await self._run(lambda conn: settings_in_use.record(conn, in_use))

    async def settings_in_use(self) -> list[SettingsInUse]:
        return await self._run(settings_in_use.read_all)

    async def forget_settings(self, process: str) -> None:
        await self._run(lambda conn: settings_in_use.forget(conn, process))

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)


def _expire(future: asyncio.Future[Any], limit: float) -> None:
    if not future.done():
        future.set_exception(StoreBusy(f"the store did not commit within {limit:g} s"))
