"""The SQLite backend itself: group commit, deadlines, locks, schema versions, a failing disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import StoreBusy, StoreError
from bridge.events import MESSAGE
from bridge.store import Acceptance, Echo, NewEvent, open_store, store_scheme
from bridge.store.migrations import SCHEMA_VERSION, StoreTooNew
from bridge.store.sqlite import SQLiteStore
from tests.bridges import WriteLock, counts, query
from tests.older_schemas import BEFORE_ECHOES_PER_TOOL

NOW = 1_700_000_000.0
WAIT = 5.0


def new_event(dedup_key: str, destinations: list[Any] | None = None,
              body: str | None = None) -> NewEvent:
    return NewEvent(kind=MESSAGE, body=body or f'{{"n":"{dedup_key}"}}', dedup_key=dedup_key,
                    ordering_key="bot/thread-1", destinations=destinations or ["slack"],
                    conversation=("bot", "thread-1"))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bridge.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(db, "NORMAL", commit_timeout=0.2)
    yield opened
    await opened.close()


async def test_an_event_whose_deliveries_cannot_be_written_leaves_nothing_behind(store, db):
    broken = new_event("k1", destinations=["slack", None])
    with pytest.raises(StoreError, match="NOT NULL"):
        await store.accept(broken, NOW, 60)
    assert set(counts(db).values()) == {0}
    assert (await store.accept(new_event("k1"), NOW, 60)).status == "accepted"


# Group commit


def insert(name: str) -> Any:
    return lambda conn: conn.execute("INSERT INTO items VALUES (?)", (name,)).rowcount


def insert_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO items VALUES ('half-done')")
    raise ValueError("this caller's bug")


async def test_queued_writes_share_one_commit_and_a_failing_write_fails_only_its_caller(
        store, db):
    await store._run(lambda conn: conn.execute("CREATE TABLE items (name TEXT UNIQUE)"))
    statements: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def hold_the_writer(conn: sqlite3.Connection) -> None:
        # From here on, every statement the writer runs: where its transactions begin and end.
        conn.set_trace_callback(statements.append)
        inside.set()
        release.wait(WAIT)

    held = asyncio.ensure_future(store._run(hold_the_writer))
    assert await asyncio.to_thread(inside.wait, WAIT)
    writes = [asyncio.ensure_future(store._run(write)) for write in
              (insert("a"), insert_then_fail, insert("b"), insert("a"), insert("c"))]
    await asyncio.sleep(0.05)  # all five reach the writer's queue while it is held
    release.set()
    await held
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert [outcomes[i] for i in (0, 2, 4)] == [1, 1, 1]
    assert isinstance(outcomes[1], ValueError) and "this caller's bug" in str(outcomes[1])
    assert isinstance(outcomes[3], StoreError) and "UNIQUE" in str(outcomes[3])
    await store._run(lambda conn: conn.set_trace_callback(None))
    assert query(db, "SELECT name FROM items ORDER BY rowid") == [("a",), ("b",), ("c",)]
    begin = statements.index("BEGIN IMMEDIATE")
    group = statements[begin:statements.index("COMMIT", begin) + 1]
    assert group.count("SAVEPOINT one") == 5
    assert group.count("ROLLBACK TO one") == 2


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


@pytest.mark.parametrize("url", ["mysql://db/bridge", "sqlite://relative.db", "sqlite:///",
                                 "bridge.db"])
def test_only_urls_of_a_known_backend_are_accepted(url):
    with pytest.raises(StoreError, match="sqlite:///PATH"):
        store_scheme(url)
    with pytest.raises(StoreError, match="sqlite:///PATH"):
        open_store(url)


# Schema versions


async def test_a_new_store_is_created_at_the_current_version_and_says_so(db, caplog):
    caplog.set_level("INFO", "bridge.store")
    store = SQLiteStore(db)
    try:
        assert (await store.info()).schema_version == SCHEMA_VERSION
    finally:
        await store.close()
    assert query(db, "SELECT version FROM schema_migrations ORDER BY version") == [
        (version,) for version in range(1, SCHEMA_VERSION + 1)]
    assert f"created at schema version {SCHEMA_VERSION}" in caplog.text
    caplog.clear()
    await SQLiteStore(db).close()  # opening again migrates nothing
    assert "schema version" not in caplog.text


async def test_a_store_newer_than_the_code_refuses_to_open_naming_both_versions(db):
    await SQLiteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreTooNew) as refused:
        SQLiteStore(db)
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"versions up to {SCHEMA_VERSION}" in message and str(db) in message
    assert query(db, "SELECT MAX(version) FROM schema_migrations") == [(SCHEMA_VERSION + 1,)]


async def test_a_store_from_before_retry_kinds_upgrades_and_its_waiting_keep_their_time(db):
    store = SQLiteStore(db)
    await store.accept(new_event("k1"), NOW, 60)
    [job] = await store.claim("w1", NOW, 1, 10)
    assert await store.reschedule(job.lease, NOW + 100, "slack: HTTP 503", NOW)
    await store.close()
    with sqlite3.connect(db) as conn:  # as schema version 6 left it
        _undo(conn, BEFORE_ECHOES_PER_TOOL)
        conn.execute("DROP TABLE settings_in_use")
        conn.execute("ALTER TABLE deliveries DROP COLUMN retry_kind")
        conn.executescript("DROP TABLE console_keys; DROP TABLE paused_destinations;"
                           " DROP INDEX deliveries_finished; DROP INDEX conversations_recent")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 7")
    upgraded = SQLiteStore(db)
    try:
        assert (await upgraded.info()).schema_version == SCHEMA_VERSION
        assert await upgraded.bring_forward("slack", "unavailable", NOW + 5) == 0
        assert await upgraded.next_due(NOW + 5) == NOW + 100
    finally:
        await upgraded.close()


async def test_a_store_from_before_settings_in_use_upgrades_in_place(db):
    store = SQLiteStore(db)
    await store.accept(new_event("k1"), NOW, 60)
    await store.close()
    with sqlite3.connect(db) as conn:  # as schema version 7 left it
        _undo(conn, BEFORE_ECHOES_PER_TOOL)
        conn.executescript("DROP TABLE settings_in_use; DROP TABLE console_keys;"
                           " DROP TABLE paused_destinations; DROP INDEX deliveries_finished;"
                           " DROP INDEX conversations_recent")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 8")
    upgraded = SQLiteStore(db)
    try:
        assert (await upgraded.info()).schema_version == SCHEMA_VERSION
        assert query(db, "SELECT name FROM sqlite_master WHERE name = 'conversations_recent'")
        assert await upgraded.settings_in_use() == []
        assert [row.status for row in await upgraded.deliveries()] == ["pending"]
    finally:
        await upgraded.close()


# A failing disk


@contextlib.contextmanager
def files_capped_at(size: int) -> Iterator[None]:
    """No file of this process may grow past `size` bytes: a disk that is full, for SQLite."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)


