"""SiteGPT's webhooks (check the token, read, validate, store, answer) and the app around them."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from bridge.clock import Clock
from bridge.errors import StoreError
from bridge.event_rows import new_event
from bridge.events import (
    ESCALATION,
    LEAD,
    MESSAGE,
    InvalidEvent,
    parse_event,
    read_json,
)
from bridge.inbound import (
    INVALID,
    INVALID_JSON,
    NOT_CONFIGURED,
    UNAUTHORIZED,
    Answer,
    Refusals,
    Refused,
    Storing,
    bounded_body,
)
from bridge.metrics import CONTENT_TYPE, Metrics, bearer_matches
from bridge.store import NewEvent, Store

log = logging.getLogger("bridge.web")
TOKEN_HEADER = "x-webhook-token"


@dataclass(frozen=True)
class Endpoint:
    """One of SiteGPT's three webhooks: its path, event kind, tokens and destinations."""

    name: str
    kind: str
    tokens: Sequence[bytes]
    destinations: Sequence[str]

    def authorizes(self, presented: str | None) -> bool:
        """Constant-time comparison against every configured token."""
        if presented is None:
            return False
        candidate = presented.encode("latin-1")  # undo the ASGI decoding: raw header bytes
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched


ENDPOINT_KINDS = {"messages": MESSAGE, "escalations": ESCALATION, "leads": LEAD}


@dataclass
class SiteGPTReceiver:
    """What SiteGPT's webhook routes need, wired once at start-up."""

    store: Store
    clock: Clock
    max_body_bytes: int
    dedup_window: float
    on_accept: Callable[[], None] = lambda: None
    metrics: Metrics = field(default_factory=Metrics)
    refusals: Refusals = field(init=False)

    def __post_init__(self) -> None:
        self.refusals = Refusals(log, self.clock, self.metrics)

    async def receive(self, endpoint: Endpoint, request: Request) -> Answer:
        try:
            return await self._receive(endpoint, request)
        except Refused as refusal:
            return self.refusals.answer(endpoint.name, f"webhook {endpoint.name}", refusal)

    async def _receive(self, endpoint: Endpoint, request: Request) -> Answer:
        if not endpoint.tokens:
            raise Refused(NOT_CONFIGURED,
                          f"the {endpoint.name} webhook is not configured: no token is set")
        if not endpoint.authorizes(request.headers.get(TOKEN_HEADER)):
            raise Refused(UNAUTHORIZED, "missing or wrong X-WEBHOOK-TOKEN")
        stored = _stored_event(endpoint, await bounded_body(request, self.max_body_bytes))
        storing = Storing(self.store, self.clock, self.dedup_window, self.on_accept, log,
                          partial(self.metrics.webhook, endpoint.name))
        return await storing.accept(f"webhook {endpoint.name}", stored, endpoint.name)


def _stored_event(endpoint: Endpoint, raw: bytes) -> NewEvent:
    """The event to store, or Refused: 400 if the body is not JSON, 422 if not this event."""
    try:
        body = read_json(raw)
        return new_event(parse_event(endpoint.kind, body), body, endpoint.destinations)
    except InvalidEvent as exc:
        raise Refused(INVALID, str(exc), field=exc.field) from exc
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to handle
        raise Refused(INVALID_JSON, f"body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class WebhookApp:
    """The ASGI app behind one of SiteGPT's webhook routes.

    A plain ASGI app rather than a request/response function: on the path every webhook
    takes, it skips the per-request wrappers and the Response object (bench/).
    """

    receiver: SiteGPTReceiver
    endpoint: Endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self.receiver.receive(self.endpoint, Request(scope, receive))
        await answer.send(send)


def build_app(receiver: SiteGPTReceiver, endpoints: Sequence[Endpoint], lifespan: Any = None,
              extra_routes: Sequence[BaseRoute] = (),
              metrics_token: bytes | None = None) -> Starlette:
    """The ASGI app: three webhook routes, the two health probes, the metrics, `extra_routes`."""
    return Starlette(routes=app_routes(receiver, endpoints, extra_routes, metrics_token),
                     lifespan=lifespan)


def app_routes(receiver: SiteGPTReceiver, endpoints: Sequence[Endpoint],
               extra_routes: Sequence[BaseRoute] = (),
               metrics_token: bytes | None = None) -> list[BaseRoute]:
    """The app's routes, built anew when the settings are reloaded."""
    routes: list[BaseRoute] = [_webhook_route(receiver, endpoint) for endpoint in endpoints]
    routes += extra_routes

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    unconfigured = [endpoint.name for endpoint in endpoints if not endpoint.tokens]

    async def readyz(request: Request) -> JSONResponse:
        try:
            await receiver.store.check_writable()
        except StoreError as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, 503)
        if unconfigured:  # those webhooks answer 503: not ready to take what SiteGPT sends
            return JSONResponse({"status": "unconfigured", "webhooks_without_token": unconfigured},
                                503)
        return JSONResponse({"status": "ready"})

    return [*routes, Route("/healthz", healthz), Route("/readyz", readyz),
            _metrics_route(receiver, metrics_token)]


def _metrics_route(receiver: SiteGPTReceiver, token: bytes | None) -> Route:
    """GET /metrics in Prometheus' format; with a token set, only for `Bearer <token>`."""

    async def metrics(request: Request) -> Response:
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            return PlainTextResponse("missing or wrong bearer token\n", 401,
                                     headers={"WWW-Authenticate": "Bearer"})
        try:
            body = await receiver.metrics.exposition(receiver.store, receiver.clock.now())
        except StoreError as exc:
            return PlainTextResponse(f"store unavailable: {exc}\n", 503)
        return Response(body, media_type=CONTENT_TYPE)

    return Route("/metrics", metrics)


def _webhook_route(receiver: SiteGPTReceiver, endpoint: Endpoint) -> Route:
    return Route(f"/webhooks/{endpoint.name}", WebhookApp(receiver, endpoint),
                 methods=["POST"])
