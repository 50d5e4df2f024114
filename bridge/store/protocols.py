"""The store's contracts, one narrow protocol per user; every backend implements all of them.

    EventIntake        the web layer: accept an event (dedup, deliveries), readiness
    DeliveryQueue      the worker: claim, heartbeat, finish, reschedule, release, bring forward
    QueuedBehind       a destination: what waits behind its delivery, to send along with it
    ConversationLinks  a destination's own state per conversation, and lookup by its handle
    Transcripts        a conversation's messages, oldest first
    Echoes             replies sent from Slack, recognised when SiteGPT sends them back
    Operations         the operator commands: list, retry, stats, prune, backup, info
    SettingsRecords    which settings each running process uses, for the commands to compare
    ConsoleQueries     the operator console: per-destination summary, filtered pages, bulk
                       retry and cancel
    Pauses             destinations an operator paused: the claims skip their deliveries

and the capabilities a backend declares whether or not it needs them, as a no-op where not:

    Lifecycle          open and migrate in the serving event loop (before the port is bound)
    NewWork            hear of work another process stored (PostgreSQL's NOTIFY)
    Serialised         one holder at a time, across every process, of a named piece of work
    SharedPacing       where Slack's per-channel pace is kept for every replica, if anywhere
    ConsoleKeys        the console's signing key, the same for every replica and restart

Every change to a claimed delivery names its Lease and is refused (False) once the lease
has passed to someone else: a worker that lost its lease can never overwrite another's result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from bridge.store.filters import DeliveryFilter
from bridge.store.records import (
    Acceptance,
    Attempt,
    Backup,
    ClaimedDelivery,
    ConversationPage,
    ConversationRecord,
    DeliveryRow,
    DeliveryStatus,
    DestinationSummary,
    Echo,
    FollowUp,
    Lease,
    NewEvent,
    Pruned,
    RetryKind,
    StoredMessage,
    StoreInfo,
)
from bridge.store.settings_in_use import SettingsInUse


class EventIntake(Protocol):
    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        """Store the event and its deliveries, unless its dedup key was seen within `window`."""
        ...

    async def check_writable(self) -> None:
        """Return only if an accept could commit now; else raise StoreError."""
        ...


class DeliveryQueue(Protocol):
    async def claim(self, owner: str, now: float, limit: int,
                    lease: float) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries, the oldest pending one per conversation each.

        The first claim makes `owner` live for as long as this store stays open in this
        process. A lease whose owner is no longer live (its process died) is taken at once;
        one whose owner lives but stopped renewing (hung) is taken when it runs out. Where
        the backend lets only one process claim (SQLite), claim returns nothing in any other
        process until that one stops, and then takes over all it held.
        """
        ...

    async def heartbeat(self, leases: Sequence[Lease], until: float) -> set[int]:
        """Extend these leases to `until`; the ids of those still held (the rest were lost)."""
        ...

    async def finish(self, lease: Lease, status: DeliveryStatus, now: float,
                     note: str | None = None, follow_ups: Sequence[FollowUp] = (),
                     coalesced: Sequence[Lease] = ()) -> bool:
        """Record the outcome (and queue the follow-ups) if the lease is still held.

        `coalesced`: deliveries taken with take_queued that went out in the same call; they
        get the same outcome and note in the same transaction, each if still held.
        """
        ...

    async def reschedule(self, lease: Lease, at: float, error: str, now: float,
                         retry_kind: RetryKind | None = None) -> bool:
        """Record a failed attempt and try again at `at`, if the lease is still held."""
        ...

    async def bring_forward(self, destination: str, retry_kind: RetryKind, now: float) -> int:
        """Make due now the deliveries to `destination` waiting after a `retry_kind` failure."""
        ...

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give back unfinished deliveries as if never claimed (shutdown); how many were held."""
        ...

    async def next_due(self, after: float) -> float | None:
        """The first retry time later than `after`: when a worker should look again."""
        ...


class QueuedBehind(Protocol):
    async def take_queued(self, lease: Lease, kinds: frozenset[str], limit: int,
                          now: float) -> list[ClaimedDelivery]:
        """Pending deliveries right behind the leased one (same destination and conversation),
        of `kinds` with nothing else in between, up to `limit`, put under the same lease.

        Each counts an attempt; release() gives back those that do not go along. Nothing is
        taken unless the lease is still held; one another worker holds ends the run.
        """
        ...


class ConversationLinks(Protocol):
    async def link_state(self, chatbot_id: str, thread_id: str,
                         destination: str) -> dict[str, Any] | None:
        """The state `destination` saved for this conversation, if any."""
        ...

    async def save_link(self, chatbot_id: str, thread_id: str, destination: str,
                        state: dict[str, Any], ref: str | None = None) -> None:
        """Replace the destination's state; `ref` is a handle to find the conversation by."""
        ...

    async def conversation_by_ref(self, destination: str, ref: str) -> tuple[str, str] | None:
        """(chatbot_id, thread_id) of the conversation whose `destination` link has this ref."""
        ...


class Transcripts(Protocol):
    async def transcript(self, chatbot_id: str, thread_id: str,
                         after_id: int = 0) -> list[StoredMessage]: ...


class Echoes(Protocol):
    async def remember_echo(self, echo: Echo, now: float, keep_for: float) -> None: ...
    async def forget_echo(self, source: str) -> None: ...
    async def consume_echo(self, echo: Echo, now: float) -> bool: ...


