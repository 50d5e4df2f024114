"""The durable store: events, their deliveries, conversations and transcripts, in SQLite.

Every write runs on one writer thread that batches whatever is waiting into one transaction
(group commit): each caller still waits for its own commit, but concurrent webhooks share one
fsync. A failing write rolls back to its own savepoint and fails only its caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from bridge.errors import StoreBusy, StoreError

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], T]
DeliveryStatus = Literal["pending", "delivered", "failed", "skipped"]
STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed", "skipped")
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup (
    dedup_key TEXT PRIMARY KEY,
    event_id INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries(destination, ordering_key, status, id);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE TABLE IF NOT EXISTS conversations (
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    slack_channel TEXT,
    slack_thread_ts TEXT,
    jira_key TEXT,
    jira_transcript_upto INTEGER,
    escalated_at REAL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (chatbot_id, thread_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    message_type TEXT,
    question TEXT,
    answer TEXT,
    agent_name TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conversation ON messages(chatbot_id, thread_id, id);
CREATE INDEX IF NOT EXISTS conversations_slack_thread
    ON conversations(slack_channel, slack_thread_ts);
CREATE TABLE IF NOT EXISTS slack_echoes (
    source TEXT PRIMARY KEY,
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    text TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS slack_echoes_conversation ON slack_echoes(chatbot_id, thread_id);
"""

CONVERSATION_FIELDS = frozenset(
    {"slack_channel", "slack_thread_ts", "jira_key", "jira_transcript_upto", "escalated_at"}
)


@dataclass(frozen=True)
class NewEvent:
    """An event ready to store: its kind, canonical body, and who must receive it."""

    kind: str
    body: str
    dedup_key: str
    ordering_key: str
    destinations: Sequence[str]
    message: StoredMessage | None = None
    conversation: tuple[str, str] | None = None


@dataclass(frozen=True)
class Acceptance:
    status: Literal["accepted", "duplicate"]
    event_id: int


@dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation, as kept for transcripts."""

    chatbot_id: str
    thread_id: str
    message_type: str | None
    question: str | None
    answer: str | None
    agent_name: str | None
    received_at: float = 0.0
    id: int = 0


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to one worker, with the event it carries."""

    id: int
    event_id: int
    destination: str
    ordering_key: str
    attempts: int
    created_at: float
    kind: str
    body: str

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    event_id: int
    kind: str
    destination: str
    ordering_key: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class ConversationRecord:
    chatbot_id: str
    thread_id: str
    slack_channel: str | None
    slack_thread_ts: str | None
    jira_key: str | None
    jira_transcript_upto: int | None
    escalated_at: float | None
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class Echo:
    """A reply sent to SiteGPT from Slack, which SiteGPT's messages webhook will send back."""

    chatbot_id: str
    thread_id: str
    text: str
    agent_name: str
    source: str = ""


@dataclass(frozen=True)
class FollowUp:
    """An event a destination asks the bridge to deliver next (e.g. a ticket link to Slack)."""

    kind: str
    body: str
    ordering_key: str
    destinations: Sequence[str]


@dataclass(frozen=True)
class Pruned:
    """What one retention pass removed."""

    events: int = 0
    deliveries: int = 0
    messages: int = 0
    dedup: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.events + other.events, self.deliveries + other.deliveries,
                      self.messages + other.messages, self.dedup + other.dedup)


@dataclass(frozen=True)
class Backup:
    """A consistent copy of the store, and what it holds."""

    path: Path
    size: int
    events: int
    deliveries: int
    pending: int


