"""Jira: one ticket per escalated conversation; a later escalation comments on its open ticket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import requests
from jira import JIRA, JIRAError

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import Delivered, Delivery, Outcome, Skipped, parse_retry_after
from bridge.destinations.jira_settings import JiraSettings
from bridge.errors import DeliveryError, PermanentError, RetryableError, TemplateError
from bridge.event_rows import transcript_line
from bridge.events import (
    ESCALATION,
    RESOLVED,
    TICKET_LINKED,
    TICKET_STATUS,
    Conversation,
    EscalationData,
    Event,
    MessageData,
    ResolvedData,
    canonical_json,
    conversation_of,
)
from bridge.settings import Settings
from bridge.store import FollowUp, StoredMessage
from bridge.templating import (
    CUT_MARKER,
    Templates,
    cut,
    is_sitegpt_host,
    jira_escape,
    link_host,
)

if TYPE_CHECKING:  # the factory's signature only
    from bridge.destinations.shared import Shared

T = TypeVar("T")
# Jira counts length in UTF-16 code units, as Java strings do: an emoji counts two.
SUMMARY_LIMIT = 255
TEXT_LIMIT = 32_000  # Jira refuses text fields over 32,767 units; the rest is headroom
REASON_LIMIT = 300
LABEL_PREFIX = "sitegpt-"
RETRYABLE_STATUSES = frozenset({408, 429})
# SiteGPT's own dashboard link is used only if it cannot break out of a [label|url] link.
_LINK_SAFE = re.compile(r"https?://[A-Za-z0-9._~:/?#&=%-]+")
_WIKI_CUT_MARKER = jira_escape(CUT_MARKER)
# A preview has no stored event yet to name in the comment's marker.
PREVIEW_MARKER = "sitegpt-bridge:<event id>:<received at>"


def utf16_units(text: str) -> int:
    """The length Jira sees: UTF-16 code units, two for any character beyond U+FFFF."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def cut_utf16(text: str, limit: int, marker: str = CUT_MARKER) -> str:
    """At most `limit` UTF-16 units, ending with `marker` when cut, never half a character."""
    if utf16_units(text) <= limit:
        return text
    room = max(limit - utf16_units(marker), 0)
    kept = text.encode("utf-16-le", "surrogatepass")[: room * 2]
    return kept.decode("utf-16-le", "ignore") + marker  # "ignore": a half pair at the end


def browse_url(jira_url: str, key: str) -> str:
    """Where a person opens the ticket `key` on the Jira at `jira_url`."""
    return f"{jira_url.rstrip('/')}/browse/{key}"


def conversation_label(conversation: Conversation) -> str:
    """The label that marks a conversation's tickets, so Jira itself can be asked for them."""
    digest = hashlib.sha256(conversation.key.encode()).hexdigest()[:16]
    return f"{LABEL_PREFIX}{digest}"


