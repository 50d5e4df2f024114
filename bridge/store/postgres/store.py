"""The PostgreSQL store: the same contract as SQLite's, safe for several replicas at once.

Each call takes a pooled connection and runs as one statement or one short transaction: the
server's own commit grouping replaces SQLite's writer thread. Replicas agree through the
database alone: dedup by a primary key, claims by FOR UPDATE SKIP LOCKED, per-conversation
order by an advisory lock at accept, guarded leases, new work announced with NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bridge.clock import Clock, SystemClock
from bridge.errors import StoreBusy, StoreError
from bridge.store.delegations import Delegations
from bridge.store.masking import masked_store_url, scrub
from bridge.store.postgres import (
    console,
    conversations,
    intake,
    migrate,
    operations,
    queue,
    settings_in_use,
)
from bridge.store.postgres.advice import pg_dump_advice
from bridge.store.postgres.groups import AcceptGroups
from bridge.store.postgres.live_workers import LiveWorkers
from bridge.store.postgres.schema import MIGRATIONS
from bridge.store.postgres.url import server_address
from bridge.store.postgres.wakeup import WakeUps
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

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]
log = logging.getLogger("bridge.store")
DEFAULT_TIMEOUT = 30.0
SERIAL_NAMESPACE = 0x5175  # advisory locks for one_at_a_time work, keyed by lock_key(key)

# A token bucket per channel whose debt is the wait: each post takes a token now, and waits
# as long as the bucket needs to earn it back. No lock is held while posts wait.
TAKE_TOKEN = """
INSERT INTO channel_budgets AS b (channel, tokens, stamp)
VALUES (%(channel)s, %(capacity)s - 1, %(now)s)
ON CONFLICT (channel) DO UPDATE SET
    tokens = LEAST(%(capacity)s, b.tokens + GREATEST(%(now)s - b.stamp, 0) * %(rate)s) - 1,
    stamp = GREATEST(b.stamp, %(now)s)
