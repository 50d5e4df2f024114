"""Slack's Events API and interactivity: thread replies and the parent's buttons, stored."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError
from slack_sdk.signature import Clock as SignatureClock
from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bridge.clock import Clock
from bridge.destinations import Takers
from bridge.destinations.sitegpt_settings import replies_enabled
from bridge.events import (
    HANDLING,
    MODE_CHANGE,
    SLACK_REPLY,
    Conversation,
    HandlingData,
    ModeChangeData,
    SlackReplyData,
)
from bridge.inbound import (
    INVALID,
    INVALID_JSON,
    UNAUTHORIZED,
    Receiving,
    Refused,
    Storing,
    bounded_body,
    conversation_by_ref,
    thread_event,
)
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store import NewEvent, ReplyIntake

log = logging.getLogger("bridge.slack_events")
DEDUP_WINDOW = 7 * 86400.0  # Slack retries within the hour; a week costs a few rows
PERSON_SUBTYPES = frozenset({None, "thread_broadcast", "file_share"})
MODE_ACTIONS = {"sitegpt_take_over": "AGENT", "sitegpt_hand_back": "AI"}
HANDLING_ACTIONS = {"sitegpt_claim": "claim", "sitegpt_resolve": "resolve"}
DESTINATIONS = Takers(SLACK_REPLY, MODE_CHANGE)  # who declares them
SLACK = "slack"  # whose conversation links hold the threads
HANDLERS = (SLACK,)  # Claim and Resolve pressed in Slack show in Slack's thread only
ENDPOINT = "slack"  # both routes' label in sitegpt_bridge_webhooks_total
# Seconds since 1970 in plain ASCII digits: str.isdigit() also takes "²" and 5,000 digits,
# which int() then refuses.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
M = TypeVar("M", bound="SlackModel")


class SlackModel(BaseModel):
    """Slack's payloads carry much more than the bridge reads: the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class SlackMessage(SlackModel):
    type: str
    subtype: str | None = None
    channel: str | None = None
    user: str | None = None
    bot_id: str | None = None
    text: str = ""
    ts: str | None = None
    thread_ts: str | None = None


class EventEnvelope(SlackModel):
    type: str
    challenge: str | None = None
    event_id: str | None = None
    event: dict[str, Any] | None = None


class SlackUserRef(SlackModel):
    id: str


class Container(SlackModel):
    channel_id: str | None = None
    message_ts: str | None = None


class Action(SlackModel):
    action_id: str
    action_ts: str | None = None


class Interaction(SlackModel):
    type: str
    user: SlackUserRef
    container: Container = Container()
    actions: list[Action] = []


