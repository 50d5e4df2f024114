"""Group commit: concurrent writes share a transaction, yet each caller gets its own truth."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.app import create_app, open_bridge
from bridge.errors import StoreBusy, StoreError
from bridge.event_rows import new_event
from bridge.events import TICKET_LINKED, parse_event
from bridge.store import FollowUp, NewEvent
from bridge.store.sqlite import SQLiteStore
from bridge.store.sqlite.intake import MAX_VARIABLES
from tests.settings_files import TOKENS

NOW = 1_700_000_000.0


def message(thread: str, text: str) -> dict[str, Any]:
    return {"event": "ADD_MESSAGE", "data": {
        "chatbotId": "bot", "threadId": thread, "question": text, "messageType": "USER_MESSAGE"}}


def stored(body: dict[str, Any]) -> NewEvent:
    return new_event(parse_event(body["event"], body), body, ["slack", "crm"])


class Gate:
    """Holds the writer thread inside a write, so that what is submitted meanwhile queues up."""

    def __init__(self, store: SQLiteStore) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.held: Awaitable[Any] = store._run(self._hold)

    def _hold(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        self.opened.wait(10)

    async def __aenter__(self) -> Gate:
        self.held = asyncio.ensure_future(self.held)
        await asyncio.to_thread(self.entered.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.opened.set()
        await self.held


async def queued(store: SQLiteStore, *writes: Awaitable[Any]) -> list[asyncio.Future[Any]]:
    """Start each write, in the order given, and wait until all wait in the writer's queue."""
    waiting = jobs_waiting(store) + len(writes)
    tasks = []
    for write in writes:
        tasks.append(asyncio.ensure_future(write))
        await asyncio.sleep(0)
    for _ in range(1000):
        if jobs_waiting(store) >= waiting:
            break
        await asyncio.sleep(0.01)
    return tasks


def jobs_waiting(store: SQLiteStore) -> int:
    """Writes handed to the writer thread that it has not taken yet (it is held by a Gate)."""
    return sum(len(jobs) for jobs in list(store._writer._queue.queue) if jobs)


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "bridge.db", commit_timeout=2.0)
    yield opened
    await opened.close()


async def test_identical_bodies_in_one_batch_become_one_event(store, tmp_path):
    body = message("t1", "hello")
    async with Gate(store):
        tasks = await queued(store, *(store.accept(stored(body), NOW, 600) for _ in range(40)))
    outcomes = await asyncio.gather(*tasks)
    assert [outcome.status for outcome in outcomes] == ["accepted"] + ["duplicate"] * 39
    assert len({outcome.event_id for outcome in outcomes}) == 1
    assert count(tmp_path / "bridge.db", "events") == 1
    assert count(tmp_path / "bridge.db", "deliveries") == 2
    assert count(tmp_path / "bridge.db", "messages") == 1


async def test_mixed_batch_keeps_every_distinct_event_and_drops_repeats(store, tmp_path):
    bodies = [message(f"t{n % 3}", f"m{n % 7}") for n in range(42)]
    async with Gate(store):
        tasks = await queued(store, *(store.accept(stored(body), NOW, 600) for body in bodies))
    outcomes = await asyncio.gather(*tasks)
    distinct = {str(body) for body in bodies}
    assert sum(outcome.status == "accepted" for outcome in outcomes) == len(distinct) == 21
    by_body: dict[str, set[int]] = {}
    for body, outcome in zip(bodies, outcomes, strict=True):
        by_body.setdefault(str(body), set()).add(outcome.event_id)
    assert all(len(ids) == 1 for ids in by_body.values())
    assert count(tmp_path / "bridge.db", "events") == 21
    assert count(tmp_path / "bridge.db", "conversations") == 3


async def test_a_batch_is_one_transaction(store):
    statements: list[str] = []
    await store._run(lambda conn: conn.set_trace_callback(statements.append))
    async with Gate(store):
        tasks = await queued(store, *(store.accept(stored(message("t", f"m{n}")), NOW, 600)
                               for n in range(50)))
    outcomes = await asyncio.gather(*tasks)
    await store._run(lambda conn: conn.set_trace_callback(None))
    assert {outcome.status for outcome in outcomes} == {"accepted"}
    # The tracing write's own commit, the gate's batch, then all fifty together.
    assert statements.count("COMMIT") == 3


