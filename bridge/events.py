"""SiteGPT's three webhook events as typed models, and the canonical hash that deduplicates them."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

MESSAGE = "ADD_MESSAGE"
ESCALATION = "CONVERSATION_ESCALATED"
LEAD = "NEW_LEAD_CAPTURE"
TICKET_LINKED = "BRIDGE_TICKET_LINKED"
SLACK_REPLY = "SLACK_THREAD_REPLY"
CHAT_REPLY = "CHAT_THREAD_REPLY"
MODE_CHANGE = "SLACK_MODE_CHANGE"
TICKET_STATUS = "JIRA_TICKET_STATUS"
TICKET_COMMENT = "JIRA_TICKET_COMMENT"
TICKET_DELETED = "JIRA_TICKET_DELETED"
THREAD_NOTICE = "BRIDGE_THREAD_NOTICE"
HANDLING = "SLACK_HANDLING"
RESOLVED = "BRIDGE_CONVERSATION_RESOLVED"
DASHBOARD = "https://sitegpt.ai/{chatbot_id}/chat-history/{thread_id}"


class SiteGPTModel(BaseModel):
    """SiteGPT's camelCase fields, with unknown keys kept rather than dropped."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Source(SiteGPTModel):
    """A page an answer drew on, when SiteGPT sends it with its title rather than a bare URL."""

    url: str
    title: str | None = None


def _source(value: Any) -> str | Source:
    """A source: its URL, or SiteGPT's object with the URL and the page's title."""
    if isinstance(value, str | Source):
        return value
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return Source.model_validate(value)
    raise ValueError("a source must be a string (its URL) or an object with a url string")


class MessageData(SiteGPTModel):
    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    gpt_model: str | None = Field(None, alias="gptModel")
    sources: list[Annotated[str | Source, PlainValidator(_source)]] | None = None
    question: str | None = None
    answer: str | None = None
    message_type: str | None = Field(None, alias="messageType")
    agent_id: str | None = Field(None, alias="agentId")
    icon_url: str | None = Field(None, alias="iconUrl")
    agent_name: str | None = Field(None, alias="agentName")
    system_message_type: str | None = Field(None, alias="systemMessageType")


class Visitor(SiteGPTModel):
    id: str | None = None
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    verified: bool | None = None
    created_at: str | None = Field(None, alias="createdAt")


class EscalationData(SiteGPTModel):
    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    dashboard_url: str | None = Field(None, alias="dashboardUrl")
    user: Visitor | None = None


class LeadDetails(SiteGPTModel):
    id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    captured_at: str | None = Field(None, alias="capturedAt")

    @property
    def custom_fields(self) -> dict[str, Any]:
        """Fields configured in SiteGPT's lead form beyond the standard ones."""
        return dict(self.model_extra or {})


class LeadData(SiteGPTModel):
    chatbot_id: str = Field(alias="chatbotId")
    chatbot_name: str | None = Field(None, alias="chatbotName")
    dashboard_url: str | None = Field(None, alias="dashboardUrl")
    lead_details: LeadDetails = Field(alias="leadDetails")

    @property
    def thread_id(self) -> str | None:
        """The conversation the lead was captured in, when SiteGPT names it (`threadId`)."""
        named = (self.model_extra or {}).get("threadId")
        return named if isinstance(named, str) and named else None


class TicketLinkedData(SiteGPTModel):
    """Made by the bridge itself: a Jira ticket now exists for a conversation."""

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    issue_key: str = Field(alias="issueKey")
    issue_url: str = Field(alias="issueUrl")
    created: bool = True


class SlackReplyData(SiteGPTModel):
    """Made by the bridge itself: a person answered in a conversation's Slack thread."""

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    slack_event_id: str = Field(alias="slackEventId")
    channel: str
    thread_ts: str = Field(alias="threadTs")
    ts: str
    user: str
    text: str


class ChatReplyData(SiteGPTModel):
    """Made by the bridge itself: a person answered in a conversation's thread in a chat tool.

    `tool` names the chat tool's destination ("mattermost"), which the answer, the mark that
    it was sent and any notice go back to; `post` is the reply's id there, `root` the thread's.
    Slack's replies keep their own kind (SLACK_THREAD_REPLY), as the first release stored them.
    """

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    tool: str
    channel: str
    root: str
    post: str
    user: str
    user_name: str | None = Field(None, alias="userName")  # as the tool named the author
    text: str


class ButtonData(SiteGPTModel):
    """Made by the bridge itself: someone pressed a button on a conversation's thread parent.

    `tool` is the chat tool it was pressed in; `thread_ts` is its thread there (Slack's parent
    ts, Mattermost's root post id), `user` its member's id there.
    """

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    channel: str
    thread_ts: str = Field(alias="threadTs")
    user: str
    tool: str = "slack"  # events stored before there was a second chat tool came from Slack
    user_name: str | None = Field(None, alias="userName")  # as the tool named its member


