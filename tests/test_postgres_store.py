"""The PostgreSQL store: what several replicas sharing one database must agree on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres import query

from bridge.errors import StoreError
from bridge.events import MESSAGE
from bridge.postgres import migrate
from bridge.postgres.schema import LATEST, MIGRATIONS
from bridge.postgres.store import PostgresStore
from bridge.store import Acceptance, NewEvent, Pruned, open_store

NOW = 1_700_000_000.0
WAIT = 10.0


def new_event(dedup_key: str, ordering_key: str = "bot/thread-1",
              destinations: Sequence[str] = ("slack",)) -> NewEvent:
    return NewEvent(kind=MESSAGE, body=f'{{"n":"{dedup_key}"}}', dedup_key=dedup_key,
                    ordering_key=ordering_key, destinations=destinations)


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two replicas of the bridge would open it."""
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    yield first, second
    await first.close()
    await second.close()


def test_open_store_picks_postgresql_by_its_scheme(postgres_url):
    assert isinstance(open_store(postgres_url, pool_size=3), PostgresStore)


# Dedup and order across replicas


async def test_four_copies_sent_two_to_each_replica_at_once_make_one_event(replicas,
                                                                           postgres_url):
    first, second = replicas
    copies = [store.accept(new_event("same-body"), NOW, 600)
              for store in (first, second, first, second)]
    outcomes = await asyncio.gather(*copies)
    assert sorted(outcome.status for outcome in outcomes) == [
        "accepted", "duplicate", "duplicate", "duplicate"]
    assert len({outcome.event_id for outcome in outcomes}) == 1
    assert query(postgres_url, "SELECT COUNT(*) FROM events") == [(1,)]
    assert query(postgres_url, "SELECT COUNT(*) FROM deliveries") == [(1,)]


async def test_an_expired_dedup_key_accepts_the_body_again(replicas):
    first, second = replicas
    accepted = await first.accept(new_event("k1"), NOW, 60)
    assert await second.accept(new_event("k1"), NOW + 59, 60) == Acceptance(
        "duplicate", accepted.event_id)
    assert (await second.accept(new_event("k1"), NOW + 60, 60)).status == "accepted"


async def test_replicas_claiming_at_once_never_take_the_same_delivery(replicas):
    first, second = replicas
    for n in range(40):
        await first.accept(new_event(f"k{n}", ordering_key=f"bot/thread-{n}"), NOW, 600)
    claims = await asyncio.gather(*[store.claim(f"owner-{i}", NOW, 7, 60)
                                    for i, store in enumerate([first, second] * 3)])
    taken = [job.id for claim in claims for job in claim]
    assert len(taken) == len(set(taken)) == 40


async def test_one_conversation_goes_out_in_order_however_replicas_interleave(replicas):
    first, second = replicas
    for n in range(6):
        await (first, second)[n % 2].accept(new_event(f"k{n}"), NOW + n, 600)
    order: list[int] = []
    for turn in range(12):
        store = (first, second)[turn % 2]
        claimed = await store.claim(f"owner-{turn % 2}", NOW + 10, 10, 60)
        assert len(claimed) <= 1  # the next one waits until this one is finished
        for job in claimed:
            order.append(job.event_id)
            await store.finish(job.id, "delivered", NOW + 10)
    assert order == sorted(order) and len(order) == 6


async def test_an_expired_lease_is_taken_over_by_the_other_replica(replicas):
    first, second = replicas
    await first.accept(new_event("k1"), NOW, 600)
    [job] = await first.claim("first", NOW, 10, 30)
    assert await second.claim("second", NOW + 29, 10, 30) == []
    [taken] = await second.claim("second", NOW + 30, 10, 30)
    assert (taken.id, taken.attempts) == (job.id, 2)


async def test_a_follow_up_joins_the_queue_in_the_same_transaction(replicas, postgres_url):
    from bridge.store import FollowUp

    first, second = replicas
    await first.accept(new_event("k1", destinations=["jira"]), NOW, 600)
    [job] = await first.claim("first", NOW, 10, 30)
    await first.finish(job.id, "delivered", NOW + 1, "PROJ-1",
                       [FollowUp("TICKET_LINKED", "{}", "bot/thread-1", ["slack"])])
    [linked] = await second.claim("second", NOW + 2, 10, 30)
    assert (linked.kind, linked.destination) == ("TICKET_LINKED", "slack")


# Wake-ups


async def test_work_stored_by_one_replica_wakes_the_other_replicas_worker(replicas):
    first, second = replicas
    woken = asyncio.Event()
    listening = asyncio.Event()

    def wake() -> None:
        (woken if listening.is_set() else listening).set()

    second.on_new_work(wake)
    await asyncio.wait_for(listening.wait(), WAIT)  # the first call says "listening now"
    await first.accept(new_event("k1"), NOW, 600)
    await asyncio.wait_for(woken.wait(), WAIT)


async def test_a_duplicate_wakes_nobody(replicas):
    first, second = replicas
    await first.accept(new_event("k1"), NOW, 600)
    calls: list[float] = []
    second.on_new_work(lambda: calls.append(NOW))
    await asyncio.wait_for(_until(lambda: calls), WAIT)
    await first.accept(new_event("k1"), NOW, 600)
    await first.accept(new_event("k2"), NOW, 600)  # a marker: its wake-up comes after
    await asyncio.wait_for(_until(lambda: len(calls) >= 2), WAIT)
    assert len(calls) == 2


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# Migrations


