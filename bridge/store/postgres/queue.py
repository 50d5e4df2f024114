"""The delivery queue in PostgreSQL: per-conversation FIFO claims by SKIP LOCKED, guarded leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from bridge.store.coalescing import as_taken, newly_taken, run_behind
from bridge.store.console_sql import NOT_PAUSED
from bridge.store.postgres.intake import accept
from bridge.store.postgres.live_workers import GONE, LIVE, LIVE_TOKEN
from bridge.store.records import (
    ClaimedDelivery,
    DeliveryStatus,
    FollowUp,
    Lease,
    NewEvent,
    RetryKind,
)

Connection = psycopg.AsyncConnection[Any]
# The error of an attempt whose lease ran out, as an expression over the delivery's row.
ABANDONED = "'the lease of ' || lease_owner || ' ran out: it stopped renewing it'"

# Whether an attempt of the delivery was cut off, so it may have reached the destination:
# its lease ran out now (the abandoned row this claim writes is not visible to it), or an
# abandoned row from before. It stays so: a later failed attempt leaves that one unknown.
WAS_ABANDONED = """EXISTS (SELECT 1 FROM delivery_attempts a
    WHERE a.delivery_id = d.id AND a.outcome = 'abandoned')"""

# A delivery may go only when no older one to the same destination and conversation is
# pending. SKIP LOCKED: replicas claiming at the same moment take different rows instead of
# queueing behind each other; a row another claim has just leased is re-checked and skipped.
# A lease that ran out, or whose worker is gone (live_workers.py), is recorded as its
# worker's abandoned attempt.
CLAIM = f"""
WITH {LIVE}, next AS (
    SELECT d.id, d.attempts, d.lease_owner FROM deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= %(now)s
      AND (d.lease_until IS NULL OR d.lease_until <= %(now)s OR ({GONE}))
      AND NOT EXISTS (
        SELECT 1 FROM deliveries e
        WHERE e.destination = d.destination AND e.ordering_key = d.ordering_key
          AND e.status = 'pending' AND e.id < d.id)
      AND {NOT_PAUSED}
    ORDER BY d.id LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), abandoned AS (
    INSERT INTO delivery_attempts (delivery_id, attempt, outcome, error, worker, at)
    SELECT id, attempts, 'abandoned', {ABANDONED}, lease_owner, %(now)s
    FROM next WHERE lease_owner IS NOT NULL
)
UPDATE deliveries d
SET lease_owner = %(owner)s, lease_until = %(lease_until)s, attempts = d.attempts + 1,
    lease_token = '{LIVE_TOKEN}' || md5(random()::text || clock_timestamp()::text || d.id::text)
FROM next, events e
WHERE d.id = next.id AND e.id = d.event_id
RETURNING d.id, d.event_id, d.destination, d.ordering_key, d.attempts, d.created_at, e.kind,
          e.body, d.lease_owner AS owner, d.lease_token AS token,
          next.lease_owner IS NOT NULL OR {WAS_ABANDONED} AS uncertain
