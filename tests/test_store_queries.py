"""Store choices made for speed: the worker's wake-up query, the page size of a new store."""

from __future__ import annotations

import sqlite3

from bridge.store import PAGE_SIZE, SQLiteStore


async def test_a_new_store_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path, expected in ((tmp_path / "new.db", PAGE_SIZE), (old, 4096)):
        await SQLiteStore(path).close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == expected
