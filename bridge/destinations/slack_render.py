"""What Slack is sent: template contexts per event, and Block Kit cut to Slack's limits."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from bridge.destinations.sitegpt_settings import replies_enabled, sitegpt_api_key
from bridge.errors import TemplateError
from bridge.events import (
    Conversation,
    EscalationData,
    LeadData,
    LeadEvent,
    MessageEvent,
    Source,
    TicketCommentEvent,
    TicketLinkedEvent,
    TicketStatusEvent,
)
from bridge.jira_markup import comment_mrkdwn
from bridge.settings import Settings
from bridge.store.protocols import ConversationLinks
from bridge.templating import CUT_MARKER, Templates, cut, link_safe

MESSAGE_TEMPLATES = {
    "NORMAL_MESSAGE": "slack/message_normal.json.j2",
    "USER_MESSAGE": "slack/message_visitor.json.j2",
    "AGENT_MESSAGE": "slack/message_agent.json.j2",
    "SYSTEM_MESSAGE": "slack/message_system.json.j2",
    "FEEDBACK_MESSAGE": "slack/message_feedback.json.j2",
}
# How SiteGPT's feedback answers read: a thumbs up or down; anything else is shown as it is.
FEEDBACK = {"yes": "up", "true": "up", "helpful": "up", "positive": "up", "like": "up",
            "up": "up", "\N{THUMBS UP SIGN}": "up", "no": "down", "false": "down",
            "unhelpful": "down", "not helpful": "down", "negative": "down", "dislike": "down",
            "down": "down", "\N{THUMBS DOWN SIGN}": "down"}
SOURCE_TITLE_LIMIT = 80
OTHER_MESSAGE = "slack/message_other.json.j2"
BATCH = "slack/messages_batch.json.j2"
TEXT_LIMIT = 39_000
SECTION_LIMIT = 3_000
FIELD_LIMIT = 2_000
HEADER_LIMIT = 150
MAX_BLOCKS = 50
REQUEST_LIMIT = 500  # of each visitor message an escalation quotes
# Text direction overrides and isolates: a name holding one could turn the rest of its line
# around, so that what a person reads is not what the visitor sent.
_BIDI_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]")


@dataclass(frozen=True)
class Waiting:
    """A message waiting for its thread, and when the bridge accepted it (epoch seconds)."""

    event: MessageEvent
    received_at: float


@dataclass(frozen=True)
class TicketShown:
    """The conversation's Jira ticket as its thread's parent shows it."""

    key: str
    url: str | None = None
    status: str | None = None
    status_id: str | None = None
    category: str | None = None  # Jira's status category key; "done" means resolved
    changed_at: int | None = None  # when Jira says the status changed, in milliseconds

    @property
    def done(self) -> bool:
        return self.category == "done"

    def shows(self, status_id: str | None, status: str) -> bool:
        """Whether this is the status shown already (by id where Jira gave both ids)."""
        if status_id is not None and self.status_id is not None:
            return status_id == self.status_id
        return status == self.status

    def later_than(self, changed_at: int | None) -> bool:
        """Whether the status shown changed after `changed_at` (a retry Jira sent late)."""
        if self.changed_at is None or changed_at is None:
            return False
        return self.changed_at > changed_at

    @classmethod
    def from_state(cls, ticket: Mapping[str, Any], url: str | None = None) -> TicketShown:
        """The ticket as the Slack destination's state keeps it (see state())."""
        return cls(str(ticket["key"]), url or ticket.get("url"), ticket.get("status"),
                   ticket.get("status_id"), ticket.get("category"), ticket.get("changed_at"))

    def state(self) -> dict[str, Any]:
        """What the Slack destination keeps of the ticket in its state for the conversation."""
        return asdict(self)

    def context(self) -> dict[str, Any]:
        context = {**asdict(self), "done": self.done}
        del context["changed_at"]
        return context


def plain(value: Any) -> str | None:
    """A field SiteGPT filled in, without text direction controls; None stays None.

    Templates still escape it (`| mrkdwn`): this only keeps a line reading as it was sent.
    """
    return None if value is None else _BIDI_CONTROLS.sub("", str(value))


def visitor_of(name: Any, email: Any) -> dict[str, str | None] | None:
    """The visitor as the thread shows them, or None when SiteGPT named no one."""
    name, email = _one_line(name), _one_line(email)
    if not name and not email:
        return None
    return {"name": name, "email": email}


