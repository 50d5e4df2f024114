"""The one small protocol every destination implements for the worker."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Protocol

from bridge.clock import Clock
from bridge.events import Event, conversation_of
from bridge.store import ClaimedDelivery, ConversationRecord, FollowUp, Store


@dataclass(frozen=True)
class Delivered:
    """It reached the destination; `note` is kept on the delivery (a ts, an issue key)."""

    note: str | None = None
    follow_ups: Sequence[FollowUp] = ()


@dataclass(frozen=True)
class Skipped:
    """Nothing was sent on purpose (dry run, nothing to do); `reason` says why."""

    reason: str


Outcome = Delivered | Skipped


def parse_retry_after(value: Any, now: float) -> float | None:
    """Seconds a Retry-After header asks for (seconds or an HTTP date), or None if it says none."""
    text = str(value[0] if isinstance(value, list) and value else value or "").strip()
    if not text:
        return None
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(moment.timestamp() - now, 0.0)


@dataclass
class Delivery:
    """One attempt to hand one event to one destination."""

    claimed: ClaimedDelivery
    event: Event
    store: Store
    clock: Clock
    _conversation: ConversationRecord | None = field(default=None, repr=False)

    @property
    def attempt(self) -> int:
        return self.claimed.attempts

    async def conversation(self) -> ConversationRecord | None:
        """The stored state of the event's conversation (Slack thread, Jira key), if any."""
        target = conversation_of(self.event)
        if target is None:
            return None
        return await self.store.conversation(target.chatbot_id, target.thread_id)

    def one_at_a_time(self, work: str) -> AbstractAsyncContextManager[None]:
        """Hold `work` for this conversation across every replica sharing the store.

        For what must never happen twice, such as starting the conversation's Slack thread
        while another replica, which took the delivery over, starts it too. A store shared by
        replicas (PostgreSQL) holds a lock; with one process there is no one else to wait for.
        """
        target = conversation_of(self.event)
        hold = getattr(self.store, "serialised", None)
        if hold is None or target is None:
            return contextlib.nullcontext()
        return hold(f"{work}:{target.key}")  # type: ignore[no-any-return]


class Destination(Protocol):
    """Slack, Jira, a CRM: where events go. Raise RetryableError or PermanentError on failure."""

    name: ClassVar[str]

    def accepts(self, kind: str) -> bool:
        """Whether events of this kind get a delivery row for this destination."""
        ...

    async def deliver(self, delivery: Delivery) -> Outcome: ...

    async def verify(self) -> str:
        """Check credentials and targets; a line for `check`, or raise a DeliveryError."""
        ...

    async def aclose(self) -> None: ...


RenderSamples = Callable[[Mapping[str, Event]], dict[str, str]]


class Previews(Protocol):
    """Optional, found with getattr: a destination that can show what it would send.

    `render_samples({label: event})` renders every event the destination accepts (others are
    left out) exactly as deliver() would, without any network call, and returns
    {"<label>: <what is sent>": text}, in the order deliver() sends them. A template that fails
    raises TemplateError naming its file and line. `sitegpt-bridge render` prints the result and
    the start-up check renders every bundled sample through it, so a broken user template stops
    the bridge before the first real event.
    """

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]: ...


def sample_renderer(destination: Destination) -> RenderSamples | None:
    """The destination's render_samples hook, or None when it has none."""
    hook = getattr(destination, "render_samples", None)
    return hook if callable(hook) else None
