"""Mattermost's button presses on a thread's root post: POST /mattermost/actions, stored."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bridge.clock import Clock
from bridge.destinations import Takers
from bridge.destinations.mattermost_actions import (
    HANDLING_ACTIONS,
    MODE_ACTIONS,
    ActionSigner,
    offered,
    signer_for,
)
from bridge.destinations.mattermost_settings import ACTIONS_PATH
from bridge.events import (
    HANDLING,
    MODE_CHANGE,
    Conversation,
    HandlingData,
    InvalidEvent,
    ModeChangeData,
    read_json,
)
from bridge.inbound import (
    INVALID,
    INVALID_JSON,
    UNAUTHORIZED,
    Receiving,
    Refused,
    bounded_body,
    conversation_by_ref,
    thread_event,
)
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store import NewEvent, ReplyIntake

log = logging.getLogger("bridge.mattermost_buttons")
DEDUP_WINDOW = 7 * 86400.0  # a press is sent once; a week of keys costs a few rows
MATTERMOST = "mattermost"  # whose conversation links hold the threads, and who shows a claim
ENDPOINT = "mattermost"  # the route's label in sitegpt_bridge_webhooks_total
SOURCE = "mattermost button"
MODE_TAKERS = Takers(MODE_CHANGE)  # SiteGPT's destination switches the mode
HANDLERS = (MATTERMOST,)  # Claim and Resolve pressed in Mattermost show in its thread only
MODES_OFF = ("Take over and Hand back are off for this chatbot: they need replies from "
             "Mattermost ([mattermost] replies) and a SiteGPT API key.")


class ButtonPress(BaseModel):
    """What Mattermost posts when someone presses a button; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: str = Field(min_length=1)
    user_name: str | None = None
    channel_id: str = Field(min_length=1)
    post_id: str = Field(min_length=1)
    trigger_id: str = Field(min_length=1)  # one per press: what a repeat of it shares
    context: Any = None  # the button's integration context: checked by its signature


@dataclass(frozen=True)
class Signed:
    """A press whose context the bridge signed: the action and the conversation's key."""

    press: ButtonPress
    action: str
    conversation: str


@dataclass(frozen=True)
class ButtonReceiver:
    """What POST /mattermost/actions needs, wired once at start-up."""

    settings: Settings
    store: ReplyIntake
    signer: ActionSigner
    receiving: Receiving

    async def pressed(self, request: Request) -> Response:
        """Mattermost shows an answer's `ephemeral_text` to whoever pressed the button."""
        try:
            raw = await bounded_body(request, self.settings.server.max_body_bytes)
            event = await self._event(self._signed(_press(raw)))
            if isinstance(event, str):
                self.receiving.storing.ignored(SOURCE, event)
                return JSONResponse({"ephemeral_text": event})
            await self.receiving.storing.accept(SOURCE, event)
        except Refused as refusal:
            return self.receiving.refused(f"mattermost {ACTIONS_PATH}", refusal).response()
        return JSONResponse({})

    def _signed(self, press: ButtonPress) -> Signed:
        context = press.context if isinstance(press.context, dict) else {}
        action, conversation = context.get("action"), context.get("conversation")
        if not self.signer.valid(action, conversation, context.get("signature")):
            raise Refused(UNAUTHORIZED, "missing or wrong signature in the button's context")
        assert isinstance(action, str) and isinstance(conversation, str)
        return Signed(press, action, conversation)

    async def _event(self, signed: Signed) -> NewEvent | str:
        """The event the press stands for, or why it stands for none (said to the presser)."""
        press = signed.press
        record = await conversation_by_ref(self.store, MATTERMOST,
                                           f"{press.channel_id}/{press.post_id}")
        if record is None:
            return "This button is not on the root post of a conversation the bridge knows."
        if record.key != signed.conversation:
            return "This button belongs to another conversation's root post."
        if signed.action in MODE_ACTIONS and signed.action not in offered(
                self.settings, record.chatbot_id):
            return MODES_OFF
        if signed.action not in (*MODE_ACTIONS, *HANDLING_ACTIONS):
            return "Not one of the bridge's buttons."
        return _button_event(record, signed)


def _press(raw: bytes) -> ButtonPress:
    """The press, or Refused: 400 if the body is not JSON, 422 if not what Mattermost sends."""
    try:
        return ButtonPress.model_validate(read_json(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refused(INVALID, f"not a Mattermost button press: {where}: {first['msg']}") from exc
    except InvalidEvent as exc:
        raise Refused(INVALID, str(exc), field=exc.field) from exc
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to handle
        raise Refused(INVALID_JSON, f"body is not JSON: {exc}") from exc


def _button_event(conversation: Conversation, signed: Signed) -> NewEvent:
    press = signed.press
    ids = {"chatbot_id": conversation.chatbot_id, "thread_id": conversation.thread_id,
           "channel": press.channel_id, "thread_ts": press.post_id, "user": press.user_id,
           "user_name": press.user_name, "tool": MATTERMOST}
    # A press is sent once; its trigger id tells a repeat of it from a second press.
    key = (f"mattermost-action:{press.post_id}:{press.user_id}:{signed.action}:"
           f"{press.trigger_id}")
    if signed.action in HANDLING_ACTIONS:
        data: HandlingData | ModeChangeData = HandlingData(
            **ids, action=HANDLING_ACTIONS[signed.action])
        return thread_event(HANDLING, conversation, key, data, HANDLERS)
    data = ModeChangeData(**ids, mode=MODE_ACTIONS[signed.action])
    return thread_event(MODE_CHANGE, conversation, key, data, MODE_TAKERS)


def mattermost_routes(settings: Settings, store: ReplyIntake, clock: Clock,
                      on_accept: Callable[[], None],
                      metrics: Metrics | None = None) -> list[BaseRoute]:
    """POST /mattermost/actions once Mattermost is on and `actions_url` is set; else none."""
    if settings.mattermost.actions_endpoint is None:
        return []
    receiving = Receiving(ENDPOINT, log, store, clock, DEDUP_WINDOW, on_accept,
                          metrics or Metrics())
    receiver = ButtonReceiver(settings, store, signer_for(settings.mattermost), receiving)
    return [Route(ACTIONS_PATH, receiver.pressed, methods=["POST"])]
