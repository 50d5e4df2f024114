"""A first-release store upgrades in place: threads, tickets, queue and dedup all hold."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from bridge.destinations.slack import SlackDestination
from bridge.errors import StoreError
from bridge.events import MESSAGE, dedup_key
from bridge.store import NewEvent, open_store
from bridge.store.migrations import SCHEMA_VERSION
from bridge.templating import Templates
from bridge.worker import Worker
from tests.bridges import query
from tests.clock import FakeClock
from tests.command_line import run
from tests.fake_slack import FakeSlack
from tests.first_release import BOT, NOW, THREAD_TS, first_release_store, message_body


@pytest.fixture
def slack_settings(make_settings):
    def build(api_url: str):
        return make_settings({
            "slack": {"bot_token": "xoxb-test", "api_url": api_url, "channel": "C_CONV",
                      "burst": 1000, "per_second": 1000.0},
            "jira": {"url": "https://acme.atlassian.net", "email": "a@b.c", "api_token": "t",
                     "project": "SUP"}})
    return build


async def test_a_first_release_store_upgrades_and_keeps_threads_tickets_queue_and_dedup(
        slack_settings, caplog):
    clock = FakeClock(NOW)
    caplog.set_level("INFO", "bridge.store")
    with FakeSlack() as fake:
        settings = slack_settings(fake.api_url)
        first_release_store(settings.store.sqlite_path)
        store = open_store(settings.store.url, clock=clock)
        slack = SlackDestination(settings, Templates(), clock)
        worker = Worker(store, {"slack": slack}, settings.delivery, clock, random.Random(1))
        try:
            assert f"from schema version 1 to {SCHEMA_VERSION}" in caplog.text
            assert (await store.info()).schema_version == SCHEMA_VERSION
            assert await store.settings_in_use() == []  # no process has recorded any yet

            # Each destination's link, moved out of the first release's columns.
            assert await store.link_state(BOT, "thread_A", "slack") == {
                "channel": "C_CONV", "thread_ts": THREAD_TS, "escalated_at": NOW - 49,
                "ticket": {"key": "SUP-7"}}
            assert await store.link_state(BOT, "thread_A", "jira") == {
                "key": "SUP-7", "transcript_upto": 1}
            assert await store.link_state(BOT, "thread_B", "slack") is None
            assert await store.conversation_by_ref("slack", f"C_CONV/{THREAD_TS}") == (
                BOT, "thread_A")
            assert await store.conversation_by_ref("jira", "SUP-7") == (BOT, "thread_A")

            # Notes apart from errors; the failure's reason is in its history.
            rows = {row.id: row for row in await store.deliveries()}
            assert (rows[1].note, rows[1].last_error) == (f"C_CONV/{THREAD_TS}", None)
            assert (rows[4].note, rows[5].last_error) == (
                "SUP-7", "gave up after 3 attempts: crm: HTTP 500")
            assert [(a.outcome, a.error) for a in rows[5].errors] == [
                ("failed", "gave up after 3 attempts: crm: HTTP 500")]

            # Dedup keys still hold, and new ids follow the old ones.
            again = NewEvent(MESSAGE, message_body("thread_A", "still there?"),
                             dedup_key(message_body("thread_A", "still there?")),
                             f"{BOT}/thread_A", ["slack"])
            assert (await store.accept(again, clock.now(), 600)).event_id == 2
            fresh = await store.accept(NewEvent(MESSAGE, message_body("thread_B", "new"),
                                                "fresh", f"{BOT}/thread_B", []), clock.now(), 60)
            assert (fresh.status, fresh.event_id) == ("accepted", 5)

            # The pending deliveries go out at once (the dead worker's lease is not waited
            # out), into the conversation's existing thread, in order.
            await worker.drain()
        finally:
            await slack.aclose()
            await store.close()

    assert fake.parents() == []
    assert [post["text"] for post in fake.thread("C_CONV", THREAD_TS)][:1] == [
        "Visitor: still there?"]
    assert len(fake.thread("C_CONV", THREAD_TS)) == 2  # the message, then the escalation
    [update] = fake.updates
    assert update["ts"] == THREAD_TS
    assert "https://acme.atlassian.net/browse/SUP-7" in json.dumps(update)
    db = settings.store.sqlite_path
    assert query(db, "SELECT status FROM deliveries WHERE id IN (2, 3)") == [
        ("delivered",), ("delivered",)]
    assert query(db, "SELECT source, tool FROM reply_echoes") == [("Ev1", "slack")]


async def test_an_upgrade_that_fails_leaves_the_first_release_store_as_it_was(tmp_path):
    path = first_release_store(tmp_path / "data" / "bridge.db")
    with sqlite3.connect(path) as conn:  # a row the new foreign keys cannot accept
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("INSERT INTO deliveries (id, event_id, destination, ordering_key,"
                     " next_attempt_at, created_at) VALUES (99, 404, 'slack', 'x/y', 0, 0)")
    with pytest.raises(StoreError, match="dangling"):
        open_store(f"sqlite:///{path}")
    tables = {name for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "schema_migrations" not in tables and "conversation_links" not in tables
    assert query(path, "SELECT COUNT(*) FROM conversations WHERE slack_thread_ts IS NOT NULL"
                 ) == [(1,)]


@pytest.mark.parametrize("argv", [
    ["check"], ["deliveries"], ["conversations"], ["retry", "--failed"], ["backup", "COPY"]])
def test_operator_commands_leave_a_first_release_store_to_serve_to_upgrade(
        argv, make_settings, tmp_path, capsys):
    """The first release may still be running on it: migrated under it, its worker breaks."""
    settings = make_settings()
    path = first_release_store(settings.store.sqlite_path)
    # A copy, were one made, goes in tmp_path, never in the checkout the tests run from.
    rest = [str(tmp_path / "copy.db") if word == "COPY" else word for word in argv[1:]]
    code, _, err = run(capsys, argv[0], "--config", str(tmp_path / "settings.toml"), *rest)
    assert code == 1
    assert (f"the store at {path} has schema version 1, older than this sitegpt-bridge's "
            f"{SCHEMA_VERSION}: `serve` or `worker` upgrades it when it starts") in err
    tables = {name for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "schema_migrations" not in tables
    assert query(path, "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'") == [(1,)]
    assert not (tmp_path / "copy.db").exists()
