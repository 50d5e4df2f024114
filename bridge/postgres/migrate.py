"""Bring a PostgreSQL store to the schema version of the code; of several replicas, one does."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from bridge.errors import StoreError

log = logging.getLogger("bridge.store")
# pg_advisory_lock(NAMESPACE, key): the bridge's own keys, apart from any other application's.
NAMESPACE = 0x5173  # "Sq"
MIGRATION_KEY = 1
VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    migrated_at DOUBLE PRECISION NOT NULL
)"""


async def migrate(conn: psycopg.AsyncConnection[object], migrations: Sequence[str]) -> int:
    """Run the migrations this database lacks, all in one transaction; the version it is at.

    A replica that starts while another migrates waits on the advisory lock, then finds the
    work done. A database newer than `migrations` is refused, naming both versions.
    """
    latest = len(migrations)
    await conn.execute("SELECT pg_advisory_lock(%s, %s)", (NAMESPACE, MIGRATION_KEY))
    try:
        async with conn.transaction():
            await conn.execute(VERSION_TABLE)
            current = await schema_version(conn)
            if current > latest:
                raise StoreError(
                    f"the store's schema is version {current}, newer than this bridge's "
                    f"{latest}: run the newer bridge, or restore a backup made for this one")
            for version in range(current + 1, latest + 1):
                await conn.execute(migrations[version - 1])
                await conn.execute(
                    "INSERT INTO schema_migrations (version, migrated_at)"
                    " VALUES (%s, EXTRACT(EPOCH FROM clock_timestamp()))", (version,))
        if current < latest:
            log.info("store: migrated the PostgreSQL schema from version %d to %d",
                     current, latest)
        return latest
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NAMESPACE, MIGRATION_KEY))


async def schema_version(conn: psycopg.AsyncConnection[object]) -> int:
    cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0  # type: ignore[index]
