"""Prometheus metrics: what came in, what went out, and what is still waiting, per bridge."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from bridge.store import QueueStats

T = TypeVar("T")
CONTENT_TYPE = CONTENT_TYPE_LATEST
# The *_created series would double every scrape and tell nothing that
# process_start_time_seconds does not.
disable_created_metrics()

WEBHOOK_OUTCOMES = ("accepted", "duplicate", "unauthorized", "invalid", "invalid_json",
                    "too_large", "disconnected", "not_configured", "unavailable")
DELIVERY_OUTCOMES = ("delivered", "skipped", "retry", "failed")
RECONCILED = {True: "yes", False: "no", None: "unknown"}
# From a webhook's acceptance to its delivery: most take well under a second, retries minutes,
# an outage hours (the worker gives up after [delivery] max_age, 24 h by default).
# The queue is read from the store at most this often: a flood of scrapes must not load the
# store that webhooks commit to. Prometheus scrapes every 15 s or more.
QUEUE_READ_INTERVAL = 1.0
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    """The bridge's counters, in a registry of its own so several bridges share one process."""

    def __init__(self, endpoints: Sequence[str] = (), destinations: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files, start time
        self.webhooks = Counter(
            "sitegpt_bridge_webhooks", "Webhook requests by endpoint and outcome.",
            ["endpoint", "outcome"], registry=self.registry)
        self.deliveries = Counter(
            "sitegpt_bridge_deliveries",
            "Delivery outcomes by destination (retry: another attempt is scheduled).",
            ["destination", "outcome"], registry=self.registry)
        self.attempts = Counter(
            "sitegpt_bridge_delivery_attempts", "Calls to a destination, successful or not.",
            ["destination"], registry=self.registry)
        self.errors = Counter(
            "sitegpt_bridge_destination_errors", "Failed destination calls by error code.",
            ["destination", "code"], registry=self.registry)
        self.latency = Histogram(
            "sitegpt_bridge_delivery_latency_seconds",
            "Time from a webhook's acceptance to its delivery.",
            ["destination"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge(
            "sitegpt_bridge_queue_deliveries", "Deliveries in the store by status.",
            ["status"], registry=self.registry)
        self.waiting = Gauge(
            "sitegpt_bridge_waiting_deliveries",
            "Deliveries still to be made, by destination (retries included).",
            ["destination"], registry=self.registry)
        self.reconciled_total = Counter(
            "sitegpt_bridge_reconciled",
            "Lookups of what a cut-off attempt sent, before sending it again, by what was found.",
            ["destination", "found"], registry=self.registry)
        self.oldest_pending = Gauge(
            "sitegpt_bridge_oldest_pending_age_seconds",
            "Age of the oldest delivery still pending (0 when none is).", registry=self.registry)
        self.settings_applied = Gauge(
            "sitegpt_bridge_settings_last_reload_successful",
            "1 when the settings file was applied at its last change, 0 when it was refused.",
            registry=self.registry)
        self.settings_applied.set(1)
        self.settings_loaded = Gauge(
            "sitegpt_bridge_settings_loaded_timestamp_seconds",
            "When the settings in use were loaded (Unix time).", registry=self.registry)
        self._seen_waiting: set[str] = set()
        self._owned: dict[str, Any] = {}
        self._queue_read_at: float | None = None
        self._oldest: float | None = None
        self._queue_lock = asyncio.Lock()
        for endpoint in endpoints:
            self.expect_webhooks(endpoint, WEBHOOK_OUTCOMES)
        self.expect_destinations(destinations)

    def expect_webhooks(self, endpoint: str, outcomes: Sequence[str]) -> None:
        """Start the endpoint's series at zero, so a rate() alert works before the first request."""
        for outcome in outcomes:
            self.webhooks.labels(endpoint, outcome)

    def expect_destinations(self, destinations: Sequence[str]) -> None:
        """Start their series at zero, so a rate() alert works before the first event."""
        self._seen_waiting |= set(destinations)
        for destination in destinations:
            self.attempts.labels(destination)
            self.latency.labels(destination)
            self.waiting.labels(destination)
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(destination, outcome)
            for found in RECONCILED.values():
                self.reconciled_total.labels(destination, found)

    def settings(self, applied: bool, loaded_at: float) -> None:
        """The settings file was applied (at `loaded_at`) or refused, the old ones kept."""
        self.settings_applied.set(1 if applied else 0)
        self.settings_loaded.set(loaded_at)

    def webhook(self, endpoint: str, outcome: str) -> None:
        self.webhooks.labels(endpoint, outcome).inc()

    def attempt(self, destination: str) -> None:
        self.attempts.labels(destination).inc()

    def delivery(self, destination: str, outcome: str, since_accepted: float) -> None:
        self.deliveries.labels(destination, outcome).inc()
        if outcome == "delivered":
            self.latency.labels(destination).observe(max(since_accepted, 0.0))

    def own(self, owner: str, make: Callable[[CollectorRegistry], T]) -> T:
        """The metrics a destination keeps in this registry, made on first use."""
        if owner not in self._owned:
            self._owned[owner] = make(self.registry)
        return cast(T, self._owned[owner])

    def reconciled(self, destination: str, found: bool | None) -> None:
        """A cut-off delivery was looked for: found (yes), not (no), or the lookup failed."""
        self.reconciled_total.labels(destination, RECONCILED[found]).inc()

    def destination_error(self, destination: str, error: BaseException) -> None:
        """Count by the error's `code` when the destination gave one, else by its class."""
        self.errors.labels(destination, str(getattr(error, "code", type(error).__name__))).inc()

    async def exposition(self, store: QueueStats, now: float) -> bytes:
        """The text a scrape returns, with the queue as the store had it within the last second."""
        async with self._queue_lock:
            read_at = self._queue_read_at
            if read_at is None or not 0 <= now - read_at < QUEUE_READ_INTERVAL:
                await self._read_queue(store)
                self._queue_read_at = now
        oldest = self._oldest
        self.oldest_pending.set(max(now - oldest, 0.0) if oldest is not None else 0.0)
        return generate_latest(self.registry)

    async def _read_queue(self, store: QueueStats) -> None:
        depth = await store.queue_depth()
        self._oldest = await store.oldest_pending()
        waiting = await store.waiting_by_destination()
        for status, count in depth.items():
            self.queue.labels(status).set(count)
        self._seen_waiting |= set(waiting)  # a destination drained since drops back to 0
        for destination in self._seen_waiting:
            self.waiting.labels(destination).set(waiting.get(destination, 0))


def bearer_matches(authorization: str | None, token: bytes) -> bool:
    """Whether an Authorization header carries `Bearer <token>`, compared in constant time."""
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token)
