"""The thin web layer: check the token, read a bounded body, validate, store, answer."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from bridge.clock import Clock
from bridge.errors import StoreError
from bridge.events import (
    ESCALATION,
    LEAD,
    MESSAGE,
    InvalidEvent,
    parse_event,
    read_json,
)
from bridge.intake import new_event
from bridge.metrics import CONTENT_TYPE, Metrics, bearer_matches
from bridge.rejections import RejectionLog
from bridge.store import EventIntake, NewEvent, Store

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


class BodyTooLarge(Exception):
    pass


@dataclass
class Intake:
    """What the webhook routes need, wired once at start-up."""

    store: Store
    clock: Clock
    max_body_bytes: int
    dedup_window: float
    on_accept: Callable[[], None] = lambda: None
    metrics: Metrics = field(default_factory=Metrics)
    rejections: RejectionLog = field(init=False)

    def __post_init__(self) -> None:
        self.rejections = RejectionLog(log, self.clock)

    async def receive(self, endpoint: Endpoint, request: Request) -> Answer:
        if not endpoint.tokens:
            return self._reject(endpoint, 503, "not_configured",
                                f"the {endpoint.name} webhook is not configured: no token is set")
        if not endpoint.authorizes(request.headers.get(TOKEN_HEADER)):
            return self._reject(endpoint, 401, "unauthorized", "missing or wrong X-WEBHOOK-TOKEN")
        try:
            raw = await read_bounded(request, self.max_body_bytes)
        except BodyTooLarge:
            return self._reject(endpoint, 413, "too_large",
                                f"body larger than {self.max_body_bytes} bytes")
        except ClientDisconnect:
            return self._reject(endpoint, 400, "disconnected", "client disconnected mid-body")
        return await self._accept(endpoint, raw)

    async def _accept(self, endpoint: Endpoint, raw: bytes) -> Answer:
        try:
            stored = _stored_event(endpoint, raw)
        except InvalidEvent as exc:
            return self._reject(endpoint, 422, "invalid", str(exc), field=exc.field)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to handle
            return self._reject(endpoint, 400, "invalid_json", f"body is not JSON: {exc}")
        storing = Storing(self.store, self.clock, self.dedup_window, self.on_accept, log,
                          partial(self.metrics.webhook, endpoint.name))
        return await storing.accept(f"webhook {endpoint.name}", stored, endpoint.name)

    def _reject(self, endpoint: Endpoint, status: int, reason: str, message: str,
                **extra: Any) -> Answer:
        self.metrics.webhook(endpoint.name, reason)
        self.rejections.rejected(f"webhook {endpoint.name}", status, reason, message,
                                 extra={"endpoint": endpoint.name, "outcome": reason})
        return Answer(status, {"status": "rejected", "error": message, **extra})


def _stored_event(endpoint: Endpoint, raw: bytes) -> NewEvent:
    body = read_json(raw)
    return new_event(parse_event(endpoint.kind, body), body, endpoint.destinations)


@dataclass(frozen=True)
class Answer:
    """What a webhook is answered: a status and a small JSON object."""

    status: int
    body: dict[str, Any]

    async def send(self, send: Send) -> None:
        content = json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})

    def response(self) -> JSONResponse:
        """The same answer for a request/response route."""
        return JSONResponse(self.body, self.status)


def _uncounted(outcome: str) -> None:
    pass


@dataclass(frozen=True)
class Storing:
    """Stores an inbound event and answers for it; `source` names it in the log, `count` is
    told each outcome (accepted, duplicate, unavailable, ignored)."""

    store: EventIntake
    clock: Clock
    window: float
    on_accept: Callable[[], None]
    log: logging.Logger
    count: Callable[[str], None] = _uncounted

    async def accept(self, source: str, event: NewEvent, endpoint: str | None = None) -> Answer:
        """`endpoint` labels the log line; by default `source`, dashed."""
        try:
            accepted = await self.store.accept(event, self.clock.now(), self.window)
        except StoreError as exc:
            self.log.error("%s: store unavailable: %s", source, exc)
            self.count("unavailable")
            return Answer(503, {"status": "unavailable", "error": "store busy, retry"})
        if accepted.status == "accepted":
            self.on_accept()
        self.count(accepted.status)
        self.log.info("%s: %s event %d", source, accepted.status, accepted.event_id,
                      extra={"endpoint": endpoint or source.replace(" ", "-"),
                             "outcome": accepted.status, "event_id": accepted.event_id,
                             "conversation": event.ordering_key})
        return Answer(200, {"status": accepted.status, "id": accepted.event_id})

    def ignored(self, source: str, reason: str) -> Answer:
        # Slack and Jira retry anything but a 2xx: what the bridge does not want still gets 200.
        self.log.debug("%s ignored: %s", source, reason)
        self.count("ignored")
        return Answer(200, {"status": "ignored", "reason": reason})


@dataclass(frozen=True)
class WebhookEndpoint:
    """The ASGI app behind one webhook route.

    A plain ASGI app rather than a request/response function: on the path every webhook
    takes, it skips the per-request wrappers and the Response object (bench/).
    """

    intake: Intake
    endpoint: Endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self.intake.receive(self.endpoint, Request(scope, receive))
        await answer.send(send)


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, or BodyTooLarge as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(intake: Intake, endpoints: Sequence[Endpoint], lifespan: Any = None,
              extra_routes: Sequence[BaseRoute] = (),
              metrics_token: bytes | None = None) -> Starlette:
    """The ASGI app: three webhook routes, the two health probes, the metrics, `extra_routes`."""
    routes: list[BaseRoute] = [_webhook_route(intake, endpoint) for endpoint in endpoints]
    routes += extra_routes

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    unconfigured = [endpoint.name for endpoint in endpoints if not endpoint.tokens]

    async def readyz(request: Request) -> JSONResponse:
        try:
            await intake.store.check_writable()
        except StoreError as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, 503)
        if unconfigured:  # those webhooks answer 503: not ready to take what SiteGPT sends
            return JSONResponse({"status": "unconfigured", "webhooks_without_token": unconfigured},
                                503)
        return JSONResponse({"status": "ready"})

    routes += [Route("/healthz", healthz), Route("/readyz", readyz),
               _metrics_route(intake, metrics_token)]
    return Starlette(routes=routes, lifespan=lifespan)


def _metrics_route(intake: Intake, token: bytes | None) -> Route:
    """GET /metrics in Prometheus' format; with a token set, only for `Bearer <token>`."""

    async def metrics(request: Request) -> Response:
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            return PlainTextResponse("missing or wrong bearer token\n", 401,
                                     headers={"WWW-Authenticate": "Bearer"})
        try:
            body = await intake.metrics.exposition(intake.store, intake.clock.now())
        except StoreError as exc:
            return PlainTextResponse(f"store unavailable: {exc}\n", 503)
        return Response(body, media_type=CONTENT_TYPE)

    return Route("/metrics", metrics)


def _webhook_route(intake: Intake, endpoint: Endpoint) -> Route:
    return Route(f"/webhooks/{endpoint.name}", WebhookEndpoint(intake, endpoint),
                 methods=["POST"])
