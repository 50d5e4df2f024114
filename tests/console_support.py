"""A bridge with the console on, a destination that fails on demand, and a logged-in client."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.testclient import TestClient

from bridge.app import Bridge, create_app
from bridge.console.password import hash_password
from bridge.destinations.base import Delivered, Delivery, Outcome
from bridge.errors import PermanentError
from bridge.events import MESSAGE, Event, MessageEvent
from bridge.settings import Settings
from tests.bridges import build_bridge
from tests.settings_files import TOKENS

PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'


@dataclass
class Chat:
    """A chat destination that fails for good while `broken`, and shows what it would post."""

    name: ClassVar[str] = "chat"
    broken: bool = False
    delivered: list[int] = field(default_factory=list)

    def accepts(self, kind: str) -> bool:
        return kind == MESSAGE

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self.broken:
            raise PermanentError("chat: channel_not_found")
        self.delivered.append(delivery.claimed.id)
        return Delivered(note="posted")

    async def verify(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        return None

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        return {f"{label}: chat.post": json.dumps({"text": event.data.question or ""})
                for label, event in samples.items() if isinstance(event, MessageEvent)}


def console_settings(make_settings: Callable[..., Settings], **console: Any) -> Settings:
    return make_settings({"console": {"password_hash": PASSWORD_HASH, **console}})


def console_bridge(settings: Settings, chat: Chat | None = None) -> Bridge:
    return build_bridge(settings, {"chat": chat or Chat()})  # type: ignore[dict-item]


def message(sample: Callable[[str], Any], thread: str, text: str) -> dict[str, Any]:
    body = copy.deepcopy(sample("message-visitor"))
    body["data"]["threadId"] = thread
    body["data"]["question"] = text
    return body


def post_message(client: TestClient, body: dict[str, Any]) -> None:
    answer = client.post("/webhooks/messages", json=body,
                         headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
    assert answer.status_code == 200, answer.text


def log_in(client: TestClient, password: str = PASSWORD) -> Any:
    form = client.get("/console/login")
    return client.post("/console/login", data={"csrf": csrf_of(form.text),
                                               "password": password},
                       follow_redirects=False)


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no CSRF token on the page"
    return found[1]


def serving(bridge: Bridge, run_worker: bool = True) -> Iterator[TestClient]:
    with TestClient(create_app(bridge, run_worker=run_worker), base_url="http://127.0.0.1") \
            as client:
        yield client
