"""The durable store: events, their deliveries, conversations and transcripts, in SQLite.

Every write runs on one writer thread that batches whatever is waiting into one transaction
(group commit): each caller still waits for its own commit, but concurrent webhooks share one
fsync. A failing write rolls back to its own savepoint and fails only its caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from bridge.errors import StoreBusy, StoreError

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], T]
DeliveryStatus = Literal["pending", "delivered", "failed", "skipped"]
STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed", "skipped")
MAX_BATCH = 512
MAX_VARIABLES = 999  # SQLite's smallest limit on ? per statement (older builds)
STATEMENT_CACHE = 1024
PAGE_SIZE = 2048
DEFAULT_TIMEOUT = 30.0
log = logging.getLogger("bridge.store")

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
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(id) WHERE status = 'pending';
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
CREATE INDEX IF NOT EXISTS conversations_jira_key ON conversations(jira_key);
CREATE TABLE IF NOT EXISTS slack_tickets (
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (chatbot_id, thread_id)
);
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
    async def next_due(self, after: float) -> float | None: ...
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
    # The Jira back-channel: the conversation of a ticket, and the ticket its Slack parent shows.
    async def conversation_by_jira_key(self, key: str) -> ConversationRecord | None: ...
    async def ticket_shown(self, chatbot_id: str, thread_id: str) -> dict[str, Any] | None: ...
    async def show_ticket(self, chatbot_id: str, thread_id: str, state: dict[str, Any]) -> None: ...


class SQLiteStore:
    """The embedded backend: SQLite in WAL mode, fsync on every commit by default."""

    def __init__(self, path: Path, synchronous: str = "FULL", commit_timeout: float = 3.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.commit_timeout = commit_timeout
        self._writer = _Writer(path, synchronous)
        self._writer.start()

    @property
    def commits(self) -> int:
        """Transactions committed since the store was opened (each holds a whole batch)."""
        return self._writer.commits

    async def _run(self, work: Write[T] | _Accept, timeout: float | None = None) -> T:
        limit = timeout or DEFAULT_TIMEOUT
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writer.enqueue(_Job(work, future, loop))
        expiry = loop.call_later(limit, _expire, future, limit)
        try:
            return await future
        finally:
            expiry.cancel()

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        return await self._run(_Accept(event, now, window), timeout=self.commit_timeout)

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

    async def next_due(self, after: float) -> float | None:
        """The first retry time later than `after`: when the worker should look again.

        What is due already is claim()'s business; what waits behind another delivery of its
        conversation, or behind a lease, is woken by that delivery's finish or by the poll.
        """
        return await self._run(lambda conn: conn.execute(NEXT_DUE, (after,)).fetchone()[0])

    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None:
        return await self._run(lambda conn: _conversation_where(
            conn, "chatbot_id = ? AND thread_id = ?", (chatbot_id, thread_id)))

    async def update_conversation(self, chatbot_id: str, thread_id: str, **fields: Any) -> None:
        await self._run(lambda conn: _update_conversation(conn, chatbot_id, thread_id, fields))

    async def conversation_in_slack(self, channel: str, thread_ts: str) -> ConversationRecord | None:  # noqa: E501
        """The conversation whose Slack thread this is, if the bridge started it."""
        return await self._run(lambda conn: _conversation_where(
            conn, "slack_channel = ? AND slack_thread_ts = ?", (channel, thread_ts)))

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

    # The Jira back-channel ---------------------------------------------------------------------

    async def conversation_by_jira_key(self, key: str) -> ConversationRecord | None:
        """The conversation whose ticket this is, if the bridge opened it."""
        return await self._run(lambda conn: _conversation_where(conn, "jira_key = ?", (key,)))

    async def ticket_shown(self, chatbot_id: str, thread_id: str) -> dict[str, Any] | None:
        """What the Slack destination last showed of the conversation's ticket."""
        row = await self._run(lambda conn: conn.execute(
            "SELECT state FROM slack_tickets WHERE chatbot_id = ? AND thread_id = ?",
            (chatbot_id, thread_id)).fetchone())
        return json.loads(row[0]) if row else None

    async def show_ticket(self, chatbot_id: str, thread_id: str, state: dict[str, Any]) -> None:
        await self._run(lambda conn: conn.execute(
            "INSERT INTO slack_tickets (chatbot_id, thread_id, state) VALUES (?, ?, ?)"
            " ON CONFLICT DO UPDATE SET state = excluded.state",
            (chatbot_id, thread_id, json.dumps(state, sort_keys=True))))