class JiraTickets:
    """The blocking `jira` client, built on first use, reduced to the few calls the bridge makes."""

    def __init__(self, settings: JiraSettings) -> None:
        self.settings = settings
        self._client: JIRA | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> JIRA:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> JIRA:
        settings = self.settings
        token = settings.personal_access_token
        api_token = settings.api_token
        return JIRA(
            server=settings.url,
            basic_auth=(settings.email or "", api_token.get_secret_value()) if api_token else None,
            token_auth=token.get_secret_value() if token else None,
            # The library tells Cloud from Server by serverInfo's deploymentType, and only then
            # searches through Cloud's /search/jql: Cloud's old /search answers 410 Gone.
            get_server_info=True,
            max_retries=0,  # the worker's backoff decides when to try again
            timeout=settings.timeout_seconds,
        )

    def deployment(self) -> str:
        return f"Jira {self.client.deploymentType or 'Server'}"

    def whoami(self) -> str:
        me = self.client.myself()
        return str(me.get("displayName") or me.get("emailAddress") or me.get("name") or "?")

    def check_project(self, key: str, issue_type: str) -> None:
        """Raise unless the project exists and, where Jira lists them, offers the issue type."""
        project = self.client.project(key)
        names = [kind.name for kind in getattr(project, "issueTypes", [])]
        if names and issue_type not in names:
            raise PermanentError(
                f"jira: project {key} has no issue type {issue_type!r} (it has {', '.join(names)})")

    def open_ticket(self, label: str) -> str | None:
        """The newest ticket with this label that is not done, if any."""
        jql = f'labels = "{label}" AND statusCategory != Done ORDER BY created DESC'
        issues = self.client.search_issues(jql, maxResults=10, fields=["status"])
        return next((issue.key for issue in issues if not _is_done(issue.raw)), None)

    def still_open(self, key: str) -> str | None:
        """The ticket's current key if it exists and is not done (a moved ticket gets a new key)."""
        try:
            issue = self.client.issue(key, fields="status")
        except JIRAError as exc:
            if exc.status_code == 404:
                return None
            raise
        return None if _is_done(issue.raw) else str(issue.key)

    def transition(self, key: str, name: str) -> dict[str, Any]:
        """Move the ticket through the transition `name` (or to the status of that name);
        the ticket's status after it."""
        offered = self.client.transitions(key)
        wanted = name.casefold()
        chosen = next((option for option in offered
                       if wanted in (str(option.get("name", "")).casefold(),
                                     str((option.get("to") or {}).get("name", "")).casefold())),
                      None)
        if chosen is None:
            names = ", ".join(str(option.get("name")) for option in offered) or "none"
            raise PermanentError(
                f"jira: {key} offers no transition {name!r} (it offers {names}): "
                "see [jira] resolve_transition")
        self.client.transition_issue(key, str(chosen["id"]))
        issue = self.client.issue(key, fields="status")
        return dict(issue.raw["fields"]["status"])

    def create(self, fields: dict[str, Any]) -> str:
        return str(self.client.create_issue(fields=fields, prefetch=False).key)

    def comment(self, key: str, body: str) -> None:
        self.client.add_comment(key, body)

    def has_in_description(self, key: str, marker: str) -> bool:
        issue = self.client.issue(key, fields="description")
        return marker in (getattr(issue.fields, "description", "") or "")

    def has_comment(self, key: str, marker: str) -> bool:
        recent = self.client.comments(key, max_results=50, order_by="-created")
        return any(marker in (getattr(comment, "body", "") or "") for comment in recent)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class JiraDestination:
    """Escalations become tickets: created once, found again by label, commented on later."""

    name: ClassVar[str] = "jira"

    def __init__(self, settings: Settings, templates: Templates, notify: bool = True,
                 tickets: JiraTickets | None = None, clock: Clock | None = None) -> None:
        assert settings.jira.url, "the factory builds this destination only with jira.url set"
        self.settings = settings
        self.jira = settings.jira
        self.url = settings.jira.url.rstrip("/")
        self.templates = templates
        self.notify = notify  # tell the destinations that take ticket links of new tickets
        self.tickets = tickets or JiraTickets(settings.jira)
        self.clock = clock or SystemClock()  # for previews; deliver() uses the delivery's

    def accepts(self, kind: str) -> bool:
        return kind == ESCALATION or (kind == RESOLVED and bool(self.jira.resolve_transition))

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Comment on the conversation's open ticket if it has one, else find or create it;
        move it through `resolve_transition` when the conversation is resolved in Slack."""
        data = delivery.event.data
        if isinstance(data, ResolvedData):
            return await self._resolve(delivery, data)
        if not isinstance(data, EscalationData):
            raise PermanentError(f"jira: cannot deliver a {delivery.event.event} event")
        try:
            return await self._escalate(delivery, data)
        except TemplateError as exc:
            raise PermanentError(f"jira: {exc}") from exc

    async def verify(self) -> str:
        who = await self._call("check the credentials", self.tickets.whoami)
        projects = self._projects()
        for key in projects:
            await self._call(f"check project {key}", self.tickets.check_project, key,
                             self.jira.issue_type)
        deployment = await self._call("read the server info", self.tickets.deployment)
        return (f"{deployment} at {self.url}, {self.jira.auth_kind} as {who}; "
                f"{self.jira.issue_type} tickets in {', '.join(projects)}")

    async def aclose(self) -> None:
        self.tickets.close()

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """For each escalation: the new ticket's fields as JSON, then the comment a later
        escalation would add. Its transcript is the message samples of the same conversation,
        in order, as if received now. Nothing is sent.
        """
        rendered: dict[str, str] = {}
        for name, event in samples.items():
            if self.accepts(event.event) and isinstance(event.data, EscalationData):
                for what, text in self._preview(event.data, samples).items():
                    rendered[f"{name}: {what}"] = text
        return rendered

    def _preview(self, data: EscalationData, samples: Mapping[str, Event]) -> dict[str, str]:
        now = self.clock.now()
        conversation = Conversation(data.chatbot_id, data.thread_id)
        messages = sample_transcript(conversation, samples, now)
        fields = self._new_ticket(data, messages, conversation_label(conversation), now,
                                  PREVIEW_MARKER)
        comment = self._comment_body(self._context(data, messages, now), PREVIEW_MARKER)
        return {"create the ticket (issue fields)": json.dumps(fields, indent=2,
                                                               ensure_ascii=False),
                "comment on the open ticket (escalated again)": comment}

    async def _escalate(self, delivery: Delivery, data: EscalationData) -> Delivered:
        # One at a time per conversation across replicas: a replica that took this delivery
        # over from a slow one finds the ticket the slow one made, rather than a second one.
        async with delivery.one_at_a_time("jira-ticket"):
            return await self._ticket(delivery, data)

    async def _ticket(self, delivery: Delivery, data: EscalationData) -> Delivered:
        state = await delivery.state()
        if state.get("key"):
            key = await self._call("read the linked ticket", self.tickets.still_open,
                                   state["key"])
            if key is not None and await self._made_by_this_delivery(delivery, key,
                                                                     _marker(delivery)):
                # An earlier attempt (this replica's, or one whose lease ran out) made it.
                conversation = Conversation(data.chatbot_id, data.thread_id)
                return Delivered(note=key, follow_ups=self._follow_ups(conversation, key, True))
            if key is not None:
                outcome = await self._comment(delivery, data, key, state.get("transcript_upto", 0))
                if key == state["key"]:
                    return outcome
                # The ticket moved (a new key): Slack shows what it is told, so tell it.
                conversation = Conversation(data.chatbot_id, data.thread_id)
                return Delivered(note=key, follow_ups=self._follow_ups(conversation, key, False))
        return await self._link(delivery, data)

    async def _link(self, delivery: Delivery, data: EscalationData) -> Delivered:
        """Find the conversation's open ticket in Jira, or create it; then remember it.

        A ticket found by its label was made by an earlier attempt of this delivery (which
        then heard no answer) or before this store existed; only in the second case does it
        lack this escalation's messages, which then go in as a comment.
        """
        conversation = Conversation(data.chatbot_id, data.thread_id)
        label = conversation_label(conversation)
        messages = await delivery.store.transcript(data.chatbot_id, data.thread_id)
        marker = _marker(delivery)
        key = await self._call("search for the ticket", self.tickets.open_ticket, label)
        created = key is None
        if key is None:
            fields = self._new_ticket(data, messages, label, delivery.clock.now(), marker)
            key = await self._call("create the ticket", self.tickets.create, fields)
        elif not await self._made_by_this_delivery(delivery, key, marker):
            context = self._context(data, messages, delivery.clock.now())
            await self._comment_once(delivery, key, context)
        await _remember(delivery, key, _last_id(messages, 0))
        return Delivered(note=key, follow_ups=self._follow_ups(conversation, key, created))

    async def _resolve(self, delivery: Delivery, data: ResolvedData) -> Outcome:
        """Move the conversation's open ticket through the resolve transition, once.

        A ticket done already (a retry after the move, or someone in Jira) is left alone.
        """
        transition = self.jira.resolve_transition
        key = (await delivery.state()).get("key")
        if not key or not transition:
            return Skipped("the conversation has no ticket")
        current = await self._call("read the ticket", self.tickets.still_open, key)
        if current is None:
            return Skipped(f"{key} is done already")
        status = await self._call(f"move {current} through {transition!r}",
                                  self.tickets.transition, current, transition)
        conversation = Conversation(data.chatbot_id, data.thread_id)
        return Delivered(note=f"{current} moved through {transition}",
                         follow_ups=self._status_follow_ups(conversation, current, status,
                                                            delivery.clock.now()))

    def _status_follow_ups(self, conversation: Conversation, key: str,
                           status: Mapping[str, Any], now: float) -> list[FollowUp]:
        """Tell the destinations that take ticket statuses where the ticket is now."""
        if not self.notify:
            return []
        body = canonical_json({"event": TICKET_STATUS, "data": {
            "chatbotId": conversation.chatbot_id, "threadId": conversation.thread_id,
            "issueKey": key, "statusId": status.get("id"), "status": status.get("name") or "?",
            "category": (status.get("statusCategory") or {}).get("key"),
            "changedAt": int(now * 1000)}})
        return [FollowUp(TICKET_STATUS, body, conversation.key, ())]

    async def _comment(self, delivery: Delivery, data: EscalationData, key: str,
                       upto: int) -> Delivered:
        """Add the messages since the last escalation to the open ticket."""
        messages = await delivery.store.transcript(data.chatbot_id, data.thread_id, after_id=upto)
        await self._comment_once(delivery, key, self._context(data, messages, delivery.clock.now()))
        await _remember(delivery, key, _last_id(messages, upto))
        return Delivered(note=key)

    async def _made_by_this_delivery(self, delivery: Delivery, key: str, marker: str) -> bool:
        return delivery.attempt > 1 and _looked(delivery, await self._call(
            "read the ticket", self.tickets.has_in_description, key, marker))

    async def _comment_once(self, delivery: Delivery, key: str, context: dict[str, Any]) -> None:
        """Comment, unless an earlier attempt did and then timed out before hearing back."""
        marker = _marker(delivery)
        if delivery.attempt > 1 and _looked(delivery, await self._call(
                "read the comments", self.tickets.has_comment, key, marker)):
            return
        await self._call("add a comment", self.tickets.comment, key,
                         self._comment_body(context, marker))

    def _comment_body(self, context: dict[str, Any], marker: str) -> str:
        """The comment template's text, cut to fit, and a faint marker a retry looks for."""
        return self._marked("jira/comment.j2", context, marker)

    def _marked(self, template: str, context: dict[str, Any], marker: str) -> str:
        footer = f"\n\n{{color:#97a0af}}{marker}{{color}}"
        return self._text(template, context, TEXT_LIMIT - utf16_units(footer)) + footer

    def _new_ticket(self, data: EscalationData, messages: Sequence[StoredMessage], label: str,
                    now: float, marker: str) -> dict[str, Any]:
        context = self._context(data, messages, now)
        summary = " ".join(self.templates.render("jira/summary.j2", context).split())
        project = self.settings.routed(data.chatbot_id, "jira_project") or self.jira.project
        return {
            "project": {"key": project},
            "issuetype": {"name": self.jira.issue_type},
            "summary": cut_utf16(summary, SUMMARY_LIMIT),
            "description": self._marked("jira/description.j2", context, marker),
            "labels": [*self.jira.labels, label],
        }

    def _context(self, data: EscalationData, messages: Sequence[StoredMessage],
                 now: float) -> dict[str, Any]:
        """Plain data for the templates: never settings, never a secret."""
        visitor = data.user
        chatbot = self.settings.chatbot(data.chatbot_id)
        return {
            "visitor": {
                "name": visitor.name if visitor else None,
                "email": visitor.email if visitor else None,
                "phone": visitor.phone if visitor else None,
            },
            "chatbot": {
                "id": data.chatbot_id,
                "name": chatbot.name if chatbot and chatbot.name else data.chatbot_id,
            },
            "thread_id": data.thread_id,
            "dashboard_url": _dashboard_link(data),
            "transcript": [_line_context(message) for message in messages],
            "escalated_at": now,
        }

    def _text(self, template: str, context: dict[str, Any], limit: int) -> str:
        return cut_utf16(self.templates.render(template, context).strip(), limit,
                         _WIKI_CUT_MARKER)

    def _follow_ups(self, conversation: Conversation, key: str, created: bool) -> list[FollowUp]:
        """Tell the destinations that take ticket links which ticket the conversation has."""
        if not self.notify:
            return []
        body = canonical_json({"event": TICKET_LINKED, "data": {
            "chatbotId": conversation.chatbot_id, "threadId": conversation.thread_id,
            "issueKey": key, "issueUrl": browse_url(self.url, key), "created": created,
        }})
        return [FollowUp(TICKET_LINKED, body, conversation.key, ())]  # the worker addresses it

    def _projects(self) -> list[str]:
        named = [self.jira.project, *self.settings.routed_values("jira_project")]
        return list(dict.fromkeys(key for key in named if key))

    async def _call(self, action: str, operation: Callable[..., T], *args: Any) -> T:
        """Run a blocking client call off the event loop; its failures become the bridge's."""
        try:
            return await asyncio.to_thread(operation, *args)
        except JIRAError as exc:
            raise _classify(action, exc, self.clock.now()) from exc
        except requests.Timeout as exc:
            raise RetryableError(
                f"jira: {action}: no answer within {self.jira.timeout_seconds:g} s") from exc
        except requests.RequestException as exc:
            raise RetryableError(
                f"jira: {action}: cannot reach {self.url} ({type(exc).__name__})") from exc


