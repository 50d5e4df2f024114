"""The bridge's app with a fake Mattermost behind it: root posts with buttons, presses sent back."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bridge.app import Bridge, create_app, open_bridge
from bridge.destinations.base import Delivery, Outcome
from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.store import DeliveryRow
from tests.clock import FakeClock
from tests.fake_mattermost import TOKEN, FakeMattermost
from tests.settings_files import TOKENS, deep_merge

ACTIONS_URL = "https://bridge.example.com/"
ACTIONS = "https://bridge.example.com/mattermost/actions"
CHATBOT = "chatbot_123"


def signature(action: str, conversation: str, token: str = TOKEN) -> str:
    """The signature a button carries, worked out here as the docs describe it."""
    key = hmac.new(token.encode(), b"sitegpt-bridge mattermost action", hashlib.sha256).digest()
    return hmac.new(key, f"{action}\n{conversation}".encode(), hashlib.sha256).hexdigest()


@dataclass
class MattermostSite:
    """The bridge's app, its store and worker, and the fake Mattermost it posts to."""

    bridge: Bridge
    client: httpx.AsyncClient
    fake: FakeMattermost
    clock: FakeClock

    async def conversation(self, thread: str = "thread_A", question: str | None = None) -> str:
        """A visitor writes; the bridge starts the thread in Mattermost (the first time). Its
        root post's id."""
        body = {"event": "ADD_MESSAGE", "data": {
            "chatbotId": CHATBOT, "threadId": thread, "messageType": "USER_MESSAGE",
            "question": question or f"hello from {thread}"}}
        answer = await self.client.post("/webhooks/messages", json=body,
                                        headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
        assert answer.status_code == 200
        await self.bridge.worker.drain()
        state = await self.bridge.store.link_state(CHATBOT, thread, "mattermost")
        assert state and state["root_id"]
        return str(state["root_id"])

    def pressed(self, root_id: str, action: str, user_id: str = "u_ben",
                user_name: str = "ben") -> dict[str, Any]:
        """What Mattermost posts to the bridge when a member presses a button on the root."""
        url, body = self.fake.press(root_id, action, user_id, user_name)
        assert url == ACTIONS
        return body

    async def send(self, body: Any) -> httpx.Response:
        return await self.post(json.dumps(body).encode())

    async def post(self, raw: bytes) -> httpx.Response:
        return await self.client.post("/mattermost/actions", content=raw,
                                      headers={"Content-Type": "application/json"})

    async def press(self, root_id: str, action: str, user_id: str = "u_ben",
                    user_name: str = "ben") -> httpx.Response:
        return await self.send(self.pressed(root_id, action, user_id, user_name))

    async def store(self, body: dict[str, Any]) -> int:
        """An event made by the bridge itself, addressed to Mattermost alone."""
        event = parse_event(body["event"], body)
        accepted = await self.bridge.store.accept(new_event(event, body, ["mattermost"]),
                                                  self.clock.now(), 600)
        return accepted.event_id

    async def deliver_next(self) -> Outcome:
        """Claim the next delivery and hand it to Mattermost's destination, as the worker
        would, to see what it answers (the worker keeps follow-ups only for their takers)."""
        [job] = await self.bridge.store.claim("test", self.clock.now(), 1, 60)
        delivery = Delivery(job, parse_event(job.kind, job.payload), self.bridge.store,
                            self.clock)
        outcome = await self.bridge.destinations["mattermost"].deliver(delivery)
        await self.bridge.store.finish(job.lease, "delivered", self.clock.now(), "test")
        return outcome

    async def rows(self, *kinds: str) -> list[DeliveryRow]:
        """Every delivery of events of these kinds, oldest first."""
        rows = await self.bridge.store.deliveries(limit=1000)
        return [row for row in reversed(rows) if row.kind in kinds]

    async def bodies(self, *kinds: str) -> list[dict[str, Any]]:
        """The stored events of these kinds, each once, oldest first."""
        ids = dict.fromkeys(row.event_id for row in await self.rows(*kinds))
        return [json.loads(await self.bridge.store.event_body(event_id) or "null")
                for event_id in ids]

    def thread(self, root_id: str) -> list[str]:
        return [post["message"] for post in self.fake.thread(root_id)]

    def status(self, root_id: str) -> str:
        """The root post's second line: where the conversation stands."""
        return str(self.fake.root(root_id)["message"].split("\n")[1])


def mattermost_section(fake: FakeMattermost, **changes: Any) -> dict[str, Any]:
    """[mattermost] with buttons; a change to None leaves the key out."""
    section = {"url": fake.url, "bot_token": TOKEN, "channel": "mm_conv",
               "actions_url": ACTIONS_URL, "burst": 1000, "per_second": 1000.0, **changes}
    return {key: value for key, value in section.items() if value is not None}


@pytest.fixture(name="mattermost")
def mattermost_fixture() -> Iterator[FakeMattermost]:
    with FakeMattermost() as server:
        yield server


@pytest.fixture(name="mm_site")
async def mm_site_fixture(make_settings, mattermost, clock):
    opened: list[MattermostSite] = []

    async def build(extra: dict[str, Any] | None = None, sitegpt_key: bool = True,
                    **section: Any) -> MattermostSite:
        """The bridge with Mattermost, its buttons and (unless not `sitegpt_key`) a SiteGPT
        key, plus `extra` settings; `section` changes [mattermost]."""
        # A test that calls SiteGPT mocks its API; any other call stays on this machine.
        sitegpt = {"api_url": "http://127.0.0.1:9/api/v0",
                   **({"api_key": "sk-test"} if sitegpt_key else {})}
        data = deep_merge({"mattermost": mattermost_section(mattermost, **section),
                           "sitegpt": sitegpt}, extra or {})
        # The start-up template check is test_templates' (0.3 s a bridge here).
        bridge = open_bridge(make_settings(data), clock, check_templates=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(
            bridge, run_worker=False)), base_url="http://b")
        opened.append(MattermostSite(bridge, client, mattermost, clock))
        return opened[-1]

    yield build
    for site in opened:
        await site.client.aclose()
        await site.bridge.close()
