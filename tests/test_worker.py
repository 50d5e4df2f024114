"""The delivery worker: leases, order per conversation, backoff, giving up, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from datetime import timedelta
from typing import Any, ClassVar

import pytest

from bridge.destinations.base import Delivered, Delivery, Outcome
from bridge.errors import PermanentError, RetryableError, StoreError
from bridge.event_rows import new_event
from bridge.events import TICKET_LINKED, canonical_json, parse_event
from bridge.store import FollowUp
from bridge.worker import Backoff, Worker
from tests.failing_store import FullDisk


class RecordingDestination:
    """A destination that records what it got and raises what it is told to, in turn."""

    name: ClassVar[str] = "recording"

    def __init__(self) -> None:
        self.received: list[str] = []
        self.failures: deque[Exception] = deque()
        self.stuck: set[str] = set()  # messages that fail with HTTP 500 every time
        self.block: asyncio.Event | None = None
        self.uncertain: list[str] = []  # messages handed out after an attempt was cut off

    def accepts(self, kind: str) -> bool:
        return True

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self.block is not None:
            await self.block.wait()
        if self.failures:
            raise self.failures.popleft()
        question = str(delivery.event.data.question)  # type: ignore[union-attr]
        if question in self.stuck:
            raise RetryableError("HTTP 500")
        self.received.append(question)
        if delivery.uncertain:
            self.uncertain.append(question)
        return Delivered(note="ok")

    async def verify(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        return None

    def render_samples(self, samples: Any) -> None:
        return None  # it cannot show what it would send


def body(thread: str, text: str) -> dict[str, Any]:
    return {"event": "ADD_MESSAGE", "data": {"chatbotId": "bot", "threadId": thread,
                                              "question": text, "messageType": "USER_MESSAGE"}}


@contextlib.asynccontextmanager
async def recording_worker(make_settings, clock, **delivery: Any):
    """A store, a recording destination, a worker with these [delivery] settings, accept()."""
    from bridge.store import open_store

    settings = make_settings({"delivery": delivery})
    store = open_store(settings.store.url)
    destination = RecordingDestination()
    worker = Worker(store, {"recording": destination}, settings.delivery, clock,
                    random.Random(5))

    async def accept(thread: str, text: str) -> None:
        event_body = body(thread, text)
        event = parse_event("ADD_MESSAGE", event_body)
        await store.accept(new_event(event, event_body, ["recording"]), clock.now(), 600)

    try:
        yield store, destination, worker, accept
    finally:
        await store.close()


@pytest.fixture
async def setup(make_settings, clock):
    async with recording_worker(make_settings, clock, max_attempts=5, max_age="1h") as parts:
        yield parts


async def run_until_in_flight(worker: Worker) -> asyncio.Task[None]:
    """Start the worker and return once it holds a delivery (the destination blocks it)."""
    runner = asyncio.create_task(worker.run())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if worker._in_flight:
            break
    return runner


@pytest.mark.parametrize(("attempt", "low", "high"), [
    (1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (8, 64.0, 128.0), (30, 90.0, 180.0)])
def test_backoff_doubles_from_about_a_second_up_to_the_cap(attempt, low, high):
    backoff = Backoff(initial=1.0, cap=180.0)
    delays = [backoff.delay(attempt, None, random.Random(seed)) for seed in range(50)]
    assert all(low <= delay <= high for delay in delays)
    assert len(set(delays)) > 1  # jittered


def test_backoff_obeys_retry_after_in_full():
    delay = Backoff(initial=1.0, cap=5.0).delay(1, 42.0, random.Random(1))
    assert 42.0 <= delay <= 42.25


async def test_retryable_failure_is_rescheduled_with_backoff_then_delivered(setup, clock):
    store, destination, worker, accept = setup
    await accept("t1", "hello")
    destination.failures.append(RetryableError("slack: HTTP 503"))
    await worker.drain()
    [row] = await store.deliveries()
    assert row.status == "pending" and row.attempts == 1 and row.last_error == "slack: HTTP 503"
    assert clock.now() < row.next_attempt_at <= clock.now() + 0.05
    await worker.drain()
    assert destination.received == []  # not yet due
    clock.advance(0.06)
    await worker.drain()
    [row] = await store.deliveries()
    assert (row.status, row.attempts, destination.received) == ("delivered", 2, ["hello"])


async def test_permanent_failure_fails_at_once(setup):
    store, destination, worker, accept = setup
    await accept("t1", "hello")
    destination.failures.append(PermanentError("slack: chat.postMessage: invalid_auth"))
    await worker.drain()
    [row] = await store.deliveries()
    assert (row.status, row.attempts, row.last_error) == (
        "failed", 1, "slack: chat.postMessage: invalid_auth")


async def test_gives_up_after_max_attempts(setup, clock):
    store, destination, worker, accept = setup
    await accept("t1", "hello")
    destination.failures.extend(RetryableError("timeout") for _ in range(10))
    for _ in range(8):
        await worker.drain()
        clock.advance(1)
    [row] = await store.deliveries()
    assert row.status == "failed" and row.attempts == 5
    assert row.last_error == "gave up after 5 attempts: timeout"


async def test_gives_up_after_max_age(setup, clock):
    store, destination, worker, accept = setup
    await accept("t1", "hello")
    destination.failures.extend(RetryableError("HTTP 502") for _ in range(3))
    await worker.drain()
    clock.advance(3601)
    await worker.drain()
    [row] = await store.deliveries()
    assert row.status == "failed" and row.last_error.startswith("gave up after 1.0 h")


async def test_unexpected_error_is_retried_not_lost(setup, clock):
    store, destination, worker, accept = setup
    await accept("t1", "hello")
    destination.failures.append(ValueError("bug"))
    await worker.drain()
    clock.advance(1)
    await worker.drain()
    [row] = await store.deliveries()
    assert row.status == "delivered" and destination.received == ["hello"]


async def test_a_stuck_conversation_holds_up_only_itself(setup, clock):
    _store, destination, worker, accept = setup
    await accept("stuck", "s1")
    await accept("stuck", "s2")
    await accept("free", "f1")
    await accept("free", "f2")
    destination.failures.append(RetryableError("HTTP 500"))  # hits s1, the first claimed
    await worker.drain()
    assert [text for text in destination.received if text[0] == "f"] == ["f1", "f2"]
    clock.advance(1)
    await worker.drain()
    assert sorted(destination.received) == ["f1", "f2", "s1", "s2"]
    assert [text for text in destination.received if text[0] == "s"] == ["s1", "s2"]


async def test_expired_lease_is_taken_over_after_a_crash(setup, clock):
    store, destination, worker, accept = setup
    await accept("t1", "hello")
    [claimed] = await store.claim("crashed-worker", clock.now(), 10, lease=120)
    await worker.drain()
    assert destination.received == []  # still leased by the crashed worker
    clock.advance(121)
    await worker.drain()
    [row] = await store.deliveries()
    assert (row.status, row.attempts, destination.received) == ("delivered", 2, ["hello"])
    assert claimed.attempts == 1


async def test_stop_releases_in_flight_deliveries(setup, clock):
    store, destination, worker, accept = setup
    worker.settings = worker.settings.model_copy(update={"shutdown_grace": timedelta(seconds=0.05)})
    destination.block = asyncio.Event()
    await accept("t1", "hello")
    runner = await run_until_in_flight(worker)
    await worker.stop()
    runner.cancel()
    [row] = await store.deliveries()
    assert row.status == "pending" and row.attempts == 0
    claims = await store.claim("next-worker", clock.now(), 10, lease=60)
    assert [c.id for c in claims] == [row.id]  # free to claim at once, no lease to wait out


async def test_run_wakes_on_new_work(setup):
    _store, destination, worker, accept = setup
    worker.settings = worker.settings.model_copy(update={"poll_interval": timedelta(seconds=30)})
    runner = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)
    await accept("t1", "hello")
    worker.wake()
    for _ in range(200):
        if destination.received:
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    runner.cancel()
    assert destination.received == ["hello"]


class CountingStore:
    """The store, counting how often the worker asks when the next retry is due."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.next_due_asked = 0

    async def next_due(self, after: float) -> float | None:
        self.next_due_asked += 1
        return await self.store.next_due(after)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_with_every_slot_taken_new_work_costs_no_store_query(setup):
    store, destination, worker, accept = setup
    counting = CountingStore(store)
    worker.store = counting
    worker.settings = worker.settings.model_copy(update={"concurrency": 1})
    destination.block = asyncio.Event()
    await accept("t1", "first")
    runner = await run_until_in_flight(worker)
    asked_while_full = counting.next_due_asked
    for n in range(20):  # a burst: every accepted webhook wakes the worker
        await accept(f"t{n + 2}", f"m{n}")
        worker.wake()
        await asyncio.sleep(0.005)
    assert counting.next_due_asked == asked_while_full
    destination.block.set()
    for _ in range(300):  # all delivered, and the worker idle with room: it asks as before
        if len(destination.received) == 21 and counting.next_due_asked > asked_while_full:
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    runner.cancel()
    assert destination.received == ["first"] + [f"m{n}" for n in range(20)]
    assert counting.next_due_asked > asked_while_full