"""
NEXT_DUE = ("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
            " AND next_attempt_at > %s")
# Every change to a claimed delivery holds only while the lease is still the caller's.
HELD = ("id = %(id)s AND lease_owner = %(owner)s AND lease_token = %(token)s"
        " AND status = 'pending'")


async def claim(conn: Connection, owner: str, now: float, limit: int,
                lease_until: float) -> list[ClaimedDelivery]:
    async with conn.transaction(), conn.cursor(row_factory=class_row(ClaimedDelivery)) as cursor:
        await cursor.execute(CLAIM, {"now": now, "limit": limit, "owner": owner,
                                     "lease_until": lease_until})
        return sorted(await cursor.fetchall(), key=lambda job: job.id)


# The leases named, and the deliveries taken behind each (take_queued): same destination and
# conversation, same owner and token. Renewed together, so a run goes on as long as its head.
HEARTBEAT = """
WITH held AS (
    UPDATE deliveries d SET lease_until = %(until)s
    FROM unnest(%(ids)s::bigint[], %(owners)s::text[], %(tokens)s::text[]) AS l(id, owner, token)
    WHERE d.id = l.id AND d.lease_owner = l.owner AND d.lease_token = l.token
      AND d.status = 'pending'
    RETURNING d.id, d.destination, d.ordering_key, d.lease_owner, d.lease_token
), taken AS (
    UPDATE deliveries t SET lease_until = %(until)s FROM held h
    WHERE t.destination = h.destination AND t.ordering_key = h.ordering_key
      AND t.lease_owner = h.lease_owner AND t.lease_token = h.lease_token
      AND t.status = 'pending' AND t.id <> h.id
)
SELECT id FROM held
"""


async def heartbeat(conn: Connection, leases: Sequence[Lease], until: float) -> set[int]:
    if not leases:
        return set()
    cursor = await conn.execute(HEARTBEAT, {
        "until": until, "ids": [lease.delivery_id for lease in leases],
        "owners": [lease.owner for lease in leases], "tokens": [lease.token for lease in leases]})
    return {int(row[0]) for row in await cursor.fetchall()}


async def finish(conn: Connection, lease: Lease, status: DeliveryStatus, now: float,
                 note: str | None, follow_ups: Sequence[FollowUp],
                 coalesced: Sequence[Lease] = ()) -> bool:
    """The outcome, and the same for `coalesced` (each if still held), in one transaction."""
    async with conn.transaction():
        if not await _finish_one(conn, lease, status, now, note, follow_ups):
            return False
        for taken in coalesced:
            await _finish_one(conn, taken, status, now, note, ())
    return True


async def _finish_one(conn: Connection, lease: Lease, status: DeliveryStatus, now: float,
                      note: str | None, follow_ups: Sequence[FollowUp]) -> bool:
    error = note if status == "failed" else None
    if not await _record_attempt(conn, lease, status, error, now):
        return False
    await conn.execute(
        "UPDATE deliveries SET status = %(status)s, finished_at = %(now)s, note = %(note)s,"
        " last_error = %(error)s, lease_owner = NULL, lease_until = NULL,"
        f" lease_token = NULL WHERE {HELD}",
        {**_lease(lease), "status": status, "now": now, "error": error,
         "note": None if error else note})
    for follow_up in follow_ups:
        await accept(conn, NewEvent(
            kind=follow_up.kind, body=follow_up.body,
            dedup_key=f"follow-up:{lease.delivery_id}", ordering_key=follow_up.ordering_key,
            destinations=follow_up.destinations), now, 0.0)
    return True


async def reschedule(conn: Connection, lease: Lease, at: float, error: str, now: float,
                     retry_kind: RetryKind | None = None) -> bool:
    async with conn.transaction():
        if not await _record_attempt(conn, lease, "retry", error, now):
            return False
        await conn.execute(
            "UPDATE deliveries SET next_attempt_at = %(at)s, last_error = %(error)s,"
            " retry_kind = %(kind)s, lease_owner = NULL, lease_until = NULL, lease_token = NULL"
            f" WHERE {HELD}", {**_lease(lease), "at": at, "error": error, "kind": retry_kind})
    return True


async def bring_forward(conn: Connection, destination: str, retry_kind: RetryKind,
                        now: float) -> int:
    # Only deliveries waiting for their retry, never one a worker holds: no lease is changed.
    cursor = await conn.execute(
        "UPDATE deliveries SET next_attempt_at = %(now)s WHERE status = 'pending'"
        " AND next_attempt_at > %(now)s AND destination = %(destination)s"
        " AND retry_kind = %(kind)s AND (lease_until IS NULL OR lease_until <= %(now)s)",
        {"now": now, "destination": destination, "kind": retry_kind})
    return cursor.rowcount


# Coalescing: the deliveries queued right behind a leased one share its lease (owner, token).
# FOR UPDATE: a claim or another take of the same rows waits, then sees them taken.
QUEUED_BEHIND = """
SELECT d.id, d.event_id, d.destination, d.ordering_key, d.attempts, d.created_at, e.kind,
       e.body, d.lease_owner, d.lease_token, d.lease_until
FROM deliveries h
JOIN deliveries d ON d.destination = h.destination AND d.ordering_key = h.ordering_key
    AND d.status = 'pending' AND d.id > h.id
JOIN events e ON e.id = d.event_id
WHERE h.id = %(id)s AND h.lease_owner = %(owner)s AND h.lease_token = %(token)s
  AND h.status = 'pending'
ORDER BY d.id LIMIT %(limit)s
FOR UPDATE OF h, d
"""


async def take_queued(conn: Connection, lease: Lease, kinds: frozenset[str], limit: int,
                      now: float) -> list[ClaimedDelivery]:
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(QUEUED_BEHIND, {**_lease(lease), "limit": limit})
        run = run_behind(await cursor.fetchall(), lease, kinds, now)
        new = newly_taken(run, lease)
        lost = [taken for taken, owner in new.items() if owner]
        if lost:
            await conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, error, worker, at)"
                f" SELECT id, attempts, 'abandoned', {ABANDONED}, lease_owner, %s"
                " FROM deliveries WHERE id = ANY(%s)", (now, lost))
        if new:
            await conn.execute(
                "UPDATE deliveries SET lease_owner = %(owner)s, lease_token = %(token)s,"
                " attempts = attempts + 1,"
                " lease_until = (SELECT lease_until FROM deliveries WHERE id = %(id)s)"
                " WHERE id = ANY(%(taken)s)", {**_lease(lease), "taken": list(new)})
        return [as_taken(row, lease, counted=row["id"] in new) for row in run]


async def _record_attempt(conn: Connection, lease: Lease, outcome: str, error: str | None,
                          now: float) -> bool:
    """The attempt's row, written only if the lease still holds; whether it did.

    FOR UPDATE: a claim taking the delivery over at this moment either waits for this
    transaction or has already moved the lease on, so exactly one of the two wins.
    """
    cursor = await conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, error, worker, at)"
        " SELECT id, attempts, %(outcome)s, %(error)s, lease_owner, %(now)s FROM deliveries"
        f" WHERE {HELD} FOR UPDATE",
        {**_lease(lease), "outcome": outcome, "error": error, "now": now})
    return cursor.rowcount == 1


async def release(conn: Connection, leases: Sequence[Lease]) -> int:
    released = 0
    async with conn.transaction():
        for lease in leases:
            cursor = await conn.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL,"
                f" lease_token = NULL, attempts = GREATEST(attempts - 1, 0) WHERE {HELD}",
                _lease(lease))
            released += cursor.rowcount
    return released


def _lease(lease: Lease) -> dict[str, object]:
    return {"id": lease.delivery_id, "owner": lease.owner, "token": lease.token}
