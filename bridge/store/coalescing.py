"""Which queued deliveries go along with a leased one: the same rule for every backend."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bridge.store.records import ClaimedDelivery, Lease

Row = Mapping[str, Any]  # a row of a backend's QUEUED_BEHIND query, by column name


def run_behind(rows: Iterable[Row], lease: Lease, kinds: frozenset[str],
               now: float) -> list[Row]:
    """The rows right behind the head, up to one of another kind or one held elsewhere."""
    run: list[Row] = []
    for row in rows:
        ours = (row["lease_owner"], row["lease_token"]) == (lease.owner, lease.token)
        elsewhere = row["lease_owner"] is not None and not ours and (
            row["lease_until"] or 0.0) > now
        if row["kind"] not in kinds or elsewhere:
            break
        run.append(row)
    return run


def newly_taken(run: Sequence[Row], lease: Lease) -> dict[int, str | None]:
    """Those of the run not yet under `lease`, with the owner they had (whose lease ran out)."""
    return {row["id"]: row["lease_owner"] for row in run if row["lease_token"] != lease.token}


def as_taken(row: Row, lease: Lease, counted: bool) -> ClaimedDelivery:
    """A row of the run as it is now: under `lease`, its attempt counted once."""
    return ClaimedDelivery(
        id=row["id"], event_id=row["event_id"], destination=row["destination"],
        ordering_key=row["ordering_key"], attempts=row["attempts"] + counted,
        created_at=row["created_at"], kind=row["kind"], body=row["body"], owner=lease.owner,
        token=lease.token)