class Serialised(Protocol):
    def serialised(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold `key` against every process sharing the store while the block runs.

        For what must never happen twice at once, such as starting a conversation's Slack
        thread; the hold ends with the process that has it.
        """
        ...


class DeliveryStore(ConversationLinks, Transcripts, Echoes, QueuedBehind, Serialised, Protocol):
    """All a destination may touch: its own links, transcripts, echoes, queued followers and
    one-at-a-time holds."""


class ReplyIntake(EventIntake, ConversationLinks, Protocol):
    """Slack's inbound routes: find the conversation of a thread, store the reply."""


class ListenerCursors(Protocol):
    """How far a plugin's listener has read what it listens to, kept across restarts and shared
    by replicas, so that a restart catches up from there (and nothing before the first start).
    """

    async def listener_cursor(self, name: str) -> float | None:
        """Epoch seconds up to which `name` has read, or None before its first start."""
        ...

    async def advance_listener_cursor(self, name: str, seen_up_to: float) -> None:
        """Record `seen_up_to` for `name`, unless a replica has recorded a later time."""
        ...


class ListenerIntake(ReplyIntake, ListenerCursors, Protocol):
    """A plugin's listener (Mattermost's WebSocket): its cursor, threads' conversations, replies."""


class QueueStats(Protocol):
    async def queue_depth(self) -> dict[str, int]: ...
    async def waiting_by_destination(self) -> dict[str, int]: ...
    async def oldest_pending(self) -> float | None: ...


class Housekeeping(Protocol):
    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned: ...
    async def backup(self, target: Path) -> Backup: ...


class Operations(QueueStats, Housekeeping, Protocol):
    async def deliveries(self, status: str | None = None, conversation: str | None = None,
                         limit: int = 100, ids: Sequence[int] = ()) -> list[DeliveryRow]: ...
    async def attempts(self, delivery_id: int, limit: int = 3) -> list[Attempt]: ...
    async def retry(self, ids: Sequence[int] = (), failed: bool = False,
                    destination: str | None = None, now: float = 0.0) -> int: ...
    async def conversations(self, limit: int = 50) -> list[ConversationRecord]: ...
    async def conversation(self, chatbot_id: str, thread_id: str) -> ConversationRecord | None: ...
    async def info(self) -> StoreInfo: ...


class SettingsRecords(Protocol):
    async def record_settings(self, in_use: SettingsInUse) -> None:
        """Replace what this process (in_use.process) recorded of its settings."""
        ...

    async def settings_in_use(self) -> list[SettingsInUse]:
        """What every running process recorded, oldest load first."""
        ...

    async def forget_settings(self, process: str) -> None:
        """The process stops: its record goes."""
        ...


class Pauses(Protocol):
    async def pause(self, destination: str, now: float) -> bool:
        """Hold `destination`'s deliveries (neither attempted nor failed); False if it was."""
        ...

    async def resume(self, destination: str) -> bool:
        """Let them go again, in order; False if it was not paused."""
        ...

    async def paused(self) -> dict[str, float]:
        """The paused destinations, and since when."""
        ...


class ConsoleQueries(Pauses, Protocol):
    async def destination_summary(self, destinations: Sequence[str],
                                  now: float) -> list[DestinationSummary]:
        """Each of `destinations`' queue: waiting, due, retrying, failed, last outcomes."""
        ...

    async def delivery_page(self, matching: DeliveryFilter, before: int | None = None,
                            limit: int = 50) -> list[DeliveryRow]:
        """Up to `limit` matching deliveries, newest first, with ids below `before`."""
        ...

    async def count_matching(self, matching: DeliveryFilter) -> int: ...

    async def conversation_page(self, search: str = "",
                                before: tuple[float, str, str] | None = None,
                                limit: int = 50) -> ConversationPage:
        """Up to `limit` conversations, newest first, after the key `before`, whose ids or
        links (a visitor's name or email in Slack's) contain `search`: a bounded read."""
        ...

    async def event_body(self, event_id: int) -> str | None:
        """The event as received (its canonical body), if it is still kept."""
        ...

    async def retry_matching(self, matching: DeliveryFilter, ids: Sequence[int] = (),
                             now: float = 0.0) -> int:
        """Requeue the finished deliveries matching (among `ids` if given); how many."""
        ...

    async def cancel_matching(self, matching: DeliveryFilter, ids: Sequence[int] = (),
                              now: float = 0.0) -> int:
        """Skip the waiting deliveries matching that no worker holds now; how many."""
        ...


class ConsoleKeys(Protocol):
    async def console_key(self, name: str, candidate: str) -> str:
        """The key kept under `name`: `candidate`, if none was kept yet, from now on."""
        ...


class Lifecycle(Protocol):
    async def open(self) -> None:
        """Connect and migrate in the running event loop, if not yet; safe to call again."""
        ...

    async def migrate_now(self) -> None:
        """Migrate in any event loop and let go, so that `serve` fails before binding its port."""
        ...

    async def close(self) -> None: ...


class NewWork(Protocol):
    def on_new_work(self, wake: Callable[[], None]) -> None:
        """Call `wake` (in this event loop) whenever another process stores work."""
        ...


class ChannelBudgets(Protocol):
    """Slack's per-channel token buckets, kept where every replica counts its posts."""

    async def take_token(self, channel: str, now: float, capacity: float,
                         rate: float) -> tuple[float, float]:
        """Take one post from `channel`'s budget: (tokens left, below 0 in debt; held until)."""
        ...

    async def hold_channel(self, channel: str, now: float, until: float) -> None: ...


class SharedPacing(Protocol):
    def shared_pacing(self) -> ChannelBudgets | None:
        """The budgets replicas share, or None where one process alone delivers."""
        ...


class Store(EventIntake, DeliveryQueue, DeliveryStore, Operations, ConsoleQueries, Lifecycle,
            NewWork, Serialised, SharedPacing, ConsoleKeys, SettingsRecords, ListenerCursors,
            Protocol):
    """A whole backend, as open_store() returns it."""