async def fill(store: SQLiteStore, first: int) -> int:
    """Accept events until two in a row fail; the number accepted."""
    accepted, failures = 0, 0
    for n in range(first, first + 5000):
        try:
            await store.accept(new_event(f"k{n}", body=f'{{"n":{n},"text":"{"x" * 400}"}}'),
                               NOW, 60)
        except StoreError:
            failures += 1
            if failures == 2:
                return accepted
        else:
            accepted, failures = accepted + 1, 0
    raise AssertionError("the cap never filled the store")


async def test_readiness_fails_while_the_disk_is_full_and_recovers_without_a_restart(db):
    store = SQLiteStore(db, "NORMAL", commit_timeout=2.0)
    try:
        await store.check_writable()
        with files_capped_at(200_000):
            accepted = await fill(store, 0)
            with pytest.raises(StoreError, match=r"disk I/O error|full"):
                await store.check_writable()
            with pytest.raises(StoreError):
                await store.accept(new_event("one more"), NOW, 60)
        await store.check_writable()  # space again: the same store, reopened by itself
        assert (await store.accept(new_event("after"), NOW, 60)).status == "accepted"
    finally:
        await store.close()
    assert accepted > 10
    assert counts(db)["events"] == accepted + 1  # every 200 kept, nothing half-written


