"""What a chat tool's thread parent shows, kept alike by Slack and Mattermost in their state.

Both keep, per conversation: the visitor's first `question`, the `handler` (`user`, the tool's
member id, from Claim or Take over; or `name`, a SiteGPT agent who answered), `resolved`
(`by`, the member who pressed Resolve) and `reopened` (the visitor wrote again after it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.destinations.base import Delivery
from bridge.destinations.slack_render import TicketShown, plain
from bridge.events import (
    RESOLVED,
    Conversation,
    Event,
    HandlingData,
    HandlingEvent,
    MessageEvent,
    ThreadNoticeEvent,
    TicketLinkedEvent,
    TicketStatusData,
    canonical_json,
)
from bridge.store import Echo, FollowUp
from bridge.templating import cut

MODE_CHANGED = "mode_changed"  # the notice (<tool>/mode_changed.json.j2) once SiteGPT switched
VISITOR_TYPES = frozenset({"USER_MESSAGE", "NORMAL_MESSAGE"})  # what carries the visitor's words
QUESTION_KEPT = 500  # of the first question, kept for the parent (which shows less)


def learnt_from(state: Mapping[str, Any], events: list[MessageEvent],
                thread_started: bool) -> dict[str, Any]:
    """`state` with what these messages tell the parent: the first question, an agent
    answering, the visitor back after it was resolved."""
    learnt = dict(state)
    for event in events:
        data = event.data
        if data.message_type == "AGENT_MESSAGE" and data.agent_name:
            if not (learnt.get("handler") or {}).get("user"):  # a claim says more
                learnt["handler"] = {"user": None, "name": plain(data.agent_name)}
        elif data.message_type in VISITOR_TYPES and data.question:
            if _shows_first_question(learnt, thread_started) and not learnt.get("question"):
                learnt["question"] = cut(data.question, QUESTION_KEPT)
            if shows_resolved(learnt) and not learnt.get("reopened"):
                learnt.pop("resolved", None)
                learnt["reopened"] = True
    return learnt


def _shows_first_question(state: Mapping[str, Any], thread_started: bool) -> bool:
    """Whether the parent shows the first question: a thread started before it did never will,
    as the next question there would not be the first."""
    return not thread_started or "question" in state


def for_another_tool(event: Event, tool: str) -> bool:
    """A claim or resolve pressed, or a notice meant, in another chat tool than `tool`: its
    thread is not `tool`'s."""
    return isinstance(event, HandlingEvent | ThreadNoticeEvent) and event.data.tool != tool


def handling_change(state: Mapping[str, Any], data: HandlingData) -> dict[str, Any] | None:
    """What a claim or a resolve changes in the state, or None if it shows so already."""
    if data.action == "resolve":
        if state.get("resolved") and not state.get("reopened"):
            return None
        return {"resolved": {"by": data.user, "name": data.user_name}, "reopened": False}
    handler = state.get("handler") or {}
    if handler.get("user") == data.user and not shows_resolved(state):
        return None
    return {"handler": {"user": data.user, "name": data.user_name}, "resolved": None,
            "reopened": False}


def previous_handler(state: Mapping[str, Any], data: HandlingData) -> dict[str, Any] | None:
    """The member who handled the conversation until this claim took it over, if another."""
    handler = state.get("handler") or {}
    if data.action != "claim" or not handler.get("user") or handler["user"] == data.user:
        return None
    return {"user": handler["user"], "name": handler.get("name")}


def mode_handler(notice_context: Mapping[str, Any]) -> dict[str, Any] | None:
    """Who handles the conversation once SiteGPT switched its mode: the member who took it
    over, or no one when it was handed back to the AI."""
    if notice_context.get("mode") != "AGENT":
        return None
    return {"user": str(notice_context.get("user_id")), "name": notice_context.get("user_name")}


def shows_resolved(state: Mapping[str, Any]) -> bool:
    """Whether the conversation shows as resolved: by a person, or by its ticket's status."""
    ticket = state.get("ticket") or {}
    return bool(state.get("resolved")) or (
        ticket.get("category") == "done" and not ticket.get("deleted"))


def resolved_follow_up(conversation: Conversation, user: str, now: float) -> FollowUp:
    """Tell the destinations that take it (Jira, to move the ticket) that it was resolved."""
    body = canonical_json({"event": RESOLVED, "data": {
        "chatbotId": conversation.chatbot_id, "threadId": conversation.thread_id,
        "user": user, "resolvedAt": now}})
    return FollowUp(RESOLVED, body, conversation.key, ())  # the worker addresses it


def may_be_echo(event: Event) -> bool:
    """An agent's message: SiteGPT sends a reply written in a chat tool back as one."""
    return isinstance(event, MessageEvent) and event.data.message_type == "AGENT_MESSAGE"


async def is_echo(delivery: Delivery, event: MessageEvent, tool: str) -> bool:
    """A reply the bridge sent from `tool`'s thread comes back as an agent message: it shows
    there already, so `tool` drops it once (a reply from another tool is shown)."""
    data = event.data
    if not may_be_echo(event) or not data.answer:
        return False
    echo = Echo(data.chatbot_id, data.thread_id, data.answer, data.agent_name or "", tool=tool)
    return await delivery.store.consume_echo(echo, delivery.clock.now())


def linked_ticket(state: Mapping[str, Any], event: TicketLinkedEvent) -> dict[str, Any]:
    """The linked ticket; what Jira already said of the same ticket (its status) is kept."""
    known = state.get("ticket") or {}
    ticket = {"key": event.data.issue_key, "url": event.data.issue_url}
    return {**known, **ticket} if known.get("key") == ticket["key"] else ticket


def stale_status(known: Mapping[str, Any], data: TicketStatusData) -> str | None:
    """Why a ticket's status change shows already (a repeat, or a late retry of an older
    one), given the ticket the state knows; None when it is news."""
    if known.get("key") != data.issue_key:
        return None
    shown = TicketShown.from_state(known)
    if shown.shows(data.status_id, data.status):
        return f"{data.issue_key} already shows {data.status}"
    if shown.later_than(data.changed_at):
        return f"{data.issue_key} shows a later status ({shown.status}) already"
    return None