class _VerifierClock(SignatureClock):
    """The bridge's clock as slack_sdk's verifier wants it, so tests can set the time."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.now()


@dataclass
class SlackReceiver:
    """What the two Slack routes need, wired once at start-up."""

    store: ReplyIntake
    clock: Clock
    verifier: SignatureVerifier
    max_body_bytes: int
    private_note_prefix: str
    modes: bool = True  # Take over / Hand back reach SiteGPT (replies from Slack are on)
    on_accept: Callable[[], None] = lambda: None
    metrics: Metrics = field(default_factory=Metrics)
    receiving: Receiving = field(init=False)

    def __post_init__(self) -> None:
        self.receiving = Receiving(ENDPOINT, log, self.store, self.clock, DEDUP_WINDOW,
                                   self.on_accept, self.metrics)

    @property
    def storing(self) -> Storing:
        return self.receiving.storing

    async def events(self, request: Request) -> Response:
        try:
            envelope = _parse(EventEnvelope, await self._signed_body(request))
            if envelope.type == "url_verification":
                return JSONResponse({"challenge": envelope.challenge or ""})
            event = await self._reply_event(envelope)
            if isinstance(event, str):
                return self.storing.ignored("slack event", event).response()
            return (await self.storing.accept("slack event", event)).response()
        except Refused as refusal:
            return self._refused(request, refusal)

    async def interactions(self, request: Request) -> Response:
        try:
            # The signature check has decoded the body as UTF-8 already.
            form = parse_qs((await self._signed_body(request)).decode())
            payload = form.get("payload")
            if not payload:
                raise Refused(INVALID, "not a Slack Interaction: payload: required")
            event = await self._button_event(_parse(Interaction, payload[0].encode()))
            if isinstance(event, str):
                return self.storing.ignored("slack interaction", event).response()
            await self.storing.accept("slack interaction", event)
        except Refused as refusal:
            return self._refused(request, refusal)
        return Response(status_code=200)

    def _refused(self, request: Request, refusal: Refused) -> Response:
        return self.receiving.refused(f"slack {request.url.path}", refusal).response()

    async def _signed_body(self, request: Request) -> bytes:
        raw = await bounded_body(request, self.max_body_bytes)
        if not self._signed(raw, request):
            raise Refused(UNAUTHORIZED, "bad or stale X-Slack-Signature")
        return raw

    def _signed(self, raw: bytes, request: Request) -> bool:
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        # compare_digest refuses non-ASCII text with a TypeError: such a signature is just wrong.
        if not _TIMESTAMP.fullmatch(timestamp) or not signature.isascii():
            return False
        try:
            return self.verifier.is_valid(raw, timestamp, signature)
        except UnicodeDecodeError:
            return False

    async def _reply_event(self, envelope: EventEnvelope) -> NewEvent | str:
        """The reply to deliver, or why this event is none."""
        if envelope.type != "event_callback" or not envelope.event_id or not envelope.event:
            return f"{envelope.type} is not an event callback"
        if envelope.event.get("type") != "message":
            return f"{envelope.event.get('type')} is not a message"
        try:
            message = SlackMessage.model_validate(envelope.event)
        except ValidationError:
            return "unreadable message"
        why_not = self._not_a_reply(message)
        if why_not:
            return why_not
        assert message.channel and message.thread_ts and message.ts and message.user
        record = await conversation_by_ref(
            self.store, SLACK, f"{message.channel}/{message.thread_ts}")
        if record is None:
            return "not in a conversation's thread"
        return _new_event(SLACK_REPLY, record, f"slack-event:{envelope.event_id}", SlackReplyData(
            chatbot_id=record.chatbot_id, thread_id=record.thread_id,
            slack_event_id=envelope.event_id, channel=message.channel, thread_ts=message.thread_ts,
            ts=message.ts, user=message.user, text=message.text))

    def _not_a_reply(self, message: SlackMessage) -> str | None:
        """Why a message is not a person's reply for the visitor, or None when it is one."""
        if message.bot_id or message.subtype == "bot_message":
            return "a bot's message"
        if message.subtype not in PERSON_SUBTYPES:
            return f"a {message.subtype} message"
        if not (message.channel and message.user and message.ts and message.thread_ts):
            return "not in a thread"
        if message.thread_ts == message.ts:
            return "a thread's parent"
        prefix = self.private_note_prefix
        if prefix and message.text.lstrip().startswith(prefix):
            return "a private note"
        return None

    async def _button_event(self, interaction: Interaction) -> NewEvent | str:
        """The event a button on a parent stands for, or why the interaction is none."""
        known = {*HANDLING_ACTIONS, *(MODE_ACTIONS if self.modes else ())}
        action = next((a for a in interaction.actions if a.action_id in known), None)
        channel, ts = interaction.container.channel_id, interaction.container.message_ts
        if interaction.type != "block_actions" or action is None or not channel or not ts:
            return "not one of the bridge's buttons"
        record = await conversation_by_ref(self.store, SLACK, f"{channel}/{ts}")
        if record is None:
            return "not on a conversation's parent message"
        # Slack sends a retry with the same action_ts: the store keeps the first only.
        key = f"slack-action:{channel}:{ts}:{interaction.user.id}:{action.action_ts}"
        ids = {"chatbot_id": record.chatbot_id, "thread_id": record.thread_id, "channel": channel,
               "thread_ts": ts, "user": interaction.user.id}
        if action.action_id in HANDLING_ACTIONS:
            return _new_event(HANDLING, record, key, HandlingData(
                **ids, action=HANDLING_ACTIONS[action.action_id]), HANDLERS)
        return _new_event(MODE_CHANGE, record, key, ModeChangeData(
            **ids, mode=MODE_ACTIONS[action.action_id]))


def _parse(model: type[M], raw: bytes) -> M:
    """The payload, or Refused: 400 if it is not JSON, 422 if not what Slack sends."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = INVALID_JSON if first["type"] == "json_invalid" else INVALID
        raise Refused(reason, f"not a Slack {model.__name__}: {first['msg']}") from exc


def _new_event(kind: str, conversation: Conversation, dedup_key: str,
               data: SlackReplyData | ModeChangeData | HandlingData,
               destinations: Sequence[str] = DESTINATIONS) -> NewEvent:
    return thread_event(kind, conversation, dedup_key, data, destinations)


def slack_routes(settings: Settings, store: ReplyIntake, clock: Clock,
                 on_accept: Callable[[], None],
                 metrics: Metrics | None = None) -> list[BaseRoute]:
    """POST /slack/interactions (Claim and Resolve) once Slack's signing secret is set, and
    /slack/events (replies) with the mode buttons when replies from Slack are on too."""
    secret = settings.slack.signing_secret
    if secret is None:
        return []
    replies = replies_enabled(settings)
    receiver = SlackReceiver(
        store=store, clock=clock,
        verifier=SignatureVerifier(secret.get_secret_value(), _VerifierClock(clock)),
        max_body_bytes=settings.server.max_body_bytes,
        private_note_prefix=settings.slack.private_note_prefix, modes=replies,
        on_accept=on_accept, metrics=metrics or Metrics())
    routes: list[BaseRoute] = [
        Route("/slack/interactions", receiver.interactions, methods=["POST"])]
    if replies:
        routes.append(Route("/slack/events", receiver.events, methods=["POST"]))
    return routes
