"""Lead deliveries for the CRM tests: bundled sample leads, stored and claimed in a real store."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.clock import Clock
from bridge.destinations.base import Delivery
from bridge.event_rows import new_event
from bridge.events import LEAD, parse_event
from bridge.samples import load_sample
from bridge.store.sqlite import SQLiteStore


def lead_body(sample: str = "lead", **details: Any) -> dict[str, Any]:
    """A sample lead's body with some of its leadDetails replaced or added."""
    body = copy.deepcopy(load_sample(sample))
    body["data"]["leadDetails"].update(details)
    return body


@dataclass
class Deliveries:
    """Stores a lead body as SiteGPT's receiver would and claims it as the worker would."""

    store: SQLiteStore
    clock: Clock

    async def of(self, body: dict[str, Any]) -> Delivery:
        event = parse_event(LEAD, body)
        await self.store.accept(new_event(event, body, ["crm"]), self.clock.now(), 600.0)
        [claimed] = await self.store.claim("test", self.clock.now(), 1, 60.0)
        return Delivery(claimed, event, self.store, self.clock)

    async def taken_over(self, cut_off: Delivery) -> Delivery:
        """The same delivery, claimed again once the lease of its cut-off attempt ran out."""
        [claimed] = await self.store.claim("next", self.clock.now() + 60.0, 1, 60.0)
        assert claimed.id == cut_off.claimed.id and claimed.uncertain
        return Delivery(claimed, cut_off.event, self.store, self.clock)


@asynccontextmanager
async def open_deliveries(folder: Path, clock: Clock) -> AsyncIterator[Deliveries]:
    store = SQLiteStore(folder / "bridge.db")
    try:
        yield Deliveries(store, clock)
    finally:
        await store.close()
