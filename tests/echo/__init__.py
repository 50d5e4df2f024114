"""Echo: a chat destination that posts each message to one URL; the example of a plugin.

Everything it needs is in this folder: its settings section, its destination, its templates
and samples. The bridge learns of it from one line, `register(PLUGIN)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from bridge.destinations.base import Delivered, Delivery, Outcome
from bridge.destinations.plugin import Plugin
from bridge.destinations.shared import Shared
from bridge.errors import PermanentError, RetryableError
from bridge.events import MESSAGE, Event, MessageEvent
from bridge.sections import Section, half_set
from bridge.settings import Settings
from bridge.templating import Templates

HERE = Path(__file__).parent
TEMPLATE = "echo/message.json.j2"


class EchoSettings(Section):
    """`[echo]`: where messages go, and the token that proves it is us."""

    url: str | None = None
    token: SecretStr | None = None
    timeout_seconds: float = 5.0


class EchoDestination:
    """Posts each message, rendered from its template, to `[echo] url`."""

    name: ClassVar[str] = "echo"

    def __init__(self, settings: EchoSettings, templates: Templates) -> None:
        assert settings.url and settings.token
        self.settings = settings
        self.templates = templates
        self.http = httpx.AsyncClient(timeout=settings.timeout_seconds, headers={
            "Authorization": f"Bearer {settings.token.get_secret_value()}"})

    def accepts(self, kind: str) -> bool:
        return kind == MESSAGE

    async def deliver(self, delivery: Delivery) -> Outcome:
        assert isinstance(delivery.event, MessageEvent)
        try:
            response = await self.http.post(str(self.settings.url),
                                            json=self._body(delivery.event))
        except httpx.HTTPError as exc:
            raise RetryableError(f"echo: {type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableError(f"echo: HTTP {response.status_code}")
        if response.is_error:
            raise PermanentError(f"echo: HTTP {response.status_code}: {response.text}")
        return Delivered(note=f"echoed as {response.json()['id']}")

    async def verify(self) -> str:
        return f"ok: posts to {self.settings.url}"

    async def aclose(self) -> None:
        await self.http.aclose()

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        return {f"{label}: POST": json.dumps(self._body(event), indent=2)
                for label, event in samples.items()
                if isinstance(event, MessageEvent)}

    def _body(self, event: MessageEvent) -> Any:
        return self.templates.render_json(TEMPLATE, {"message": event.data.model_dump()})


def build_echo(settings: Settings, templates: Templates, shared: Shared) -> EchoDestination | None:
    echo: EchoSettings = settings.echo
    return EchoDestination(echo, templates) if echo.url and echo.token else None


def unfinished(settings: Settings) -> list[str]:
    echo: EchoSettings = settings.echo
    line = half_set("echo", "url", "messages are not echoed", echo.url, token=echo.token)
    return [line] if line else []


PLUGIN = Plugin(name="echo", section=EchoSettings, build=build_echo, kinds=frozenset({MESSAGE}),
                templates=HERE / "templates", samples=HERE / "samples", unfinished=unfinished)
