"""What the operator console asks of SQLite: its key, pauses, and the delivery list."""

from __future__ import annotations

import sqlite3

from bridge.store import console_sql as sql
from bridge.store.filters import DeliveryFilter
from bridge.store.records import DeliveryRow, DestinationSummary

M = "?"


def console_key(conn: sqlite3.Connection, name: str, candidate: str, now: float) -> str:
    conn.execute(sql.KEEP_KEY.format(m=M), (name, candidate, now))
    return str(conn.execute(sql.KEPT_KEY.format(m=M), (name,)).fetchone()[0])


def pause(conn: sqlite3.Connection, destination: str, now: float) -> bool:
    return conn.execute(sql.PAUSE.format(m=M), (destination, now)).rowcount == 1


def resume(conn: sqlite3.Connection, destination: str) -> bool:
    return conn.execute(sql.RESUME.format(m=M), (destination,)).rowcount == 1


def paused(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(conn.execute(sql.PAUSED).fetchall())


def summary(conn: sqlite3.Connection, now: float) -> list[DestinationSummary]:
    rows = conn.execute(sql.SUMMARY.format(m=M), (now,)).fetchall()
    return [DestinationSummary(**row, last_error=_last_error(conn, row["destination"]))
            for row in rows]


def _last_error(conn: sqlite3.Connection, destination: str) -> str | None:
    row = conn.execute(sql.LAST_ERROR.format(m=M), (destination,)).fetchone()
    return row[0] if row else None


def delivery_page(conn: sqlite3.Connection, matching: DeliveryFilter, before: int | None,
                  limit: int) -> list[DeliveryRow]:
    statement, params = sql.page(matching, before, limit, M)
    return [DeliveryRow(**row) for row in conn.execute(statement, params)]


def count(conn: sqlite3.Connection, matching: DeliveryFilter) -> int:
    statement, params = sql.count(matching, M)
    return int(conn.execute(statement, params).fetchone()[0])


def retry_matching(conn: sqlite3.Connection, matching: DeliveryFilter, ids: list[int],
                   now: float) -> int:
    return conn.execute(*sql.retry(matching, ids, now, M)).rowcount


def cancel_matching(conn: sqlite3.Connection, matching: DeliveryFilter, ids: list[int],
                    now: float) -> int:
    return conn.execute(*sql.cancel(matching, ids, now, M)).rowcount


def event_body(conn: sqlite3.Connection, event_id: int) -> str | None:
    row = conn.execute(sql.EVENT_BODY.format(m=M), (event_id,)).fetchone()
    return row[0] if row else None