async def named_by_lead(store: ConversationLinks, destination: str,
                        data: LeadData) -> dict[str, Any] | None:
    """`destination`'s state of the lead's conversation, now naming its visitor; None when the
    lead was captured outside a conversation, names no one, or no one new."""
    named = visitor_of(data.lead_details.name, data.lead_details.email)
    if data.thread_id is None or named is None:
        return None
    state = await store.link_state(data.chatbot_id, data.thread_id, destination) or {}
    return None if state.get("visitor") == named else {**state, "visitor": named}


def _one_line(value: Any) -> str | None:
    """Text as one line without direction controls or spaces at its ends; None when empty."""
    return " ".join((plain(value) or "").split()) or None


@dataclass(frozen=True)
class ParentView:
    """What a thread's parent shows, as the Slack destination's state knows it."""

    visitor: Mapping[str, str | None] | None = None  # name and email, once SiteGPT gave one
    question: str | None = None  # the visitor's first question
    escalated: bool = False
    ticket: TicketShown | None = None
    handler: Mapping[str, str | None] | None = None  # user (a Slack id) or name (an agent)
    resolved_by: str | None = None  # the Slack user who pressed Resolve
    reopened: bool = False  # the visitor wrote again after it was resolved

    def context(self) -> dict[str, Any]:
        return {"visitor": dict(self.visitor) if self.visitor else None,
                "question": plain(self.question), "escalated": self.escalated,
                "ticket": self.ticket.context() if self.ticket else None,
                "handler": dict(self.handler) if self.handler else None,
                "resolved_by": self.resolved_by, "reopened": self.reopened}


@dataclass(frozen=True)
class EscalationView:
    """What an escalation's post shows: who asked, what they asked, and the ticket once known."""

    visitor: Mapping[str, Any] | None = None  # name, email, phone as SiteGPT sent them
    request: Sequence[str] = field(default_factory=tuple)  # the visitor's last messages
    dashboard_url: str | None = None
    ticket: TicketShown | None = None

    def state(self) -> dict[str, Any]:
        """What Slack keeps to show the post again once the ticket exists (without it)."""
        return {"visitor": dict(self.visitor) if self.visitor else None,
                "request": list(self.request), "dashboard_url": self.dashboard_url}

    @classmethod
    def from_state(cls, kept: Mapping[str, Any], ticket: TicketShown | None) -> EscalationView:
        return cls(kept.get("visitor"), tuple(kept.get("request") or ()),
                   kept.get("dashboard_url"), ticket)


