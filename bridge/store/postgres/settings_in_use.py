"""PostgreSQL's record of the settings each running process uses (schema version 8)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from bridge.store.settings_in_use import SettingsInUse

TABLE = """
CREATE TABLE settings_in_use (
    process TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sections JSONB NOT NULL,
    loaded_at DOUBLE PRECISION NOT NULL,
    rejected TEXT,
    rejected_at DOUBLE PRECISION
)"""
COLUMNS = "process, role, fingerprint, loaded_at, sections, rejected, rejected_at"
RECORD = f"""
INSERT INTO settings_in_use ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (process) DO UPDATE SET role = EXCLUDED.role, fingerprint = EXCLUDED.fingerprint,
    loaded_at = EXCLUDED.loaded_at, sections = EXCLUDED.sections,
    rejected = EXCLUDED.rejected, rejected_at = EXCLUDED.rejected_at
"""

Connection = psycopg.AsyncConnection[Any]


async def record(conn: Connection, in_use: SettingsInUse) -> None:
    await conn.execute(RECORD, (in_use.process, in_use.role, in_use.fingerprint,
                                in_use.loaded_at, json.dumps(in_use.sections),
                                in_use.rejected, in_use.rejected_at))


async def read_all(conn: Connection) -> list[SettingsInUse]:
    cursor = await conn.execute(
        f"SELECT {COLUMNS} FROM settings_in_use ORDER BY loaded_at, process")
    return [SettingsInUse(row[0], row[1], row[2], row[3], dict(row[4]), row[5], row[6])
            for row in await cursor.fetchall()]


async def forget(conn: Connection, process: str) -> None:
    await conn.execute("DELETE FROM settings_in_use WHERE process = %s", (process,))