class ModeChangeData(ButtonData):
    """Take over or Hand back to AI."""

    mode: Literal["AGENT", "AI"]


class HandlingData(ButtonData):
    """I'll take it (claim) or Resolve."""

    action: Literal["claim", "resolve"]


class ResolvedData(SiteGPTModel):
    """Made by the bridge itself: a person resolved the conversation (Resolve in Slack)."""

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    user: str
    resolved_at: float = Field(alias="resolvedAt")  # so that resolving again is a new event


class TicketStatusData(SiteGPTModel):
    """Made by the bridge from Jira's webhook: the conversation's ticket moved to a status."""

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    issue_key: str = Field(alias="issueKey")
    status_id: str | None = Field(None, alias="statusId")
    status: str
    previous_status: str | None = Field(None, alias="previousStatus")
    category: str | None = None  # Jira's status category key: "new", "indeterminate", "done"
    actor: str | None = None
    changed_at: int | None = Field(None, alias="changedAt")  # Jira's timestamp, milliseconds


class TicketCommentData(SiteGPTModel):
    """Made by the bridge from Jira's webhook: a person commented on the conversation's ticket.

    `body` is as Jira sent it: wiki markup (a string) or Atlassian Document Format (an object).
    """

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    issue_key: str = Field(alias="issueKey")
    comment_id: str | None = Field(None, alias="commentId")
    author: str | None = None
    body: str | dict[str, Any]


class TicketDeletedData(SiteGPTModel):
    """Made by the bridge from Jira's webhook: the conversation's ticket was deleted."""

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    issue_key: str = Field(alias="issueKey")
    actor: str | None = None


class ThreadNoticeData(SiteGPTModel):
    """Made by the bridge itself: a notice for a chat thread, e.g. that a reply from it failed.

    `notice` names the template (`<tool>/<notice>.json.j2`), `context` its variables;
    `channel` and `thread_ts` are the thread in the one chat tool the notice is addressed to
    (Slack's parent ts, Mattermost's root post id).
    """

    chatbot_id: str = Field(alias="chatbotId")
    thread_id: str = Field(alias="threadId")
    channel: str
    thread_ts: str = Field(alias="threadTs")
    notice: str
    context: dict[str, Any] = {}
    tool: str = "slack"  # notices stored before there was a second chat tool were Slack's


class MessageEvent(SiteGPTModel):
    event: Literal["ADD_MESSAGE"]
    data: MessageData


class EscalationEvent(SiteGPTModel):
    event: Literal["CONVERSATION_ESCALATED"]
    data: EscalationData


class LeadEvent(SiteGPTModel):
    event: Literal["NEW_LEAD_CAPTURE"]
    data: LeadData


class TicketLinkedEvent(SiteGPTModel):
    event: Literal["BRIDGE_TICKET_LINKED"]
    data: TicketLinkedData


class SlackReplyEvent(SiteGPTModel):
    event: Literal["SLACK_THREAD_REPLY"]
    data: SlackReplyData


class ChatReplyEvent(SiteGPTModel):
    event: Literal["CHAT_THREAD_REPLY"]
    data: ChatReplyData


class ModeChangeEvent(SiteGPTModel):
    event: Literal["SLACK_MODE_CHANGE"]
    data: ModeChangeData


class HandlingEvent(SiteGPTModel):
    event: Literal["SLACK_HANDLING"]
    data: HandlingData


class ResolvedEvent(SiteGPTModel):
    event: Literal["BRIDGE_CONVERSATION_RESOLVED"]
    data: ResolvedData


class TicketStatusEvent(SiteGPTModel):
    event: Literal["JIRA_TICKET_STATUS"]
    data: TicketStatusData


class TicketCommentEvent(SiteGPTModel):
    event: Literal["JIRA_TICKET_COMMENT"]
    data: TicketCommentData


class TicketDeletedEvent(SiteGPTModel):
    event: Literal["JIRA_TICKET_DELETED"]
    data: TicketDeletedData


class ThreadNoticeEvent(SiteGPTModel):
    event: Literal["BRIDGE_THREAD_NOTICE"]
    data: ThreadNoticeData


Event = (MessageEvent | EscalationEvent | LeadEvent | TicketLinkedEvent | SlackReplyEvent
         | ChatReplyEvent | ModeChangeEvent | TicketStatusEvent | TicketCommentEvent
         | TicketDeletedEvent | ThreadNoticeEvent | HandlingEvent | ResolvedEvent)
MODELS: dict[str, type[SiteGPTModel]] = {
    MESSAGE: MessageEvent,
    ESCALATION: EscalationEvent,
    LEAD: LeadEvent,
    TICKET_LINKED: TicketLinkedEvent,
    SLACK_REPLY: SlackReplyEvent,
    CHAT_REPLY: ChatReplyEvent,
    MODE_CHANGE: ModeChangeEvent,
    TICKET_STATUS: TicketStatusEvent,
    TICKET_COMMENT: TicketCommentEvent,
    TICKET_DELETED: TicketDeletedEvent,
    THREAD_NOTICE: ThreadNoticeEvent,
    HANDLING: HandlingEvent,
    RESOLVED: ResolvedEvent,
}

