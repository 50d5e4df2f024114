"""A clock for tests that moves only when told to."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when told to; sleep() advances it instantly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.current = start

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += seconds

    def advance(self, seconds: float) -> None:
        self.current += seconds
