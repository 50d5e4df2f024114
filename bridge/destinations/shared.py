"""What the destinations of one bridge share: the clock, the metrics, one of each client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from bridge.clock import Clock, SystemClock
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store.protocols import ChannelBudgets

T = TypeVar("T")
StoreUse = Callable[[ChannelBudgets], None]


@dataclass
class Shared:
    """Built once per bridge and handed to every destination factory."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    metrics: Metrics | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _store_uses: list[StoreUse] = field(default_factory=list, repr=False)

    def one(self, name: str, make: Callable[[], T]) -> T:
        """The bridge's one client `name` (Slack's workspace: one budget per channel for all)."""
        if name not in self._clients:
            self._clients[name] = make()
        return cast(T, self._clients[name])

    def when_store_is_shared(self, use: StoreUse) -> None:
        """Call `use(store)` once the bridge's store turns out to be shared by replicas."""
        self._store_uses.append(use)

    def store_is_shared(self, budgets: ChannelBudgets) -> None:
        """The store is shared by replicas (PostgreSQL): what waited for it may use it now."""
        for use in self._store_uses:
            use(budgets)