async def _remember(delivery: Delivery, key: str, transcript_upto: int) -> None:
    """Jira's state: the conversation's ticket (its ref) and the last message it holds."""
    await delivery.save_state({"key": key, "transcript_upto": transcript_upto}, ref=key)


def _looked(delivery: Delivery, found: bool) -> bool:
    """What a retry found of its own ticket or comment, counted when an attempt was cut off.

    Every retry looks (a timeout, too, may hide a ticket made); a Jira that cannot be read
    retries later rather than risk a second ticket.
    """
    if delivery.uncertain:
        delivery.reconciled(found)
    return found


def _marker(delivery: Delivery) -> str:
    """What a ticket or comment made by this delivery carries, for its retries to look for."""
    return f"sitegpt-bridge:{delivery.claimed.event_id}:{delivery.claimed.created_at:.0f}"


_OWN_MARKER = re.compile(r"sitegpt-bridge:\d+:\d+")


def is_own_comment(text: str) -> bool:
    """Whether a comment carries the marker line every comment the bridge writes ends with."""
    return _OWN_MARKER.search(text) is not None


def _classify(action: str, exc: JIRAError, now: float) -> DeliveryError:
    """Jira's own message, never str(exc): that one carries the request's headers."""
    status = exc.status_code
    message = cut(" ".join(str(exc.text or "").split()) or "no message", REASON_LIMIT)
    reason = f"jira: {action}: HTTP {status}: {message}" if status else f"jira: {action}: {message}"
    if status is None or status in RETRYABLE_STATUSES or status >= 500:
        return RetryableError(reason, retry_after=_retry_after(exc, now))
    return PermanentError(reason)


