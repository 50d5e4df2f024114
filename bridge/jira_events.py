"""Jira's webhooks: what happens to a ticket the bridge opened, stored for its Slack thread."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bridge.clock import Clock
from bridge.destinations import Takers
from bridge.destinations.jira import is_own_comment
from bridge.events import (
    TICKET_COMMENT,
    TICKET_DELETED,
    TICKET_STATUS,
    Conversation,
    InvalidEvent,
    TicketCommentData,
    TicketDeletedData,
    TicketStatusData,
    read_json,
)
from bridge.inbound import (
    INVALID,
    INVALID_JSON,
    UNAUTHORIZED,
    Answer,
    Receiving,
    Refused,
    Storing,
    bounded_body,
    conversation_by_ref,
    thread_event,
)
from bridge.jira_markup import comment_text
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store import NewEvent, ReplyIntake

log = logging.getLogger("bridge.jira_events")
PATH = "/jira/webhook"
DEDUP_WINDOW = 7 * 86400.0  # Jira retries for hours at most; a week costs a few rows
IDENTIFIER_HEADER = "x-atlassian-webhook-identifier"
SIGNATURE_HEADER = "x-hub-signature"
ISSUE_UPDATED = "jira:issue_updated"
ISSUE_DELETED = "jira:issue_deleted"
COMMENT_CREATED = "comment_created"
DESTINATIONS = Takers(TICKET_STATUS, TICKET_COMMENT, TICKET_DELETED)  # who declares them
JIRA = "jira"  # whose conversation links hold the ticket keys
TicketData = TicketStatusData | TicketCommentData | TicketDeletedData
ENDPOINT = "jira"  # its label in sitegpt_bridge_webhooks_total


def _text_id(value: Any) -> Any:
    """Jira sends ids as strings, but some payloads (and older versions) as numbers."""
    return str(value) if isinstance(value, int) else value


JiraId = Annotated[str, BeforeValidator(_text_id)]


class JiraModel(BaseModel):
    """Jira's payloads carry the whole issue: what the bridge does not read is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class JiraUser(JiraModel):
    display_name: str | None = Field(None, alias="displayName")
    name: str | None = None
    account_type: str | None = Field(None, alias="accountType")

    @property
    def shown(self) -> str | None:
        return self.display_name or self.name


class StatusCategory(JiraModel):
    key: str | None = None


class Status(JiraModel):
    id: JiraId | None = None
    name: str | None = None
    category: StatusCategory | None = Field(None, alias="statusCategory")


class IssueFields(JiraModel):
    status: Status | None = None


class Issue(JiraModel):
    id: JiraId | None = None
    key: str = Field(min_length=1)
    fields: IssueFields = IssueFields()


class ChangeItem(JiraModel):
    field: str = ""
    field_id: str | None = Field(None, alias="fieldId")
    source: JiraId | None = Field(None, alias="from")
    source_name: str | None = Field(None, alias="fromString")
    target: JiraId | None = Field(None, alias="to")
    target_name: str | None = Field(None, alias="toString")

    @property
    def is_status(self) -> bool:
        return self.field_id == "status" or (self.field_id is None and self.field == "status")


class Changelog(JiraModel):
    id: JiraId | None = None
    items: list[ChangeItem] = []


class Comment(JiraModel):
    id: JiraId | None = None
    author: JiraUser | None = None
    body: str | dict[str, Any] = ""


class JiraWebhook(JiraModel):
    webhook_event: str = Field(alias="webhookEvent")
    timestamp: int | None = None
    user: JiraUser | None = None
    issue: Issue | None = None
    changelog: Changelog | None = None
    comment: Comment | None = None


@dataclass(frozen=True)
class WebhookCredentials:
    """Jira Cloud's signing secret and Data Center's URL token, as bytes; None when unset."""

    secret: bytes | None
    token: bytes | None

    def admit(self, raw: bytes, headers: Headers, token: str | None) -> bool:
        """Whether the request is Jira's: a valid X-Hub-Signature, else the right ?token=."""
        signature = headers.get(SIGNATURE_HEADER)
        if self.secret is not None and signature is not None:
            expected = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
            # latin-1 undoes the ASGI decoding: the header's raw bytes, compared in full.
            return hmac.compare_digest(signature.strip().lower().encode("latin-1"),
                                       expected.encode())
        if self.token is not None and token is not None:
            return hmac.compare_digest(token.encode(), self.token)
        return False


