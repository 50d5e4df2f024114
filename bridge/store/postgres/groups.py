"""Group commit for PostgreSQL: the accepts of one event loop turn share one transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from bridge.errors import StoreBusy, StoreError
from bridge.store.records import Accept, Acceptance

MAX_GROUP = 128
Commit = Callable[[Sequence[Accept]], Awaitable[list[Acceptance]]]


class AcceptGroups:
    """Collects the accepts made during one turn of the loop and commits them together.

    Each commit waits for the server to flush its WAL; a burst of webhooks then shares one
    flush instead of queueing for one each. A group that fails as a whole is tried again one
    event at a time, so that only the culprit fails. A caller that stops waiting (its
    deadline) does not stop the commit: its event is stored whole or not at all.
    """

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._waiting: list[tuple[Accept, asyncio.Future[Acceptance]]] = []
        self._running: set[asyncio.Task[None]] = set()

    def add(self, accept: Accept) -> asyncio.Future[Acceptance]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Acceptance] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._start)
        self._waiting.append((accept, future))
        return future

    async def drain(self) -> None:
        """Wait for the groups already started (the store is closing)."""
        while self._waiting or self._running:
            if self._waiting:
                self._start()
            await asyncio.gather(*self._running, return_exceptions=True)

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), MAX_GROUP):
            task = asyncio.create_task(self._settle(waiting[start:start + MAX_GROUP]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _settle(self, group: list[tuple[Accept, asyncio.Future[Acceptance]]]) -> None:
        try:
            outcomes = await self._commit([accept for accept, _ in group])
        except StoreBusy as exc:
            for _, future in group:
                _fail(future, exc)
            return
        except StoreError as exc:
            if len(group) == 1:
                _fail(group[0][1], exc)
                return
            for one in group:
                await self._settle([one])
            return
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


def _fail(future: asyncio.Future[Acceptance], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
        with contextlib.suppress(BaseException):
            future.exception()  # a caller past its deadline never reads it: not "never retrieved"
