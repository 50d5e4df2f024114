"""The Slack destination with a store and a worker, against the fake Slack: for Slack's tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.destinations.slack import SlackDestination
from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.store import open_store
from bridge.store.sqlite import SQLiteStore
from bridge.templating import Templates
from bridge.worker import Worker
from tests.clock import FakeClock
from tests.fake_slack import FakeSlack


@dataclass
class Harness:
    store: SQLiteStore
    slack: SlackDestination
    worker: Worker
    clock: FakeClock
    fake: FakeSlack

    async def accept(self, body: dict[str, Any]) -> int:
        event = parse_event(body["event"], body)
        accepted = await self.store.accept(new_event(event, body, ["slack"]), self.clock.now(), 600)
        return accepted.event_id

    async def statuses(self) -> list[tuple[str, str | None]]:
        rows = await self.store.deliveries(limit=1000)
        return [(row.status, row.last_error or row.note) for row in reversed(rows)]


@pytest.fixture(name="fake")
def fresh_fake_fixture() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture(name="harness")
async def harness_fixture(make_settings, fake, clock):
    built: list[Harness] = []

    async def build(extra: dict[str, Any] | None = None, **slack: Any) -> Harness:
        settings = make_settings({"slack": {
            "bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C_CONV",
            "leads_channel": "C_LEADS", "burst": 1000, "per_second": 1000.0,
            "escalation_mention": "<!subteam^S0123>", **slack}, **(extra or {})})
        store = open_store(settings.store.url)
        destination = SlackDestination(settings, Templates(), clock)
        worker = Worker(store, {"slack": destination}, settings.delivery, clock, random.Random(7))
        built.append(Harness(store, destination, worker, clock, fake))
        return built[-1]

    yield build
    for item in built:
        await item.slack.aclose()
        await item.store.close()


def message(thread: str, text: str, kind: str = "USER_MESSAGE", **data: Any) -> dict[str, Any]:
    fields = {"chatbotId": "chatbot_123", "threadId": thread, "messageType": kind,
              "question": text if kind != "AGENT_MESSAGE" else None,
              "answer": text if kind != "USER_MESSAGE" else None, **data}
    return {"event": "ADD_MESSAGE", "data": fields}
