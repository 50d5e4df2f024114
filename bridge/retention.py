"""Retention: finished events older than `[store] retention_days` are pruned in the background.

An event goes once none of its deliveries is pending and the last one finished before the
cutoff: delivered, skipped and failed alike, so a failure stays in the store for inspection
(and a retry) for the whole retention period after it happened. Its deliveries, their attempt
history and its transcript messages go with it. Conversations and each destination's link to
them (the Slack thread, the Jira ticket) are kept, so a visitor who comes back months later
lands in the same thread. Expired dedup rows go too.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from bridge.clock import Clock
from bridge.errors import StoreError
from bridge.store import Housekeeping, Pruned

log = logging.getLogger("bridge.retention")
PRUNE_EVERY = 3600.0
# Each batch is one short transaction, so webhooks keep committing between batches.
BATCH = 500


async def prune_expired(store: Housekeeping, retention: timedelta, now: float,
                        batch: int = BATCH) -> Pruned:
    """Prune everything older than `retention`, a batch at a time."""
    cutoff = now - retention.total_seconds()
    total = Pruned()
    while True:
        pruned = await store.prune(cutoff, now, batch)
        total += pruned
        if pruned.events < batch and pruned.dedup < batch:
            return total


async def keep_pruning(store: Housekeeping, retention: timedelta, clock: Clock,
                       every: float = PRUNE_EVERY) -> None:
    """Prune now, then every `every` seconds, until cancelled."""
    while True:
        await _prune_once(store, retention, clock)
        await asyncio.sleep(every)


async def _prune_once(store: Housekeeping, retention: timedelta, clock: Clock) -> None:
    try:
        pruned = await prune_expired(store, retention, clock.now())
    except StoreError as exc:
        log.warning("retention: could not prune, trying again later: %s", exc)
        return
    except Exception:  # a bug here must not stop retention for good
        log.exception("retention: unexpected error while pruning")
        return
    if pruned != Pruned():
        log.info(
            "retention: pruned %d events, %d deliveries, %d messages, %d dedup rows",
            pruned.events, pruned.deliveries, pruned.messages, pruned.dedup,
            extra={"outcome": "pruned", "events": pruned.events,
                   "deliveries": pruned.deliveries, "messages": pruned.messages,
                   "dedup": pruned.dedup})
