"""The one small protocol every destination implements for the worker."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Protocol, cast
from urllib.parse import quote

from bridge.clock import Clock
from bridge.errors import PermanentError
from bridge.events import Conversation, Event, InvalidEvent, conversation_of, parse_event
from bridge.sections import DeliverySettings
from bridge.store import ClaimedDelivery, DeliveryStore, FollowUp


@dataclass(frozen=True)
class Delivered:
    """It reached the destination; `note` is kept on the delivery (a ts, an issue key).

    `coalesced`: deliveries queued behind this one (Delivery.queued_behind) that went out in
    the same call; they are finished with it, in one step, with the same note.
    """

    note: str | None = None
    follow_ups: Sequence[FollowUp] = ()
    coalesced: Sequence[int] = ()


@dataclass(frozen=True)
class Skipped:
    """Nothing was sent on purpose (dry run, nothing to do); `reason` says why."""

    reason: str


Outcome = Delivered | Skipped


def path_segment(value: str) -> str:
    """An id as one URL path segment, whatever it contains."""
    return quote(value, safe="")


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


def spent(claimed: ClaimedDelivery, limits: DeliverySettings, now: float) -> str | None:
    """What a delivery failing now has used up ("60 attempts", "24.0 h"), or None: no retry then.

    The worker's rule for giving up; a destination that must act on the last failure asks it too.
    """
    if claimed.attempts >= limits.max_attempts:
        return f"{claimed.attempts} attempts"
    age = now - claimed.created_at
    if age >= limits.max_age.total_seconds():
        return f"{age / 3600:.1f} h"
    return None


@dataclass
class Delivery:
    """One attempt to hand one event to one destination, with that destination's own state."""

    claimed: ClaimedDelivery
    event: Event
    store: DeliveryStore
    clock: Clock
    behind: list[ClaimedDelivery] = field(default_factory=list, repr=False)
    looked: bool = field(default=False, repr=False)
    found: bool | None = field(default=None, repr=False)

    @property
    def attempt(self) -> int:
        return self.claimed.attempts

    @property
    def uncertain(self) -> bool:
        """An earlier attempt was cut off mid-call: look for what it sent before sending again."""
        return self.claimed.uncertain

    def reconciled(self, found: bool | None) -> None:
        """The destination looked for what an earlier attempt sent: found, not, or None when
        the lookup itself failed (and the delivery is sent again)."""
        self.looked, self.found = True, found

    @property
    def destination(self) -> str:
        return self.claimed.destination

    async def state(self) -> dict[str, Any]:
        """What this destination saved for the event's conversation; {} if nothing (yet)."""
        conversation = self._conversation()
        state = await self.store.link_state(
            conversation.chatbot_id, conversation.thread_id, self.destination)
        return state or {}

    async def save_state(self, state: dict[str, Any], ref: str | None = None) -> None:
        """Replace this destination's state for the conversation; `ref` finds it again."""
        conversation = self._conversation()
        await self.store.save_link(
            conversation.chatbot_id, conversation.thread_id, self.destination, state, ref)

    def _conversation(self) -> Conversation:
        conversation = conversation_of(self.event)
        if conversation is None:
            raise PermanentError(f"{self.destination}: a {self.event.event} event has no "
                                 "conversation to keep state for")
        return conversation

    def one_at_a_time(self, work: str) -> AbstractAsyncContextManager[None]:
        """Hold `work` for this conversation across every replica sharing the store.

        For what must never happen twice, such as starting the conversation's Slack thread
        while another replica, which took the delivery over, starts it too. A store shared by
        replicas (PostgreSQL) holds a lock; with one process there is no one else to wait for.
        """
        target = conversation_of(self.event)
        if target is None:
            return contextlib.nullcontext()
        return self.store.serialised(f"{work}:{target.key}")

    async def queued_behind(self, kinds: frozenset[str], limit: int) -> list[Delivery]:
        """Up to `limit` deliveries queued right behind this one, of these kinds, in order.

        Same destination, same conversation, nothing of another kind in between; they join
        this one's lease. Those the destination does not name in Delivered.coalesced go back
        to the queue, as they were, once this delivery is done.
        """
        claimed = await self.store.take_queued(self.claimed.lease, kinds, limit,
                                               self.clock.now())
        self.behind += claimed
        taken: list[Delivery] = []
        for job in claimed:
            try:
                event = parse_event(job.kind, job.payload)
            except InvalidEvent:
                break  # it fails on its own turn, with its own reason
            taken.append(Delivery(job, event, self.store, self.clock))
        return taken


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

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str] | None:
        """What it would send for each sample, without sending; None if it cannot show it.

        `render_samples({label: event})` renders every event the destination accepts (others
        are left out) exactly as deliver() would, without any network call, and returns
        {"<label>: <what is sent>": text}, in the order deliver() sends them. A template that
        fails raises TemplateError naming its file and line. `sitegpt-bridge render` prints the
        result and the start-up check renders every bundled sample through it, so a broken user
        template stops the bridge before the first real event.
        """
        ...


RenderSamples = Callable[[Mapping[str, Event]], dict[str, str]]


def sample_renderer(destination: Destination) -> RenderSamples | None:
    """The destination's previews, or None when it says it cannot show what it sends."""
    if destination.render_samples({}) is None:
        return None
    return cast(RenderSamples, destination.render_samples)
