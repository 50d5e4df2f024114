"""What the store keeps and hands out, as plain records shared by every backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DeliveryStatus = Literal["pending", "delivered", "failed", "skipped"]
STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed", "skipped")
AttemptOutcome = Literal["delivered", "skipped", "failed", "retry", "abandoned"]
# Why a delivery waits for its next attempt: the destination failed or did not answer
# ("unavailable": brought forward once it answers again), it said when to come back
# ("rate_limited"), or the bridge itself failed ("error").
RetryKind = Literal["unavailable", "rate_limited", "error"]


@dataclass(frozen=True)
class StoredMessage:
    """One message of a conversation, as kept for transcripts."""

    chatbot_id: str
    thread_id: str
    message_type: str | None
    question: str | None
    answer: str | None
    agent_name: str | None
    received_at: float = 0.0
    id: int = 0


@dataclass(frozen=True)
class NewEvent:
    """An event ready to store: its kind, canonical body, and who must receive it."""

    kind: str
    body: str
    dedup_key: str
    ordering_key: str
    destinations: Sequence[str]
    message: StoredMessage | None = None
    conversation: tuple[str, str] | None = None
    escalation: bool = False


@dataclass(frozen=True)
class Accept:
    """An event to store unless its body was seen within the window; run in groups."""

    event: NewEvent
    now: float
    window: float


@dataclass(frozen=True)
class Acceptance:
    status: Literal["accepted", "duplicate"]
    event_id: int


@dataclass(frozen=True)
class Lease:
    """Proof that a worker holds a delivery: every change to it must show this."""

    delivery_id: int
    owner: str
    token: str


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to one worker, with the event it carries.

    `uncertain`: its last attempt was cut off (abandoned: the worker was killed, hung, lost
    its lease or could not record the outcome) after it may have reached the destination;
    the destination checks whether it did before sending it again.
    """

    id: int
    event_id: int
    destination: str
    ordering_key: str
    attempts: int
    created_at: float
    kind: str
    body: str
    owner: str = ""
    token: str = ""
    uncertain: bool = False

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    @property
    def lease(self) -> Lease:
        return Lease(self.id, self.owner, self.token)


@dataclass(frozen=True)
class Attempt:
    """One finished attempt of a delivery: how it ended, and why if it failed."""

    delivery_id: int
    attempt: int
    outcome: AttemptOutcome
    error: str | None
    worker: str
    at: float


@dataclass(frozen=True)
class DeliveryRow:
    """A delivery as the operator commands show it; `note` is kept apart from errors."""

    id: int
    event_id: int
    kind: str
    destination: str
    ordering_key: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    note: str | None
    created_at: float
    finished_at: float | None
    errors: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class ConversationLink:
    """What one destination remembers of one conversation: its state and searchable handle."""

    destination: str
    state: dict[str, Any]
    ref: str | None


@dataclass(frozen=True)
class ConversationRecord:
    """A conversation the bridge has seen, with each destination's link to it."""

    chatbot_id: str
    thread_id: str
    escalated_at: float | None
    first_seen: float
    last_seen: float
    links: tuple[ConversationLink, ...] = ()

    def link(self, destination: str) -> ConversationLink | None:
        return next((link for link in self.links if link.destination == destination), None)


@dataclass(frozen=True)
class ConversationPage:
    """A page of the console's conversation list; `older`, the key the next page starts after
    (last_seen, chatbot_id, thread_id), or None at the end."""

    records: list[ConversationRecord]
    older: tuple[float, str, str] | None



@dataclass(frozen=True)
class Echo:
    """A reply sent to SiteGPT from a chat tool, which SiteGPT's messages webhook will send
    back: the tool it came from skips it (it shows there already), any other shows it."""

    chatbot_id: str
    thread_id: str
    text: str
    agent_name: str
    source: str = ""
    tool: str = "slack"


@dataclass(frozen=True)
class FollowUp:
    """An event a destination asks the bridge to deliver next (e.g. a ticket link to Slack)."""

    kind: str
    body: str
    ordering_key: str
    destinations: Sequence[str]


@dataclass(frozen=True)
class Pruned:
    """What one retention pass removed."""

    events: int = 0
    deliveries: int = 0
    messages: int = 0
    dedup: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.events + other.events, self.deliveries + other.deliveries,
                      self.messages + other.messages, self.dedup + other.dedup)


@dataclass(frozen=True)
class Backup:
    """A consistent copy of the store, and what it holds."""

    path: Path
    size: int
    events: int
    deliveries: int
    pending: int


@dataclass(frozen=True)
class StoreInfo:
    """What `check` says about the store: backend, where, and the schema version."""

    backend: str
    location: str
    schema_version: int


@dataclass(frozen=True)
class DestinationSummary:
    """One destination's queue as the console's overview shows it."""

    destination: str
    waiting: int = 0
    due: int = 0
    retrying: int = 0
    failed: int = 0
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
