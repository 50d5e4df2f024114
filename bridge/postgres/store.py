"""The PostgreSQL store: the same contract as SQLite's, safe for several replicas at once.

Each call takes a pooled connection and runs as one statement or one short transaction: the
server's own commit grouping replaces SQLite's writer thread. Replicas agree through the
database alone: dedup by a primary key, claims by FOR UPDATE SKIP LOCKED, per-conversation
order by an advisory lock at accept, new work announced with NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bridge.errors import StoreBusy, StoreError
from bridge.postgres import migrate
from bridge.postgres.advice import pg_dump_advice
from bridge.postgres.schema import MIGRATIONS
from bridge.postgres.url import masked_url, scrub, server_address
from bridge.postgres.wakeup import NOTIFY, WakeUps
from bridge.store import (
    CONVERSATION_FIELDS,
    STATUSES,
    Acceptance,
    Backup,
    ClaimedDelivery,
    ConversationRecord,
    DeliveryRow,
    DeliveryStatus,
    Echo,
    FollowUp,
    NewEvent,
    Pruned,
    StoredMessage,
)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]
log = logging.getLogger("bridge.store")
DEFAULT_TIMEOUT = 30.0
# Advisory lock keys within migrate.NAMESPACE; conversations use hashtext() in their own.
PRUNE_KEY = 2
CONVERSATION_NAMESPACE = migrate.NAMESPACE + 1
SERIAL_NAMESPACE = migrate.NAMESPACE + 2

# One statement, one round trip, one transaction. The conversation's advisory lock is taken
# before the event gets its id, so ids follow commit order within a conversation: a claim that
# sees a conversation's newer event sees every older one too. The dedup row is claimed by
# INSERT ... ON CONFLICT: a concurrent copy of the body on another replica waits on the key,
# then finds it taken and is a duplicate.
ACCEPT = """
WITH serial AS (
    SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(ordering_key)s)) AS locked
), claim AS (
    INSERT INTO dedup AS d (dedup_key, event_id, expires_at)
    SELECT %(dedup_key)s, nextval(pg_get_serial_sequence('events', 'id')), %(expires_at)s
    FROM serial
    ON CONFLICT (dedup_key) DO UPDATE
        SET event_id = excluded.event_id, expires_at = excluded.expires_at
        WHERE d.expires_at <= %(now)s
    RETURNING event_id
), event AS (
    INSERT INTO events (id, kind, ordering_key, dedup_key, body, received_at)
    SELECT event_id, %(kind)s, %(ordering_key)s, %(dedup_key)s, %(body)s, %(now)s FROM claim
    RETURNING id
), delivery AS (
    INSERT INTO deliveries (event_id, destination, ordering_key, next_attempt_at, created_at)
    SELECT event.id, name, %(ordering_key)s, %(now)s, %(now)s
    FROM event, unnest(%(destinations)s::text[]) WITH ORDINALITY AS d(name, n)
    ORDER BY n
), conversation AS (
    INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen)
    SELECT %(chatbot_id)s::text, %(thread_id)s::text, %(now)s, %(now)s
    FROM event WHERE %(chatbot_id)s::text IS NOT NULL
    ON CONFLICT (chatbot_id, thread_id) DO UPDATE SET last_seen = excluded.last_seen
), message AS (
    INSERT INTO messages (event_id, chatbot_id, thread_id, message_type, question, answer,
                          agent_name, received_at)
    SELECT event.id, %(m_chatbot_id)s::text, %(m_thread_id)s::text, %(m_type)s::text,
           %(m_question)s::text, %(m_answer)s::text, %(m_agent)s::text, %(now)s
    FROM event WHERE %(m_chatbot_id)s::text IS NOT NULL
)
SELECT id, pg_notify('bridge_work', '') FROM event
"""

# A delivery may go only when no older one to the same destination and conversation is
# pending. SKIP LOCKED: replicas claiming at the same moment take different rows instead of
# queueing behind each other; a row another claim has just leased is re-checked and skipped.
CLAIM = """
WITH next AS (
    SELECT d.id FROM deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= %(now)s
      AND (d.lease_until IS NULL OR d.lease_until <= %(now)s)
      AND NOT EXISTS (
        SELECT 1 FROM deliveries e
        WHERE e.destination = d.destination AND e.ordering_key = d.ordering_key
          AND e.status = 'pending' AND e.id < d.id)
    ORDER BY d.id LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries d
SET lease_owner = %(owner)s, lease_until = %(lease_until)s, attempts = d.attempts + 1
FROM next, events e
WHERE d.id = next.id AND e.id = d.event_id
RETURNING d.id, d.event_id, d.destination, d.ordering_key, d.attempts, d.created_at, e.kind,
          e.body
"""

NEXT_DUE = ("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
            " AND next_attempt_at > %s")

# Finished events older than the cutoff, oldest first.
PRUNABLE = """
SELECT e.id FROM events e
WHERE e.received_at < %(cutoff)s
  AND NOT EXISTS (
    SELECT 1 FROM deliveries d
    WHERE d.event_id = e.id AND (d.status = 'pending' OR d.finished_at >= %(cutoff)s))
ORDER BY e.id LIMIT %(limit)s
"""

CONVERSATION = ("SELECT chatbot_id, thread_id, slack_channel, slack_thread_ts, jira_key,"
                " jira_transcript_upto, escalated_at, first_seen, last_seen FROM conversations")

DELIVERY_ROW = ("SELECT d.id, d.event_id, e.kind, d.destination, d.ordering_key, d.status,"
                " d.attempts, d.next_attempt_at, d.last_error, d.created_at, d.finished_at"
                " FROM deliveries d JOIN events e ON e.id = d.event_id")

# A token bucket per channel whose debt is the wait: each post takes a token now, and waits
# as long as the bucket needs to earn it back. No lock is held while posts wait.
TAKE_TOKEN = """
INSERT INTO channel_budgets AS b (channel, tokens, stamp) VALUES (%(channel)s, %(capacity)s - 1,
    %(now)s)
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


def accept_parameters(event: NewEvent, now: float, window: float) -> dict[str, Any]:
    message = event.message
    chatbot_id, thread_id = event.conversation or (None, None)
    return {
        "namespace": CONVERSATION_NAMESPACE, "ordering_key": event.ordering_key,
        "dedup_key": event.dedup_key, "expires_at": now + window, "now": now,
        "kind": event.kind, "body": event.body, "destinations": list(event.destinations),
        "chatbot_id": chatbot_id, "thread_id": thread_id,
        "m_chatbot_id": message.chatbot_id if message else None,
        "m_thread_id": message.thread_id if message else None,
        "m_type": message.message_type if message else None,
        "m_question": message.question if message else None,
        "m_answer": message.answer if message else None,
        "m_agent": message.agent_name if message else None,
    }


class PostgresStore:
    """The shared backend: a connection pool, migrated on first use, and a wake-up listener."""

    def __init__(self, url: str, pool_size: int = 10, commit_timeout: float = 3.0) -> None:
        self.url = url
        self.commit_timeout = commit_timeout
        self.schema_version = 0
        self._pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True},
            name="bridge-store", timeout=DEFAULT_TIMEOUT)
        # Locks are held for as long as a Slack or Jira call takes (and Slack's pace): on
        # connections of their own, so that webhooks never wait for a free connection.
        self._locks = AsyncConnectionPool(
            url, min_size=0, max_size=pool_size, open=False, kwargs={"autocommit": True},
            name="bridge-locks", timeout=DEFAULT_TIMEOUT)
        self._opening: asyncio.Lock | None = None
        self._opened = False
        self._wake_ups: WakeUps | None = None

    # Opening, closing, describing -------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate; safe to call again. Every other method calls it first."""
        if self._opened:
            return
        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self._opened:
                return
            try:
                # A connection of its own first: an unreachable server fails here at once,
                # with libpq's reason, where the pool would keep trying in the background.
                async with await psycopg.AsyncConnection.connect(self.url,
                                                                 autocommit=True) as conn:
                    self.schema_version = await migrate.migrate(conn, MIGRATIONS)
                await self._pool.open()
                await self._locks.open()
            except (psycopg.Error, OSError) as exc:
                raise StoreError(f"cannot open the store at {masked_url(self.url)}: "
                                 f"{scrub(str(exc), self.url)}") from None
            self._opened = True

    async def close(self) -> None:
        if self._wake_ups is not None:
            await self._wake_ups.stop()
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

    async def describe(self) -> str:
        """What `check` and the start-up log say: backend, server version, schema version."""
        async def read(conn: Connection) -> str:
            info = conn.info
            major, minor = divmod(info.server_version, 10000)
            return (f"PostgreSQL {major}.{minor} at {server_address(self.url)}, "
                    f"schema version {self.schema_version}")
        return await self._run(read)

    # The worker's side ------------------------------------------------------------------------

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        return await self._run(lambda conn: _accept(conn, event, now, window),
                               timeout=self.commit_timeout)

    async def claim(self, owner: str, now: float, limit: int, lease: float) -> list[ClaimedDelivery]:  # noqa: E501
        async def claim(conn: Connection) -> list[ClaimedDelivery]:
            async with conn.cursor(row_factory=class_row(ClaimedDelivery)) as cursor:
                await cursor.execute(CLAIM, {"now": now, "limit": limit, "owner": owner,
                                             "lease_until": now + lease})
                return sorted(await cursor.fetchall(), key=lambda job: job.id)
        return await self._run(claim)

    async def finish(self, delivery_id: int, status: DeliveryStatus, now: float,
                     note: str | None = None, follow_ups: Sequence[FollowUp] = ()) -> None:
        async def finish(conn: Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE deliveries SET status = %s, finished_at = %s, last_error = %s,"
                    " lease_owner = NULL, lease_until = NULL WHERE id = %s",
                    (status, now, note, delivery_id))
                for follow_up in follow_ups:
                    await _accept(conn, NewEvent(
                        kind=follow_up.kind, body=follow_up.body,
                        dedup_key=f"follow-up:{delivery_id}", ordering_key=follow_up.ordering_key,
                        destinations=follow_up.destinations), now, 0.0)
        await self._run(finish)

    async def reschedule(self, delivery_id: int, at: float, error: str) -> None:
        await self._execute(
            "UPDATE deliveries SET next_attempt_at = %s, last_error = %s, lease_owner = NULL,"
            " lease_until = NULL WHERE id = %s", (at, error, delivery_id))

    async def release(self, delivery_ids: Iterable[int]) -> None:
        await self._execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL,"
            " attempts = GREATEST(attempts - 1, 0) WHERE id = ANY(%s) AND status = 'pending'",
            (list(delivery_ids),))

    async def next_due(self, after: float) -> float | None:
        return await self._value(NEXT_DUE, (after,))

    # Conversation state -----------------------------------------------------------------------

    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None:
        return await self._conversation_where("chatbot_id = %s AND thread_id = %s",
                                              (chatbot_id, thread_id))

    async def update_conversation(self, chatbot_id: str, thread_id: str, **fields: Any) -> None:
        unknown = set(fields) - CONVERSATION_FIELDS
        if unknown:
            raise StoreError(f"unknown conversation fields: {sorted(unknown)}")
        names = list(fields)
        columns = ", ".join(names)
        values = ", ".join(["%s"] * len(names))
        updates = ", ".join(f"{name} = excluded.{name}" for name in names)
        await self._execute(
            f"INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen, {columns})"
            " VALUES (%s, %s, EXTRACT(EPOCH FROM now()), EXTRACT(EPOCH FROM now()),"
            f" {values}) ON CONFLICT (chatbot_id, thread_id) DO UPDATE SET {updates}",
            (chatbot_id, thread_id, *fields.values()))

    async def conversation_in_slack(self, channel: str, thread_ts: str) -> ConversationRecord | None:  # noqa: E501
        return await self._conversation_where("slack_channel = %s AND slack_thread_ts = %s",
                                              (channel, thread_ts))

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
                await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                                   (SERIAL_NAMESPACE, key))
                try:
                    yield
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))",
                                       (SERIAL_NAMESPACE, key))
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"store: {scrub(str(exc), self.url)}") from exc

    async def remember_echo(self, echo: Echo, now: float, keep_for: float) -> None:
        async def remember(conn: Connection) -> None:
            async with conn.transaction():
                await conn.execute("DELETE FROM slack_echoes WHERE expires_at <= %s", (now,))
                await conn.execute(
                    "INSERT INTO slack_echoes (source, chatbot_id, thread_id, text, agent_name,"
                    " expires_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (source) DO UPDATE"
                    " SET chatbot_id = excluded.chatbot_id, thread_id = excluded.thread_id,"
                    " text = excluded.text, agent_name = excluded.agent_name,"
                    " expires_at = excluded.expires_at",
                    (echo.source, echo.chatbot_id, echo.thread_id, echo.text.strip(),
                     echo.agent_name, now + keep_for))
        await self._run(remember)

    async def forget_echo(self, source: str) -> None:
        await self._execute("DELETE FROM slack_echoes WHERE source = %s", (source,))

    async def consume_echo(self, echo: Echo, now: float) -> bool:
        """Whether `echo` was remembered; one replica uses it up, another finds it gone."""
        async def consume(conn: Connection) -> bool:
            async with conn.transaction():
                await conn.execute("DELETE FROM slack_echoes WHERE expires_at <= %s", (now,))
                cursor = await conn.execute(
                    "DELETE FROM slack_echoes WHERE source = (SELECT source FROM slack_echoes"
                    " WHERE chatbot_id = %s AND thread_id = %s AND text = %s AND agent_name = %s"
                    " ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING source",
                    (echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name))
                return await cursor.fetchone() is not None
        return await self._run(consume)

    async def transcript(self, chatbot_id: str, thread_id: str, after_id: int = 0) -> list[StoredMessage]:  # noqa: E501
        return await self._rows(
            StoredMessage,
            "SELECT chatbot_id, thread_id, message_type, question, answer, agent_name,"
            " received_at, id FROM messages WHERE chatbot_id = %s AND thread_id = %s"
            " AND id > %s ORDER BY id", (chatbot_id, thread_id, after_id))

    # The operator's side ----------------------------------------------------------------------

    async def deliveries(self, status: str | None = None, conversation: str | None = None,
                         limit: int = 100, ids: Sequence[int] = ()) -> list[DeliveryRow]:
        clauses: list[str] = []
        params: list[Any] = []
        if ids:
            clauses.append("d.id = ANY(%s)")
            params.append(list(ids))
        if status:
            clauses.append("d.status = %s")
            params.append(status)
        if conversation:
            literal = conversation.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(d.ordering_key = %s OR d.ordering_key LIKE %s ESCAPE '\\')")
            params += [conversation, f"%/{literal}"]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._rows(DeliveryRow, f"{DELIVERY_ROW}{where} ORDER BY d.id DESC LIMIT %s",
                                (*params, limit))

    async def retry(self, ids: Sequence[int] = (), failed: bool = False,
                    destination: str | None = None, now: float = 0.0) -> int:
        """As SQLiteStore.retry; the workers of every replica are woken."""
        if not ids and not failed:
            return 0
        clauses = ["status = 'failed'" if failed else "status != 'pending'"]
        params: list[Any] = [now]
        if ids:
            clauses.append("id = ANY(%s)")
            params.append(list(ids))
        if destination:
            clauses.append("destination = %s")
            params.append(destination)

        async def retry(conn: Connection) -> int:
            async with conn.transaction():
                cursor = await conn.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s,"
                    " finished_at = NULL, lease_owner = NULL, lease_until = NULL"
                    f" WHERE {' AND '.join(clauses)}", params)
                if cursor.rowcount:
                    await conn.execute(NOTIFY)
                return cursor.rowcount
        return await self._run(retry)

    async def conversations(self, limit: int = 50) -> list[ConversationRecord]:
        return await self._rows(ConversationRecord,
                                f"{CONVERSATION} ORDER BY last_seen DESC LIMIT %s", (limit,))

    async def queue_depth(self) -> dict[str, int]:
        async def read(conn: Connection) -> dict[str, int]:
            cursor = await conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
            return {status: 0 for status in STATUSES} | {
                status: int(count) for status, count in await cursor.fetchall()}
        return await self._run(read)

    async def oldest_pending(self) -> float | None:
        return await self._value(
            "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'", ())

    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned:
        """As SQLiteStore.prune, on one replica at a time: the others find nothing to do."""
        return await self._run(lambda conn: _prune(conn, cutoff, now, limit))

    async def backup(self, target: Path) -> Backup:
        raise StoreError(pg_dump_advice(self.url, target))

    async def check_writable(self) -> None:
        # Ready means a webhook would be stored in time: a standby in recovery would refuse it.
        in_recovery = await self._run(
            lambda conn: _fetch_value(conn, "SELECT pg_is_in_recovery()", ()),
            timeout=self.commit_timeout)
        if in_recovery:
            raise StoreBusy(f"the database at {server_address(self.url)} is read-only "
                            "(a standby in recovery)")

    # Slack's shared pace ----------------------------------------------------------------------

    async def take_token(self, channel: str, now: float, capacity: float,
                         rate: float) -> tuple[float, float]:
        """Take one post from `channel`'s budget: (tokens left, possibly < 0; held until)."""
        async def take(conn: Connection) -> tuple[float, float]:
            cursor = await conn.execute(TAKE_TOKEN, {"channel": channel, "now": now,
                                                     "capacity": capacity, "rate": rate})
            row = await cursor.fetchone()
            assert row is not None
            return float(row[0]), float(row[1])
        return await self._run(take)

    async def hold_channel(self, channel: str, now: float, until: float) -> None:
        await self._execute(HOLD_CHANNEL, {"channel": channel, "now": now, "until": until})

    # Plumbing ---------------------------------------------------------------------------------

    async def _run(self, work: Callable[[Connection], Awaitable[T]],
                   timeout: float | None = None) -> T:
        """`work` on a pooled connection within `timeout`; driver errors become StoreErrors."""
        await self.open()
        limit = timeout or DEFAULT_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                async with self._pool.connection() as conn:
                    return await work(conn)
        except TimeoutError:
            raise StoreBusy(f"the store did not answer within {limit:g} s") from None
        except PoolTimeout:
            raise StoreBusy("no free store connection: raise [store] pool_size") from None
        except psycopg.Error as exc:
            raise StoreError(scrub(str(exc), self.url)) from None

    async def _execute(self, statement: str, params: Any) -> None:
        async def execute(conn: Connection) -> None:
            await conn.execute(statement, params)
        await self._run(execute)

    async def _value(self, statement: str, params: Any) -> Any:
        return await self._run(lambda conn: _fetch_value(conn, statement, params))

    async def _rows(self, kind: type[T], statement: str, params: Any) -> list[T]:
        async def read(conn: Connection) -> list[T]:
            async with conn.cursor(row_factory=class_row(kind)) as cursor:
                await cursor.execute(statement, params)
                return await cursor.fetchall()
        return await self._run(read)

    async def _conversation_where(self, where: str,
                                  params: tuple[str, str]) -> ConversationRecord | None:
        rows = await self._rows(ConversationRecord, f"{CONVERSATION} WHERE {where}", params)
        return rows[0] if rows else None