class SlackRenderer:
    """Builds each template's context from an event; templates never see settings or secrets."""

    def __init__(self, templates: Templates, settings: Settings) -> None:
        self.templates = templates
        self.settings = settings

    def message(self, event: MessageEvent) -> dict[str, Any]:
        data = event.data
        name = MESSAGE_TEMPLATES.get(data.message_type or "", OTHER_MESSAGE)
        return self._render(name, {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "message": _message_context(event),
        })

    def batch(self, conversation: Conversation,
              waiting: list[Waiting]) -> tuple[dict[str, Any], int]:
        """The first messages of `waiting` as one reply within Slack's limits, and how many.

        Each message is rendered by its own template, so the reply shows it as a reply of its
        own would; the batch template only puts them together. One message alone is exactly
        its own reply. Whatever does not fit is left for the next reply, never cut.
        """
        pieces = [self._piece(item) for item in waiting]
        count = len(pieces)
        while count > 1:
            batch = self._render(BATCH, {**self._conversation(conversation),
                                         "messages": pieces[:count]})
            if fits(batch):
                return batch, count
            count = _fewer(count, batch)
        return self.message(waiting[0].event), 1

    def _piece(self, waiting: Waiting) -> dict[str, Any]:
        rendered = self.message(waiting.event)
        # Its sections are cut at Slack's section limit anyway; a longer text would only crowd
        # the others out of the reply's 40,000 characters.
        text = cut_text(rendered["text"], SECTION_LIMIT)
        # Alone, a message without blocks shows its text; among others' blocks it would not.
        blocks = rendered.get("blocks") or [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        return {"message": _message_context(waiting.event), "received_at": waiting.received_at,
                "text": text, "blocks": blocks}

    def escalation(self, conversation: Conversation, view: EscalationView) -> dict[str, Any]:
        visitor = view.visitor
        return self._render("slack/escalation.json.j2", {
            **self._conversation(conversation),
            "visitor": {key: plain(value) if isinstance(value, str) else value
                        for key, value in visitor.items()} if visitor else None,
            "request": [plain(line) for line in view.request],
            "dashboard_url": view.dashboard_url if link_safe(view.dashboard_url)
            else conversation.dashboard_url,
            "ticket": view.ticket.context() if view.ticket else None,
            "mention": self.mention(conversation.chatbot_id),
        })

    def mention(self, chatbot_id: str) -> str:
        """Who an escalation pings: the chatbot's route's mention, else [slack]'s."""
        routed = self.settings.routed(chatbot_id, "escalation_mention")
        return str(routed if routed is not None else self.settings.slack.escalation_mention)

    def ticket(self, event: TicketLinkedEvent) -> dict[str, Any]:
        data = event.data
        return self._render("slack/ticket.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "ticket": {"key": data.issue_key, "url": data.issue_url, "created": data.created},
        })

    def lead(self, event: LeadEvent) -> dict[str, Any]:
        data = event.data
        return self._render("slack/lead.json.j2", lead_context(
            event, data.chatbot_name or self._name(data.chatbot_id)))

    def ticket_status(self, event: TicketStatusEvent, ticket: TicketShown) -> dict[str, Any]:
        data = event.data
        return self._render("slack/ticket_status.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "ticket": {**ticket.context(), "previous_status": data.previous_status},
            "actor": data.actor,
        })

    def ticket_comment(self, event: TicketCommentEvent, ticket_url: str | None) -> dict[str, Any]:
        data = event.data
        return self._render("slack/ticket_comment.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "ticket": {"key": data.issue_key, "url": ticket_url},
            "comment": {"author": data.author, "text": comment_mrkdwn(data.body)},
        })

    def parent(self, conversation: Conversation, view: ParentView) -> dict[str, Any]:
        return self._render("slack/parent.json.j2", {
            **self._conversation(conversation),
            **view.context(),
            "claim_buttons": self.settings.slack.signing_secret is not None,
            "mode_buttons": replies_enabled(self.settings)
            and sitegpt_api_key(self.settings, conversation.chatbot_id) is not None,
        })

    def handling(self, conversation: Conversation, action: str, user_id: str,
                 previous: str | None) -> dict[str, Any]:
        """The thread's line when someone claims or resolves the conversation."""
        return self._render("slack/handling.json.j2", {
            **self._conversation(conversation), "action": action, "user_id": user_id,
            "previous": previous})

    def notice(self, name: str, context: dict[str, Any]) -> dict[str, Any]:
        """A notice the bridge posts about a reply from Slack (sent, not delivered, mode)."""
        return self._render(f"slack/{name}.json.j2", context)

    def _conversation(self, conversation: Conversation) -> dict[str, Any]:
        return conversation_context(self.settings, conversation)

    def _name(self, chatbot_id: str) -> str:
        return chatbot_name(self.settings, chatbot_id)

    def _render(self, name: str, context: dict[str, Any]) -> dict[str, Any]:
        message = self.templates.render_json(name, context)
        if not isinstance(message, dict) or not isinstance(message.get("text"), str):
            raise TemplateError(f"{name}: must render a JSON object with a \"text\" string")
        if not isinstance(message.get("blocks", []), list):
            raise TemplateError(f"{name}: \"blocks\" must be a list")
        return message


def escalation_view(data: EscalationData, request: Sequence[str],
                    ticket: TicketShown | None) -> EscalationView:
    """The escalation's post for SiteGPT's event, quoting `request` (the visitor's messages)."""
    visitor = data.user.model_dump() if data.user else None
    return EscalationView(visitor, tuple(request), data.dashboard_url, ticket)


def _message_context(event: MessageEvent) -> dict[str, Any]:
    data = event.data
    return {
        "type": data.message_type or "UNKNOWN",
        "question": data.question,
        "answer": data.answer,
        "sources": [source_url(source) for source in data.sources or []],
        "links": [_titled(source) for source in data.sources or []],
        "feedback": _feedback(data.message_type, data.answer),
        "agent_name": data.agent_name,
        "agent_id": data.agent_id,
        "icon_url": data.icon_url,
        "system_message_type": data.system_message_type,
        "gpt_model": data.gpt_model,
    }