async def test_a_store_file_that_disappears_is_recreated_by_reopening(store, db):
    await store.accept(new_event("k1"), NOW, 60)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.sync()
    outcomes = []
    for n in range(3):  # the first commit finds the file gone; the store reopens for the next
        try:
            outcomes.append((await store.accept(new_event(f"k{n + 2}"), NOW, 60)).status)
        except StoreError:
            outcomes.append("failed")
    await store.check_writable()
    assert outcomes[-1] == "accepted"
    assert (await store.info()).schema_version == SCHEMA_VERSION


async def test_readyz_answers_503_while_the_disk_is_full_and_200_once_it_has_room(
        make_settings):
    import httpx

    from bridge.app import create_app, open_bridge

    bridge = open_bridge(make_settings({"store": {"commit_timeout_seconds": 2.0}}))
    app = create_app(bridge, run_worker=False)
    store = bridge.store
    assert isinstance(store, SQLiteStore)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url="http://bridge") as client:
        assert (await client.get("/readyz")).status_code == 200
        with files_capped_at(200_000):
            await fill(store, 0)
            full = await client.get("/readyz")
        recovered = await client.get("/readyz")
    await bridge.close()
    assert full.status_code == 503 and full.json()["status"] == "unavailable"
    assert recovered.status_code == 200


async def test_a_worker_lock_that_cannot_be_made_is_a_store_error(tmp_path, clock):
    store = open_store(f"sqlite:///{tmp_path}/data/bridge.db", "NORMAL", 2.0, clock)
    try:
        (tmp_path / "data" / "bridge.db-worker.lock").mkdir()  # not a file it can open
        with pytest.raises(StoreError, match="cannot take the worker lock"):
            await store.claim("w1", 1_700_000_000.0, 10, 10.0)
    finally:
        await store.close()


async def test_a_store_that_never_claims_leaves_the_worker_lock_to_the_one_that_does(tmp_path,
                                                                                  clock):
    url = f"sqlite:///{tmp_path}/data/bridge.db"
    command, worker = open_store(url, "NORMAL", 2.0, clock), open_store(url, "NORMAL", 2.0, clock)
    try:
        await command.accept(NewEvent(kind=MESSAGE, body="{}", dedup_key="k1",
                                      ordering_key="bot/c1", destinations=["slack"]),
                             1_700_000_000.0, 60)
        assert len(await command.deliveries()) == 1  # as `deliveries` reads the store
        assert len(await worker.claim("w1", 1_700_000_000.0, 10, 10.0)) == 1
    finally:
        await command.close()
        await worker.close()


def _undo(conn: sqlite3.Connection, statements: tuple[str, ...]) -> None:
    for statement in statements:
        conn.execute(statement)


async def test_a_version_10_store_keeps_its_echoes_as_slacks(db):
    """Every echo stored before Mattermost came from Slack: Slack still skips it, and a
    reply from another tool with the same words is not taken for it."""
    store = SQLiteStore(db)
    await store.remember_echo(Echo("bot", "t1", "On it", "Ana", "Ev1"), NOW, 3600)
    await store.close()
    with sqlite3.connect(db) as conn:
        _undo(conn, BEFORE_ECHOES_PER_TOOL)
        conn.execute("DELETE FROM schema_migrations WHERE version >= 11")
    upgraded = SQLiteStore(db)
    try:
        assert (await upgraded.info()).schema_version == SCHEMA_VERSION
        mattermost = Echo("bot", "t1", "On it", "Ana", tool="mattermost")
        assert not await upgraded.consume_echo(mattermost, NOW + 1)
        assert await upgraded.consume_echo(Echo("bot", "t1", "On it", "Ana"), NOW + 1)
        assert await upgraded.listener_cursor("mattermost") is None
    finally:
        await upgraded.close()