@dataclass
class JiraReceiver:
    """What POST /jira/webhook needs, wired once at start-up."""

    store: ReplyIntake
    clock: Clock
    credentials: WebhookCredentials
    max_body_bytes: int
    comments_to_slack: bool
    on_accept: Callable[[], None] = lambda: None
    destinations: Sequence[str] = DESTINATIONS  # those switched on take what Jira tells
    metrics: Metrics = field(default_factory=Metrics)
    receiving: Receiving = field(init=False)

    def __post_init__(self) -> None:
        self.receiving = Receiving(ENDPOINT, log, self.store, self.clock, DEDUP_WINDOW,
                                   self.on_accept, self.metrics)

    @property
    def storing(self) -> Storing:
        return self.receiving.storing

    async def webhook(self, request: Request) -> Response:
        try:
            answer = await self._answer(request)
        except Refused as refusal:
            answer = self.receiving.refused(f"jira {PATH}", refusal)
        return answer.response()

    async def _answer(self, request: Request) -> Answer:
        raw = await self._admitted_body(request)
        hook = parse_webhook(raw)
        event = await self._ticket_event(hook, request.headers, raw)
        source = f"jira {hook.webhook_event}"
        if isinstance(event, str):
            return self.storing.ignored(source, event)
        return await self.storing.accept(source, event)

    async def _admitted_body(self, request: Request) -> bytes:
        raw = await bounded_body(request, self.max_body_bytes)
        # The token rides in the query string, so neither it nor the URL is ever logged.
        if not self.credentials.admit(raw, request.headers, request.query_params.get("token")):
            raise Refused(UNAUTHORIZED, "missing or wrong X-Hub-Signature or token")
        return raw

    async def _ticket_event(self, hook: JiraWebhook, headers: Headers,
                            raw: bytes) -> NewEvent | str:
        """The event to store for the conversation's Slack thread, or why there is none."""
        read = READERS.get(hook.webhook_event)
        if read is None:
            return "not an event the bridge follows"
        if hook.issue is None:
            raise Refused(INVALID, "issue: required for " + hook.webhook_event)
        why_not = self._not_followed(hook)
        if why_not:
            return why_not
        conversation = await conversation_by_ref(self.store, JIRA, hook.issue.key)
        if conversation is None:
            return f"{hook.issue.key} is not a ticket the bridge opened"
        data = read(hook, conversation)
        if isinstance(data, str):
            return data
        return _new_event(data, _dedup_key(headers, raw), self.destinations)

    def _not_followed(self, hook: JiraWebhook) -> str | None:
        """Why a comment is not shown in Slack, or None when it is (or is no comment)."""
        if hook.webhook_event != COMMENT_CREATED:
            return None
        if not self.comments_to_slack:
            return "comments_to_slack is off"
        comment = hook.comment
        if comment is None:
            raise Refused(INVALID, "comment: required for " + COMMENT_CREATED)
        if comment.author is not None and comment.author.account_type == "app":
            return "a comment written by an app"
        if is_own_comment(comment_text(comment.body)):
            return "the bridge's own comment"
        return None

def parse_webhook(raw: bytes) -> JiraWebhook:
    """The webhook's few fields the bridge reads, or Refused: 400 if not JSON, 422 if not Jira's."""
    try:
        body = read_json(raw)
    except InvalidEvent as exc:
        raise Refused(INVALID, f"not a Jira webhook: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise Refused(INVALID_JSON, f"body is not JSON: {exc}") from exc
    try:
        return JiraWebhook.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refused(INVALID, f"not a Jira webhook: {where}: {first['msg']}") from exc


def _status_change(hook: JiraWebhook, conversation: Conversation) -> TicketData | str:
    assert hook.issue is not None
    change = next((item for item in (hook.changelog or Changelog()).items if item.is_status),
                  None)
    if change is None or not change.target_name:
        return "no status change"
    current = hook.issue.fields.status
    # The issue's own status tells the category, unless a later change has moved it on since.
    category = None
    if current is not None and current.category is not None and (
            current.id == change.target or current.name == change.target_name):
        category = current.category.key
    return TicketStatusData(
        chatbot_id=conversation.chatbot_id, thread_id=conversation.thread_id,
        issue_key=hook.issue.key, status_id=change.target, status=change.target_name,
        previous_status=change.source_name, category=category,
        actor=hook.user.shown if hook.user else None, changed_at=hook.timestamp)


def _comment(hook: JiraWebhook, conversation: Conversation) -> TicketData | str:
    assert hook.issue is not None and hook.comment is not None
    comment = hook.comment
    if not comment_text(comment.body).strip():
        return "an empty comment"
    return TicketCommentData(
        chatbot_id=conversation.chatbot_id, thread_id=conversation.thread_id,
        issue_key=hook.issue.key, comment_id=comment.id,
        author=comment.author.shown if comment.author else None, body=comment.body)


def _deleted(hook: JiraWebhook, conversation: Conversation) -> TicketData | str:
    assert hook.issue is not None
    return TicketDeletedData(
        chatbot_id=conversation.chatbot_id, thread_id=conversation.thread_id,
        issue_key=hook.issue.key, actor=hook.user.shown if hook.user else None)


READERS: dict[str, Callable[[JiraWebhook, Conversation], TicketData | str]] = {
    ISSUE_UPDATED: _status_change, COMMENT_CREATED: _comment, ISSUE_DELETED: _deleted}
KINDS = {TicketStatusData: TICKET_STATUS, TicketCommentData: TICKET_COMMENT,
         TicketDeletedData: TICKET_DELETED}


def _dedup_key(headers: Headers, raw: bytes) -> str:
    """Jira's delivery id, the same on each of its retries; without one, the body's hash."""
    identifier = headers.get(IDENTIFIER_HEADER, "").strip()
    if identifier:
        return f"jira-webhook:{identifier}"
    return f"jira-body:{hashlib.sha256(raw).hexdigest()}"


def _new_event(data: TicketData, dedup_key: str, destinations: Sequence[str]) -> NewEvent:
    return thread_event(KINDS[type(data)], Conversation(data.chatbot_id, data.thread_id),
                        dedup_key, data, destinations)


def jira_routes(settings: Settings, store: ReplyIntake, clock: Clock,
                on_accept: Callable[[], None],
                metrics: Metrics | None = None) -> list[BaseRoute]:
    """POST /jira/webhook, or nothing (a 404) while neither secret nor token is set."""
    jira = settings.jira
    if not jira.back_channel:
        return []
    credentials = WebhookCredentials(
        secret=jira.webhook_secret.get_secret_value().encode() if jira.webhook_secret else None,
        token=jira.webhook_token.get_secret_value().encode() if jira.webhook_token else None)
    receiver = JiraReceiver(store=store, clock=clock, credentials=credentials,
                            max_body_bytes=jira.webhook_max_body_bytes,
                            comments_to_slack=jira.comments_to_slack, on_accept=on_accept,
                            metrics=metrics or Metrics(),
                            destinations=DESTINATIONS.built_with(settings))
    return [Route(PATH, receiver.webhook, methods=["POST"])]
