"""The backends the store contract runs against: add one here and tests/test_store_contract.py
runs every test of the contract against it too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.clock import Clock
from bridge.store import Store, open_store
from tests.postgres import database_for_this_run

Opener = Callable[[Path, Clock], Awaitable[Store]]


async def _sqlite(tmp_path: Path, clock: Clock) -> Store:
    return open_store(f"sqlite:///{tmp_path}/data/bridge.db", "NORMAL", 2.0, clock)


async def _postgresql(tmp_path: Path, clock: Clock) -> Store:
    """A fresh database on the test server (skipped without one, failed with CI=true)."""
    store = open_store(database_for_this_run(), commit_timeout=2.0, clock=clock, pool_size=4)
    await store.open()  # type: ignore[attr-defined]
    return store


BACKENDS: dict[str, Opener] = {"sqlite": _sqlite, "postgresql": _postgresql}


async def _sqlite_again(store: Store, clock: Clock) -> Store:
    return open_store(f"sqlite:///{store.path}", "NORMAL", 2.0, clock)  # type: ignore[attr-defined]


async def _postgresql_again(store: Store, clock: Clock) -> Store:
    again = open_store(store.url, commit_timeout=2.0, clock=clock, pool_size=4)  # type: ignore[attr-defined]
    await again.open()
    return again


# The same store opened again, as another process (a restarted bridge, a replica) opens it.
AGAIN: dict[str, Callable[[Store, Clock], Awaitable[Store]]] = {
    "sqlite": _sqlite_again, "postgresql": _postgresql_again}
