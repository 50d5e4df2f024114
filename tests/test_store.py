"""The SQLite store: atomic accept with dedup, group commit, and the claim/lease/ordering rules."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from bridges import WriteLock, counts, query

from bridge.errors import StoreBusy, StoreError
from bridge.events import MESSAGE
from bridge.store import (
    Acceptance,
    NewEvent,
    SQLiteStore,
    StoredMessage,
    _Writer,
    open_store,
)

NOW = 1_700_000_000.0
WAIT = 5.0


def new_event(dedup_key: str, ordering_key: str = "bot/thread-1",
              destinations: Sequence[Any] = ("slack",), message: StoredMessage | None = None,
              conversation: tuple[str, str] | None = None) -> NewEvent:
    return NewEvent(kind=MESSAGE, body=f'{{"n":"{dedup_key}"}}', dedup_key=dedup_key,
                    ordering_key=ordering_key, destinations=destinations, message=message,
                    conversation=conversation)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bridge.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(db, "NORMAL", commit_timeout=0.2)
    yield opened
    await opened.close()


def lease_of(db: Path, delivery_id: int) -> tuple[Any, ...]:
    [row] = query(db, "SELECT lease_owner, lease_until, attempts, status FROM deliveries"
                      " WHERE id = ?", [delivery_id])
    return row


# Accepting events


async def test_accept_stores_the_event_its_deliveries_and_its_dedup_key(store, db):
    accepted = await store.accept(new_event("k1", destinations=["slack", "jira"]), NOW, 60)
    assert accepted == Acceptance("accepted", 1)
    assert query(db, "SELECT destination, status, next_attempt_at FROM deliveries") == [
        ("slack", "pending", NOW), ("jira", "pending", NOW)]
    assert query(db, "SELECT dedup_key, event_id, expires_at FROM dedup") == [("k1", 1, NOW + 60)]


async def test_a_dedup_key_seen_within_the_window_is_a_duplicate_of_the_first(store, db):
    await store.accept(new_event("k1"), NOW, 60)
    assert await store.accept(new_event("k1"), NOW + 59, 60) == Acceptance("duplicate", 1)
    assert await store.accept(new_event("k2"), NOW + 59, 60) == Acceptance("accepted", 2)
    assert await store.accept(new_event("k1"), NOW + 60, 60) == Acceptance("accepted", 3)
    assert counts(db)["deliveries"] == 3


async def test_an_event_whose_deliveries_cannot_be_written_leaves_nothing_behind(store, db):
    broken = new_event("k1", destinations=["slack", None], conversation=("bot", "thread-1"))
    with pytest.raises(StoreError, match="NOT NULL"):
        await store.accept(broken, NOW, 60)
    assert set(counts(db).values()) == {0}
    assert await store.accept(new_event("k1"), NOW, 60) == Acceptance("accepted", 1)


async def test_messages_build_the_conversations_transcript_oldest_first(store):
    conversation = ("bot", "thread-1")
    for n, question in enumerate(["Hi", "Anyone there?"]):
        line = StoredMessage("bot", "thread-1", "USER_MESSAGE", question, None, None)
        await store.accept(new_event(f"k{n}", message=line, conversation=conversation),
                           NOW + n, 60)
    transcript = await store.transcript("bot", "thread-1")
    assert [(m.question, m.received_at) for m in transcript] == [("Hi", NOW), ("Anyone there?",
                                                                                NOW + 1)]
    assert await store.transcript("bot", "thread-1", after_id=transcript[0].id) == transcript[1:]
    record = await store.conversation("bot", "thread-1")
    assert record is not None and (record.first_seen, record.last_seen) == (NOW, NOW + 1)


# Group commit


@pytest.fixture
def writer(db: Path) -> Iterator[_Writer]:
    db.parent.mkdir(parents=True)
    started = _Writer(db, "NORMAL")
    started.start()
    yield started
    started.stop()


def insert(name: str) -> Callable[[sqlite3.Connection], int]:
    return lambda conn: conn.execute("INSERT INTO items VALUES (?)", (name,)).rowcount


def insert_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO items VALUES ('half-done')")
    raise ValueError("this caller's bug")


def test_queued_writes_share_one_commit_and_a_failing_write_fails_only_its_caller(writer, db):
    writer.submit(lambda conn: conn.execute("CREATE TABLE items (name TEXT UNIQUE)")).result(WAIT)
    statements: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def hold_the_writer(conn: sqlite3.Connection) -> None:
        # From here on, every statement the writer runs: where its transactions begin and end.
        conn.set_trace_callback(statements.append)
        inside.set()
        release.wait(WAIT)

    held = writer.submit(hold_the_writer)
    assert inside.wait(WAIT)
    futures = [writer.submit(write) for write in
               (insert("a"), insert_then_fail, insert("b"), insert("a"), insert("c"))]
    release.set()
    held.result(WAIT)
    assert [futures[i].result(WAIT) for i in (0, 2, 4)] == [1, 1, 1]
    with pytest.raises(ValueError, match="this caller's bug"):
        futures[1].result(WAIT)
    with pytest.raises(StoreError, match="UNIQUE"):
        futures[3].result(WAIT)
    assert query(db, "SELECT name FROM items ORDER BY rowid") == [("a",), ("b",), ("c",)]
    group = statements[statements.index("BEGIN IMMEDIATE"):]
    assert group.count("SAVEPOINT one") == 5
    assert group.count("ROLLBACK TO one") == 2
    assert group[-1] == "COMMIT" and group.count("COMMIT") == 1


# When the store cannot commit in time


async def test_a_commit_past_the_deadline_is_busy_and_lands_whole_once_the_lock_goes(store, db):
    event = new_event("k1", destinations=["slack", "jira"])
    with WriteLock(db):
        with pytest.raises(StoreBusy, match=r"did not commit within 0\.2 s"):
            await store.accept(event, NOW, 60)
        assert counts(db)["events"] == 0
    # The caller was told "busy", so it retries; the write it gave up on was whole, only late.
    assert await store.accept(event, NOW + 1, 60) == Acceptance("duplicate", 1)
    assert (counts(db)["events"], counts(db)["deliveries"]) == (1, 2)


async def test_a_lock_held_past_sqlites_busy_timeout_fails_the_batch_and_the_store_recovers(
        store, db):
    with WriteLock(db):
        gave_up, waited = await asyncio.gather(
            store.accept(new_event("k1"), NOW, 60),
            store.claim("worker-1", NOW, 10, 60),  # a long deadline: it sees SQLite give up
            return_exceptions=True)
    assert isinstance(gave_up, StoreBusy) and "within 0.2 s" in str(gave_up)
    assert isinstance(waited, StoreBusy) and "database is locked" in str(waited)
    assert set(counts(db).values()) == {0}
    assert await store.accept(new_event("k1"), NOW, 60) == Acceptance("accepted", 1)


async def test_check_writable_fails_while_another_connection_holds_the_lock(store, db):
    await store.check_writable()
    with WriteLock(db), pytest.raises(StoreBusy, match=r"within 0\.2 s"):
        await store.check_writable()
    await store.check_writable()


async def test_a_closed_store_refuses_writes(db):
    closed = SQLiteStore(db, "NORMAL")
    await closed.close()
    with pytest.raises(StoreError, match="closed"):
        await closed.accept(new_event("k1"), NOW, 60)


def test_only_sqlite_urls_are_supported():
    with pytest.raises(StoreError, match="sqlite:///PATH"):
        open_store("postgres://db/bridge")


# Claims, leases and order


async def seed(store: SQLiteStore) -> None:
    """d1 (e1 slack), d2 (e1 jira), d3 (e2 slack, same conversation), d4 (e3 slack, another)."""
    await store.accept(new_event("e1", "bot/c1", ["slack", "jira"]), NOW, 60)
    await store.accept(new_event("e2", "bot/c1", ["slack"]), NOW, 60)
    await store.accept(new_event("e3", "bot/c2", ["slack"]), NOW, 60)


async def claimed_ids(store: SQLiteStore, now: float, owner: str = "w1", limit: int = 10,
                      lease: float = 60) -> list[int]:
    return [job.id for job in await store.claim(owner, now, limit, lease)]


async def test_only_the_oldest_pending_delivery_per_destination_and_conversation_is_claimed(
        store):
    await seed(store)
    first = await store.claim("w1", NOW, 10, 60)
    assert [(job.id, job.destination, job.ordering_key, job.attempts) for job in first] == [
        (1, "slack", "bot/c1", 1), (2, "jira", "bot/c1", 1), (4, "slack", "bot/c2", 1)]
    assert first[0].payload == {"n": "e1"} and first[0].kind == MESSAGE
    assert await claimed_ids(store, NOW) == []
    await store.finish(1, "delivered", NOW)
    assert await claimed_ids(store, NOW) == [3]


async def test_a_finished_delivery_of_any_outcome_unblocks_its_conversation(store):
    await seed(store)
    await claimed_ids(store, NOW)
    await store.finish(1, "failed", NOW, "gave up")
    assert await claimed_ids(store, NOW) == [3]


async def test_a_claim_takes_at_most_limit_oldest_first(store):
    await seed(store)
    assert await claimed_ids(store, NOW, limit=2) == [1, 2]
    assert await claimed_ids(store, NOW, limit=2) == [4]


async def test_an_expired_lease_can_be_claimed_again_by_another_worker(store, db):
    await seed(store)
    await claimed_ids(store, NOW, owner="w1", lease=60)
    assert 1 not in await claimed_ids(store, NOW + 59.9, owner="w2")
    assert await claimed_ids(store, NOW + 60, owner="w2") == [1, 2, 4]
    assert lease_of(db, 1) == ("w2", NOW + 120, 2, "pending")


async def test_a_delivery_waiting_for_its_retry_still_holds_back_its_conversation(store):
    await seed(store)
    await claimed_ids(store, NOW)
    await store.reschedule(1, NOW + 30, "Slack answered 503")
    assert await claimed_ids(store, NOW + 29) == []
    assert await claimed_ids(store, NOW + 30) == [1]


async def test_next_due_is_the_next_retry_time_still_ahead(store):
    await seed(store)
    assert await store.next_due(NOW) is None  # due already: claim's business, not a timer's
    await claimed_ids(store, NOW, lease=60)
    # d3 waits behind d1, which is leased: d1's finish wakes the worker, or else the poll does.
    assert await store.next_due(NOW) is None
    await store.reschedule(1, NOW + 5, "slack: HTTP 503")
    assert await store.next_due(NOW) == NOW + 5
    assert await store.next_due(NOW + 5) is None


async def test_release_undoes_a_claim_but_not_a_finish(store, db):
    await seed(store)
    await claimed_ids(store, NOW)
    await store.finish(2, "delivered", NOW)
    await store.release([1, 2])
    assert lease_of(db, 1) == (None, None, 0, "pending")
    assert lease_of(db, 2) == (None, None, 1, "delivered")
    assert await claimed_ids(store, NOW) == [1]
    assert lease_of(db, 1)[2] == 1


async def test_concurrent_claimers_never_share_a_delivery(store):
    await seed(store)
    claims = await asyncio.gather(*[claimed_ids(store, NOW, owner=f"w{n}") for n in range(4)])
    assert sorted(job for claim in claims for job in claim) == [1, 2, 4]


async def test_deliveries_by_conversation_takes_the_id_literally(tmp_path):
    from bridge.events import parse_event
    from bridge.intake import new_event
    from bridge.store import SQLiteStore

    store = SQLiteStore(tmp_path / "bridge.db", synchronous="NORMAL")
    try:
        for thread in ("t_1", "tX1", "50%"):
            body = {"event": "ADD_MESSAGE", "data": {"chatbotId": "bot", "threadId": thread}}
            event = parse_event("ADD_MESSAGE", body)
            await store.accept(new_event(event, body, ["slack"]), 1.0, 60)
        found = {row.ordering_key for row in await store.deliveries(conversation="t_1")}
        percent = {row.ordering_key for row in await store.deliveries(conversation="50%")}
    finally:
        await store.close()
    assert (found, percent) == ({"bot/t_1"}, {"bot/50%"})


# Coalescing and bring-forward

async def queue(store: SQLiteStore, kinds: Sequence[str], conversation: str = "bot/c1") -> None:
    """One slack delivery per kind, in this order, in one conversation."""
    for n, kind in enumerate(kinds):
        event = NewEvent(kind=kind, body=f'{{"n":{n}}}', dedup_key=f"{conversation}-{n}",
                         ordering_key=conversation, destinations=["slack"])
        await store.accept(event, NOW, 60)


async def take(store: SQLiteStore, head: int, owner: str = "w1", limit: int = 10,
               now: float = NOW) -> list[int]:
    return [job.id for job in await store.take_queued(head, owner, frozenset({MESSAGE}), limit,
                                                      now)]


async def test_take_queued_stops_at_another_kind_and_at_the_limit(store, db):
    await queue(store, [MESSAGE, MESSAGE, MESSAGE, "CONVERSATION_ESCALATED", MESSAGE])
    await queue(store, [MESSAGE], conversation="bot/c2")
    assert await claimed_ids(store, NOW, lease=60) == [1, 6]
    assert await take(store, 1, limit=1) == [2]
    assert await take(store, 1) == [2, 3]  # the escalation ends the run
    assert lease_of(db, 3) == ("w1", NOW + 60, 0, "pending")  # the head's lease, no attempt
    assert lease_of(db, 5) == (None, None, 0, "pending")


async def test_only_the_worker_holding_the_heads_lease_can_take_what_follows(store, db):
    await queue(store, [MESSAGE, MESSAGE])
    assert await take(store, 1) == []  # not claimed at all
    await claimed_ids(store, NOW, owner="w1")
    assert await take(store, 1, owner="w2") == []
    await store.finish(1, "delivered", NOW)
    assert await take(store, 1) == []  # finished: it holds nothing any more


async def test_what_a_crashed_worker_took_is_taken_over_once_its_lease_runs_out(store, db):
    await queue(store, [MESSAGE, MESSAGE, MESSAGE])
    await claimed_ids(store, NOW, owner="w1", lease=60)
    assert await take(store, 1, owner="w1") == [2, 3]
    assert await claimed_ids(store, NOW + 60, owner="w2") == [1]
    assert await take(store, 1, owner="w2", now=NOW + 60) == [2, 3]
    assert lease_of(db, 2)[0] == "w2"


async def test_a_coalesced_finish_sets_the_taken_ones_with_the_head_in_one_step(store, db):
    await queue(store, [MESSAGE, MESSAGE, MESSAGE, MESSAGE])
    await claimed_ids(store, NOW)
    await take(store, 1)
    await store.finish(1, "delivered", NOW, "C1/1.5", coalesced=[2, 3])
    rows = query(db, "SELECT id, status, last_error, attempts, lease_owner FROM deliveries"
                     " ORDER BY id")
    assert rows == [(1, "delivered", "C1/1.5", 1, None), (2, "delivered", "C1/1.5", 1, None),
                    (3, "delivered", "C1/1.5", 1, None), (4, "pending", None, 0, "w1")]
    await store.release_queued([4], "w1")
    assert lease_of(db, 4) == (None, None, 0, "pending")
    assert await claimed_ids(store, NOW) == [4]


async def test_a_coalesced_finish_leaves_what_another_worker_holds(store, db):
    await queue(store, [MESSAGE, MESSAGE])
    await claimed_ids(store, NOW, owner="w1", lease=60)
    await take(store, 1, owner="w1")
    assert await claimed_ids(store, NOW + 60, owner="w2") == [1]  # w1's lease ran out
    await take(store, 1, owner="w2", now=NOW + 60)
    await store.release_queued([2], "w1")  # w1, late, gives back what it no longer holds
    assert lease_of(db, 2)[0] == "w2"
    await store.finish(1, "delivered", NOW + 61, "C1/2.5", coalesced=[2])
    assert lease_of(db, 2) == (None, None, 1, "delivered")


async def test_bring_forward_wakes_only_that_destinations_deliveries_waiting_for_it(store, db):
    await seed(store)  # d1 slack c1, d2 jira c1, d3 slack c1 (behind d1), d4 slack c2
    await claimed_ids(store, NOW)
    await store.reschedule(1, NOW + 100, "slack: HTTP 503", "unavailable")
    await store.reschedule(2, NOW + 100, "jira: HTTP 503", "unavailable")
    await store.reschedule(4, NOW + 100, "slack: HTTP 429", "rate_limited")
    assert await store.bring_forward("slack", "unavailable", NOW + 5) == 1
    due = query(db, "SELECT id, next_attempt_at FROM deliveries ORDER BY id")
    assert due == [(1, NOW + 5), (2, NOW + 100), (3, NOW), (4, NOW + 100)]
    assert await claimed_ids(store, NOW + 5) == [1]


async def test_waiting_counts_pending_deliveries_per_destination(store):
    await seed(store)
    await store.finish(4, "delivered", NOW)
    assert await store.waiting_by_destination() == {"slack": 2, "jira": 1}


def test_a_store_from_before_retry_kinds_gets_the_column_on_open(db):
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL,"
        " destination TEXT NOT NULL, ordering_key TEXT NOT NULL, status TEXT NOT NULL"
        " DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT"
        " NULL, lease_owner TEXT, lease_until REAL, last_error TEXT, created_at REAL NOT NULL,"
        " finished_at REAL);"
        "INSERT INTO deliveries (event_id, destination, ordering_key, next_attempt_at,"
        " created_at) VALUES (1, 'slack', 'bot/c1', 1.0, 1.0);")
    conn.commit()
    conn.close()
    writer = _Writer(db, "NORMAL")
    writer.start()
    writer.stop()
    assert query(db, "SELECT id, retry_kind FROM deliveries") == [(1, None)]
