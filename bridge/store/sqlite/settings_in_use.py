"""SQLite's record of the settings each running process uses (schema version 8)."""

from __future__ import annotations

import json
import sqlite3

from bridge.store.settings_in_use import SettingsInUse

TABLE = """
CREATE TABLE settings_in_use (
    process TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sections TEXT NOT NULL,
    loaded_at REAL NOT NULL,
    rejected TEXT,
    rejected_at REAL
)"""
COLUMNS = "process, role, fingerprint, loaded_at, sections, rejected, rejected_at"


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute(TABLE)


def record(conn: sqlite3.Connection, in_use: SettingsInUse) -> None:
    conn.execute(f"INSERT OR REPLACE INTO settings_in_use ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (in_use.process, in_use.role, in_use.fingerprint, in_use.loaded_at,
                  json.dumps(in_use.sections), in_use.rejected, in_use.rejected_at))


def read_all(conn: sqlite3.Connection) -> list[SettingsInUse]:
    rows = conn.execute(f"SELECT {COLUMNS} FROM settings_in_use ORDER BY loaded_at, process")
    return [SettingsInUse(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])
            for row in rows.fetchall()]


def forget(conn: sqlite3.Connection, process: str) -> None:
    conn.execute("DELETE FROM settings_in_use WHERE process = ?", (process,))
