"""The delivery queue in SQLite: per-conversation FIFO claims under guarded, renewable leases."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence

from bridge.store.coalescing import as_taken, newly_taken, run_behind
from bridge.store.console_sql import NOT_PAUSED
from bridge.store.records import (
    ClaimedDelivery,
    DeliveryStatus,
    FollowUp,
    Lease,
    NewEvent,
    RetryKind,
)
from bridge.store.sqlite.intake import insert_event

# One seek on deliveries_due, however long the queue (see SQLiteStore.next_due).
NEXT_DUE = "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'" \
    " AND next_attempt_at > ?"

# A delivery may go only when no older one to the same destination and conversation is pending.
FIRST_IN_LINE = """NOT EXISTS (
    SELECT 1 FROM deliveries e
    WHERE e.destination = d.destination AND e.ordering_key = d.ordering_key
      AND e.status = 'pending' AND e.id < d.id)"""
# Pending deliveries in id order, stopping at `limit`: with a backlog (Slack down for an hour)
# the planner's own choice, every due row sorted by id, took ~40 ms per claim at 20,000 pending
# (on the writer thread, so webhooks waited too); this takes ~0.1 ms.
CLAIM = f"""
SELECT d.id, d.lease_owner FROM deliveries d INDEXED BY deliveries_pending
WHERE d.status = 'pending' AND d.next_attempt_at <= :now
  AND (d.lease_until IS NULL OR d.lease_until <= :now)
  AND {FIRST_IN_LINE} AND {NOT_PAUSED}
ORDER BY d.id LIMIT :limit
"""
# Whether an attempt of the delivery was cut off (it may have reached the destination): the
# abandoned row a takeover writes. It stays so: a later attempt that failed (a 429 while
# looking) leaves that one still unknown.
WAS_ABANDONED = """EXISTS (SELECT 1 FROM delivery_attempts a
    WHERE a.delivery_id = d.id AND a.outcome = 'abandoned')"""
# Every change to a claimed delivery holds only while the lease is still the caller's.
HELD = "id = :id AND lease_owner = :owner AND lease_token = :token AND status = 'pending'"


def claim(conn: sqlite3.Connection, owner: str, now: float, limit: int,
          lease_until: float) -> list[ClaimedDelivery]:
    due = conn.execute(CLAIM, {"now": now, "limit": limit}).fetchall()
    if not due:
        return []
    _record_abandoned(conn, [(delivery_id, lost) for delivery_id, lost in due if lost], now)
    tokens = {delivery_id: secrets.token_hex(8) for delivery_id, _ in due}
    conn.executemany(
        "UPDATE deliveries SET lease_owner = ?, lease_until = ?, lease_token = ?,"
        " attempts = attempts + 1 WHERE id = ?",
        [(owner, lease_until, token, delivery_id) for delivery_id, token in tokens.items()])
    marks = ",".join("?" * len(tokens))
    rows = conn.execute(
        "SELECT d.id, d.event_id, d.destination, d.ordering_key, d.attempts, d.created_at,"
        " e.kind, e.body, d.lease_owner AS owner, d.lease_token AS token,"
        f" {WAS_ABANDONED} AS uncertain FROM deliveries d"
        f" JOIN events e ON e.id = d.event_id WHERE d.id IN ({marks}) ORDER BY d.id",
        list(tokens))
    return [ClaimedDelivery(**{**row, "uncertain": bool(row["uncertain"])}) for row in rows]


def take_over(conn: sqlite3.Connection, now: float) -> int:
    """End every lease still running, for a process that holds the store's worker lock.

    Only a process that held the lock can have taken them, and it no longer holds it: it
    died. Their worker is kept, so the next claim records its attempt as abandoned.
    """
    return conn.execute("UPDATE deliveries SET lease_until = ? WHERE status = 'pending'"
                        " AND lease_until > ?", (now, now)).rowcount


def _record_abandoned(conn: sqlite3.Connection, lost: list[tuple[int, str]], now: float) -> None:
    """A lease that ran out: its worker stopped renewing it (killed, hung, cut off)."""
    conn.executemany(
        "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, error, worker, at)"
        " SELECT id, attempts, 'abandoned', ?, lease_owner, ? FROM deliveries WHERE id = ?",
        [(f"the lease of {owner} ran out: it stopped renewing it", now, delivery_id)
         for delivery_id, owner in lost])


def heartbeat(conn: sqlite3.Connection, leases: Sequence[Lease], until: float) -> set[int]:
    held: set[int] = set()
    for lease in leases:
        cursor = conn.execute(f"UPDATE deliveries SET lease_until = :until WHERE {HELD}",
                              {**_lease(lease), "until": until})
        if cursor.rowcount:
            held.add(lease.delivery_id)
            conn.execute(RENEW_TAKEN, {**_lease(lease), "until": until})
    return held


def finish(conn: sqlite3.Connection, lease: Lease, status: DeliveryStatus, now: float,
           note: str | None, follow_ups: Sequence[FollowUp],
           coalesced: Sequence[Lease] = ()) -> bool:
    if not _finish_one(conn, lease, status, now, note, follow_ups):
        return False
    for taken in coalesced:
        _finish_one(conn, taken, status, now, note, ())
    return True


def _finish_one(conn: sqlite3.Connection, lease: Lease, status: DeliveryStatus, now: float,
                note: str | None, follow_ups: Sequence[FollowUp]) -> bool:
    error = note if status == "failed" else None
    if not _record_attempt(conn, lease, status, error, now):
        return False
    conn.execute(
        "UPDATE deliveries SET status = :status, finished_at = :now, note = :note,"
        " last_error = :error, lease_owner = NULL, lease_until = NULL, lease_token = NULL"
        f" WHERE {HELD}",
        {**_lease(lease), "status": status, "now": now, "error": error,
         "note": None if error else note})
    for follow_up in follow_ups:
        insert_event(conn, NewEvent(
            kind=follow_up.kind, body=follow_up.body, dedup_key=f"follow-up:{lease.delivery_id}",
            ordering_key=follow_up.ordering_key, destinations=follow_up.destinations), now)
    return True


def reschedule(conn: sqlite3.Connection, lease: Lease, at: float, error: str, now: float,
               retry_kind: RetryKind | None = None) -> bool:
    if not _record_attempt(conn, lease, "retry", error, now):
        return False
    conn.execute(
        "UPDATE deliveries SET next_attempt_at = :at, last_error = :error, retry_kind = :kind,"
        f" lease_owner = NULL, lease_until = NULL, lease_token = NULL WHERE {HELD}",
        {**_lease(lease), "at": at, "error": error, "kind": retry_kind})
    return True


def _record_attempt(conn: sqlite3.Connection, lease: Lease, outcome: str, error: str | None,
                    now: float) -> bool:
    """The attempt's row, written only if the lease still holds; whether it did."""
    cursor = conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, error, worker, at)"
        f" SELECT id, attempts, :outcome, :error, lease_owner, :now FROM deliveries WHERE {HELD}",
        {**_lease(lease), "outcome": outcome, "error": error, "now": now})
    return cursor.rowcount == 1


