"""What the operator console asks of PostgreSQL: its key, pauses, and the delivery list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bridge.store import console_sql as sql
from bridge.store.console_sql import ConversationKey
from bridge.store.filters import DeliveryFilter
from bridge.store.postgres.conversations import conversations
from bridge.store.postgres.wakeup import NOTIFY
from bridge.store.records import ConversationPage, DeliveryRow, DestinationSummary

Connection = psycopg.AsyncConnection[Any]
M = "%s"


async def console_key(conn: Connection, name: str, candidate: str, now: float) -> str:
    async with conn.transaction():
        await conn.execute(sql.KEEP_KEY.format(m=M), (name, candidate, now))
        cursor = await conn.execute(sql.KEPT_KEY.format(m=M), (name,))
        return str((await cursor.fetchone() or [""])[0])


async def pause(conn: Connection, destination: str, now: float) -> bool:
    cursor = await conn.execute(sql.PAUSE.format(m=M), (destination, now))
    return cursor.rowcount == 1


async def resume(conn: Connection, destination: str) -> bool:
    """Every replica's worker is woken: what waited goes out now."""
    async with conn.transaction():
        cursor = await conn.execute(sql.RESUME.format(m=M), (destination,))
        await conn.execute(NOTIFY)
        return cursor.rowcount == 1


async def paused(conn: Connection) -> dict[str, float]:
    cursor = await conn.execute(sql.PAUSED)
    return {destination: at for destination, at in await cursor.fetchall()}


async def summary(conn: Connection, destinations: Sequence[str],
                  now: float) -> list[DestinationSummary]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(sql.PENDING.format(m=M), (now,))
        pending = {row["destination"]: row for row in await cursor.fetchall()}
        found = []
        for name in destinations:
            await cursor.execute(sql.FINISHED.format(m=M), (name,) * 3)
            finished = await cursor.fetchone() or {}
            await cursor.execute(sql.LAST_ERROR.format(m=M), (name,))
            error = await cursor.fetchone()
            counts = {key: int(pending[name][key]) for key in ("waiting", "due", "retrying")} \
                if name in pending else {}
            found.append(DestinationSummary(
                name, **counts, **finished,
                last_error=error["last_error"] if error else None))
    return found


async def delivery_page(conn: Connection, matching: DeliveryFilter, before: int | None,
                        limit: int) -> list[DeliveryRow]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(*sql.page(matching, before, limit, M))
        return [DeliveryRow(**row) for row in await cursor.fetchall()]


async def count(conn: Connection, matching: DeliveryFilter) -> int:
    cursor = await conn.execute(*sql.count(matching, M))
    return int((await cursor.fetchone() or [0])[0])


async def retry_matching(conn: Connection, matching: DeliveryFilter, ids: list[int],
                         now: float) -> int:
    async with conn.transaction():
        cursor = await conn.execute(*sql.retry(matching, ids, now, M))
        if cursor.rowcount:
            await conn.execute(NOTIFY)
        return cursor.rowcount


async def cancel_matching(conn: Connection, matching: DeliveryFilter, ids: list[int],
                          now: float) -> int:
    cursor = await conn.execute(*sql.cancel(matching, ids, now, M))
    return cursor.rowcount


async def event_body(conn: Connection, event_id: int) -> str | None:
    cursor = await conn.execute(sql.EVENT_BODY.format(m=M), (event_id,))
    row = await cursor.fetchone()
    return row[0] if row else None


async def conversation_page(conn: Connection, search: str, before: ConversationKey | None,
                            limit: int) -> ConversationPage:
    end = await (await conn.execute(*sql.window_end(before, M))).fetchone()
    key = (end[0], end[1], end[2]) if end else None
    where, params = sql.conversation_search(search, before, key, M, "l.state::text")
    found = await conversations(conn, where, tuple(params), limit + 1)
    return sql.conversation_page(found, limit, key)
