"""Wires settings, store, templates, destinations and worker into the running bridge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

from starlette.applications import Starlette

import bridge.plugins  # noqa: F401  (registers the destinations)
from bridge.clock import Clock, SystemClock
from bridge.console.app import console_routes
from bridge.console.app import install as install_console
from bridge.destinations import (
    REGISTRY,
    build_destinations,
    destinations_for,
    inbound_routes,
    status_lines,
    templates_for,
    with_plugin_metrics,
)
from bridge.destinations.base import Destination
from bridge.destinations.plugin import Inbound
from bridge.destinations.shared import Shared
from bridge.metrics import Metrics
from bridge.redact import Redactor
from bridge.retention import keep_pruning
from bridge.settings import Settings
from bridge.store import Store, open_store
from bridge.template_check import require_templates
from bridge.templating import Templates
from bridge.web import ENDPOINT_KINDS, Endpoint, SiteGPTReceiver, build_app
from bridge.worker import Worker

log = logging.getLogger("bridge")
SLOW_TAKEOVER = 30.0


@dataclass
class Bridge:
    """A running bridge's parts, opened together and closed together."""

    settings: Settings
    store: Store
    templates: Templates
    destinations: dict[str, Destination]
    clock: Clock
    worker: Worker
    metrics: Metrics = field(default_factory=Metrics)
    _worker_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _retention_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def endpoints(self) -> list[Endpoint]:
        hooks = self.settings.webhooks
        return [
            Endpoint(
                name=name,
                kind=kind,
                tokens=[token.get_secret_value().encode() for token in getattr(hooks, name).tokens],
                destinations=destinations_for(kind, self.destinations),
            )
            for name, kind in ENDPOINT_KINDS.items()
        ]

    def start_worker(self) -> None:
        self._worker_task = asyncio.create_task(self.worker.run(), name="worker")
        # A shared store (PostgreSQL) also tells this worker of work other replicas stored.
        self.store.on_new_work(self.worker.wake)

    def start_retention(self) -> None:
        retention = timedelta(days=self.settings.store.retention_days)
        self._retention_task = asyncio.create_task(
            keep_pruning(self.store, retention, self.clock), name="retention")

    async def close(self) -> None:
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        if self._worker_task is not None:
            await self.worker.stop()
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        for destination in self.destinations.values():
            await destination.aclose()
        await self.store.close()


def open_bridge(settings: Settings, clock: Clock | None = None,
                check_templates: bool = True, upgrade_store: bool = True) -> Bridge:
    """Build the destinations, check the templates, open the store; the worker is not started.

    Templates that fail to load or to render a bundled sample raise ConfigError here, so a
    broken template stops the bridge at start-up rather than failing the first real event.
    `check` passes upgrade_store=False: an older store is refused, not migrated by it.
    """
    clock = clock or SystemClock()
    templates = templates_for(settings)
    metrics = with_plugin_metrics(Metrics(list(ENDPOINT_KINDS)))
    shared = Shared(settings, clock, metrics)
    destinations = build_destinations(settings, templates, shared)
    metrics.expect_destinations(list(destinations))
    if check_templates:
        require_templates(templates, destinations)
    store = open_store(settings.store.url, settings.store.synchronous,
                       settings.store.commit_timeout_seconds, clock,
                       pool_size=settings.store.pool_size, upgrade=upgrade_store)
    share_store(store, shared)
    worker = Worker(store, destinations, settings.delivery, clock, metrics=metrics,
                    redact=Redactor.for_settings(settings))
    return Bridge(settings, store, templates, destinations, clock, worker, metrics)


def share_store(store: Store, shared: Shared) -> None:
    """A store shared by replicas (PostgreSQL) also keeps what the destinations share (a pace)."""
    budgets = store.shared_pacing()
    if budgets is not None:
        shared.store_is_shared(budgets)


async def open_store_now(bridge: Bridge) -> None:
    """Connect and migrate before serving, so a store that cannot open stops the start-up."""
    await bridge.store.open()  # SQLite opened in open_store(); PostgreSQL opens in this loop
    info = await bridge.store.info()
    log.info("store: %s at %s, schema version %d", info.backend, info.location,
             info.schema_version)


def announce(bridge: Bridge) -> None:
    """Say at start-up what is on, what is off, and what is unsafe."""
    settings = bridge.settings
    for name, plugin in REGISTRY.items():
        state = "off" if name not in bridge.destinations else plugin.state(settings)
        log.info("destination %s: %s", name, state)
    for line in status_lines(settings):
        log.info("%s", line)
    slow = slow_lease(settings)
    if slow is not None:
        log.warning("%s", slow)
    for endpoint in bridge.endpoints():
        if not endpoint.tokens:
            log.warning("webhook %s has no token: it answers 503 until one is set", endpoint.name)
    for name in settings.example_tokens_in_use():
        log.warning(
            "UNSAFE: webhooks.%s still uses the example token from settings.example.toml; "
            "set your own before exposing the bridge", name)


def slow_lease(settings: Settings) -> str | None:
    """Why a long `[delivery] lease` delays recovery from a hung worker; for logs and check."""
    lease = settings.delivery.lease.total_seconds()
    if lease <= SLOW_TAKEOVER:
        return None
    # The first release's example file set 120s, when a lease had to outlast the slowest call.
    return (f"delivery.lease is {lease:g}s: a worker that hangs (its process alive but stuck)"
            " holds its conversations that long before another takes over; a crashed one is"
            " taken over at once. Live workers renew their leases, so the default 15s is safe"
            " however slow a destination is: remove `lease` from [delivery] to use it")


def create_app(bridge: Bridge, run_worker: bool = True) -> Starlette:
    """The ASGI app; its lifespan runs the worker (unless told not to) and closes the bridge."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await open_store_now(bridge)
        announce(bridge)
        if run_worker:
            bridge.start_worker()
        bridge.start_retention()
        try:
            yield
        finally:
            await bridge.close()

    receiver = SiteGPTReceiver(
        store=bridge.store,
        clock=bridge.clock,
        max_body_bytes=bridge.settings.server.max_body_bytes,
        dedup_window=float(bridge.settings.store.dedup_window_seconds),
        on_accept=bridge.worker.wake,
        metrics=bridge.metrics,
    )
    token = bridge.settings.server.metrics_token
    metrics_token = token.get_secret_value().encode() if token is not None else None
    inbound = inbound_routes(Inbound(bridge.settings, bridge.store, bridge.clock,
                                     bridge.worker.wake, bridge.metrics))
    app = build_app(receiver, bridge.endpoints(), lifespan,
                    [*inbound, *console_routes(bridge)], metrics_token)
    app.state.bridge = bridge
    install_console(app, bridge)
    return app
