"""The backends the store contract runs against: add one here and tests/test_store_contract.py
runs every test of the contract against it too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.clock import Clock
from bridge.store import Store, open_store

Opener = Callable[[Path, Clock], Awaitable[Store]]


async def _sqlite(tmp_path: Path, clock: Clock) -> Store:
    return open_store(f"sqlite:///{tmp_path}/data/bridge.db", "NORMAL", 2.0, clock)


BACKENDS: dict[str, Opener] = {"sqlite": _sqlite}
