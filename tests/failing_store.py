"""A real store whose writes fail on demand, as on a full disk or a store out of reach."""

from __future__ import annotations

from typing import Any

from bridge.errors import StoreError
from bridge.store import Store

WRITES = frozenset({"finish", "reschedule", "release", "save_link", "bring_forward"})


class FullDisk:
    """Wraps a store: while `full`, every write a worker makes after a call raises StoreError.

    Claims and reads still go through (SQLite reads on a full disk), so a test can see the
    delivery handed out again once the store recovers.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.full = False
        self.refused: list[str] = []  # the writes that failed, in order

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name not in WRITES:
            return attribute

        async def write(*args: Any, **kwargs: Any) -> Any:
            if self.full:
                self.refused.append(name)
                raise StoreError("sqlite: database or disk is full")
            return await attribute(*args, **kwargs)

        return write
