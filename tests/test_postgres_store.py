"""The PostgreSQL store: what several replicas sharing one database must agree on."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.errors import StoreBusy, StoreError
from bridge.events import MESSAGE
from bridge.store import ClaimedDelivery, Echo, NewEvent, Pruned, open_store
from bridge.store.migrations import SCHEMA_VERSION, Migration, StoreNeedsUpgrade
from bridge.store.postgres import migrate
from bridge.store.postgres.intake import CONVERSATION_NAMESPACE, lock_key
from bridge.store.postgres.live_workers import WORKER_NAMESPACE
from bridge.store.postgres.schema import MIGRATIONS
from bridge.store.postgres.store import PostgresStore
from tests.older_schemas import BEFORE_ECHOES_PER_TOOL
from tests.postgres import query

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
            assert await store.finish(job.lease, "delivered", NOW + 10)
    assert order == sorted(order) and len(order) == 6


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


async def test_the_wake_up_connection_comes_back_after_the_server_drops_it(replicas,
                                                                           postgres_url):
    first, second = replicas
    calls: list[float] = []
    second.on_new_work(lambda: calls.append(NOW))
    await asyncio.wait_for(_until(lambda: second.listening), WAIT)
    [(dropped,)] = query(postgres_url, "SELECT COUNT(pg_terminate_backend(pid))"
                                       " FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'"
                                       " AND datname = current_database()")
    assert dropped == 1
    await asyncio.wait_for(_until(lambda: not second.listening), WAIT)
    await asyncio.wait_for(_until(lambda: second.listening), WAIT)
    heard = len(calls)
    await first.accept(new_event("k1"), NOW, 600)
    await asyncio.wait_for(_until(lambda: len(calls) > heard), WAIT)


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
        (version,) for version in range(1, SCHEMA_VERSION + 1)]
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
    query(postgres_url, "INSERT INTO schema_migrations VALUES (%s, 'newer', 0) RETURNING version",
          (SCHEMA_VERSION + 1,))
    newer = PostgresStore(postgres_url)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, but this "
                                         f"sitegpt-bridge knows versions up to {SCHEMA_VERSION}"):
        await newer.open()


async def test_an_older_store_is_refused_not_migrated_by_the_operator_commands(postgres_url):
    store = PostgresStore(postgres_url)
    await store.open()
    await store.close()
    query(postgres_url, "DELETE FROM schema_migrations WHERE version = %s RETURNING version",
          (SCHEMA_VERSION,))
    command = PostgresStore(postgres_url, upgrade=False)
    with pytest.raises(StoreNeedsUpgrade, match=f"schema version {SCHEMA_VERSION - 1}, older"):
        await command.open()
    assert query(postgres_url, "SELECT MAX(version) FROM schema_migrations") == [
        (SCHEMA_VERSION - 1,)]


async def test_migrations_run_in_one_transaction(postgres_url):
    last = MIGRATIONS[-1]
    broken = [*MIGRATIONS[:-1], Migration(last.version, lambda script: script.append(
        "CREATE TABLE half_done (id INT); SELECT 1/0"))]
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await migrate.migrate(conn, broken, "test")
    assert query(postgres_url, "SELECT to_regclass('events'), to_regclass('half_done'),"
                               " to_regclass('schema_migrations')") == [(None, None, None)]


async def test_connections_the_server_dropped_are_replaced_not_failed(replicas, postgres_url):
    """As after a restart or failover of the database: the next calls still succeed."""
    first, _ = replicas
    await first.accept(new_event("k1"), NOW, 600)
    [(dropped,)] = query(postgres_url, "SELECT COUNT(pg_terminate_backend(pid))"
                                       " FROM pg_stat_activity WHERE datname = current_database()"
                                       " AND pid <> pg_backend_pid()")
    assert dropped >= 1
    assert (await first.accept(new_event("k2"), NOW, 600)).status == "accepted"
    [job] = await first.claim("w1", NOW, 10, 30)
    assert await first.finish(job.lease, "delivered", NOW)


# Housekeeping


async def test_pruning_runs_on_one_replica_at_a_time(replicas, postgres_url):
    first, second = replicas
    await first.accept(new_event("k1"), NOW, 1)
    with psycopg.connect(postgres_url) as other:  # another replica, mid-prune
        other.execute("SELECT pg_advisory_xact_lock(%s, 2)", (migrate.NAMESPACE,))
        assert await second.prune(NOW + 10, NOW + 10, 100) == Pruned()
    assert (await second.prune(NOW + 10, NOW + 10, 100)).dedup == 1


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


async def test_info_names_the_server_version_where_it_is_and_the_schema(replicas,
                                                                        postgres_url):
    first, _ = replicas
    info = await first.info()
    assert re.fullmatch(r"PostgreSQL 1\d\.\d+", info.backend)
    assert (info.location, info.schema_version) == (
        postgres_url.split("@", 1)[1], SCHEMA_VERSION)


async def test_ready_means_a_write_commits_in_time(postgres_url):
    store = PostgresStore(postgres_url, commit_timeout=0.5)
    try:
        await store.check_writable()
        with psycopg.connect(postgres_url) as other:  # holds the row a readiness write needs
            other.execute("UPDATE readiness_probe SET checked_at = 0")
            with pytest.raises(StoreBusy):
                await store.check_writable()
    finally:
        await store.close()


async def test_events_of_one_conversation_are_stored_one_at_a_time(replicas, postgres_url):
    """So ids follow commit order within a conversation, and a claim never skips ahead."""
    first, second = replicas
    await first.open()
    with psycopg.connect(postgres_url) as other:  # another replica, storing into thread-1
        other.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                      (CONVERSATION_NAMESPACE, lock_key("bot/thread-1")))
        waiting = asyncio.create_task(first.accept(new_event("k1"), NOW, 600))
        elsewhere = await second.accept(new_event("k2", ordering_key="bot/thread-2"), NOW, 600)
        await asyncio.sleep(0.3)
        assert elsewhere.status == "accepted" and not waiting.done()
    assert (await asyncio.wait_for(waiting, WAIT)).event_id > elsewhere.event_id


async def test_a_burst_on_one_replica_is_committed_in_groups(replicas, postgres_url):
    first, _ = replicas
    await first.open()
    outcomes = await asyncio.gather(*[
        first.accept(new_event(f"k{n}", ordering_key=f"bot/thread-{n % 7}"), NOW + n, 600)
        for n in range(100)])
    [(transactions,)] = query(postgres_url, "SELECT COUNT(DISTINCT xmin::text) FROM events")
    assert {outcome.status for outcome in outcomes} == {"accepted"}
    assert transactions < 20  # not one commit per event
    for thread in range(7):  # each conversation's events in the order they were accepted
        rows = [outcome.event_id for n, outcome in enumerate(outcomes) if n % 7 == thread]
        assert rows == sorted(rows)


async def test_an_event_that_cannot_be_stored_fails_alone_not_its_group(replicas,
                                                                        postgres_url):
    first, _ = replicas
    await first.open()
    broken = NewEvent(kind=MESSAGE, body="{}", dedup_key="bad", ordering_key="bot/thread-1",
                      destinations=["slack", None])  # type: ignore[list-item]
    outcomes = await asyncio.gather(first.accept(new_event("k1"), NOW, 600),
                                    first.accept(broken, NOW, 600),
                                    first.accept(new_event("k2"), NOW, 600),
                                    return_exceptions=True)
    assert isinstance(outcomes[1], StoreError) and "null value" in str(outcomes[1])
    assert [outcomes[0].status, outcomes[2].status] == ["accepted", "accepted"]  # type: ignore[union-attr]
    assert query(postgres_url, "SELECT COUNT(*) FROM events") == [(2,)]


# Live workers: a replica's claims run on the connection holding its workers' locks

WORKER_LOCKS = ("SELECT {} FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


async def test_a_replica_whose_lock_connection_dropped_claims_again_only_once_it_holds_it(
        replicas, postgres_url):
    first, second = replicas
    await first.accept(new_event("k1", "bot/c1"), NOW, 600)
    await first.accept(new_event("k2", "bot/c2"), NOW, 600)
    [held] = await first.claim("w1", NOW, 1, 60)
    [(dropped,)] = query(postgres_url, WORKER_LOCKS.format("COUNT(pg_terminate_backend(pid))"),
                         (WORKER_NAMESPACE,))
    assert dropped == 1
    # w1 still runs, but no one can tell: its lease is taken at once, as a dead one's.
    taken: list[ClaimedDelivery] = []
    for _ in range(100):  # the terminated backend lets go of its locks a moment later
        if taken := await second.claim("w2", NOW, 10, 60):
            break
        await asyncio.sleep(0.05)
    assert held.id in {job.id for job in taken}
    with pytest.raises(StoreError):  # this claim ran on the dropped connection: nothing taken
        await first.claim("w1", NOW, 10, 60)
    assert await first.claim("w1", NOW, 10, 60) == []  # a new connection, w1's lock again
    assert len(query(postgres_url, WORKER_LOCKS.format("pid"), (WORKER_NAMESPACE,))) == 2
    assert not await first.finish(held.lease, "delivered", NOW)  # w2 has it now


async def test_a_lease_taken_by_a_bridge_without_worker_locks_runs_out_as_before(
        replicas, postgres_url):
    first, second = replicas
    await first.accept(new_event("k1"), NOW, 600)
    [held] = await first.claim("w1", NOW, 1, 60)
    # As an older bridge, during a rolling upgrade, leaves it: no lock says its worker lives.
    query(postgres_url, "UPDATE deliveries SET lease_token = md5(lease_token) WHERE id = %s"
                        " RETURNING id", (held.id,))
    await first.close()
    assert await second.claim("w2", NOW + 59, 10, 60) == []
    assert [job.id for job in await second.claim("w2", NOW + 60, 10, 60)] == [held.id]


async def test_a_store_of_the_previous_version_upgrades_in_place(postgres_url):
    """A version-7 store (no settings records, no console tables or index) keeps its events and
    upgrades."""
    older = PostgresStore(postgres_url)
    await older.accept(new_event("k1"), NOW, 600)
    await older.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in BEFORE_ECHOES_PER_TOOL:
            conn.execute(statement)
        for dropped in ("TABLE settings_in_use", "TABLE console_keys",
                        "TABLE paused_destinations", "INDEX deliveries_finished",
                        "INDEX conversations_recent"):
            conn.execute(f"DROP {dropped}")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 8")
    store = PostgresStore(postgres_url)
    try:
        await store.open()
        assert (await store.info()).schema_version == SCHEMA_VERSION
        assert await store.settings_in_use() == []
        assert [row.status for row in await store.deliveries()] == ["pending"]
    finally:
        await store.close()


async def test_a_version_10_store_keeps_its_echoes_as_slacks(postgres_url):
    older = PostgresStore(postgres_url)
    await older.open()
    await older.remember_echo(Echo("bot", "t1", "On it", "Ana", "Ev1"), NOW, 3600)
    await older.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in BEFORE_ECHOES_PER_TOOL:
            conn.execute(statement)
        conn.execute("DELETE FROM schema_migrations WHERE version >= 11")
    store = PostgresStore(postgres_url)
    try:
        await store.open()
        assert (await store.info()).schema_version == SCHEMA_VERSION
        mattermost = Echo("bot", "t1", "On it", "Ana", tool="mattermost")
        assert not await store.consume_echo(mattermost, NOW + 1)
        assert await store.consume_echo(Echo("bot", "t1", "On it", "Ana"), NOW + 1)
    finally:
        await store.close()
