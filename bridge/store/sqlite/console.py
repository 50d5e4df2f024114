"""What the operator console asks of SQLite: its key, pauses, and the delivery list."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge.store import console_sql as sql
from bridge.store.console_sql import ConversationKey
from bridge.store.filters import DeliveryFilter
from bridge.store.records import ConversationPage, DeliveryRow, DestinationSummary
from bridge.store.sqlite.conversations import conversations

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


def summary(conn: sqlite3.Connection, destinations: Sequence[str],
            now: float) -> list[DestinationSummary]:
    pending = {row["destination"]: row
               for row in conn.execute(sql.PENDING.format(m=M), (now,))}
    return [_summary(conn, name, pending.get(name), now) for name in destinations]


def _summary(conn: sqlite3.Connection, destination: str, pending: sqlite3.Row | None,
             now: float) -> DestinationSummary:
    finished = conn.execute(sql.FINISHED.format(m=M), (destination,) * 3).fetchone()
    error = conn.execute(sql.LAST_ERROR.format(m=M), (destination,)).fetchone()
    counts = {key: pending[key] for key in ("waiting", "due", "retrying")} if pending else {}
    return DestinationSummary(destination, **counts, **finished,
                              last_error=error[0] if error else None)


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


def conversation_page(conn: sqlite3.Connection, search: str, before: ConversationKey | None,
                      limit: int) -> ConversationPage:
    end = conn.execute(*sql.window_end(before, M)).fetchone()
    key = (end[0], end[1], end[2]) if end else None
    where, params = sql.conversation_search(search, before, key, M, "l.state")
    return sql.conversation_page(conversations(conn, where, tuple(params), limit + 1), limit,
                                 key)
