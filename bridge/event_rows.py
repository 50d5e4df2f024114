"""The rows a validated SiteGPT event becomes in the store: the event, its deliveries, a line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.events import (
    ESCALATION,
    Event,
    MessageData,
    canonical_json,
    conversation_of,
    dedup_key,
    ordering_key,
)
from bridge.store import NewEvent, StoredMessage


def new_event(event: Event, body: Any, destinations: Sequence[str]) -> NewEvent:
    """The row to store for `event`, whose decoded JSON body is `body`."""
    canonical = canonical_json(body)
    conversation = conversation_of(event)
    return NewEvent(
        kind=event.event,
        body=canonical,
        dedup_key=dedup_key(canonical),
        ordering_key=ordering_key(event),
        destinations=destinations,
        message=transcript_line(event.data) if isinstance(event.data, MessageData) else None,
        conversation=(conversation.chatbot_id, conversation.thread_id) if conversation else None,
        escalation=event.event == ESCALATION,
    )


def transcript_line(data: MessageData) -> StoredMessage:
    """The transcript row a message becomes; the store adds its id and received_at."""
    return StoredMessage(
        chatbot_id=data.chatbot_id,
        thread_id=data.thread_id,
        message_type=data.message_type,
        question=data.question,
        answer=data.answer,
        agent_name=data.agent_name,
    )
