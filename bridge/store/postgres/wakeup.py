"""LISTEN/NOTIFY: new work stored by any replica wakes the workers of every replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from bridge.store.masking import scrub

log = logging.getLogger("bridge.store")
CHANNEL = "bridge_work"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
RECONNECT_AFTER = (0.5, 1.0, 2.0, 5.0)


class WakeUps:
    """One connection that LISTENs and calls `wake` for every notification, reconnecting.

    A notification sent while the connection is down is lost, so every (re)connection wakes
    the worker too: it then looks at the queue itself, as its poll would.
    """

    def __init__(self, url: str, wake: Callable[[], None]) -> None:
        self.url = url
        self.wake = wake
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-wake-ups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
                reason = "the server ended it"
            except (psycopg.Error, OSError) as exc:
                reason = scrub(str(exc), self.url)
            if self.listening.is_set():  # it was up: start the backoff again
                failures = 0
            self.listening.clear()
            delay = RECONNECT_AFTER[min(failures, len(RECONNECT_AFTER) - 1)]
            failures += 1
            log.warning("store: lost the wake-up connection, reconnecting in %g s: %s",
                        delay, reason)
            await asyncio.sleep(delay)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            self.wake()
            async for _ in conn.notifies():
                self.wake()
