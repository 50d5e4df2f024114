"""The delivery worker: claims due deliveries under a lease, hands them out, schedules retries.

A lease is short and renewed: while a delivery is in flight the worker extends its lease every
third of `[delivery] lease`, however long the destination takes. A worker that dies stops
renewing, and another takes its deliveries over once the lease runs out; a worker that lost a
lease (it hung, or the store was out of reach) finds its result refused, and logs that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import (
    Delivered,
    Delivery,
    Destination,
    Outcome,
    Skipped,
    spent,
)
from bridge.errors import PermanentError, RetryableError, StoreError
from bridge.events import parse_event
from bridge.metrics import Metrics
from bridge.sections import DeliverySettings
from bridge.store import (
    ClaimedDelivery,
    DeliveryQueue,
    DeliveryStore,
    FollowUp,
    Lease,
    RetryKind,
)

log = logging.getLogger("bridge.worker")
MAX_RETRY_AFTER = 3600.0  # a Retry-After is obeyed in full, up to an hour
BEATS_PER_LEASE = 3  # a lease survives two renewals that could not commit


class WorkerStore(DeliveryQueue, DeliveryStore, Protocol):
    """The worker's share of the store: the queue, plus what it hands each destination."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: about `initial` first, doubling up to `cap`."""

    initial: float
    cap: float

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER) + rng.uniform(0, 0.25)
        ceiling = min(self.cap, self.initial * 2 ** max(attempt - 1, 0))
        return rng.uniform(ceiling / 2, ceiling)

    @classmethod
    def of(cls, settings: DeliverySettings) -> Backoff:
        return cls(settings.backoff_initial.total_seconds(), settings.backoff_cap.total_seconds())


@dataclass
class Recovery:
    """Tells when a destination answers again, so that what waits out a backoff for it goes now.

    A retry that gets through is the sign. So is any call that gets through after this worker
    saw the destination fail, at most once per `cooldown`: a conversation that keeps failing on
    its own while others get through is then hurried no more often than its backoff would try.
    """

    cooldown: float
    _failing: set[str] = field(default_factory=set)
    _last: dict[str, float] = field(default_factory=dict)

    def failed(self, destination: str) -> None:
        self._failing.add(destination)

    def answers_again(self, job: ClaimedDelivery, now: float) -> bool:
        failing = job.destination in self._failing
        self._failing.discard(job.destination)
        rested = now - self._last.get(job.destination, -math.inf) >= self.cooldown
        if job.attempts > 1 or (failing and rested):
            self._last[job.destination] = now
            return True
        return False


