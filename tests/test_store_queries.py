"""Store choices made for speed: the worker's wake-up query, the page size of a new store."""

from __future__ import annotations

import sqlite3

from bridge.store import NEXT_DUE, PAGE_SIZE, SCHEMA, SQLiteStore


async def test_a_new_store_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path, expected in ((tmp_path / "new.db", PAGE_SIZE), (old, 4096)):
        await SQLiteStore(path).close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == expected


def test_next_due_seeks_the_index_instead_of_reading_every_pending_row():
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    [plan] = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {NEXT_DUE}", [0.0])]
    assert plan.endswith("(status=? AND next_attempt_at>?)"), plan