class Store(Protocol):
    """What the web layer, the worker and the commands need from any backend."""

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance: ...
    async def claim(self, owner: str, now: float, limit: int, lease: float) -> list[ClaimedDelivery]: ...  # noqa: E501
    async def finish(self, delivery_id: int, status: DeliveryStatus, now: float,
                     note: str | None = None, follow_ups: Sequence[FollowUp] = ()) -> None: ...
    async def reschedule(self, delivery_id: int, at: float, error: str) -> None: ...
    async def release(self, delivery_ids: Iterable[int]) -> None: ...
    async def next_due(self) -> float | None: ...
    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None: ...
    async def update_conversation(self, chatbot_id: str, thread_id: str, **fields: Any) -> None: ...
    async def conversation_in_slack(self, channel: str, thread_ts: str) -> ConversationRecord | None: ...  # noqa: E501
    async def remember_echo(self, echo: Echo, now: float, keep_for: float) -> None: ...
    async def forget_echo(self, source: str) -> None: ...
    async def consume_echo(self, echo: Echo, now: float) -> bool: ...
    async def transcript(self, chatbot_id: str, thread_id: str, after_id: int = 0) -> list[StoredMessage]: ...  # noqa: E501
    async def deliveries(self, status: str | None = None, conversation: str | None = None,
                         limit: int = 100, ids: Sequence[int] = ()) -> list[DeliveryRow]: ...
    async def retry(self, ids: Sequence[int] = (), failed: bool = False,
                    destination: str | None = None, now: float = 0.0) -> int: ...
    async def conversations(self, limit: int = 50) -> list[ConversationRecord]: ...
    async def queue_depth(self) -> dict[str, int]: ...
    async def oldest_pending(self) -> float | None: ...
    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned: ...
    async def backup(self, target: Path) -> Backup: ...
    async def check_writable(self) -> None: ...
    async def close(self) -> None: ...