async def test_duplicate_across_batches_within_the_window_only(store):
    body = message("t1", "hello")
    first = await store.accept(stored(body), NOW, 600)
    again = await store.accept(stored(body), NOW + 599, 600)
    later = await store.accept(stored(body), NOW + 601, 600)
    assert (first.status, again.status, later.status) == ("accepted", "duplicate", "accepted")
    assert again.event_id == first.event_id != later.event_id


def break_commit(conn: sqlite3.Connection) -> None:
    """A deferred foreign key violation: every statement succeeds, then COMMIT fails."""
    conn.execute("CREATE TABLE IF NOT EXISTS probe (event_id INTEGER"
                 " REFERENCES events(id) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("INSERT INTO probe VALUES (-1)")


async def test_a_failed_commit_fails_only_its_own_batch_and_acknowledges_nothing(store, tmp_path):
    async with Gate(store):
        doomed = await queued(store, store._run(break_commit),
                              *(store.accept(stored(message("t", f"m{n}")), NOW, 600)
                                for n in range(5)))
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(outcome, StoreBusy) for outcome in outcomes)
    assert count(tmp_path / "bridge.db", "events") == 0
    again = await store.accept(stored(message("t", "m0")), NOW, 600)
    assert again.status == "accepted"  # the failed batch left no dedup entry behind
    assert count(tmp_path / "bridge.db", "events") == 1


async def test_one_failing_write_fails_only_its_caller(store):
    async with Gate(store):
        tasks = await queued(
            store,
            store.accept(stored(message("t", "before")), NOW, 600),
            store.save_link("bot", "t", "slack", {"not json": object()}),
            store.accept(stored(message("t", "after")), NOW, 600))
    before, failed, after = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(failed, TypeError)
    assert before.status == after.status == "accepted"


async def test_an_event_that_cannot_be_stored_fails_alone_not_its_batch(store, tmp_path):
    good = [stored(message("t", f"m{n}")) for n in range(4)]
    bad = NewEvent(kind="ADD_MESSAGE", body="\ud800", dedup_key="bad", ordering_key="bot/t",
                   destinations=["slack"])  # a lone surrogate cannot be encoded for SQLite
    async with Gate(store):
        tasks = await queued(store, *(store.accept(event, NOW, 600)
                                      for event in [good[0], good[1], bad, good[2], good[3]]))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[2], UnicodeEncodeError)
    assert [outcome.status for outcome in outcomes if not isinstance(outcome, Exception)] == [
        "accepted"] * 4
    assert count(tmp_path / "bridge.db", "events") == 4


async def test_follow_ups_and_accepts_in_one_batch_get_distinct_ids(store):
    first = await store.accept(stored(message("t", "first")), NOW, 600)
    [claimed] = await store.claim("worker", NOW, 1, lease=60)
    follow_up = FollowUp(kind=TICKET_LINKED, body='{"linked": true}', ordering_key="bot/t",
                         destinations=["slack"])
    async with Gate(store):
        tasks = await queued(
            store,
            store.accept(stored(message("t", "before")), NOW, 600),
            store.finish(claimed.lease, "delivered", NOW, "ok", [follow_up]),
            store.accept(stored(message("t", "after")), NOW, 600))
    before, _, after = await asyncio.gather(*tasks)
    rows = await store.deliveries(limit=100)
    event_ids = sorted({row.event_id for row in rows})
    assert len(event_ids) == 4 and first.event_id == event_ids[0]
    assert {before.event_id, after.event_id} < set(event_ids)
    assert [row.kind for row in rows if row.event_id not in (
        first.event_id, before.event_id, after.event_id)] == [TICKET_LINKED]


