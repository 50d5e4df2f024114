"""The store methods that only pass their arguments to a backend's SQL module, written once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, ClassVar

from bridge.clock import Clock
from bridge.store.filters import DeliveryFilter
from bridge.store.records import (
    Attempt,
    ClaimedDelivery,
    ConversationPage,
    ConversationRecord,
    DeliveryRow,
    DeliveryStatus,
    DestinationSummary,
    Echo,
    FollowUp,
    Lease,
    Pruned,
    RetryKind,
    StoredMessage,
)
from bridge.store.settings_in_use import SettingsInUse


class Delegations:
    """The part of a backend that is one call into its SQL modules, on one of its connections.

    A backend names the modules whose SQL these run (`queue_sql`, `conversation_sql`,
    `operations_sql`, `settings_sql`: bridge.store.sqlite.queue, bridge.store.postgres.queue,
    ...) and gives
    `_run`, which calls a function with one of its connections: a SQLite connection on the
    writer thread, or a pooled PostgreSQL one whose result it awaits.
    """

    queue_sql: ClassVar[ModuleType]
    conversation_sql: ClassVar[ModuleType]
    operations_sql: ClassVar[ModuleType]
    settings_sql: ClassVar[ModuleType]
    console_sql: ClassVar[ModuleType]
    clock: Clock
    _run: Callable[..., Awaitable[Any]]

    # DeliveryQueue

    async def heartbeat(self, leases: Sequence[Lease], until: float) -> set[int]:
        return await self._run(lambda conn: self.queue_sql.heartbeat(conn, leases, until))

    async def finish(self, lease: Lease, status: DeliveryStatus, now: float,
                     note: str | None = None, follow_ups: Sequence[FollowUp] = (),
                     coalesced: Sequence[Lease] = ()) -> bool:
        return await self._run(lambda conn: self.queue_sql.finish(
            conn, lease, status, now, note, follow_ups, coalesced))

    async def reschedule(self, lease: Lease, at: float, error: str, now: float,
                         retry_kind: RetryKind | None = None) -> bool:
        return await self._run(
            lambda conn: self.queue_sql.reschedule(conn, lease, at, error, now, retry_kind))

    async def bring_forward(self, destination: str, retry_kind: RetryKind, now: float) -> int:
        return await self._run(
            lambda conn: self.queue_sql.bring_forward(conn, destination, retry_kind, now))

    async def take_queued(self, lease: Lease, kinds: frozenset[str], limit: int,
                          now: float) -> list[ClaimedDelivery]:
        return await self._run(
            lambda conn: self.queue_sql.take_queued(conn, lease, kinds, limit, now))

    async def release(self, leases: Sequence[Lease]) -> int:
        return await self._run(lambda conn: self.queue_sql.release(conn, leases))

    # ConversationLinks, Transcripts, Echoes

    async def link_state(self, chatbot_id: str, thread_id: str,
                         destination: str) -> dict[str, Any] | None:
        return await self._run(lambda conn: self.conversation_sql.link_state(
            conn, chatbot_id, thread_id, destination))

    async def save_link(self, chatbot_id: str, thread_id: str, destination: str,
                        state: dict[str, Any], ref: str | None = None) -> None:
        now = self.clock.now()
        await self._run(lambda conn: self.conversation_sql.save_link(
            conn, chatbot_id, thread_id, destination, state, ref, now))

    async def conversation_by_ref(self, destination: str, ref: str) -> tuple[str, str] | None:
        return await self._run(
            lambda conn: self.conversation_sql.conversation_by_ref(conn, destination, ref))

    async def transcript(self, chatbot_id: str, thread_id: str,
                         after_id: int = 0) -> list[StoredMessage]:
        return await self._run(lambda conn: self.conversation_sql.transcript(
            conn, chatbot_id, thread_id, after_id))

    async def remember_echo(self, echo: Echo, now: float, keep_for: float) -> None:
        """Keep `echo` until it comes back or `keep_for` passes; one memory per source."""
        await self._run(
            lambda conn: self.conversation_sql.remember_echo(conn, echo, now, now + keep_for))

    async def consume_echo(self, echo: Echo, now: float) -> bool:
        """Whether `echo` was remembered from its tool (any source, text stripped); the memory
        is used up."""
        return await self._run(lambda conn: self.conversation_sql.consume_echo(conn, echo, now))

    async def listener_cursor(self, name: str) -> float | None:
        return await self._run(lambda conn: self.conversation_sql.listener_cursor(conn, name))

    async def advance_listener_cursor(self, name: str, seen_up_to: float) -> None:
        await self._run(lambda conn: self.conversation_sql.advance_listener_cursor(
            conn, name, seen_up_to))

    # Operations

    async def deliveries(self, status: str | None = None, conversation: str | None = None,
                         limit: int = 100, ids: Sequence[int] = ()) -> list[DeliveryRow]:
        return await self._run(lambda conn: self.operations_sql.deliveries(
            conn, status, conversation, limit, ids))

    async def attempts(self, delivery_id: int, limit: int = 3) -> list[Attempt]:
        return await self._run(
            lambda conn: self.operations_sql.attempts(conn, delivery_id, limit))

    async def retry(self, ids: Sequence[int] = (), failed: bool = False,
                    destination: str | None = None, now: float = 0.0) -> int:
        return await self._run(
            lambda conn: self.operations_sql.retry(conn, ids, failed, destination, now))

    async def conversations(self, limit: int = 50) -> list[ConversationRecord]:
        return await self._run(
            lambda conn: self.conversation_sql.conversations(conn, "", (), limit))

    async def queue_depth(self) -> dict[str, int]:
        return await self._run(self.operations_sql.queue_depth)

    async def prune(self, cutoff: float, now: float, limit: int) -> Pruned:
        """Remove up to `limit` finished events older than `cutoff`, and expired dedup rows."""
        return await self._run(
            lambda conn: self.operations_sql.prune(conn, cutoff, now, limit))

    # SettingsRecords

    async def record_settings(self, in_use: SettingsInUse) -> None:
        await self._run(lambda conn: self.settings_sql.record(conn, in_use))

    async def settings_in_use(self) -> list[SettingsInUse]:
        return await self._run(self.settings_sql.read_all)

    async def forget_settings(self, process: str) -> None:
        await self._run(lambda conn: self.settings_sql.forget(conn, process))

    # ConsoleKeys, Pauses, ConsoleQueries

    async def console_key(self, name: str, candidate: str) -> str:
        now = self.clock.now()
        return await self._run(
            lambda conn: self.console_sql.console_key(conn, name, candidate, now))

    async def pause(self, destination: str, now: float) -> bool:
        return await self._run(lambda conn: self.console_sql.pause(conn, destination, now))

    async def resume(self, destination: str) -> bool:
        return await self._run(lambda conn: self.console_sql.resume(conn, destination))

    async def paused(self) -> dict[str, float]:
        return await self._run(self.console_sql.paused)

    async def destination_summary(self, destinations: Sequence[str],
                                  now: float) -> list[DestinationSummary]:
        return await self._run(
            lambda conn: self.console_sql.summary(conn, list(destinations), now))

    async def delivery_page(self, matching: DeliveryFilter, before: int | None = None,
                            limit: int = 50) -> list[DeliveryRow]:
        return await self._run(
            lambda conn: self.console_sql.delivery_page(conn, matching, before, limit))

    async def conversation_page(self, search: str = "",
                                before: tuple[float, str, str] | None = None,
                                limit: int = 50) -> ConversationPage:
        return await self._run(
            lambda conn: self.console_sql.conversation_page(conn, search, before, limit))

    async def count_matching(self, matching: DeliveryFilter) -> int:
        return await self._run(lambda conn: self.console_sql.count(conn, matching))

    async def retry_matching(self, matching: DeliveryFilter, ids: Sequence[int] = (),
                             now: float = 0.0) -> int:
        return await self._run(lambda conn: self.console_sql.retry_matching(
            conn, matching, list(ids), now))

    async def cancel_matching(self, matching: DeliveryFilter, ids: Sequence[int] = (),
                              now: float = 0.0) -> int:
        return await self._run(lambda conn: self.console_sql.cancel_matching(
            conn, matching, list(ids), now))

    async def event_body(self, event_id: int) -> str | None:
        return await self._run(lambda conn: self.console_sql.event_body(conn, event_id))