# Heartbeat leases, by the injected clock


async def wait_until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_slow_call_is_never_taken_over_while_its_worker_renews_the_lease(setup, clock):
    store, destination, worker, accept = setup
    destination.block = asyncio.Event()
    await accept("t1", "slow")
    runner = await run_until_in_flight(worker)
    assert worker.heartbeat_every == worker.lease / 3
    for _ in range(30):  # ten leases long, far beyond any destination's timeout
        clock.advance(worker.heartbeat_every)
        await worker.renew_leases()
        assert await store.claim("other-worker", clock.now(), 10, 60) == []
    destination.block.set()
    await wait_until(lambda: not worker._in_flight)
    await worker.stop()
    runner.cancel()
    [row] = await store.deliveries()
    assert (row.status, row.attempts, destination.received) == ("delivered", 1, ["slow"])


async def test_a_worker_that_stopped_renewing_is_taken_over_and_its_late_result_refused(
        setup, clock, caplog):
    store, destination, worker, accept = setup
    destination.block = asyncio.Event()
    await accept("t1", "hello")
    runner = await run_until_in_flight(worker)  # then it hangs: no renewal from here on
    clock.advance(worker.lease)
    other = RecordingDestination()
    second = Worker(store, {"recording": other}, worker.settings, clock, random.Random(1))
    await second.drain()
    assert other.received == ["hello"]

    destination.block.set()  # the hung call returns at last; its result must not count
    await wait_until(lambda: not worker._in_flight)
    await worker.stop()
    runner.cancel()
    [row] = await store.deliveries()
    assert (row.status, row.attempts, row.note) == ("delivered", 2, "ok")
    history = await store.attempts(row.id, limit=10)
    assert [(a.outcome, a.worker) for a in history] == [
        ("delivered", second.owner), ("abandoned", worker.owner)]
    assert "delivered refused, the lease was lost" in caplog.text


