"""What the operator commands ask of PostgreSQL: list, retry, count and prune."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from bridge.store.filters import conversation_filter
from bridge.store.postgres.migrate import NAMESPACE, PRUNE_KEY
from bridge.store.postgres.wakeup import NOTIFY
from bridge.store.records import STATUSES, Attempt, DeliveryRow, Pruned

Connection = psycopg.AsyncConnection[Any]
ERRORS_SHOWN = 3

DELIVERY_ROWS = ("SELECT d.id, d.event_id, e.kind, d.destination, d.ordering_key, d.status,"
                 " d.attempts, d.next_attempt_at, d.last_error, d.note, d.created_at,"
                 " d.finished_at FROM deliveries d JOIN events e ON e.id = d.event_id")
# Finished events older than the cutoff, oldest first; identity ids are never reused, so
# everything old may go, the newest event included.
PRUNABLE = """
SELECT e.id FROM events e
WHERE e.received_at < %(cutoff)s
  AND NOT EXISTS (
    SELECT 1 FROM deliveries d
    WHERE d.event_id = e.id AND (d.status = 'pending' OR d.finished_at >= %(cutoff)s))
ORDER BY e.id LIMIT %(limit)s
"""


def filters(ids: Sequence[int], clauses: list[str], params: list[Any],
            column: str = "d.id") -> tuple[list[str], list[Any]]:
    """`clauses` and `params` with "these ids only" added when there are ids."""
    if ids:
        return [*clauses, f"{column} = ANY(%s)"], [*params, list(ids)]
    return clauses, params


async def deliveries(conn: Connection, status: str | None, conversation: str | None,
                     limit: int, ids: Sequence[int]) -> list[DeliveryRow]:
    clauses, params = filters(ids, [], [])
    if status:
        clauses.append("d.status = %s")
        params.append(status)
    if conversation:
        clause, values = conversation_filter(conversation, "%s")
        clauses.append(clause)
        params += values
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(f"{DELIVERY_ROWS}{where} ORDER BY d.id DESC LIMIT %s",
                             (*params, limit))
        rows = await cursor.fetchall()
    errors = await _recent_errors(conn, [row["id"] for row in rows])
    return [DeliveryRow(**row, errors=tuple(errors.get(row["id"], ()))) for row in rows]


async def _recent_errors(conn: Connection, ids: list[int]) -> dict[int, list[Attempt]]:
    """The last few failed attempts of each delivery, newest first, in one query."""
    async with conn.cursor(row_factory=class_row(Attempt)) as cursor:
        await cursor.execute(
            "SELECT delivery_id, attempt, outcome, error, worker, at FROM ("
            " SELECT a.*, row_number() OVER (PARTITION BY delivery_id ORDER BY id DESC) AS n"
            " FROM delivery_attempts a WHERE delivery_id = ANY(%s) AND error IS NOT NULL) r"
            " WHERE n <= %s ORDER BY delivery_id, n", (ids, ERRORS_SHOWN))
        found: dict[int, list[Attempt]] = {}
        for attempt in await cursor.fetchall():
            found.setdefault(attempt.delivery_id, []).append(attempt)
        return found


async def attempts(conn: Connection, delivery_id: int, limit: int) -> list[Attempt]:
    async with conn.cursor(row_factory=class_row(Attempt)) as cursor:
        await cursor.execute(
            "SELECT delivery_id, attempt, outcome, error, worker, at FROM delivery_attempts"
            " WHERE delivery_id = %s ORDER BY id DESC LIMIT %s", (delivery_id, limit))
        return await cursor.fetchall()


async def retry(conn: Connection, ids: Sequence[int], failed: bool, destination: str | None,
                now: float) -> int:
    """As the SQLite backend's; the workers of every replica are woken."""
    if not ids and not failed:
        return 0
    clauses, params = filters(ids, ["status = 'failed'" if failed else "status != 'pending'"],
                              [now], column="id")
    if destination:
        clauses.append("destination = %s")
        params.append(destination)
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s,"
            " finished_at = NULL, lease_owner = NULL, lease_until = NULL, lease_token = NULL"
            f" WHERE {' AND '.join(clauses)}", params)
        if cursor.rowcount:
            await conn.execute(NOTIFY)
        return cursor.rowcount


async def queue_depth(conn: Connection) -> dict[str, int]:
    cursor = await conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
    return {status: 0 for status in STATUSES} | {
        status: int(count) for status, count in await cursor.fetchall()}


async def prune(conn: Connection, cutoff: float, now: float, limit: int) -> Pruned:
    """Up to `limit` old events and expired dedup rows; nothing while another replica prunes."""
    async with conn.transaction():
        cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)",
                                    (NAMESPACE, PRUNE_KEY))
        if not (await cursor.fetchone() or [False])[0]:
            return Pruned()
        dedup = await conn.execute(
            "DELETE FROM dedup WHERE dedup_key IN (SELECT dedup_key FROM dedup"
            " WHERE expires_at <= %s LIMIT %s)", (now, limit))
        cursor = await conn.execute(PRUNABLE, {"cutoff": cutoff, "limit": limit})
        ids = [row[0] for row in await cursor.fetchall()]
        if not ids:
            return Pruned(dedup=dedup.rowcount)
        messages = await conn.execute("DELETE FROM messages WHERE event_id = ANY(%s)", (ids,))
        deliveries = await conn.execute("DELETE FROM deliveries WHERE event_id = ANY(%s)", (ids,))
        events = await conn.execute("DELETE FROM events WHERE id = ANY(%s)", (ids,))
        return Pruned(events.rowcount, deliveries.rowcount, messages.rowcount, dedup.rowcount)