def release(conn: sqlite3.Connection, leases: Sequence[Lease]) -> int:
    released = 0
    for lease in leases:
        released += conn.execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, lease_token = NULL,"
            f" attempts = MAX(attempts - 1, 0) WHERE {HELD}", _lease(lease)).rowcount
    return released


# Coalescing: the deliveries queued right behind a leased one share its lease (owner, token).

QUEUED_BEHIND = """
SELECT d.id, d.event_id, d.destination, d.ordering_key, d.attempts, d.created_at, e.kind, e.body,
       d.lease_owner, d.lease_token, d.lease_until
FROM deliveries h
JOIN deliveries d ON d.destination = h.destination AND d.ordering_key = h.ordering_key
    AND d.status = 'pending' AND d.id > h.id
JOIN events e ON e.id = d.event_id
WHERE h.id = :id AND h.lease_owner = :owner AND h.lease_token = :token AND h.status = 'pending'
ORDER BY d.id LIMIT :limit
"""
# The rows taken behind a lease: its conversation's, with its owner and token.
TAKEN = """(destination, ordering_key) = (
    SELECT destination, ordering_key FROM deliveries WHERE id = :id)
  AND status = 'pending' AND lease_owner = :owner AND lease_token = :token AND id != :id"""
RENEW_TAKEN = f"UPDATE deliveries SET lease_until = :until WHERE {TAKEN}"


def take_queued(conn: sqlite3.Connection, lease: Lease, kinds: frozenset[str], limit: int,
                now: float) -> list[ClaimedDelivery]:
    rows = conn.execute(QUEUED_BEHIND, {**_lease(lease), "limit": limit}).fetchall()
    run = run_behind(rows, lease, kinds, now)
    new = newly_taken(run, lease)
    _record_abandoned(conn, [(taken, lost) for taken, lost in new.items() if lost], now)
    conn.executemany(
        "UPDATE deliveries SET lease_owner = :owner, lease_token = :token, attempts = attempts + 1,"
        " lease_until = (SELECT lease_until FROM deliveries WHERE id = :id) WHERE id = :taken",
        [{**_lease(lease), "taken": taken} for taken in new])
    return [as_taken(row, lease, counted=row["id"] in new) for row in run]


def bring_forward(conn: sqlite3.Connection, destination: str, retry_kind: RetryKind,
                  now: float) -> int:
    # Only deliveries waiting for their retry, never one a worker holds: no lease is changed.
    return conn.execute(
        "UPDATE deliveries SET next_attempt_at = :now WHERE status = 'pending'"
        " AND next_attempt_at > :now AND destination = :destination AND retry_kind = :kind"
        " AND (lease_until IS NULL OR lease_until <= :now)",
        {"now": now, "destination": destination, "kind": retry_kind}).rowcount


def _lease(lease: Lease) -> dict[str, object]:
    return {"id": lease.delivery_id, "owner": lease.owner, "token": lease.token}
