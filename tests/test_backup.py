"""`sitegpt-bridge backup FILE`: a consistent copy of the store while the bridge writes to it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.errors import StoreError
from bridge.store import NewEvent, open_store
from bridge.store.sqlite import SQLiteStore

DESTINATIONS = ("slack", "jira")


def event(number: int) -> NewEvent:
    return NewEvent(kind="ADD_MESSAGE", body=f'{{"n":{number}}}', dedup_key=f"key-{number}",
                    ordering_key=f"bot/thread-{number % 7}", destinations=DESTINATIONS)


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


async def write_until(store: SQLiteStore, done: asyncio.Event, start: int) -> int:
    """Accept events one after another until `done`, then a few more; return how many."""
    number = start
    while not done.is_set():
        await store.accept(event(number), 1.0, 600)
        number += 1
    for _ in range(3):
        await store.accept(event(number), 1.0, 600)
        number += 1
    return number


@pytest.fixture
def settings(make_settings):
    return make_settings({"store": {"synchronous": "NORMAL"}})


async def test_backup_while_a_writer_is_active_is_a_consistent_snapshot(settings, tmp_path,
                                                                        capsys):
    store = open_store(settings.store.url, synchronous="NORMAL")
    for number in range(50):
        await store.accept(event(number), 1.0, 600)
    target = tmp_path / "copy.db"
    done = asyncio.Event()
    writer = asyncio.create_task(write_until(store, done, 50))
    await asyncio.sleep(0)  # the writer is under way before the backup starts
    code = await asyncio.to_thread(
        main, ["backup", str(target), "--config", str(tmp_path / "settings.toml")])
    done.set()
    written = await writer
    await store.close()

    copied = count(target, "events")
    assert code == 0
    assert 50 <= copied < written
    assert count(target, "deliveries") == copied * len(DESTINATIONS)  # no half-written event
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    out = capsys.readouterr().out
    assert f"to {target}: {copied} events, {copied * 2} deliveries ({copied * 2} pending)" in out
    assert not list(tmp_path.glob("*.partial"))


async def test_backup_replaces_an_older_copy(settings, tmp_path):
    store = open_store(settings.store.url)
    await store.accept(event(1), 1.0, 600)
    target = tmp_path / "copy.db"
    target.write_text("yesterday's copy")
    copy = await store.backup(target)
    await store.close()
    assert copy.events == 1 and copy.path == target and copy.size == target.stat().st_size
    assert count(target, "events") == 1


async def test_backup_refuses_to_overwrite_the_store_itself(settings):
    store = open_store(settings.store.url)
    try:
        with pytest.raises(StoreError, match="onto itself"):
            await store.backup(settings.store.sqlite_path)
    finally:
        await store.close()
    assert count(settings.store.sqlite_path, "events") == 0


def test_backup_without_a_store_says_where_it_looked(settings, tmp_path, capsys):
    code = main(["backup", str(tmp_path / "copy.db"), "--config", str(tmp_path / "settings.toml")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"no store at {settings.store.sqlite_path}" in err
    assert not (tmp_path / "copy.db").exists()
    assert not settings.store.sqlite_path.exists()
