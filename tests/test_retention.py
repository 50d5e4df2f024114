"""Retention: old finished events go with their deliveries and messages; the rest stays."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bridge.app import create_app, open_bridge
from bridge.errors import StoreBusy
from bridge.retention import keep_pruning, prune_expired
from bridge.store import NewEvent, Pruned, StoredMessage, open_store
from bridge.store.sqlite import SQLiteStore

DAY = 86_400.0
NOW = 1_700_000_000.0
RETENTION = timedelta(days=30)


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def add_event(store: SQLiteStore, thread_id: str, received: float,
                    destinations: tuple[str, ...] = ("slack",), window: float = 600) -> int:
    """A message event of its own conversation, with a transcript line."""
    event = NewEvent(
        kind="ADD_MESSAGE", body=f'{{"thread":"{thread_id}"}}', dedup_key=thread_id,
        ordering_key=f"bot/{thread_id}", destinations=destinations,
        message=StoredMessage("bot", thread_id, "USER_MESSAGE", "hello", None, None),
        conversation=("bot", thread_id))
    return (await store.accept(event, received, window)).event_id


async def finish_all(store: SQLiteStore, event_id: int, outcomes: list[tuple[str, float | None]]
                     ) -> None:
    """Give the event's deliveries these (status, finished at) outcomes, in order."""
    # A lease of 0 s: what one call claims, the next may claim again.
    claimed = {job.id: job for job in await store.claim("test", NOW, 1000, 0)}
    mine = sorted((row for row in await store.deliveries() if row.event_id == event_id),
                  key=lambda row: row.id)
    for row, (status, finished) in zip(mine, outcomes, strict=True):
        if status != "pending":
            lease = claimed[row.id].lease
            assert await store.finish(lease, status, finished)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/bridge.db", synchronous="NORMAL")
    yield store
    await store.close()


# (case, days since received, [(status, days since finished)], pruned?)
CASES = [
    ("delivered long ago", 40, [("delivered", 40)], True),
    ("skipped long ago", 40, [("skipped", 39)], True),
    ("failed long ago", 40, [("failed", 35)], True),
    ("delivered and failed long ago", 40, [("delivered", 40), ("failed", 38)], True),
    ("no destination at all", 40, [], True),
    ("failed recently, after a retry", 40, [("failed", 10)], False),
    ("still pending", 40, [("pending", None)], False),
    ("one of two still pending", 40, [("delivered", 40), ("pending", None)], False),
    ("delivered recently", 5, [("delivered", 5)], False),
]


async def test_only_old_finished_events_are_pruned_with_their_rows(store):
    ids = {}
    for case, received, outcomes, _ in CASES:
        names = tuple(f"dest{i}" for i in range(len(outcomes)))
        ids[case] = await add_event(store, case, NOW - received * DAY, names)
        await finish_all(store, ids[case], [
            (status, None if days is None else NOW - days * DAY) for status, days in outcomes])
    await add_event(store, "newest", NOW)

    pruned = await prune_expired(store, RETENTION, NOW)

    path = store.path
    kept = {row[0] for row in rows(path, "SELECT id FROM events")}
    expected_gone = {ids[case] for case, *_, gone in CASES if gone}
    assert kept.isdisjoint(expected_gone)
    assert {ids[case] for case, *_, gone in CASES if not gone} <= kept
    assert pruned.events == len(expected_gone)
    assert pruned.deliveries == sum(len(outcomes) for _, _, outcomes, gone in CASES if gone)
    assert {row[0] for row in rows(path, "SELECT event_id FROM messages")} == kept
    assert {row[0] for row in rows(path, "SELECT event_id FROM deliveries")} <= kept
    assert len(rows(path, "SELECT * FROM conversations")) == len(CASES) + 1


async def test_everything_old_goes_and_ids_are_never_handed_out_again(store):
    for number in range(3):
        event_id = await add_event(store, f"old-{number}", NOW - 40 * DAY)
        await finish_all(store, event_id, [("delivered", NOW - 40 * DAY)])

    pruned = await prune_expired(store, RETENTION, NOW)
    newest = await add_event(store, "old-0", NOW)  # the visitor comes back

    assert pruned.events == 3 and pruned.messages == 3  # the newest ones too
    assert newest == 4
    transcript = await store.transcript("bot", "old-0", after_id=3)
    assert [line.id for line in transcript] == [4]
    [delivery] = await store.deliveries()
    assert delivery.id == 4


async def test_expired_dedup_rows_go_and_live_ones_stay(store):
    await add_event(store, "expired", NOW - 1000, destinations=(), window=600)
    await add_event(store, "live", NOW - 100, destinations=(), window=600)

    pruned = await prune_expired(store, RETENTION, NOW)

    assert pruned.dedup == 1
    assert rows(store.path, "SELECT dedup_key FROM dedup") == [("live",)]


async def test_a_backlog_is_pruned_in_several_small_batches(store):
    for number in range(5):
        event_id = await add_event(store, f"old-{number}", NOW - 40 * DAY)
        await finish_all(store, event_id, [("skipped", NOW - 40 * DAY)])
    await add_event(store, "newest", NOW)

    pruned = await prune_expired(store, RETENTION, NOW, batch=2)

    assert pruned == Pruned(events=5, deliveries=5, messages=5, dedup=5)
    assert rows(store.path, "SELECT COUNT(*) FROM events") == [(1,)]


class FlakyStore:
    """Fails its first prune as a busy store would, then succeeds."""

    def __init__(self) -> None:
        self.calls = 0
        self.recovered = asyncio.Event()

    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned:
        self.calls += 1
        if self.calls == 1:
            raise StoreBusy("the store did not commit within 30 s")
        self.recovered.set()
        return Pruned()


async def test_retention_keeps_going_after_a_store_error(clock, caplog):
    store = FlakyStore()
    task = asyncio.create_task(keep_pruning(store, RETENTION, clock, every=0))  # type: ignore[arg-type]
    await asyncio.wait_for(store.recovered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.calls >= 2
    assert "could not prune" in caplog.text


async def test_the_app_prunes_at_start_with_the_configured_retention(make_settings, clock):
    settings = make_settings({"store": {"retention_days": 7}})
    bridge = open_bridge(settings, clock)
    old = await add_event(bridge.store, "old", clock.now() - 10 * DAY, destinations=())
    recent = await add_event(bridge.store, "recent", clock.now() - 5 * DAY, destinations=())
    await add_event(bridge.store, "newest", clock.now(), destinations=())
    path = settings.store.sqlite_path

    with TestClient(create_app(bridge, run_worker=False)):
        for _ in range(500):  # the first pass runs in the background right after start-up
            if (old,) not in rows(path, "SELECT id FROM events"):
                break
            time.sleep(0.01)

    remaining = {row[0] for row in rows(path, "SELECT id FROM events")}
    assert old not in remaining and recent in remaining
