"""Settings and templates that apply while running: watch the files, check a change, swap it in.

`serve` and `worker` watch their settings file and the user's templates folder, and reload on
SIGHUP too. A change is checked as at start-up (load_settings, then the template check over
the samples); if it passes, the new settings, templates and destinations replace the old at
once (calls in flight finish on the old ones), else the bridge keeps what it runs on and logs
why. Settings read only when the server binds or the store opens wait for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from watchfiles import Change, awatch

from bridge.clock import Clock
from bridge.config import load_settings
from bridge.destinations.base import Destination
from bridge.destinations.shared import Shared
from bridge.errors import ConfigError, StoreError
from bridge.fingerprint import differing, fingerprint, section_hashes
from bridge.metrics import Metrics
from bridge.redact import RedactingFilter, Redactor, secrets_of
from bridge.settings import Settings
from bridge.store import SettingsInUse, SettingsRecords
from bridge.templating import Templates

log = logging.getLogger("bridge.reload")
# Seconds after the templates watch moves to a new folder before the folder is read once more:
# the watch takes a moment to be in place, and an edit made meanwhile would go unseen.
WATCH_SETTLE = 0.5
# Read once, when the server binds its port or the store opens: a change waits for a restart.
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "max_header_bytes", "request_timeout", "forwarded_allow_ips"),
    "store": ("url", "synchronous", "commit_timeout_seconds", "pool_size"),
    "log": ("format",),
}


@dataclass(frozen=True)
class Parts:
    """What a change of settings replaces: settings, and the templates and destinations of them."""

    settings: Settings
    templates: Templates
    destinations: dict[str, Destination]
    shared: Shared


class Bridge(Protocol):
    """What reloading needs of the running bridge (bridge.app.Bridge)."""

    settings: Settings
    settings_path: Path | None
    clock: Clock
    metrics: Metrics

    @property
    def store(self) -> SettingsRecords: ...

    async def prepare(self, settings: Settings) -> Parts:
        """Build and check what these settings need; ConfigError if they fail."""
        ...

    def apply(self, parts: Parts, redact: Redactor) -> None:
        """Swap the parts in at once."""
        ...


@dataclass(frozen=True)
class Watch:
    """How quickly a change is noticed: watchfiles' debounce and step, in milliseconds."""

    # A save is often several writes (truncate, write, rename): a batch of changes ends after
    # `step_ms` without a new one, or at `debounce_ms`, and the file is read once after it.
    debounce_ms: int = 300
    step_ms: int = 50


