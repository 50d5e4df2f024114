"""Logging of refused requests that a flood cannot turn into a flood of log lines."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field

from bridge.clock import Clock

INTERVAL = 10.0  # seconds: at most two lines per kind of rejection in this time

Kind = tuple[str, int, str]  # where (endpoint), status, reason


@dataclass
class _Window:
    started: float
    level: int
    suppressed: int = 0


@dataclass(eq=False)
class RejectionLog:
    """The first rejection of each kind in an interval is logged in full; the rest are counted
    and summed up in one line when the interval ends ("8,812 more in the last 10 s").

    Metrics count every rejection; only the log is thinned.
    """

    log: logging.Logger
    clock: Clock
    interval: float = INTERVAL
    _windows: dict[Kind, _Window] = field(default_factory=dict)
    _summary_due: bool = False

    def __post_init__(self) -> None:
        _OPEN.add(self)

    def rejected(self, where: str, status: int, reason: str, message: str,
                 extra: dict[str, object] | None = None, level: int = logging.WARNING) -> None:
        self.flush()
        kind = (where, status, reason)
        window = self._windows.get(kind)
        if window is None:
            self._windows[kind] = _Window(self.clock.now(), level)
            self.log.log(level, "%s rejected (%d %s): %s", where, status, reason, message,
                         extra=extra)
            return
        window.suppressed += 1
        self._schedule_summary()

    def flush(self, everything: bool = False) -> None:
        """Sum up every interval that has ended (all of them with `everything`)."""
        now = self.clock.now()
        for kind, window in list(self._windows.items()):
            if everything or now - window.started >= self.interval:
                del self._windows[kind]
                if window.suppressed:
                    self._summarize(kind, window, now)

    def _summarize(self, kind: Kind, window: _Window, now: float) -> None:
        where, status, reason = kind
        seconds = max(min(now - window.started, self.interval), 0.0)
        self.log.log(window.level, "%s rejected (%d %s) %s more times in the last %.0f s", where,
                     status, reason, f"{window.suppressed:,}", seconds,
                     extra={"outcome": reason, "count": window.suppressed})

    def _schedule_summary(self) -> None:
        # Without a later rejection to trigger it, the summary still comes at the interval's end.
        if self._summary_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._summary_due = True
        loop.call_later(self.interval, self._summary_timer)

    def _summary_timer(self) -> None:
        self._summary_due = False
        self.flush()
        if any(window.suppressed for window in self._windows.values()):
            self._schedule_summary()


_OPEN: weakref.WeakSet[RejectionLog] = weakref.WeakSet()


def sum_up_all() -> None:
    """At a stop, sum up every interval still open: their timers stopped with the server."""
    for rejections in list(_OPEN):
        rejections.flush(everything=True)