async def _fetch_value(conn: Connection, statement: str, params: Any) -> Any:
    cursor = await conn.execute(statement, params)
    row = await cursor.fetchone()
    return row[0] if row else None


async def _accept(conn: Connection, event: NewEvent, now: float, window: float) -> Acceptance:
    cursor = await conn.execute(ACCEPT, accept_parameters(event, now, window))
    if row := await cursor.fetchone():
        return Acceptance("accepted", int(row[0]))
    known = await _fetch_value(conn, "SELECT event_id FROM dedup WHERE dedup_key = %s",
                               (event.dedup_key,))
    return Acceptance("duplicate", int(known or 0))


async def _prune(conn: Connection, cutoff: float, now: float, limit: int) -> Pruned:
    async with conn.transaction():
        if not await _fetch_value(conn, "SELECT pg_try_advisory_xact_lock(%s, %s)",
                                  (migrate.NAMESPACE, PRUNE_KEY)):
            return Pruned()
        dedup = await conn.execute(
            "DELETE FROM dedup WHERE dedup_key IN (SELECT dedup_key FROM dedup"
            " WHERE expires_at <= %s LIMIT %s)", (now, limit))
        ids = [row[0] for row in await (await conn.execute(
            PRUNABLE, {"cutoff": cutoff, "limit": limit})).fetchall()]
        if not ids:
            return Pruned(dedup=dedup.rowcount)
        messages = await conn.execute("DELETE FROM messages WHERE event_id = ANY(%s)", (ids,))
        deliveries = await conn.execute("DELETE FROM deliveries WHERE event_id = ANY(%s)", (ids,))
        events = await conn.execute("DELETE FROM events WHERE id = ANY(%s)", (ids,))
        return Pruned(events.rowcount, deliveries.rowcount, messages.rowcount, dedup.rowcount)
