"""Wires settings, store, templates, destinations and worker into the running bridge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

import bridge.plugins  # noqa: F401  (registers the destinations)
from bridge.clock import Clock, SystemClock
from bridge.console.app import console_routes
from bridge.console.app import install as install_console
from bridge.destinations import (
    REGISTRY,
    background_jobs,
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
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.redact import Redactor
from bridge.reload import Parts, reloading
from bridge.retention import keep_pruning
from bridge.settings import Settings
from bridge.store import Store, open_store
from bridge.template_check import require_templates
from bridge.templating import Templates
from bridge.web import ENDPOINT_KINDS, Endpoint, SiteGPTReceiver, app_routes
from bridge.worker import Worker

log = logging.getLogger("bridge")
SLOW_TAKEOVER = 30.0


def build_parts(settings: Settings, clock: Clock, metrics: Metrics) -> Parts:
    """The templates and destinations of these settings, each with its own clients."""
    templates = templates_for(settings)
    shared = Shared(settings, clock, metrics)
    return Parts(settings, templates, build_destinations(settings, templates, shared), shared)


async def close_destinations(destinations: Iterable[Destination]) -> None:
    for destination in destinations:
        await destination.aclose()


async def _close_after(in_flight: list[asyncio.Task[None]],
                       destinations: Iterable[Destination]) -> None:
    """Close destinations replaced by a reload once the calls that use them have ended."""
    if in_flight:
        await asyncio.wait(in_flight)
    try:
        await close_destinations(destinations)
    except Exception:  # the new ones serve already: a client that closes badly is only noted
        log.exception("closing the destinations replaced by a settings change failed")


@dataclass
class Bridge:
    """A running bridge's parts, opened together and closed together.

    `settings`, `templates` and `destinations` change together when the settings file does
    (bridge.reload): whatever reads them reads them per call.
    """

    settings: Settings
    store: Store
    templates: Templates
    destinations: dict[str, Destination]
    clock: Clock
    worker: Worker
    metrics: Metrics = field(default_factory=Metrics)
    settings_path: Path | None = None  # the file serve and worker watch, if any
    _worker_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _retention_task: asyncio.Task[None] | None = field(default=None, repr=False)
    _on_change: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _retiring: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _listening: dict[str, asyncio.Task[None]] | None = field(default=None, repr=False)

    async def prepare(self, settings: Settings) -> Parts:
        """Build and check what these settings need, as at start-up; ConfigError if they fail."""
        parts = build_parts(settings, self.clock, self.metrics)
        try:
            require_templates(parts.templates, parts.destinations)
        except ConfigError:
            await close_destinations(parts.destinations.values())
            raise
        share_store(self.store, parts.shared)
        return parts

    def apply(self, parts: Parts, redact: Redactor) -> None:
        """Swap the new parts in at once, for the next call of the worker and the receivers.

        The old destinations are closed once the calls in flight on them have ended.
        """
        old, retired = self.settings, self.destinations
        self.settings, self.templates = parts.settings, parts.templates
        self.destinations = parts.destinations
        self.metrics.expect_destinations(list(parts.destinations))
        in_flight = self.worker.use(parts.destinations, parts.settings.delivery, redact)
        self._retiring = [task for task in self._retiring if not task.done()]
        self._retiring.append(asyncio.create_task(
            _close_after(in_flight, retired.values()), name="close-old-destinations"))
        for changed in self._on_change:
            changed()
        if self._listening is not None:
            self._stop_listening()
            self.start_listening()
        if old.store.retention_days != parts.settings.store.retention_days:
            self._restart_retention()

    def _restart_retention(self) -> None:
        if self._retention_task is not None:
            self._retention_task.cancel()
            self.start_retention()

    def on_change(self, changed: Callable[[], None]) -> None:
        """Call `changed` after each swap (the app rebuilds its routes)."""
        self._on_change.append(changed)

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

    def start_listening(self) -> None:
        """Run what the plugins listen to (Mattermost's WebSocket) with the current settings."""
        inbound = self.inbound()
        self._listening = {name: asyncio.create_task(_listen(name, job), name=f"listen-{name}")
                           for name, job in background_jobs(inbound).items()}

    def inbound(self) -> Inbound:
        """What the plugins' routes and listeners are built from, with the current settings:
        what they store wakes this bridge's worker."""
        return Inbound(self.settings, self.store, self.clock, self.worker.wake, self.metrics)

    def listeners(self) -> list[str]:
        """The plugins whose listener runs now (it may be reconnecting)."""
        return [name for name, task in (self._listening or {}).items() if not task.done()]

    def _stop_listening(self) -> list[asyncio.Task[None]]:
        stopping, self._listening = list((self._listening or {}).values()), None
        for task in stopping:
            task.cancel()
        return stopping

    def start_retention(self) -> None:
        retention = timedelta(days=self.settings.store.retention_days)
        self._retention_task = asyncio.create_task(
            keep_pruning(self.store, retention, self.clock), name="retention")

    async def close(self) -> None:
        await asyncio.gather(*self._stop_listening(), return_exceptions=True)
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        if self._worker_task is not None:
            await self.worker.stop()
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        await asyncio.gather(*self._retiring)
        await close_destinations(self.destinations.values())
        await self.store.close()


async def _listen(name: str, job: Awaitable[None]) -> None:
    """A plugin's listener; one that ends by an error is logged, never taking serve down."""
    try:
        await job
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s: its listener stopped", name)


def open_bridge(settings: Settings, clock: Clock | None = None,
                check_templates: bool = True, upgrade_store: bool = True) -> Bridge:
    """Build the destinations, check the templates, open the store; the worker is not started.

    Templates that fail to load or to render a bundled sample raise ConfigError here, so a
    broken template stops the bridge at start-up rather than failing the first real event.
    `check` passes upgrade_store=False: an older store is refused, not migrated by it.
    """
    clock = clock or SystemClock()
    metrics = with_plugin_metrics(Metrics(list(ENDPOINT_KINDS)))
    parts = build_parts(settings, clock, metrics)
    templates, destinations = parts.templates, parts.destinations
    metrics.expect_destinations(list(destinations))
    if check_templates:
        require_templates(templates, destinations)
    store = open_store(settings.store.url, settings.store.synchronous,
                       settings.store.commit_timeout_seconds, clock,
                       pool_size=settings.store.pool_size, upgrade=upgrade_store)
    share_store(store, parts.shared)
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
    """The ASGI app; its lifespan runs the worker (unless told not to) and closes the bridge.

    With a settings file to watch, it also applies changes to it while running: the routes
    are rebuilt from the new settings, and a request under way finishes on the old ones.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await open_store_now(bridge)
        announce(bridge)
        if run_worker:
            bridge.start_worker()
        bridge.start_retention()
        bridge.start_listening()
        try:
            async with reloading(bridge, "serve" if run_worker else "serve --no-worker"):
                yield
        finally:
            await bridge.close()

    app = Starlette(routes=_routes(bridge), lifespan=lifespan)
    bridge.on_change(lambda: setattr(app.router, "routes", _routes(bridge)))
    app.state.bridge = bridge
    install_console(app, bridge)
    return app


def _routes(bridge: Bridge) -> list[BaseRoute]:
    """SiteGPT's webhooks, the plugins' inbound routes, the probes, of the current settings."""
    settings = bridge.settings
    receiver = SiteGPTReceiver(
        store=bridge.store,
        clock=bridge.clock,
        max_body_bytes=settings.server.max_body_bytes,
        dedup_window=float(settings.store.dedup_window_seconds),
        on_accept=bridge.worker.wake,
        metrics=bridge.metrics,
    )
    token = settings.server.metrics_token
    metrics_token = token.get_secret_value().encode() if token is not None else None
    inbound = inbound_routes(bridge.inbound())
    return app_routes(receiver, bridge.endpoints(), [*inbound, *console_routes(bridge)],
                      metrics_token)