def process_id() -> str:
    """This process among every replica's: the host and the pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(exc: ConfigError) -> str:
    """The error and its problems on one line, for the log and the store."""
    problems = [] if exc.problems == [str(exc)] else exc.problems
    return "; ".join([str(exc), *problems])


def keep_restart_only(running: Settings, wanted: Settings,
                      restart_only: dict[str, tuple[str, ...]] = RESTART_ONLY,
                      ) -> tuple[Settings, list[str]]:
    """`wanted` with the settings that cannot change live kept as running; those, named."""
    kept: dict[str, BaseModel] = {}
    pending: list[str] = []
    for section, keys in restart_only.items():
        old, new = getattr(running, section), getattr(wanted, section)
        changed = [key for key in keys if getattr(old, key) != getattr(new, key)]
        if changed:
            kept[section] = new.model_copy(update={key: getattr(old, key) for key in changed})
            pending += [f"{section}.{key}" for key in changed]
    return wanted.model_copy(update=kept), pending


class Reloader:
    """Reloads one process's settings when its file or templates change, or on SIGHUP."""

    def __init__(self, bridge: Bridge, path: Path, role: str, watch: Watch = Watch()) -> None:
        self.bridge, self.path, self.role, self.watch = bridge, path, role, watch
        self.hashes = section_hashes(bridge.settings)
        self.loaded_at = bridge.clock.now()
        self.rejected: str | None = None
        self.rejected_at: float | None = None
        self._restart_pending: list[str] = []
        self._secrets = set(secrets_of(bridge.settings))
        self._wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._templates_moved = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._record()
        self._tasks = [asyncio.create_task(self._reload_when_asked(), name="reload"),
                       asyncio.create_task(_watching(self._watch_settings()), name="watch"),
                       asyncio.create_task(_watching(self._watch_templates()), name="watch")]
        if _main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)

    async def stop(self) -> None:
        if _main_thread():
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self._stopping.set()
        self._templates_moved.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self.bridge.store.forget_settings(process_id())

    def _hangup(self) -> None:
        log.info("SIGHUP: reading %s and the templates again", self.path)
        self.request()

    def request(self) -> None:
        """Read the settings again soon (SIGHUP, or a file changed)."""
        self._wanted.set()

    async def reload(self) -> bool:
        """Apply the settings file as it is now, if it passes the start-up checks."""
        try:
            wanted = load_settings(str(self.path))
        except ConfigError as exc:
            await self._refuse(exc)
            return False
        settings, pending = keep_restart_only(self.bridge.settings, wanted, self._restart_only())
        self._say_restart(pending)
        hashes = section_hashes(settings)
        if changed := differing(self.hashes, hashes):
            try:
                await self._apply(settings, hashes, changed)
            except ConfigError as exc:
                await self._refuse(exc)
                return False
        if changed or self.rejected:
            self.rejected = self.rejected_at = None
            await self._record()
        return True

    async def _apply(self, settings: Settings, hashes: dict[str, str], changed: list[str]) -> None:
        started = time.perf_counter()
        parts = await self.bridge.prepare(settings)
        self._secrets |= set(secrets_of(settings))
        self.bridge.apply(parts, self._redact())
        _log_with(settings, self._redact())
        log.info("settings reloaded from %s: %s changed (checked and applied in %.2f s)",
                 self.path, ", ".join(changed), time.perf_counter() - started)
        if self.hashes.get("templates") != hashes.get("templates"):  # a new [templates] dir
            self._templates_moved.set()
        self.hashes, self.loaded_at = hashes, self.bridge.clock.now()

    def _restart_only(self) -> dict[str, tuple[str, ...]]:
        """A worker binds no port: its [server] keys change freely."""
        return {section: keys for section, keys in RESTART_ONLY.items()
                if section != "server" or self.role != "worker"}

    def _redact(self) -> Redactor:
        """Masks every secret this process has known: a replaced token stays secret."""
        return Redactor(self._secrets)

    async def _refuse(self, exc: ConfigError) -> None:
        reason = self._redact()(one_line(exc))  # it is kept in the store too
        if reason != self.rejected:  # one error per bad edit, however often it is read
            log.error("settings not applied, the bridge keeps running on those it has: %s",
                      reason, extra={"outcome": "rejected"})
        self.rejected, self.rejected_at = reason, self.bridge.clock.now()
        await self._record()

    def _say_restart(self, pending: list[str]) -> None:
        if pending and pending != self._restart_pending:
            log.warning("restart to apply: %s (kept as the bridge started with; the rest of %s"
                        " applies now)", ", ".join(pending), self.path)
        self._restart_pending = pending

    async def _record(self) -> None:
        self.bridge.metrics.settings(self.rejected is None, self.loaded_at)
        in_use = SettingsInUse(process_id(), self.role, fingerprint(self.hashes), self.loaded_at,
                               self.hashes, self.rejected, self.rejected_at)
        try:
            await self.bridge.store.record_settings(in_use)
        except StoreError as exc:
            log.warning("could not record the settings in use in the store: %s", exc)

    async def _reload_when_asked(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.reload()
            except Exception:  # a bug here must not stop later reloads, nor the bridge
                log.exception("reloading the settings failed; the bridge keeps those it has")

    async def _watch_settings(self) -> None:
        # Folders, not the file: editors and Kubernetes replace a file rather than write it,
        # and a symlinked file changes where it points to.
        folders = {self.path.parent.resolve(), self.path.resolve().parent}
        async for _ in awatch(*folders, watch_filter=self._is_settings_file, recursive=False,
                              debounce=self.watch.debounce_ms, step=self.watch.step_ms,
                              stop_event=self._stopping):
            self.request()

    def _is_settings_file(self, change: Change, path: str) -> bool:
        names = {self.path.name, self.path.resolve().name}
        return Path(path).name in names or self.path.is_symlink()

    async def _watch_templates(self) -> None:
        moved = False
        while not self._stopping.is_set():
            self._templates_moved.clear()
            folder = self.bridge.settings.templates.dir
            if folder is None or not folder.is_dir():
                await self._templates_moved.wait()
                moved = True
                continue
            if moved:  # an edit made while the watch moved to the new folder is read once here
                asyncio.get_running_loop().call_later(WATCH_SETTLE, self.request)
            async for _ in awatch(folder, debounce=self.watch.debounce_ms,
                                  step=self.watch.step_ms, stop_event=self._templates_moved):
                self.request()
            moved = True


async def _watching(watch: Coroutine[Any, Any, None]) -> None:
    try:
        await watch
    except (OSError, RuntimeError) as exc:  # a folder gone or unreadable: SIGHUP still works
        log.warning("cannot watch the settings for changes any more: %s; send SIGHUP after an"
                    " edit, or restart", exc)


def _main_thread() -> bool:
    """Signal handlers can be set from the main thread only (a test may serve in another)."""
    return threading.current_thread() is threading.main_thread()


def _log_with(settings: Settings, redact: Redactor) -> None:
    """The new log level, and secrets masked in the log, old and new alike."""
    root = logging.getLogger()
    root.setLevel(settings.log.level)
    for handler in root.handlers:
        for found in handler.filters:
            if isinstance(found, RedactingFilter):
                found.redact = redact


@contextlib.asynccontextmanager
async def reloading(bridge: Bridge, role: str, watch: Watch = Watch()) -> AsyncIterator[None]:
    """Apply changes to the bridge's settings file while the block runs, if it has one."""
    if bridge.settings_path is None:
        yield
        return
    reloader = Reloader(bridge, bridge.settings_path, role, watch)
    await reloader.start()
    try:
        yield
    finally:
        await reloader.stop()
