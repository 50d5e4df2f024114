"""What the receivers of SiteGPT, Slack and Jira share: bounded bodies, refusals, storing."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import Send

from bridge.clock import Clock
from bridge.errors import StoreError
from bridge.events import Conversation, canonical_json
from bridge.metrics import WEBHOOK_OUTCOMES, Metrics
from bridge.rejections import RejectionLog
from bridge.store import ConversationLinks, EventIntake, NewEvent


@dataclass(frozen=True)
class Reason:
    """Why a request is refused: its label in the metrics and the log, and how it is answered."""

    outcome: str
    status: int
    answer: str = "rejected"  # the answer's "status"
    level: int = logging.WARNING  # the sender's fault; the bridge's own is an error


UNAUTHORIZED = Reason("unauthorized", 401)
NOT_CONFIGURED = Reason("not_configured", 503)
TOO_LARGE = Reason("too_large", 413)
DISCONNECTED = Reason("disconnected", 400)
INVALID_JSON = Reason("invalid_json", 400)
INVALID = Reason("invalid", 422)
UNAVAILABLE = Reason("unavailable", 503, "unavailable", logging.ERROR)
REASONS = (UNAUTHORIZED, NOT_CONFIGURED, TOO_LARGE, DISCONNECTED, INVALID_JSON, INVALID,
           UNAVAILABLE)
# Slack's and Jira's routes exist only once configured, and answer 200 "ignored" to what the
# bridge does not want: both retry anything else.
RECEIVER_OUTCOMES = (*(outcome for outcome in WEBHOOK_OUTCOMES
                       if outcome != NOT_CONFIGURED.outcome), "ignored")


@dataclass(frozen=True)
class Answer:
    """What an inbound request is answered: a status and a small JSON object."""

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


class Refused(Exception):
    """A request that is not the sender's, cannot be read or cannot be stored now.

    `error` is what the sender is told; `detail` what the log says, when it says more.
    """

    def __init__(self, reason: Reason, error: str, detail: str | None = None,
                 **extra: Any) -> None:
        super().__init__(error)
        self.reason = reason
        self.detail = detail or error
        self.answer = Answer(reason.status, {"status": reason.answer, "error": error, **extra})


@dataclass(eq=False)
class Refusals:
    """Counts every refusal of one receiver by endpoint and reason, and logs it thinned."""

    log: logging.Logger
    clock: Clock
    metrics: Metrics
    rejections: RejectionLog = field(init=False)

    def __post_init__(self) -> None:
        self.rejections = RejectionLog(self.log, self.clock)

    def answer(self, endpoint: str, where: str, refusal: Refused) -> Answer:
        """`endpoint` labels the count, `where` starts the log line."""
        reason = refusal.reason
        self.metrics.webhook(endpoint, reason.outcome)
        self.rejections.rejected(where, reason.status, reason.outcome, refusal.detail,
                                 extra={"endpoint": endpoint, "outcome": reason.outcome},
                                 level=reason.level)
        return refusal.answer


async def bounded_body(request: Request, limit: int) -> bytes:
    """The body, or Refused: too large as soon as it is known to exceed `limit` bytes,
    disconnected when the sender hung up."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise Refused(DISCONNECTED, "client disconnected mid-body") from exc
    return b"".join(chunks)


def _too_large(limit: int) -> Refused:
    return Refused(TOO_LARGE, f"body larger than {limit} bytes")


@dataclass(frozen=True)
class Storing:
    """Stores an inbound event and answers for it; `source` names it in the log, `count` is
    told each outcome (accepted, duplicate, ignored). A store that cannot commit is Refused."""

    store: EventIntake
    clock: Clock
    window: float
    on_accept: Callable[[], None]
    log: logging.Logger
    count: Callable[[str], None]

    async def accept(self, source: str, event: NewEvent, endpoint: str | None = None) -> Answer:
        """`endpoint` labels the log line; by default `source`, dashed."""
        try:
            accepted = await self.store.accept(event, self.clock.now(), self.window)
        except StoreError as exc:
            raise store_unavailable(exc) from exc
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


@dataclass(eq=False)
class Receiving:
    """One endpoint of a receiver (Slack's, Jira's, Mattermost's): its refusals answered and
    what it stores, each counted under the endpoint, whose series start at zero."""

    endpoint: str
    log: logging.Logger
    store: EventIntake
    clock: Clock
    window: float  # how long a dedup key keeps a repeat out
    on_accept: Callable[[], None]
    metrics: Metrics
    refusals: Refusals = field(init=False)
    storing: Storing = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.expect_webhooks(self.endpoint, RECEIVER_OUTCOMES)
        self.refusals = Refusals(self.log, self.clock, self.metrics)
        self.storing = Storing(self.store, self.clock, self.window, self.on_accept, self.log,
                               partial(self.metrics.webhook, self.endpoint))

    def refused(self, where: str, refusal: Refused) -> Answer:
        """`where` starts the log line."""
        return self.refusals.answer(self.endpoint, where, refusal)


def thread_event(kind: str, conversation: Conversation, dedup_key: str, data: BaseModel,
                 destinations: Sequence[str]) -> NewEvent:
    """An event the bridge makes of what people did about a conversation (a reply, a button,
    a ticket's change), delivered in line with the conversation's other events."""
    body = {"event": kind, "data": data.model_dump(by_alias=True, exclude_none=True)}
    return NewEvent(kind=kind, body=canonical_json(body), dedup_key=dedup_key,
                    ordering_key=conversation.key, destinations=destinations,
                    conversation=(conversation.chatbot_id, conversation.thread_id))


def store_unavailable(exc: StoreError) -> Refused:
    """503, so the sender retries; the store's own words go to the log, not to the sender."""
    return Refused(UNAVAILABLE, "store busy, retry", f"store unavailable: {exc}")


async def conversation_by_ref(store: ConversationLinks, destination: str,
                              ref: str) -> Conversation | None:
    """The conversation whose `destination` link has this ref; Refused 503 while the store
    cannot answer, so the sender retries instead of seeing a 500."""
    if "\x00" in ref:  # no ref holds one, and PostgreSQL's text cannot even be asked about it
        return None
    try:
        found = await store.conversation_by_ref(destination, ref)
    except StoreError as exc:
        raise store_unavailable(exc) from exc
    return Conversation(*found) if found else None