class Worker:
    """Delivers pending deliveries until stopped; one per process, any number per store."""

    def __init__(
        self,
        store: WorkerStore,
        destinations: Mapping[str, Destination],
        settings: DeliverySettings,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.store = store
        self.destinations = destinations
        self.settings = settings
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.redact = redact  # upstreams echo what they were sent: no secret reaches the store
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.backoff = Backoff.of(settings)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._claimed: dict[int, ClaimedDelivery] = {}
        self._settling: set[int] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.recovery = Recovery(cooldown=settings.backoff_cap.total_seconds())

    def use(self, destinations: Mapping[str, Destination], settings: DeliverySettings,
            redact: Callable[[str], str]) -> list[asyncio.Task[None]]:
        """Deliver with these from the next claim on (settings reloaded while running).

        Returns the calls in flight: they finish with the destinations they started with,
        which must stay open until then.
        """
        self.destinations, self.settings, self.redact = destinations, settings, redact
        self.backoff = Backoff.of(settings)
        self.recovery.cooldown = settings.backoff_cap.total_seconds()
        self.wake()
        return list(self._in_flight.values())

    @property
    def lease(self) -> float:
        return self.settings.lease.total_seconds()

    @property
    def heartbeat_every(self) -> float:
        return self.lease / BEATS_PER_LEASE

    def wake(self) -> None:
        """Something new may be due: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and deliver until stop() is called."""
        log.info("worker started", extra={"worker": self.owner})
        self._heartbeat = asyncio.create_task(self._keep_leases(), name="heartbeat")
        try:
            while not self._stopping.is_set():
                try:
                    await self._claim_and_start()
                except StoreError as exc:
                    log.warning("worker could not claim deliveries: %s", exc)
                await self._wait_for_work()
        except BaseException:
            self._heartbeat.cancel()  # stop() ends it otherwise, once in-flight work is done
            raise

    async def renew_leases(self) -> None:
        """Extend the lease of every delivery in flight; give up those another worker took."""
        held = [job for job in self._claimed.values() if job.id not in self._settling]
        if not held:
            return
        kept = await self.store.heartbeat([job.lease for job in held],
                                          self.clock.now() + self.lease)
        for job in held:
            if job.id not in kept and job.id in self._claimed and job.id not in self._settling:
                log.warning("delivery %d to %s: lease lost, another worker may take it; this"
                            " attempt's result will be refused", job.id, job.destination,
                            extra={"delivery_id": job.id, "outcome": "lease lost"})
                self._in_flight[job.id].cancel()

    async def _keep_leases(self) -> None:
        # Paced by the event loop, not the injected clock: that one is for the lease arithmetic.
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                await self.renew_leases()
            except StoreError as exc:
                log.warning("worker could not renew its leases: %s", exc)
            except Exception:  # a bug here must not stop the renewals for good
                log.exception("worker: unexpected error renewing its leases")

    async def stop(self) -> None:
        """Stop claiming; let in-flight deliveries finish within the grace, release the rest."""
        self._stopping.set()
        self._wake.set()
        in_flight = {task: self._claimed[key].lease for key, task in self._in_flight.items()}
        try:
            if in_flight:
                await self._release_after_grace(in_flight)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()

    async def _release_after_grace(self, in_flight: dict[asyncio.Task[None], Lease]) -> None:
        # Leases are still renewed meanwhile: a grace longer than a lease is no risk.
        grace = self.settings.shutdown_grace.total_seconds()
        _, unfinished = await asyncio.wait(in_flight, timeout=grace)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            released = await self.store.release([in_flight[task] for task in unfinished])
            log.info("released %d in-flight deliveries on shutdown", released)

    async def drain(self, timeout: float = 10.0) -> None:
        """Deliver everything due now and wait for it (tests and one-shot runs)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            await self._claim_and_start()
            if not self._in_flight:
                return
            await asyncio.wait(list(self._in_flight.values()), timeout=0.05)

    def _room(self) -> int:
        return self.settings.concurrency - len(self._in_flight)

    async def _claim_and_start(self) -> None:
        room = self._room()
        if room <= 0 or self._stopping.is_set():
            return
        claimed = await self.store.claim(self.owner, self.clock.now(), room, self.lease)
        for job in claimed:
            task = asyncio.create_task(self._deliver(job), name=f"delivery-{job.id}")
            self._in_flight[job.id] = task
            self._claimed[job.id] = job
            task.add_done_callback(partial(self._finished, job.id))

    def _finished(self, delivery_id: int, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery_id, None)
        self._claimed.pop(delivery_id, None)
        self._settling.discard(delivery_id)
        self._wake.set()

    async def _wait_for_work(self) -> None:
        timeout = self.settings.poll_interval.total_seconds()
        # With every slot taken only a finish can start more, and it wakes us: asking the
        # store when the next retry is due would cost a query per accepted webhook in a burst.
        due = await self._next_due() if self._room() > 0 else None
        if due is not None:
            timeout = min(timeout, max(due - self.clock.now(), 0.005))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _next_due(self) -> float | None:
        try:
            return await self.store.next_due(self.clock.now())
        except StoreError:
            return None

    async def _deliver(self, job: ClaimedDelivery) -> None:
        try:
            await self._attempt(job)
        except StoreError as exc:
            self._unrecorded(job, exc)

    async def _attempt(self, job: ClaimedDelivery) -> None:
        destination = self.destinations.get(job.destination)
        if destination is None:
            await self._fail(job, f"destination {job.destination!r} is not configured")
            return
        self.metrics.attempt(job.destination)
        delivery: Delivery | None = None
        coalesced: Sequence[int] = ()
        try:
            delivery = Delivery(job, parse_event(job.kind, job.payload), self.store, self.clock)
            outcome = await destination.deliver(delivery)
        except RetryableError as exc:
            self.metrics.destination_error(job.destination, exc)
            kind: RetryKind = "unavailable" if exc.retry_after is None else "rate_limited"
            if kind == "unavailable":
                self.recovery.failed(job.destination)
            await self._retry_later(job, str(exc), exc.retry_after, kind, exc.follow_ups)
        except PermanentError as exc:
            self.metrics.destination_error(job.destination, exc)
            await self._fail(job, str(exc), exc.follow_ups)
        except (asyncio.CancelledError, StoreError):
            raise  # a store error may come after the call: what was sent is not known
        except Exception as exc:  # a bug must not lose the event: retry, bounded by max_attempts
            self.metrics.destination_error(job.destination, exc)
            log.exception("unexpected error delivering %d to %s", job.id, job.destination)
            await self._retry_later(job, f"unexpected error: {type(exc).__name__}: {exc}", None,
                                    "error")
        else:
            assert delivery is not None
            await self._succeed(job, outcome, delivery.behind)
            coalesced = outcome.coalesced if isinstance(outcome, Delivered) else ()
        finally:
            if delivery is not None:  # also when cancelled: what went along or not, nothing stays
                self._count_lookup(delivery)
                await self._release_unused(delivery, coalesced)

    def _count_lookup(self, delivery: Delivery) -> None:
        if delivery.looked:
            self.metrics.reconciled(delivery.destination, delivery.found)

    def _unrecorded(self, job: ClaimedDelivery, exc: StoreError) -> None:
        """The store failed around the call: whether it reached the destination is not known.

        Nothing more is written (the store is failing): the delivery stays leased until its
        lease runs out, then the next claim records this attempt as abandoned and hands the
        delivery out as uncertain, so the destination looks for it before sending it again.
        """
        log.error(
            "delivery %d (event %d) to %s: the store failed (%s); the outcome is not recorded."
            " The delivery is taken again once its lease runs out, and %s is first checked for"
            " what this attempt may have sent", job.id, job.event_id, job.destination, exc,
            job.destination,
            extra={"delivery_id": job.id, "event_id": job.event_id, "destination": job.destination,
                   "conversation": job.ordering_key, "outcome": "unrecorded",
                   "attempt": job.attempts})

    async def _release_unused(self, delivery: Delivery, coalesced: Sequence[int]) -> None:
        """Deliveries taken to go along that did not: back to the queue, next in line."""
        went_along = set(coalesced)
        unused = [job.lease for job in delivery.behind if job.id not in went_along]
        if unused:
            await self.store.release(unused)

    def _settle(self, job: ClaimedDelivery) -> None:
        """The attempt is over and its outcome is being recorded: no more renewals for it."""
        self._settling.add(job.id)

    async def _succeed(self, job: ClaimedDelivery, outcome: Outcome,
                       behind: Sequence[ClaimedDelivery]) -> None:
        self._settle(job)
        now = self.clock.now()
        if isinstance(outcome, Skipped):
            if await self.store.finish(job.lease, "skipped", now, outcome.reason):
                self._log(job, "skipped", outcome.reason)
            else:
                self._refused(job, "skipped")
            return
        assert isinstance(outcome, Delivered)
        went_along = set(outcome.coalesced)
        coalesced = [queued for queued in behind if queued.id in went_along]
        if await self.store.finish(job.lease, "delivered", now, outcome.note,
                                   self._addressed(outcome.follow_ups),
                                   [queued.lease for queued in coalesced]):
            for queued in [job, *coalesced]:
                self._log(queued, "delivered", outcome.note)
            await self._bring_forward(job)
        else:
            self._refused(job, "delivered")

    async def _bring_forward(self, job: ClaimedDelivery) -> None:
        """The destination answers again: what waits out a backoff because it failed goes now.

        The worker's pace (concurrency) and the destination's own (a per-channel pacer)
        still apply; a delivery the destination told when to come back (Retry-After) keeps
        its time.
        """
        if not self.recovery.answers_again(job, self.clock.now()):
            return
        try:
            count = await self.store.bring_forward(job.destination, "unavailable",
                                                   self.clock.now())
        except StoreError as exc:  # they keep their backoff: nothing is lost
            log.warning("%s answers again, but waiting deliveries could not be brought"
                        " forward: %s", job.destination, exc)
            return
        if count:
            log.info("%s answers again: %d waiting deliveries brought forward", job.destination,
                     count, extra={"destination": job.destination})
            self.wake()

    async def _retry_later(self, job: ClaimedDelivery, reason: str, after: float | None,
                           kind: RetryKind, follow_ups: Sequence[FollowUp] = ()) -> None:
        self._settle(job)
        reason = self.redact(reason)
        now = self.clock.now()
        if (used_up := spent(job, self.settings, now)) is not None:
            await self._fail(job, f"gave up after {used_up}: {reason}", follow_ups)
            return
        delay = self.backoff.delay(job.attempts, after, self.rng)
        if await self.store.reschedule(job.lease, now + delay, reason, now, kind):
            self._log(job, "retry", f"in {delay:.1f} s: {reason}")
        else:
            self._refused(job, "retry")

    async def _fail(self, job: ClaimedDelivery, reason: str,
                    follow_ups: Sequence[FollowUp] = ()) -> None:
        self._settle(job)
        reason = self.redact(reason)
        if await self.store.finish(job.lease, "failed", self.clock.now(), reason,
                                   self._addressed(follow_ups)):
            self._log(job, "failed", reason)
        else:
            self._refused(job, "failed")

    def _addressed(self, follow_ups: Sequence[FollowUp]) -> list[FollowUp]:
        """Each follow-up for the destinations that take its kind, or for those it names (a
        notice for the chat tool a reply came from); only those these settings switch on."""
        addressed = [replace(follow_up, destinations=[
            name for name, destination in self.destinations.items()
            if (name in follow_up.destinations if follow_up.destinations
                else destination.accepts(follow_up.kind))]) for follow_up in follow_ups]
        return [follow_up for follow_up in addressed if follow_up.destinations]

    def _refused(self, job: ClaimedDelivery, outcome: str) -> None:
        """The lease passed to another worker: this attempt's outcome is not recorded."""
        log.warning(
            "delivery %d (event %d) to %s: %s refused, the lease was lost (another worker took"
            " the delivery over)", job.id, job.event_id, job.destination, outcome,
            extra={"delivery_id": job.id, "event_id": job.event_id, "destination": job.destination,
                   "conversation": job.ordering_key, "outcome": "refused", "attempt": job.attempts})

    def _log(self, job: ClaimedDelivery, outcome: str, detail: str | None) -> None:
        # Every outcome passes here, so it is also where it is counted.
        self.metrics.delivery(job.destination, outcome, self.clock.now() - job.created_at)
        level = logging.WARNING if outcome in ("failed", "retry") else logging.INFO
        log.log(
            level,
            "delivery %d (event %d) to %s: %s%s",
            job.id, job.event_id, job.destination, outcome, f" ({detail})" if detail else "",
            extra={"delivery_id": job.id, "event_id": job.event_id, "destination": job.destination,
                   "conversation": job.ordering_key, "outcome": outcome, "attempt": job.attempts},
        )