async def test_a_renewal_that_finds_the_lease_taken_stops_the_attempt(setup, clock, caplog):
    store, destination, worker, accept = setup
    destination.block = asyncio.Event()
    await accept("t1", "hello")
    runner = await run_until_in_flight(worker)
    [task] = worker._in_flight.values()
    clock.advance(worker.lease)
    [taken] = await store.claim("other-worker", clock.now(), 10, 60)
    await worker.renew_leases()
    await wait_until(task.done)
    assert task.cancelled() and "lease lost" in caplog.text
    await worker.stop()
    runner.cancel()
    assert await store.finish(taken.lease, "delivered", clock.now())
    assert destination.received == []


async def test_a_lease_shorter_than_any_renewal_could_keep_is_refused(make_settings):
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        make_settings({"delivery": {"lease": "2s"}})
    assert "delivery.lease" in str(refused.value.problems) and "at least 3s" in str(
        refused.value.problems)


# Bring-forward: once a destination answers a retry, what waits out a backoff for it goes now

@pytest.fixture
async def slow_backoff(make_settings, clock):
    """A worker whose backoff is long enough to see a delivery brought forward."""
    async with recording_worker(make_settings, clock, backoff_initial="10s",
                                backoff_cap="1m") as parts:
        yield parts


async def test_a_retry_that_gets_through_brings_forward_the_others_waiting_for_it(
        slow_backoff, clock):
    store, destination, worker, accept = slow_backoff
    for thread in ("a", "b", "c", "told"):
        await accept(thread, thread)
    destination.failures.extend([RetryableError("HTTP 503")] * 3 + [
        RetryableError("HTTP 429", retry_after=600)])
    await worker.drain()
    waiting = {row.ordering_key: row.next_attempt_at for row in await store.deliveries()}
    assert all(due > clock.now() + 4 for due in waiting.values())
    clock.advance(min(waiting.values()) - clock.now())  # the first retry is due, only it
    await worker.drain()
    assert sorted(destination.received) == ["a", "b", "c"]  # not waiting out their backoff
    [told] = await store.deliveries(status="pending")
    assert (told.ordering_key, told.next_attempt_at) == ("bot/told", waiting["bot/told"])


async def test_a_new_message_getting_through_after_failures_brings_forward_the_waiting(
        slow_backoff, clock):
    _store, destination, worker, accept = slow_backoff
    for thread in ("a", "b"):
        await accept(thread, thread)
    destination.failures.extend([RetryableError("HTTP 503")] * 2)
    await worker.drain()
    await accept("live", "live")
    await worker.drain()
    assert destination.received[0] == "live" and sorted(destination.received) == [
        "a", "b", "live"]