async def test_acknowledged_means_committed(store, tmp_path):
    outcomes = await asyncio.gather(*(store.accept(stored(message("t", f"m{n}")), NOW, 600)
                                      for n in range(20)))
    with sqlite3.connect(tmp_path / "bridge.db") as reader:
        visible = {row[0] for row in reader.execute("SELECT id FROM events")}
    assert {outcome.event_id for outcome in outcomes} <= visible


async def test_nothing_is_acknowledged_while_the_store_is_locked(tmp_path):
    path = tmp_path / "bridge.db"
    store = SQLiteStore(path, commit_timeout=2.0)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        pending = asyncio.ensure_future(store.accept(stored(message("t", "m")), NOW, 600))
        await asyncio.sleep(0.2)
        assert not pending.done()
        other.execute("ROLLBACK")
        assert (await pending).status == "accepted"
    finally:
        other.close()
        await store.close()


async def test_a_timed_out_caller_does_not_stop_the_writer(tmp_path):
    # Short, but long enough for the write after the gate on a busy machine (parallel workers).
    store = SQLiteStore(tmp_path / "bridge.db", commit_timeout=0.5)
    try:
        async with Gate(store):
            with pytest.raises(StoreBusy):
                await store.accept(stored(message("t", "slow")), NOW, 600)
        later = await store.accept(stored(message("t", "later")), NOW, 600)
        assert later.status == "accepted"
    finally:
        await store.close()


async def test_closed_store_refuses_writes(tmp_path):
    store = SQLiteStore(tmp_path / "bridge.db")
    await store.close()
    with pytest.raises(StoreError):
        await store.accept(stored(message("t", "m")), NOW, 600)


async def test_webhook_answers_503_when_its_batch_fails_and_200_after(make_settings):
    bridge = open_bridge(make_settings())
    app = create_app(bridge, run_worker=False)
    store = bridge.store
    assert isinstance(store, SQLiteStore)
    headers = {"X-WEBHOOK-TOKEN": TOKENS["messages"]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url="http://bridge") as client:
        async with Gate(store):
            posts = await queued(store, store._run(break_commit), *(
                client.post("/webhooks/messages", json=message("t", f"m{n}"), headers=headers)
                for n in range(3)))
        failed = await asyncio.gather(*posts[1:])
        retried = await client.post("/webhooks/messages", json=message("t", "m0"),
                                    headers=headers)
    await bridge.close()
    assert [response.status_code for response in failed] == [503, 503, 503]
    assert failed[0].json()["status"] == "unavailable"
    assert retried.status_code == 200 and retried.json()["status"] == "accepted"


async def test_a_batch_writes_each_table_in_a_few_statements_not_one_per_event(store, tmp_path):
    statements: list[str] = []
    await store._run(lambda conn: conn.set_trace_callback(statements.append))
    async with Gate(store):
        tasks = await queued(store, *(store.accept(stored(message(f"t{n % 7}", f"m{n}")), NOW, 600)
                               for n in range(300)))
    outcomes = await asyncio.gather(*tasks)
    await store._run(lambda conn: conn.set_trace_callback(None))
    assert [outcome.status for outcome in outcomes] == ["accepted"] * 300
    assert [outcome.event_id for outcome in outcomes] == list(range(1, 301))
    inserts = Counter(sql.split(" (")[0] for sql in statements if sql.startswith("INSERT"))

    def statements_for(rows: int, width: int) -> int:
        return math.ceil(rows / (MAX_VARIABLES // width))

    assert inserts == {"INSERT INTO events": statements_for(300, 6),
                       "INSERT INTO deliveries": statements_for(600, 5),
                       "INSERT INTO messages": statements_for(300, 8),
                       "INSERT INTO dedup": statements_for(300, 3),
                       "INSERT INTO conversations": 1}
    assert max(inserts.values()) < 10
    db = tmp_path / "bridge.db"
    assert (count(db, "events"), count(db, "deliveries"), count(db, "messages"),
            count(db, "dedup"), count(db, "conversations")) == (300, 600, 300, 300, 7)
    with sqlite3.connect(db) as conn:
        questions = [row[0] for row in conn.execute("SELECT question FROM messages ORDER BY id")]
    assert questions == [f"m{n}" for n in range(300)]