def _retry_after(exc: JIRAError, now: float) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    return parse_retry_after(headers.get("Retry-After"), now)


def _is_done(issue: dict[str, Any] | None) -> bool:
    status = ((issue or {}).get("fields") or {}).get("status") or {}
    return (status.get("statusCategory") or {}).get("key") == "done"


def _last_id(messages: Sequence[StoredMessage], default: int) -> int:
    return messages[-1].id if messages else default


def _dashboard_link(data: EscalationData) -> str:
    """SiteGPT's link to the conversation, else one built from the ids: safe in [label|url],
    and leading into SiteGPT, as the templates' label says."""
    url = data.dashboard_url
    if url and _LINK_SAFE.fullmatch(url) and is_sitegpt_host(link_host(url) or ""):
        return url
    return Conversation(data.chatbot_id, data.thread_id).dashboard_url


def sample_transcript(conversation: Conversation, samples: Mapping[str, Event],
                      now: float) -> list[StoredMessage]:
    """The conversation's message samples, in order, as the store would keep them."""
    lines = [transcript_line(event.data) for event in samples.values()
             if isinstance(event.data, MessageData) and conversation_of(event) == conversation]
    return [replace(line, id=number, received_at=now) for number, line in enumerate(lines, 1)]


def _line_context(message: StoredMessage) -> dict[str, Any]:
    return {
        "type": message.message_type,
        "question": message.question,
        "answer": message.answer,
        "agent_name": message.agent_name,
        "received_at": message.received_at,
    }


def build_jira(settings: Settings, templates: Templates,
               shared: Shared) -> JiraDestination | None:
    """The Jira destination, or None when `[jira] url` is unset."""
    if not settings.jira.url:
        return None
    return JiraDestination(settings, templates, clock=shared.clock)
