"""SQLite store choices made for speed: the worker's queries, the page size of a new store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.store.sqlite import SQLiteStore
from bridge.store.sqlite.queue import CLAIM, NEXT_DUE
from bridge.store.sqlite.schema import FIRST_RELEASE, PAGE_SIZE, connect


async def test_a_new_store_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path, expected in ((tmp_path / "new.db", PAGE_SIZE), (old, 4096)):
        await SQLiteStore(path).close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == expected


def migrated(tmp_path: Path) -> sqlite3.Connection:
    return connect(tmp_path / "plans.db", "NORMAL")


def test_next_due_seeks_the_index_instead_of_reading_every_pending_row(tmp_path):
    conn = migrated(tmp_path)
    [plan] = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {NEXT_DUE}", [0.0])]
    assert plan.endswith("(status=? AND next_attempt_at>?)"), plan


def test_a_claim_walks_pending_deliveries_in_order_and_sorts_nothing(tmp_path):
    conn = migrated(tmp_path)
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {CLAIM}",
                                            {"now": 0.0, "limit": 8})]
    assert plan[0] == "SCAN d USING INDEX deliveries_pending", plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


async def test_a_store_made_before_the_pending_index_gets_it_and_claims(tmp_path):
    path = tmp_path / "older.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIRST_RELEASE.replace("deliveries_pending", "unused_name"))
        conn.execute("DROP INDEX unused_name")
        conn.execute("INSERT INTO events VALUES (1, 'ADD_MESSAGE', 'bot/t', 'k', '{}', 0)")
        conn.execute("INSERT INTO deliveries (event_id, destination, ordering_key,"
                     " next_attempt_at, created_at) VALUES (1, 'slack', 'bot/t', 0, 0)")
    store = SQLiteStore(path)
    try:
        claimed = await store.claim("worker", 10.0, 8, 60)
    finally:
        await store.close()
    assert [delivery.event_id for delivery in claimed] == [1]