SHORT_KINDS = {MESSAGE: "message", ESCALATION: "escalation", LEAD: "lead",
               TICKET_LINKED: "ticket link", SLACK_REPLY: "slack reply",
               CHAT_REPLY: "chat reply",
               MODE_CHANGE: "mode change", TICKET_STATUS: "ticket status",
               TICKET_COMMENT: "ticket comment", TICKET_DELETED: "ticket deleted",
               THREAD_NOTICE: "thread notice", HANDLING: "claim/resolve",
               RESOLVED: "resolved"}  # how listings name each kind


@dataclass(frozen=True)
class Conversation:
    """A SiteGPT conversation: one chatbot's thread with one visitor."""

    chatbot_id: str
    thread_id: str

    @property
    def key(self) -> str:
        return f"{self.chatbot_id}/{self.thread_id}"

    @property
    def dashboard_url(self) -> str:
        return dashboard_url(self.chatbot_id, self.thread_id)


def dashboard_url(chatbot_id: str, thread_id: str) -> str:
    """SiteGPT's page of a conversation; the ids are percent-encoded, so "|" or ">" in one
    cannot end a link or give it a label."""
    return DASHBOARD.format(chatbot_id=quote(chatbot_id, safe=""),
                            thread_id=quote(thread_id, safe=""))


class InvalidEvent(ValueError):
    """A body that is JSON but not the expected event; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_event(kind: str, body: Any) -> Event:
    """Validate a decoded body as the event `kind`, or raise InvalidEvent naming the field."""
    try:
        return MODELS[kind].model_validate(body)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidEvent(field, first["msg"]) from exc


_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def without_unstorable(body: Any) -> Any:
    """`body` with U+FFFD for each lone UTF-16 surrogate (half an emoji) and NUL in its strings.

    JSON lets "\\ud83d" stand alone, but no UTF-8 text can hold it: not the hash, not the store.
    JSON lets "\\u0000" in too, but PostgreSQL's text cannot hold it.
    """
    if isinstance(body, str):
        return _UNSTORABLE.sub("\ufffd", body)
    if isinstance(body, list):
        return [without_unstorable(item) for item in body]
    if isinstance(body, dict):
        return {without_unstorable(key): without_unstorable(value)
                for key, value in body.items()}
    return body


INT_DIGITS = 19  # of 2**63 - 1, the largest integer the bodies may hold
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")


def read_json(raw: bytes) -> Any:
    """A webhook body as JSON holds it: ValueError if it is not JSON, InvalidEvent for a number
    JSON has not (NaN, Infinity, 1e400) or an integer beyond 64 bits; a lone surrogate (half an
    emoji) or NUL becomes U+FFFD."""
    # Decoded strictly: json.loads(bytes) would let surrogates encoded as bytes through.
    text = raw.decode(json.detect_encoding(raw))
    body = json.loads(text, parse_constant=_not_json_number, parse_float=_finite_float,
                      parse_int=_bounded_int)
    if _UNSTORABLE_ESCAPE.search(text):  # half an emoji cut by the sender, or NUL: keep the rest
        body = without_unstorable(body)
    return body


def _not_json_number(name: str) -> Any:
    """NaN and Infinity: Python reads them, JSON has no such numbers, and receivers refuse them."""
    raise InvalidEvent("body", f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (math.inf, -math.inf):  # 1e400: valid JSON, but no receiver can hold it
        raise InvalidEvent("body", f"{text[:20]} is too large a number")
    return number


def _bounded_int(text: str) -> int:
    """An integer a signed 64-bit integer holds: what databases, CRMs and most JSON readers can
    keep. Longer digit strings are refused before int() spends time on them."""
    if len(text.lstrip("-")) <= INT_DIGITS:
        number = int(text)
        if -(2**63) <= number < 2**63:
            return number
    raise InvalidEvent("body", f"{text[:20]} is too large an integer")


def canonical_json(body: Any) -> str:
    """Sorted keys, no whitespace: the same JSON value always gives the same text."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dedup_key(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()


def conversation_of(event: Event) -> Conversation | None:
    """The conversation an event belongs to; leads belong to none."""
    data = event.data
    if isinstance(data, LeadData):
        return None
    return Conversation(data.chatbot_id, data.thread_id)


def ordering_key(event: Event) -> str:
    """Deliveries sharing this key go out one at a time, in arrival order."""
    conversation = conversation_of(event)
    if conversation is not None:
        return conversation.key
    lead = event.data
    assert isinstance(lead, LeadData)
    if lead.thread_id is not None:  # in line with its conversation, which it may name
        return Conversation(lead.chatbot_id, lead.thread_id).key
    return f"lead:{lead.chatbot_id}/{lead.lead_details.id}"