def source_url(source: str | Source) -> str:
    """A source's URL, whether SiteGPT sent the bare URL or an object with its title."""
    return source if isinstance(source, str) else source.url


def _titled(source: str | Source) -> dict[str, str | None]:
    """A source as a link's target and label: SiteGPT's title, else the page's path.

    A URL that cannot be a link gets no label: it is shown once, as text.
    """
    url = source_url(source)
    if not link_safe(url):
        return {"url": url, "title": None}
    title = source.title if isinstance(source, Source) else None
    label = _one_line(title) or _page_path(url)
    return {"url": url, "title": cut(label, SOURCE_TITLE_LIMIT)}


def _page_path(url: str) -> str:
    """What names a page briefly: its path, else its host, else the URL itself."""
    parts = urlsplit(url)
    path = unquote(parts.path).rstrip("/")
    return plain(path or parts.hostname or url) or url


def _feedback(message_type: str | None, answer: str | None) -> str | None:
    """"up" or "down" for a feedback message whose answer says which; None otherwise."""
    if message_type != "FEEDBACK_MESSAGE" or answer is None:
        return None
    return FEEDBACK.get(answer.strip().lower())


def fits(message: dict[str, Any]) -> bool:
    """Whether Slack takes the message whole: few enough blocks and a short enough text."""
    return len(message.get("blocks", [])) <= MAX_BLOCKS and len(message["text"]) <= TEXT_LIMIT


def _fewer(count: int, batch: dict[str, Any]) -> int:
    """How many messages to try next: in proportion to how far over the limits they were."""
    over = max(len(batch.get("blocks", [])) / MAX_BLOCKS, len(batch["text"]) / TEXT_LIMIT)
    return max(min(count - 1, int(count / over)), 1)


def cut_text(text: str, limit: int) -> str:
    """Cut to `limit` with a visible marker, never inside an &amp;-style escape."""
    if len(text) <= limit:
        return text
    kept = text[: limit - len(CUT_MARKER)]
    amp = kept.rfind("&")
    if amp != -1 and ";" not in kept[amp:]:
        kept = kept[:amp]
    return kept + CUT_MARKER


def fit_message(message: dict[str, Any]) -> dict[str, Any]:
    """The same message with every text within Slack's limits, so Slack never rejects it."""
    fitted = dict(message)
    fitted["text"] = cut_text(message["text"], TEXT_LIMIT)
    if "blocks" in message:
        fitted["blocks"] = [_fit_block(block) for block in message["blocks"][:MAX_BLOCKS]]
    return fitted


def _fit_block(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    fitted = dict(block)
    limit = HEADER_LIMIT if block.get("type") == "header" else SECTION_LIMIT
    if isinstance(block.get("text"), dict):
        fitted["text"] = _fit_text(block["text"], limit)
    if isinstance(block.get("fields"), list):
        fitted["fields"] = [_fit_text(item, FIELD_LIMIT) for item in block["fields"][:10]]
    if isinstance(block.get("elements"), list) and block.get("type") == "context":
        fitted["elements"] = [_fit_text(item, FIELD_LIMIT) for item in block["elements"][:10]]
    return fitted


def _fit_text(item: Any, limit: int) -> Any:
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return {**item, "text": cut_text(item["text"], limit)}
    return item


def lead_context(event: LeadEvent, chatbot_name: str) -> dict[str, Any]:
    """What a lead's template is given, the same for every chat tool."""
    data = event.data
    lead = data.lead_details
    return {"chatbot": {"id": data.chatbot_id, "name": chatbot_name},
            "lead": {"id": lead.id, "name": lead.name, "email": lead.email, "phone": lead.phone,
                     "captured_at": lead.captured_at, "custom_fields": lead.custom_fields},
            "dashboard_url": data.dashboard_url}


def chatbot_name(settings: Settings, chatbot_id: str) -> str:
    """The chatbot's name from [[chatbots]], else its id."""
    chatbot = settings.chatbot(chatbot_id)
    return chatbot.name if chatbot and chatbot.name else chatbot_id


def conversation_context(settings: Settings, conversation: Conversation) -> dict[str, Any]:
    """What every chat template is told of the conversation and its chatbot."""
    return {"chatbot": {"id": conversation.chatbot_id,
                        "name": chatbot_name(settings, conversation.chatbot_id)},
            "conversation": {"thread_id": conversation.thread_id,
                             "dashboard_url": conversation.dashboard_url}}
