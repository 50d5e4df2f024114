"""The bridge's app with a fake Slack behind it and SiteGPT's API mocked: signed requests in."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import respx
from slack_sdk import WebClient

from bridge.app import Bridge, create_app, open_bridge
from tests.clock import FakeClock
from tests.fake_slack import FakeSlack
from tests.settings_files import TOKENS, deep_merge

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
API = "https://sitegpt.test/api/v0"
CHATBOT = "chatbot_123"
MESSAGE_PATH = f"/chatbots/{CHATBOT}/message"
ACCEPTED = httpx.Response(200, json={"messageType": "AGENT_MESSAGE"})


def signature(body: bytes, timestamp: str, secret: str = SECRET) -> str:
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class Site:
    """The bridge's app with a fake Slack behind it and SiteGPT's API mocked."""

    bridge: Bridge
    client: httpx.AsyncClient
    fake: FakeSlack
    clock: FakeClock
    api: respx.Router

    async def conversation(self, thread: str = "thread_A") -> str:
        """A visitor writes; the bridge opens the thread in Slack. The thread's ts."""
        body = {"event": "ADD_MESSAGE", "data": {
            "chatbotId": CHATBOT, "threadId": thread, "messageType": "USER_MESSAGE",
            "question": f"hello from {thread}"}}
        answer = await self.client.post("/webhooks/messages", json=body,
                                        headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
        assert answer.status_code == 200
        await self.bridge.worker.drain()
        state = await self.bridge.store.link_state(CHATBOT, thread, "slack")
        assert state and state["thread_ts"]
        return str(state["thread_ts"])

    def write(self, thread_ts: str | None, text: str, user: str = "U_ANA") -> dict[str, Any]:
        """A person writes in the channel (in a thread when `thread_ts`); Slack's message event."""
        person = WebClient(token=f"xoxp-{user}", base_url=self.fake.api_url)
        reply = person.chat_postMessage(channel="C_CONV", text=text,
                                        **({"thread_ts": thread_ts} if thread_ts else {}))
        return self.fake.message_event(str(reply["ts"]))

    async def send(self, payload: dict[str, Any], path: str = "/slack/events",
                   **headers: str) -> httpx.Response:
        raw = json.dumps(payload).encode()
        return await self.signed(path, raw, "application/json", **headers)

    async def press(self, action_id: str, thread_ts: str, user: str = "U_BEN",
                    action_ts: str = "1700000100.000001") -> httpx.Response:
        payload = {"type": "block_actions", "user": {"id": user, "username": "ben"},
                   "container": {"type": "message", "channel_id": "C_CONV",
                                 "message_ts": thread_ts},
                   "channel": {"id": "C_CONV"}, "message": {"ts": thread_ts},
                   "actions": [{"action_id": action_id, "block_id": "sitegpt_mode",
                                "type": "button", "action_ts": action_ts}]}
        raw = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.signed("/slack/interactions", raw, "application/x-www-form-urlencoded")

    async def signed(self, path: str, raw: bytes, content_type: str,
                     **headers: str) -> httpx.Response:
        timestamp = str(int(self.clock.now()))
        sent = {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
                "X-Slack-Signature": signature(raw, timestamp), **headers}
        return await self.client.post(path, content=raw, headers=sent)

    async def sitegpt_rows(self) -> list[tuple[str, str | None]]:
        rows = await self.bridge.store.deliveries(limit=1000)
        return [(row.status, row.last_error or row.note) for row in reversed(rows)
                if row.destination == "sitegpt"]


def envelope(event: dict[str, Any], event_id: str = "Ev0001") -> dict[str, Any]:
    return {"token": "legacy", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
            "event_id": event_id, "event_time": 1_700_000_000, "event": event}


@pytest.fixture(name="api")
def api_fixture() -> Iterator[respx.Router]:
    with respx.mock(base_url=API, assert_all_called=False) as router:
        yield router


@pytest.fixture(name="site")
async def site_fixture(make_settings, fake, api, clock):
    opened: list[Site] = []

    async def build(extra: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> Site:
        """The bridge with replies on, plus `extra` settings, less the `drop` keys."""
        data = deep_merge({
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C_CONV",
                      "signing_secret": SECRET, "burst": 1000, "per_second": 1000.0},
            "sitegpt": {"api_url": API, "api_key": "sk-test"}}, extra or {})
        for key in drop:
            section, name = key.split(".")
            del data[section][name]
        settings = make_settings(data)
        # The start-up template check is test_templates' (0.3 s a bridge here).
        bridge = open_bridge(settings, clock, check_templates=False)
        app = create_app(bridge, run_worker=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        opened.append(Site(bridge, client, fake, clock, api))
        return opened[-1]

    yield build
    for item in opened:
        await item.client.aclose()
        await item.bridge.close()