class SQLiteStore:
    """The embedded backend: SQLite in WAL mode, fsync on every commit by default."""

    def __init__(self, path: Path, synchronous: str = "FULL", commit_timeout: float = 3.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.commit_timeout = commit_timeout
        self._writer = _Writer(path, synchronous)
        self._writer.start()

    async def _run(self, write: Write[T], timeout: float | None = None) -> T:
        future = self._writer.submit(write)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout or 30.0)
        except TimeoutError as exc:
            raise StoreBusy(f"the store did not commit within {timeout or 30.0:g} s") from exc

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        return await self._run(
            lambda conn: _accept(conn, event, now, window), timeout=self.commit_timeout
        )

    async def claim(self, owner: str, now: float, limit: int, lease: float) -> list[ClaimedDelivery]:  # noqa: E501
        return await self._run(lambda conn: _claim(conn, owner, now, limit, now + lease))

    async def finish(self, delivery_id: int, status: DeliveryStatus, now: float,
                     note: str | None = None, follow_ups: Sequence[FollowUp] = ()) -> None:
        await self._run(lambda conn: _finish(conn, delivery_id, status, now, note, follow_ups))

    async def reschedule(self, delivery_id: int, at: float, error: str) -> None:
        await self._run(lambda conn: conn.execute(
            "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, lease_owner = NULL,"
            " lease_until = NULL WHERE id = ?", (at, error, delivery_id)))

    async def release(self, delivery_ids: Iterable[int]) -> None:
        rows = [(delivery_id,) for delivery_id in delivery_ids]
        await self._run(lambda conn: conn.executemany(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL,"
            " attempts = MAX(attempts - 1, 0) WHERE id = ? AND status = 'pending'", rows))

    async def next_due(self) -> float | None:
        return await self._run(_next_due)

    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None:
        def read(conn: sqlite3.Connection) -> ConversationRecord | None:
            row = conn.execute(
                "SELECT * FROM conversations WHERE chatbot_id = ? AND thread_id = ?",
                (chatbot_id, thread_id)).fetchone()
            return ConversationRecord(**row) if row else None
        return await self._run(read)

    async def update_conversation(self, chatbot_id: str, thread_id: str, **fields: Any) -> None:
        await self._run(lambda conn: _update_conversation(conn, chatbot_id, thread_id, fields))

    async def conversation_in_slack(self, channel: str, thread_ts: str) -> ConversationRecord | None:  # noqa: E501
        """The conversation whose Slack thread this is, if the bridge started it."""
        def read(conn: sqlite3.Connection) -> ConversationRecord | None:
            row = conn.execute(
                "SELECT * FROM conversations WHERE slack_channel = ? AND slack_thread_ts = ?",
                (channel, thread_ts)).fetchone()
            return ConversationRecord(**row) if row else None
        return await self._run(read)

    async def remember_echo(self, echo: Echo, now: float, keep_for: float) -> None:
        """Keep `echo` until it comes back or `keep_for` passes; one memory per source."""
        await self._run(lambda conn: _remember_echo(conn, echo, now, now + keep_for))

    async def forget_echo(self, source: str) -> None:
        await self._run(lambda conn: conn.execute(
            "DELETE FROM slack_echoes WHERE source = ?", (source,)))

    async def consume_echo(self, echo: Echo, now: float) -> bool:
        """Whether `echo` was remembered (any source, text stripped); the memory is used up."""
        return await self._run(lambda conn: _consume_echo(conn, echo, now))

    async def transcript(self, chatbot_id: str, thread_id: str, after_id: int = 0) -> list[StoredMessage]:  # noqa: E501
        def read(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                "SELECT id, chatbot_id, thread_id, message_type, question, answer, agent_name,"
                " received_at FROM messages WHERE chatbot_id = ? AND thread_id = ? AND id > ?"
                " ORDER BY id", (chatbot_id, thread_id, after_id)).fetchall()
            return [StoredMessage(**row) for row in rows]
        return await self._run(read)

    async def deliveries(self, status: str | None = None, conversation: str | None = None,
                         limit: int = 100, ids: Sequence[int] = ()) -> list[DeliveryRow]:
        return await self._run(lambda conn: _deliveries(conn, status, conversation, limit, ids))

    async def retry(self, ids: Sequence[int] = (), failed: bool = False,
                    destination: str | None = None, now: float = 0.0) -> int:
        return await self._run(lambda conn: _retry(conn, ids, failed, destination, now))

    async def conversations(self, limit: int = 50) -> list[ConversationRecord]:
        def read(conn: sqlite3.Connection) -> list[ConversationRecord]:
            rows = conn.execute(
                "SELECT * FROM conversations ORDER BY last_seen DESC LIMIT ?", (limit,))
            return [ConversationRecord(**row) for row in rows]
        return await self._run(read)

    async def queue_depth(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
            return {status: 0 for status in STATUSES} | dict(rows.fetchall())
        return await self._run(read)

    async def oldest_pending(self) -> float | None:
        """When the oldest pending delivery was created (its event accepted), if any."""
        return await self._run(lambda conn: conn.execute(
            "SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'").fetchone()[0])

    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned:
        """Remove up to `limit` finished events older than `cutoff`, and expired dedup rows."""
        return await self._run(lambda conn: _prune(conn, cutoff, now, limit))

    async def backup(self, target: Path) -> Backup:
        """Copy the store to `target` on its own read connection: writers are not held up."""
        return await asyncio.to_thread(backup_sqlite, self.path, target)

    async def check_writable(self) -> None:
        # Ready means a webhook would be stored in time: the same deadline as accept().
        await self._run(lambda conn: conn.execute("DELETE FROM dedup WHERE 0"),
                        timeout=self.commit_timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.stop)


class _Writer(threading.Thread):
    """The one thread that owns the connection and commits queued writes in batches."""

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(name="store-writer", daemon=True)
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[tuple[Write[Any], concurrent.futures.Future[Any]] | None]
        self._queue = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        super().start()
        self._ready.wait()
        if self._error is not None:
            raise StoreError(f"cannot open the store at {self._path}: {self._error}")

    def submit(self, write: Write[T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not self.is_alive():
            future.set_exception(StoreError("the store is closed"))
            return future
        self._queue.put((write, future))
        return future

    def stop(self) -> None:
        if self.is_alive():
            self._queue.put(None)
            self.join()

    def run(self) -> None:
        try:
            conn = _connect(self._path, self._synchronous)
        except (sqlite3.Error, OSError) as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (batch := self._next_batch()) is not None:
                _commit_batch(conn, batch)
        finally:
            conn.close()

    def _next_batch(self) -> list[tuple[Write[Any], concurrent.futures.Future[Any]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=2000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(SCHEMA)
    return conn


def _commit_batch(
    conn: sqlite3.Connection, batch: list[tuple[Write[Any], concurrent.futures.Future[Any]]]
) -> None:
    outcomes: list[tuple[bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for write, _ in batch:
            outcomes.append(_run_in_savepoint(conn, write))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        failure = StoreBusy(f"commit failed: {exc}")
        for _, future in batch:
            _settle(future, False, failure)
        return
    for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
        _settle(future, ok, value)


def _settle(future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
    """Hand a write's outcome to its caller, unless the caller stopped waiting (deadline, shutdown).

    Its write was still done, whole: an accept told "busy" is then a duplicate of itself on retry,
    and a worker's finish survives its task being cancelled.
    """
    if not future.set_running_or_notify_cancel():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _run_in_savepoint(conn: sqlite3.Connection, write: Write[Any]) -> tuple[bool, Any]:
    conn.execute("SAVEPOINT one")
    try:
        value = write(conn)
    except Exception as exc:  # one caller's failure must not sink the batch
        conn.execute("ROLLBACK TO one")
        conn.execute("RELEASE one")
        error = exc if not isinstance(exc, sqlite3.Error) else StoreError(str(exc))
        return False, error
    conn.execute("RELEASE one")
    return True, value


def _accept(conn: sqlite3.Connection, event: NewEvent, now: float, window: float) -> Acceptance:
    conn.execute(
        "DELETE FROM dedup WHERE dedup_key = ? AND expires_at <= ?", (event.dedup_key, now))
    existing = conn.execute(
        "SELECT event_id FROM dedup WHERE dedup_key = ?", (event.dedup_key,)).fetchone()
    if existing:
        return Acceptance("duplicate", existing[0])
    event_id = _insert_event(conn, event, now)
    conn.execute("INSERT INTO dedup (dedup_key, event_id, expires_at) VALUES (?, ?, ?)",
                 (event.dedup_key, event_id, now + window))
    return Acceptance("accepted", event_id)


def _insert_event(conn: sqlite3.Connection, event: NewEvent, now: float) -> int:
    cursor = conn.execute(
        "INSERT INTO events (kind, ordering_key, dedup_key, body, received_at) VALUES (?,?,?,?,?)",
        (event.kind, event.ordering_key, event.dedup_key, event.body, now))
    event_id = int(cursor.lastrowid or 0)
    conn.executemany(
        "INSERT INTO deliveries (event_id, destination, ordering_key, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [(event_id, name, event.ordering_key, now, now) for name in event.destinations])
    if event.conversation:
        conn.execute(
            "INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET last_seen = excluded.last_seen",
            (*event.conversation, now, now))
    if event.message:
        message = event.message
        conn.execute(
            "INSERT INTO messages (event_id, chatbot_id, thread_id, message_type, question,"
            " answer, agent_name, received_at) VALUES (?,?,?,?,?,?,?,?)",
            (event_id, message.chatbot_id, message.thread_id, message.message_type,
             message.question, message.answer, message.agent_name, now))
    return event_id


# A delivery may go only when no older one to the same destination and conversation is pending.
FIRST_IN_LINE = """NOT EXISTS (
    SELECT 1 FROM deliveries e
    WHERE e.destination = d.destination AND e.ordering_key = d.ordering_key
      AND e.status = 'pending' AND e.id < d.id)"""
CLAIM = f"""
SELECT d.id FROM deliveries d
WHERE d.status = 'pending' AND d.next_attempt_at <= :now
  AND (d.lease_until IS NULL OR d.lease_until <= :now)
  AND {FIRST_IN_LINE}
ORDER BY d.id LIMIT :limit
"""


def _claim(conn: sqlite3.Connection, owner: str, now: float, limit: int,
           lease_until: float) -> list[ClaimedDelivery]:
    ids = [row[0] for row in conn.execute(CLAIM, {"now": now, "limit": limit})]
    if not ids:
        return []
    conn.executemany(
        "UPDATE deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1"
        " WHERE id = ?", [(owner, lease_until, delivery_id) for delivery_id in ids])
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        "SELECT d.id, d.event_id, d.destination, d.ordering_key, d.attempts, d.created_at,"
        f" e.kind, e.body FROM deliveries d JOIN events e ON e.id = d.event_id"
        f" WHERE d.id IN ({marks}) ORDER BY d.id", ids)
    return [ClaimedDelivery(**row) for row in rows]


def _finish(conn: sqlite3.Connection, delivery_id: int, status: DeliveryStatus, now: float,
            note: str | None, follow_ups: Sequence[FollowUp]) -> None:
    conn.execute(
        "UPDATE deliveries SET status = ?, finished_at = ?, last_error = ?, lease_owner = NULL,"
        " lease_until = NULL WHERE id = ?", (status, now, note, delivery_id))
    for follow_up in follow_ups:
        _insert_event(conn, NewEvent(
            kind=follow_up.kind, body=follow_up.body, dedup_key=f"follow-up:{delivery_id}",
            ordering_key=follow_up.ordering_key, destinations=follow_up.destinations), now)


def _next_due(conn: sqlite3.Connection) -> float | None:
    # Deliveries waiting behind an older one are not due, whatever their own time says.
    row = conn.execute(
        "SELECT MIN(MAX(d.next_attempt_at, COALESCE(d.lease_until, 0))) FROM deliveries d"
        f" WHERE d.status = 'pending' AND {FIRST_IN_LINE}").fetchone()
    return row[0]


def _update_conversation(conn: sqlite3.Connection, chatbot_id: str, thread_id: str,
                         fields: dict[str, Any]) -> None:
    unknown = set(fields) - CONVERSATION_FIELDS
    if unknown:
        raise StoreError(f"unknown conversation fields: {sorted(unknown)}")
    conn.execute(
        "INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (chatbot_id, thread_id, time.time(), time.time()))
    assignments = ", ".join(f"{name} = :{name}" for name in fields)
    conn.execute(
        f"UPDATE conversations SET {assignments} WHERE chatbot_id = :c AND thread_id = :t",
        {**fields, "c": chatbot_id, "t": thread_id})


def _remember_echo(conn: sqlite3.Connection, echo: Echo, now: float, expires_at: float) -> None:
    conn.execute("DELETE FROM slack_echoes WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT OR REPLACE INTO slack_echoes (source, chatbot_id, thread_id, text, agent_name,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        (echo.source, echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name,
         expires_at))


def _consume_echo(conn: sqlite3.Connection, echo: Echo, now: float) -> bool:
    conn.execute("DELETE FROM slack_echoes WHERE expires_at <= ?", (now,))
    row = conn.execute(
        "SELECT source FROM slack_echoes WHERE chatbot_id = ? AND thread_id = ? AND text = ?"
        " AND agent_name = ? ORDER BY expires_at LIMIT 1",
        (echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM slack_echoes WHERE source = ?", (row[0],))
    return True


def _deliveries(conn: sqlite3.Connection, status: str | None, conversation: str | None,
                limit: int, ids: Sequence[int] = ()) -> list[DeliveryRow]:
    clauses: list[str] = []
    params: list[Any] = []
    if ids:
        clauses.append(f"d.id IN ({','.join('?' * len(ids))})")
        params += list(ids)
    if status:
        clauses.append("d.status = ?")
        params.append(status)
    if conversation:
        clauses.append("(d.ordering_key = ? OR d.ordering_key LIKE ?)")
        params += [conversation, f"%/{conversation}"]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        "SELECT d.id, d.event_id, e.kind, d.destination, d.ordering_key, d.status, d.attempts,"
        " d.next_attempt_at, d.last_error, d.created_at, d.finished_at FROM deliveries d"
        f" JOIN events e ON e.id = d.event_id {where} ORDER BY d.id DESC LIMIT ?",
        [*params, limit])
    return [DeliveryRow(**row) for row in rows]


def _retry(conn: sqlite3.Connection, ids: Sequence[int], failed: bool,
           destination: str | None, now: float) -> int:
    """Named deliveries in any finished state, or every failed one; never "all" by default.

    Skipped ones are dry runs: requeued only by id, since bulk-retrying them after a token is
    set would post a backlog nobody asked for.
    """
    if not ids and not failed:
        return 0
    clauses = ["status = 'failed'" if failed else "status != 'pending'"]
    params: list[Any] = []
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        params += list(ids)
    if destination:
        clauses.append("destination = ?")
        params.append(destination)
    cursor = conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
        " finished_at = NULL, lease_owner = NULL, lease_until = NULL"
        f" WHERE {' AND '.join(clauses)}",
        [now, *params])
    return cursor.rowcount


# Finished events older than the cutoff; the newest event always stays (see _prune).
PRUNABLE = """
SELECT e.id FROM events e
WHERE e.received_at < :cutoff
  AND e.id < (SELECT MAX(id) FROM events)
  AND NOT EXISTS (
    SELECT 1 FROM deliveries d
    WHERE d.event_id = e.id AND (d.status = 'pending' OR d.finished_at >= :cutoff))
ORDER BY e.id LIMIT :limit
"""


def _prune(conn: sqlite3.Connection, cutoff: float, now: float, limit: int) -> Pruned:
    dedup = conn.execute(
        "DELETE FROM dedup WHERE rowid IN"
        " (SELECT rowid FROM dedup WHERE expires_at <= ? LIMIT ?)", (now, limit)).rowcount
    ids = [row[0] for row in conn.execute(PRUNABLE, {"cutoff": cutoff, "limit": limit})]
    if not ids:
        return Pruned(dedup=dedup)
    marks = ",".join("?" * len(ids))
    # The newest message always stays, like the newest event (see PRUNABLE): SQLite hands out
    # MAX(id) + 1, so deleting the newest rows would reuse their ids, and a conversation's
    # jira_transcript_upto would then skip the messages that come next.
    messages = conn.execute(
        f"DELETE FROM messages WHERE event_id IN ({marks})"
        " AND id < (SELECT MAX(id) FROM messages)", ids).rowcount
    deliveries = conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids).rowcount
    events = conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids).rowcount
    return Pruned(events, deliveries, messages, dedup)


def backup_sqlite(source: Path, target: Path) -> Backup:
    """Copy a live SQLite store to `target` in one read transaction, then move it into place."""
    if target.resolve() == source.resolve():
        raise StoreError(f"refusing to back up {source} onto itself")
    partial = target.with_name(f"{target.name}.partial")
    try:
        src = sqlite3.connect(f"file:{source}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store at {source}: {exc}") from exc
    try:
        partial.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)  # pages=-1: one step, one snapshot, however busy the writers are
            events, deliveries, pending = _seal_copy(dst)
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"backup to {target} failed: {exc}") from exc
    finally:
        src.close()
    return Backup(target, target.stat().st_size, events, deliveries, pending)


def _seal_copy(dst: sqlite3.Connection) -> tuple[int, int, int]:
    """Make the copy one self-contained file, check it, and count what it holds."""
    dst.execute("PRAGMA journal_mode=DELETE")  # no -wal beside it to lose when it is moved
    check = dst.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"the copy fails its integrity check: {check}")
    events = dst.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    deliveries, pending = dst.execute(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'pending') FROM deliveries").fetchone()
    return events, deliveries, pending or 0


def open_store(url: str, synchronous: str = "FULL", commit_timeout: float = 3.0) -> SQLiteStore:
    """The store named by `[store] url`."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"unsupported store url {url!r}: use sqlite:///PATH")
    return SQLiteStore(Path(url.removeprefix("sqlite:///")), synchronous, commit_timeout)