RETURNING tokens, held_until
"""
HOLD_CHANNEL = """
INSERT INTO channel_budgets AS b (channel, tokens, stamp, held_until)
VALUES (%(channel)s, 0, %(now)s, %(until)s)
ON CONFLICT (channel) DO UPDATE SET held_until = GREATEST(b.held_until, %(until)s)
"""


class PostgresStore(Delegations):
    """The shared backend: a connection pool, migrated on first use, and a wake-up listener."""

    queue_sql: ClassVar[ModuleType] = queue
    conversation_sql: ClassVar[ModuleType] = conversations
    operations_sql: ClassVar[ModuleType] = operations
    settings_sql: ClassVar[ModuleType] = settings_in_use
    console_sql: ClassVar[ModuleType] = console

    def __init__(self, url: str, pool_size: int = 10, commit_timeout: float = 3.0,
                 clock: Clock | None = None, upgrade: bool = True) -> None:
        self.url = url
        self.upgrade = upgrade
        self.commit_timeout = commit_timeout
        self.clock = clock or SystemClock()
        self.schema_version = 0
        self.server_version = ""
        self._pool = _pool(url, pool_size, "bridge-store", min_size=1)
        # Locks are held for as long as a Slack or Jira call takes (and Slack's pace): on
        # connections of their own, so that webhooks never wait for a free connection.
        self._locks = _pool(url, pool_size, "bridge-locks", min_size=0)
        self._groups = AcceptGroups(self._commit_group)
        self._opening: asyncio.Lock | None = None
        self._opened = False
        self._wake_ups: WakeUps | None = None
        self._live_workers = LiveWorkers(url)

    # Opening, closing, describing

    async def open(self) -> None:
        """Connect and migrate; safe to call again. Every other method calls it first."""
        if self._opened:
            return
        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if not self._opened:
                await self._connect()
                self._opened = True

    async def migrate_now(self) -> None:
        """Connect and migrate on a connection of its own, in any event loop, then let go.

        `serve` calls it before it starts its server, so that a database that cannot be
        reached or is too new stops the start-up with one line, before the port is bound.
        """
        where = server_address(self.url)
        try:
            # An unreachable server fails here at once, with libpq's reason, where the pool
            # would keep trying in the background.
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                self.schema_version = await migrate.migrate(
                    conn, MIGRATIONS, where, self.upgrade)
                major, minor = divmod(conn.info.server_version, 10000)
                self.server_version = f"{major}.{minor}"
        except (psycopg.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {masked_store_url(self.url)}: "
                             f"{scrub(str(exc), self.url)}") from None

    async def _connect(self) -> None:
        await self.migrate_now()
        await self._pool.open()
        await self._locks.open()

    async def close(self) -> None:
        if self._wake_ups is not None:
            await self._wake_ups.stop()
        await self._groups.drain()
        await self._live_workers.close()
        await self._locks.close()
        await self._pool.close()

    def on_new_work(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever any replica stores work (from a running event loop)."""
        self._wake_ups = WakeUps(self.url, wake)
        self._wake_ups.start()

    @property
    def listening(self) -> bool:
        """Whether this replica hears of new work from the others right now."""
        return self._wake_ups is not None and self._wake_ups.listening.is_set()

    async def info(self) -> StoreInfo:
        await self.open()
        return StoreInfo(f"PostgreSQL {self.server_version}", server_address(self.url),
                         self.schema_version)

    # EventIntake

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        await self.open()
        stored = self._groups.add(Accept(event, now, window))
        try:
            return await asyncio.wait_for(asyncio.shield(stored), self.commit_timeout)
        except TimeoutError:
            raise StoreBusy(f"the store did not commit within {self.commit_timeout:g} s"
                            ) from None

    async def _commit_group(self, accepts: Sequence[Accept]) -> list[Acceptance]:
        if len(accepts) == 1:  # one statement is its own transaction: one round trip
            [one] = accepts
            return [await self._run(lambda conn: intake.accept(conn, one.event, one.now,
                                                               one.window))]
        return await self._run(lambda conn: intake.accept_group(conn, accepts))

    async def check_writable(self) -> None:
        # Ready means a webhook would be stored in time: a real write, within accept's
        # deadline, so a read-only standby or a full disk fails it.
        await self._run(lambda conn: conn.execute(
            "UPDATE readiness_probe SET checked_at = %s WHERE id = 1", (self.clock.now(),)),
            timeout=self.commit_timeout)

    # DeliveryQueue

    async def claim(self, owner: str, now: float, limit: int,
                    lease: float) -> list[ClaimedDelivery]:
        """Claim on the connection that holds `owner`'s lock: only while it holds it."""
        return await self._run(lambda conn: queue.claim(conn, owner, now, limit, now + lease),
                               on=lambda: self._live_workers.connection(owner))

    async def next_due(self, after: float) -> float | None:
        return await self._value(queue.NEXT_DUE, (after,))

    # ConversationLinks, Transcripts, Echoes

    @contextlib.asynccontextmanager
    async def serialised(self, key: str) -> AsyncIterator[None]:
        """Hold a lock named `key` across every replica while the block runs.

        For work that must not happen twice at once for one conversation, such as starting
        its Slack thread. It is a session advisory lock: if this replica dies, the server
        drops the connection and the lock with it.
        """
        await self.open()
        try:
            async with self._locks.connection() as conn:
                await conn.execute("SELECT pg_advisory_lock(%s, %s)",
                                   (SERIAL_NAMESPACE, intake.lock_key(key)))
                try:
                    yield
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s, %s)",
                                       (SERIAL_NAMESPACE, intake.lock_key(key)))
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"store: {scrub(str(exc), self.url)}") from exc

    async def forget_echo(self, source: str) -> None:
        await self._run(lambda conn: conn.execute(
            "DELETE FROM reply_echoes WHERE source = %s", (source,)))

    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None:
        found = await self._run(lambda conn: conversations.conversations(
            conn, "WHERE chatbot_id = %s AND thread_id = %s", (chatbot_id, thread_id), 1))
        return found[0] if found else None

    async def waiting_by_destination(self) -> dict[str, int]:
        async def read(conn: Connection) -> dict[str, int]:
            cursor = await conn.execute("SELECT destination, COUNT(*) FROM deliveries"
                                        " WHERE status = 'pending' GROUP BY destination")
            return {name: int(count) for name, count in await cursor.fetchall()}
        return await self._run(read)

    async def oldest_pending(self) -> float | None:
        return await self._value(
            "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'", ())

    async def backup(self, target: Path) -> Backup:
        raise StoreError(pg_dump_advice(self.url, target))

    # Slack's shared pace

    def shared_pacing(self) -> ChannelBudgets | None:
        return self

    async def take_token(self, channel: str, now: float, capacity: float,
                         rate: float) -> tuple[float, float]:
        async def take(conn: Connection) -> tuple[float, float]:
            cursor = await conn.execute(TAKE_TOKEN, {"channel": channel, "now": now,
                                                     "capacity": capacity, "rate": rate})
            row = await cursor.fetchone()
            assert row is not None
            return float(row[0]), float(row[1])
        return await self._run(take)

    async def hold_channel(self, channel: str, now: float, until: float) -> None:
        await self._run(lambda conn: conn.execute(
            HOLD_CHANNEL, {"channel": channel, "now": now, "until": until}))

    # Plumbing

    async def _run(self, work: Callable[[Connection], Awaitable[T]],
                   timeout: float | None = None,
                   on: Callable[[], AbstractAsyncContextManager[Connection]] | None = None) -> T:
        """`work` on a pooled connection (or `on` one) within `timeout`; driver errors become
        StoreErrors."""
        await self.open()
        limit = timeout or DEFAULT_TIMEOUT
        try:
            async with asyncio.timeout(limit), (on or self._pool.connection)() as conn:
                return await work(conn)
        except TimeoutError:
            raise StoreBusy(f"the store did not answer within {limit:g} s") from None
        except PoolTimeout:
            raise StoreBusy("no free store connection: raise [store] pool_size") from None
        except psycopg.Error as exc:
            raise StoreError(scrub(str(exc), self.url)) from None

    async def _value(self, statement: str, params: Any) -> Any:
        async def read(conn: Connection) -> Any:
            cursor = await conn.execute(statement, params)
            row = await cursor.fetchone()
            return row[0] if row else None
        return await self._run(read)


def _pool(url: str, size: int, name: str, min_size: int) -> AsyncConnectionPool[Any]:
    # Each connection is checked as it is handed out: after the server restarted or failed
    # over, a stale one is replaced instead of failing a webhook or a worker's finish.
    return AsyncConnectionPool(url, min_size=min_size, max_size=size, open=False,
                               kwargs={"autocommit": True}, name=name, timeout=DEFAULT_TIMEOUT,
                               check=AsyncConnectionPool.check_connection)
