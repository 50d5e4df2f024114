"""What the operator commands ask of SQLite: list, retry, count, prune and back up."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.errors import StoreError
from bridge.store.filters import conversation_filter
from bridge.store.records import STATUSES, Attempt, Backup, DeliveryRow, Pruned

ERRORS_SHOWN = 3


def deliveries(conn: sqlite3.Connection, status: str | None, conversation: str | None,
               limit: int, ids: Sequence[int] = ()) -> list[DeliveryRow]:
    clauses: list[str] = []
    params: list[Any] = []
    if ids:
        clauses.append(f"d.id IN ({','.join('?' * len(ids))})")
        params += list(ids)
    if status:
        clauses.append("d.status = ?")
        params.append(status)
    if conversation:
        clause, values = conversation_filter(conversation, "?")
        clauses.append(clause)
        params += values
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        "SELECT d.id, d.event_id, e.kind, d.destination, d.ordering_key, d.status, d.attempts,"
        " d.next_attempt_at, d.last_error, d.note, d.created_at, d.finished_at FROM deliveries d"
        f" JOIN events e ON e.id = d.event_id {where} ORDER BY d.id DESC LIMIT ?",
        [*params, limit]).fetchall()
    errors = _recent_errors(conn, [row["id"] for row in rows])
    return [DeliveryRow(**row, errors=tuple(errors.get(row["id"], ()))) for row in rows]


def _recent_errors(conn: sqlite3.Connection, ids: list[int]) -> dict[int, list[Attempt]]:
    """The last few failed attempts of each delivery, newest first."""
    found: dict[int, list[Attempt]] = {}
    for delivery_id in ids:
        found[delivery_id] = attempts(conn, delivery_id, ERRORS_SHOWN, failed_only=True)
    return found


def attempts(conn: sqlite3.Connection, delivery_id: int, limit: int,
             failed_only: bool = False) -> list[Attempt]:
    failed = " AND error IS NOT NULL" if failed_only else ""
    rows = conn.execute(
        "SELECT delivery_id, attempt, outcome, error, worker, at FROM delivery_attempts"
        f" WHERE delivery_id = ?{failed} ORDER BY id DESC LIMIT ?", (delivery_id, limit))
    return [Attempt(**row) for row in rows]


def retry(conn: sqlite3.Connection, ids: Sequence[int], failed: bool,
          destination: str | None, now: float) -> int:
    """Named deliveries in any finished state, or every failed one; never "all" by default.

    Skipped ones are dry runs: requeued only by id, since bulk-retrying them after a token is
    set would post a backlog nobody asked for.
    """
    if not ids and not failed:
        return 0
    clauses = ["status = 'failed'" if failed else "status != 'pending'"]
    params: list[Any] = []
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        params += list(ids)
    if destination:
        clauses.append("destination = ?")
        params.append(destination)
    cursor = conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
        " finished_at = NULL, lease_owner = NULL, lease_until = NULL, lease_token = NULL"
        f" WHERE {' AND '.join(clauses)}",
        [now, *params])
    return cursor.rowcount


def queue_depth(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
    depth: dict[str, int] = dict.fromkeys(STATUSES, 0)
    depth.update(rows.fetchall())
    return depth


# Finished events older than the cutoff. Ids are never reused (AUTOINCREMENT), so everything
# old may go, the newest event included.
PRUNABLE = """
SELECT e.id FROM events e
WHERE e.received_at < :cutoff
  AND NOT EXISTS (
    SELECT 1 FROM deliveries d
    WHERE d.event_id = e.id AND (d.status = 'pending' OR d.finished_at >= :cutoff))
ORDER BY e.id LIMIT :limit
"""


def prune(conn: sqlite3.Connection, cutoff: float, now: float, limit: int) -> Pruned:
    dedup = conn.execute(
        "DELETE FROM dedup WHERE rowid IN"
        " (SELECT rowid FROM dedup WHERE expires_at <= ? LIMIT ?)", (now, limit)).rowcount
    ids = [row[0] for row in conn.execute(PRUNABLE, {"cutoff": cutoff, "limit": limit})]
    if not ids:
        return Pruned(dedup=dedup)
    marks = ",".join("?" * len(ids))
    messages = conn.execute(f"DELETE FROM messages WHERE event_id IN ({marks})", ids).rowcount
    deliveries = conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids).rowcount
    events = conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids).rowcount
    return Pruned(events, deliveries, messages, dedup)


def backup(source: Path, target: Path) -> Backup:
    """Copy a live SQLite store to `target` in one read transaction, then move it into place."""
    if target.resolve() == source.resolve():
        raise StoreError(f"refusing to back up {source} onto itself")
    partial = target.with_name(f"{target.name}.partial")
    try:
        src = sqlite3.connect(f"file:{source}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store at {source}: {exc}") from exc
    try:
        partial.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)  # pages=-1: one step, one snapshot, however busy the writers are
            events, deliveries, pending = _seal_copy(dst)
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"backup to {target} failed: {exc}") from exc
    finally:
        src.close()
    return Backup(target, target.stat().st_size, events, deliveries, pending)


def _seal_copy(dst: sqlite3.Connection) -> tuple[int, int, int]:
    """Make the copy one self-contained file, check it, and count what it holds."""
    dst.execute("PRAGMA journal_mode=DELETE")  # no -wal beside it to lose when it is moved
    check = dst.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"the copy fails its integrity check: {check}")
    events = dst.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    deliveries, pending = dst.execute(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'pending') FROM deliveries").fetchone()
    return events, deliveries, pending or 0
