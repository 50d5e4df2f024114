"""Bring a PostgreSQL store to the schema version of the code; of several replicas, one does."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from bridge.store.migrations import SCHEMA_VERSION, Migration, steps_from
from bridge.store.postgres.schema import Script

log = logging.getLogger("bridge.store")
# pg_advisory_lock(NAMESPACE, key): the bridge's own keys, apart from any other application's.
NAMESPACE = 0x5173  # "Sq"
MIGRATION_KEY = 1
PRUNE_KEY = 2  # operations.prune: one replica prunes at a time
VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""


async def migrate(conn: psycopg.AsyncConnection[object],
                  migrations: Sequence[Migration[Script]], where: str,
                  upgrade: bool = True) -> int:
    """Run the migrations this database lacks, all in one transaction; the version it is at.

    A replica that starts while another migrates waits on the advisory lock, then finds the
    work done. A database newer than the code is refused, naming both versions.
    """
    await conn.execute("SELECT pg_advisory_lock(%s, %s)", (NAMESPACE, MIGRATION_KEY))
    try:
        async with conn.transaction():
            await conn.execute(VERSION_TABLE)
            found = await schema_version(conn)
            steps = steps_from(found, migrations, where, upgrade)
            for step in steps:
                script: Script = []
                step.apply(script)
                for statements in script:
                    await conn.execute(statements)  # no parameters: several statements may run
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (%s, %s, EXTRACT(EPOCH FROM clock_timestamp()))",
                    (step.version, step.name))
        if steps:
            log.info("store: migrated the PostgreSQL schema at %s from version %d to %d",
                     where, found, SCHEMA_VERSION,
                     extra={"outcome": "migrated", "from_version": found,
                            "to_version": SCHEMA_VERSION})
        return SCHEMA_VERSION
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NAMESPACE, MIGRATION_KEY))


async def schema_version(conn: psycopg.AsyncConnection[object]) -> int:
    cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0  # type: ignore[index]