async def test_replicas_starting_together_migrate_once(postgres_url, caplog):
    caplog.set_level(logging.INFO, "bridge.store")
    stores = [PostgresStore(postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
    finally:
        for store in stores:
            await store.close()
    assert query(postgres_url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (version,) for version in range(1, LATEST + 1)]
    migrated = [record for record in caplog.records if "migrated" in record.getMessage()]
    assert len(migrated) == 1


async def test_a_replica_waits_while_another_holds_the_migration_lock(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)",
                       (migrate.NAMESPACE, migrate.MIGRATION_KEY))
        store = PostgresStore(postgres_url)
        opening = asyncio.create_task(store.open())
        await asyncio.sleep(0.5)
        assert not opening.done()
        assert query(postgres_url, "SELECT to_regclass('events')") == [(None,)]
        holder.execute("SELECT pg_advisory_unlock(%s, %s)",
                       (migrate.NAMESPACE, migrate.MIGRATION_KEY))
        await asyncio.wait_for(opening, WAIT)
    await store.close()
    assert query(postgres_url, "SELECT to_regclass('events') IS NOT NULL") == [(True,)]


async def test_a_store_newer_than_the_code_is_refused_naming_both_versions(postgres_url):
    store = PostgresStore(postgres_url)
    await store.open()
    await store.close()
    query(postgres_url, "INSERT INTO schema_migrations VALUES (%s, 0) RETURNING version",
          (LATEST + 1,))
    newer = PostgresStore(postgres_url)
    with pytest.raises(StoreError, match=f"version {LATEST + 1}, newer than this bridge's "
                                         f"{LATEST}"):
        await newer.open()


async def test_migrations_run_in_one_transaction(postgres_url):
    broken = (*MIGRATIONS, "CREATE TABLE half_done (id INT); SELECT 1/0")
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await migrate.migrate(conn, broken)
    assert query(postgres_url, "SELECT to_regclass('events'), to_regclass('half_done'),"
                               " to_regclass('schema_migrations')") == [(None, None, None)]


# Housekeeping


async def test_pruning_runs_on_one_replica_at_a_time(replicas, postgres_url):
    first, second = replicas
    await first.accept(new_event("k1"), NOW, 1)
    with psycopg.connect(postgres_url) as other:  # another replica, mid-prune
        other.execute("SELECT pg_advisory_xact_lock(%s, 2)", (migrate.NAMESPACE,))
        assert await second.prune(NOW + 10, NOW + 10, 100) == Pruned()
    assert (await second.prune(NOW + 10, NOW + 10, 100)).dedup == 1


async def test_pruning_may_remove_the_newest_event(replicas, postgres_url):
    first, _ = replicas
    await first.accept(new_event("k1"), NOW, 1)
    [job] = await first.claim("first", NOW, 10, 30)
    await first.finish(job.id, "delivered", NOW)
    assert await first.prune(NOW + 10, NOW + 10, 100) == Pruned(1, 1, 0, 1)
    assert (await first.accept(new_event("k2"), NOW + 11, 1)).event_id > job.event_id


async def test_backup_names_the_pg_dump_command_without_the_password(tmp_path: Path):
    store = PostgresStore("postgresql://bridge:sec-pw@db.internal:5433/bridge?sslmode=require")
    with pytest.raises(StoreError) as error:
        await store.backup(tmp_path / "bridge.dump")
    advice = str(error.value)
    assert (f"pg_dump --format=custom --file={tmp_path / 'bridge.dump'} "
            "'postgresql://bridge@db.internal:5433/bridge?sslmode=require'") in advice
    assert "sec-pw" not in advice


async def test_an_unreachable_server_is_a_store_error_without_the_password():
    store = PostgresStore("postgresql://bridge:sec-pw@127.0.0.1:1/bridge?connect_timeout=2")
    with pytest.raises(StoreError) as error:
        await store.open()
    assert "sec-pw" not in str(error.value)
    assert "postgresql://bridge:**********@127.0.0.1:1/bridge" in str(error.value)


async def test_check_describes_server_and_schema(replicas):
    first, _ = replicas
    described = await first.describe()
    assert described.startswith("PostgreSQL 1") and f"schema version {LATEST}" in described
    await first.check_writable()


async def test_events_of_one_conversation_are_stored_one_at_a_time(replicas, postgres_url):
    """So ids follow commit order within a conversation, and a claim never skips ahead."""
    from bridge.postgres.store import CONVERSATION_NAMESPACE

    first, _ = replicas
    await first.open()
    with psycopg.connect(postgres_url) as other:  # another replica, storing into thread-1
        other.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                      (CONVERSATION_NAMESPACE, "bot/thread-1"))
        waiting = asyncio.create_task(first.accept(new_event("k1"), NOW, 600))
        elsewhere = await first.accept(new_event("k2", ordering_key="bot/thread-2"), NOW, 600)
        await asyncio.sleep(0.3)
        assert elsewhere.status == "accepted" and not waiting.done()
    assert (await asyncio.wait_for(waiting, WAIT)).event_id > elsewhere.event_id