async def test_one_conversation_failing_on_its_own_is_hurried_at_most_once_per_backoff_cap(
        slow_backoff, clock):
    store, destination, worker, accept = slow_backoff
    await accept("stuck", "s1")
    destination.stuck.add("s1")
    await worker.drain()
    await accept("free", "f1")
    await worker.drain()  # f1 gets through: s1 is tried again at once, and fails again
    [stuck] = await store.deliveries(status="pending")
    assert stuck.attempts == 2 and stuck.next_attempt_at >= clock.now() + 10
    clock.advance(5)
    await accept("free", "f2")
    await worker.drain()  # within the cap (a minute): s1 keeps its backoff
    assert destination.received == ["f1", "f2"]
    assert [(row.attempts, row.next_attempt_at)
            for row in await store.deliveries(status="pending")] == [
        (2, stuck.next_attempt_at)]


class Telling(RecordingDestination):
    """Takes messages only; tells of each, or fails telling, with a ticket-link follow-up."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        super().__init__()
        self.fail_with = fail_with

    def accepts(self, kind: str) -> bool:
        return kind == "ADD_MESSAGE"

    async def deliver(self, delivery: Delivery) -> Outcome:
        told = FollowUp(TICKET_LINKED, canonical_json({"event": TICKET_LINKED, "data": {
            "chatbotId": "bot", "threadId": "t1", "issueKey": "SUP-1",
            "issueUrl": "https://jira.example/browse/SUP-1"}}), "bot/t1", ())
        if self.fail_with is not None:
            self.fail_with.follow_ups = [told]
            raise self.fail_with
        return Delivered(follow_ups=[told])


class Deaf(RecordingDestination):
    def accepts(self, kind: str) -> bool:
        return False


@pytest.mark.parametrize(("failure", "kept"), [
    (None, True), (PermanentError("refused"), True), (RetryableError("busy"), False)])
async def test_a_follow_up_goes_to_the_destinations_that_take_its_kind(make_settings, clock,
                                                                       failure, kept):
    async with recording_worker(make_settings, clock) as (store, recording, worker, _):
        worker.destinations = {"telling": Telling(failure), "recording": recording,
                               "deaf": Deaf()}
        event_body = body("t1", "hello")
        await store.accept(new_event(parse_event("ADD_MESSAGE", event_body), event_body,
                                     ["telling"]), clock.now(), 600)
        await worker.drain()
        rows = await store.deliveries()
    linked = [row.destination for row in rows if row.kind == TICKET_LINKED]
    assert linked == (["recording"] if kept else [])  # a retry tells nothing yet


# The store fails around the call: what was sent is not known, so it is not sent blindly again


@pytest.mark.parametrize("outcome", ["delivered", "retry"])
async def test_a_store_error_after_the_call_leaves_the_delivery_uncertain_not_resent(
        setup, clock, caplog, outcome):
    store, destination, worker, accept = setup
    full = FullDisk(store)
    worker.store = full
    if outcome == "retry":
        destination.failures.append(RetryableError("HTTP 503"))
    await accept("t1", "hello")
    full.full = True
    await worker._claim_and_start()
    with caplog.at_level(logging.WARNING, logger="bridge.worker"):
        await asyncio.gather(*worker._in_flight.values())  # raises if the task crashed
    assert full.refused == ["finish" if outcome == "delivered" else "reschedule"]
    [line] = [r.getMessage() for r in caplog.records if "the store failed" in r.getMessage()]
    assert "delivery 1 (event 1) to recording" in line and "disk is full" in line

    full.full = False
    await worker.drain()
    [row] = await store.deliveries()
    assert row.status == "pending"  # still leased: not resent before the lease runs out
    clock.advance(worker.lease)
    await worker.drain()
    [row] = await store.deliveries()
    assert row.status == "delivered"
    assert destination.uncertain == ["hello"]  # the destination was told to look first
    assert [a.outcome for a in await store.attempts(row.id, 10)] == ["delivered", "abandoned"]


async def test_a_store_error_inside_the_call_is_not_taken_for_a_failure_to_retry(
        setup, clock, caplog):
    store, destination, worker, accept = setup
    destination.failures.append(StoreError("sqlite: database or disk is full"))
    await accept("t1", "hello")
    with caplog.at_level(logging.WARNING, logger="bridge.worker"):
        await worker.drain()
    [row] = await store.deliveries()
    assert (row.status, row.last_error) == ("pending", None)  # no retry: it may have been sent
    assert "the outcome is not recorded" in caplog.text
    clock.advance(worker.lease)
    await worker.drain()
    assert destination.uncertain == ["hello"]