@dataclass(frozen=True)
class _Accept:
    """An event to store unless its body was seen within the window; run in groups."""

    event: NewEvent
    now: float
    window: float


@dataclass(eq=False)
class _Job:
    """One write and who waits for it: an asyncio future on `loop`, or a thread's future."""

    work: Write[Any] | _Accept
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None


Outcome = tuple[_Job, bool, Any]  # the job, whether it succeeded, its value or its exception


def _expire(future: asyncio.Future[Any], limit: float) -> None:
    if not future.done():
        future.set_exception(StoreBusy(f"the store did not commit within {limit:g} s"))


class _Writer(threading.Thread):
    """The one thread that owns the connection and commits queued writes in batches."""

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(name="store-writer", daemon=True)
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.commits = 0
        self.handed_over = 0

    def start(self) -> None:
        super().start()
        self._ready.wait()
        if self._error is not None:
            raise StoreError(f"cannot open the store at {self._path}: {self._error}")

    def submit(self, write: Write[T]) -> concurrent.futures.Future[T]:
        """Queue a write from any thread; its future is settled from the writer thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not self.is_alive():
            future.set_exception(StoreError("the store is closed"))
            return future
        self._queue.put([_Job(write, future)])
        return future

    def enqueue(self, job: _Job) -> None:
        """Queue a job from its own event loop.

        Jobs queued during one turn of the loop go to the writer together at the next turn:
        one wake-up of the writer thread per turn, not one per webhook, each of which would
        also make it fight the loop for the GIL.
        """
        assert job.loop is not None and isinstance(job.future, asyncio.Future)
        if not self.is_alive():
            job.future.set_exception(StoreError("the store is closed"))
            return
        gathering = self._gathering.get(job.loop)
        if gathering is None:
            gathering = self._gathering[job.loop] = []
            job.loop.call_soon(self._hand_over, job.loop)
        gathering.append(job)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._gathering.pop(loop)
        self.handed_over += len(jobs)
        self._queue.put(jobs)

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
                _settle(self._commit(conn, batch))
        finally:
            conn.close()
            self._refuse_the_rest()

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[Outcome]:
        try:
            committed, outcomes = _commit_batch(conn, jobs)
        except Exception as exc:  # a bug here must fail this batch, not end the thread
            log.exception("store writer: unexpected error")
            _roll_back(conn)
            return [(job, False, StoreError(f"unexpected store error: {exc}")) for job in jobs]
        self.commits += committed
        return outcomes

    def _next_batch(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = first
        while len(batch) < MAX_BATCH:
            try:
                jobs = self._queue.get_nowait()
            except queue.Empty:
                break
            if jobs is None:
                self._queue.put(None)
                break
            batch += jobs
        return batch

    def _refuse_the_rest(self) -> None:
        refused: list[Outcome] = []
        with contextlib.suppress(queue.Empty):
            while True:
                jobs = self._queue.get_nowait()
                refused += [(job, False, StoreError("the store is closed")) for job in jobs or []]
        _settle(refused)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # Batches of every size have their own INSERT text (insert_rows): keep them all prepared.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=STATEMENT_CACHE)
    conn.row_factory = sqlite3.Row
    # Only a new, empty database takes this. Each stored event lands on a few pages picked by
    # hash or conversation (dedup key, per-conversation indexes) and every page touched is
    # written whole to the WAL at commit: with 2 KiB pages a burst writes ~40% less per event
    # than with the default 4 KiB, for ~20% less writer CPU (bench/, 50k-event store).
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=2000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(SCHEMA)
    return conn


def _commit_batch(conn: sqlite3.Connection, jobs: list[_Job]) -> tuple[bool, list[Outcome]]:
    """Run every job in one transaction; if the transaction itself fails, every job fails."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        outcomes = [outcome for group in _groups(jobs) for outcome in _run_group(conn, group)]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _roll_back(conn)
        return False, [(job, False, StoreBusy(f"commit failed: {exc}")) for job in jobs]
    return True, outcomes


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _settle(outcomes: list[Outcome]) -> None:
    """Hand each outcome to its caller: one wake-up per event loop and batch, not per caller.

    A write whose caller stopped waiting (deadline, shutdown) was still done, whole: an accept
    told "busy" is then a duplicate of itself on retry, and a worker's finish survives its task
    being cancelled.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        job = outcome[0]
        if job.loop is None:
            _resolve_from_thread(outcome)
        else:
            by_loop.setdefault(job.loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(outcomes: list[Outcome]) -> None:
    for job, succeeded, value in outcomes:
        if job.future.done():  # past its deadline, or cancelled
            continue
        if succeeded:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


def _resolve_from_thread(outcome: Outcome) -> None:
    job, succeeded, value = outcome
    future = job.future
    assert isinstance(future, concurrent.futures.Future)
    if not future.set_running_or_notify_cancel():
        return
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)


def _groups(jobs: list[_Job]) -> Iterator[list[_Job]]:
    """Consecutive accepts run as one group; every other write runs alone, in queue order."""
    for accepting, run in itertools.groupby(jobs, key=lambda job: isinstance(job.work, _Accept)):
        if accepting:
            yield list(run)
        else:
            yield from ([job] for job in run)


def _run_group(conn: sqlite3.Connection, group: list[_Job]) -> list[Outcome]:
    write = group[0].work
    if not isinstance(write, _Accept):
        return _in_savepoint(conn, group, lambda: [write(conn)])
    accepts = [job.work for job in group if isinstance(job.work, _Accept)]
    outcomes = _in_savepoint(conn, group, lambda: _accept_all(conn, accepts))
    if len(group) > 1 and not outcomes[0][1]:  # run each alone so that only the culprit fails
        return [outcome for job in group for outcome in _run_group(conn, [job])]
    return outcomes


def _in_savepoint(conn: sqlite3.Connection, group: list[_Job],
                  run: Callable[[], list[Any]]) -> list[Outcome]:
    conn.execute("SAVEPOINT one")
    try:
        values = run()
    except Exception as exc:  # one caller's failure must not sink the batch
        conn.execute("ROLLBACK TO one")
        conn.execute("RELEASE one")
        error = exc if not isinstance(exc, sqlite3.Error) else StoreError(str(exc))
        return [(job, False, error) for job in group]
    conn.execute("RELEASE one")
    return [(job, True, value) for job, value in zip(group, values, strict=True)]


def _accept_all(conn: sqlite3.Connection, accepts: list[_Accept]) -> list[Acceptance]:
    """Store each event unless the same body was accepted within its window, here or before."""
    seen = _remembered(conn, [accept.event.dedup_key for accept in accepts])
    rows = _NewRows(_next_event_id(conn))
    remember: list[tuple[str, int, float]] = []
    outcomes: list[Acceptance] = []
    for accept in accepts:
        key = accept.event.dedup_key
        known = seen.get(key)
        if known and known[1] > accept.now:
            outcomes.append(Acceptance("duplicate", known[0]))
            continue
        event_id = rows.add(accept.event, accept.now)
        seen[key] = (event_id, accept.now + accept.window)
        remember.append((key, event_id, accept.now + accept.window))
        outcomes.append(Acceptance("accepted", event_id))
    rows.write(conn)
    insert_rows(  # an expired entry for the same body is replaced
        conn, "INSERT INTO dedup (dedup_key, event_id, expires_at)", remember,
        " ON CONFLICT DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at")
    return outcomes


def _remembered(conn: sqlite3.Connection, keys: list[str]) -> dict[str, tuple[int, float]]:
    """Dedup entries for these keys: event id and expiry. One lookup for the whole group."""
    rows = conn.execute(
        "SELECT d.dedup_key, d.event_id, d.expires_at FROM json_each(?) AS k"
        " CROSS JOIN dedup AS d ON d.dedup_key = k.value", (json.dumps(keys),))
    return {key: (event_id, expires_at) for key, event_id, expires_at in rows}


def _next_event_id(conn: sqlite3.Connection) -> int:
    # Ids are chosen here rather than by each INSERT so that a group is one INSERT per
    # table; the write lock (BEGIN IMMEDIATE) makes MAX(id) + 1 as safe as SQLite's own choice.
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM events").fetchone()[0])


@dataclass
class _NewRows:
    """The rows a group of new events adds, written with one INSERT per table."""

    next_id: int
    events: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    conversations: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    messages: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, event: NewEvent, now: float) -> int:
        event_id, self.next_id = self.next_id, self.next_id + 1
        self.events.append(
            (event_id, event.kind, event.ordering_key, event.dedup_key, event.body, now))
        self.deliveries += [(event_id, name, event.ordering_key, now, now)
                            for name in event.destinations]
        if event.conversation:
            first_seen = self.conversations.get(event.conversation, (now, now))[0]
            self.conversations[event.conversation] = (first_seen, now)
        if message := event.message:
            self.messages.append((event_id, message.chatbot_id, message.thread_id,
                                  message.message_type, message.question, message.answer,
                                  message.agent_name, now))
        return event_id

    def write(self, conn: sqlite3.Connection) -> None:
        insert_rows(conn, "INSERT INTO events (id, kind, ordering_key, dedup_key, body,"
                    " received_at)", self.events)
        insert_rows(conn, "INSERT INTO deliveries (event_id, destination, ordering_key,"
                    " next_attempt_at, created_at)", self.deliveries)
        insert_rows(conn, "INSERT INTO conversations (chatbot_id, thread_id, first_seen,"
                    " last_seen)",
                    [(*conversation, *seen) for conversation, seen in self.conversations.items()],
                    " ON CONFLICT DO UPDATE SET last_seen = excluded.last_seen")
        insert_rows(conn, "INSERT INTO messages (event_id, chatbot_id, thread_id, message_type,"
                    " question, answer, agent_name, received_at)", self.messages)


def insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]],
                upsert: str = "") -> None:
    """`insert` VALUES (...), (...), ...: many rows in one statement.

    Unlike executemany, which steps once per row and gives up the GIL at each step, this
    steps once per statement: the writer thread then waits for the event loop to hand the
    GIL back a few times per batch, not a few times per event (bench/).
    """
    if not rows:
        return
    width = len(rows[0])
    per_statement = MAX_VARIABLES // width
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
        conn.execute(f"{insert} VALUES {values}{upsert}",
                     [value for row in chunk for value in row])


def _insert_event(conn: sqlite3.Connection, event: NewEvent, now: float) -> int:
    rows = _NewRows(_next_event_id(conn))
    event_id = rows.add(event, now)
    rows.write(conn)
    return event_id


# One seek on deliveries_due, however long the queue (see SQLiteStore.next_due).
NEXT_DUE = "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'" \
    " AND next_attempt_at > ?"

# A delivery may go only when no older one to the same destination and conversation is pending.
FIRST_IN_LINE = """NOT EXISTS (
    SELECT 1 FROM deliveries e
    WHERE e.destination = d.destination AND e.ordering_key = d.ordering_key
      AND e.status = 'pending' AND e.id < d.id)"""
# Pending deliveries in id order, stopping at `limit`: with a backlog (Slack down for an hour)
# the planner's own choice, every due row sorted by id, took ~40 ms per claim at 20,000 pending
# (on the writer thread, so webhooks waited too); this takes ~0.1 ms.
CLAIM = f"""
SELECT d.id FROM deliveries d INDEXED BY deliveries_pending
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


def _conversation_where(conn: sqlite3.Connection, where: str,
                        parameters: tuple[str, ...]) -> ConversationRecord | None:
    row = conn.execute(f"SELECT * FROM conversations WHERE {where}", parameters).fetchone()
    return ConversationRecord(**row) if row else None


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
        literal = conversation.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("(d.ordering_key = ? OR d.ordering_key LIKE ? ESCAPE '\\')")
        params += [conversation, f"%/{literal}"]
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


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///PATH` url names; any other url is a StoreError."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"unsupported store url {url!r}: use sqlite:///PATH")
    return Path(url.removeprefix("sqlite:///"))


def open_store(url: str, synchronous: str = "FULL", commit_timeout: float = 3.0) -> SQLiteStore:
    """The store named by `[store] url`."""
    return SQLiteStore(sqlite_path(url), synchronous, commit_timeout)
