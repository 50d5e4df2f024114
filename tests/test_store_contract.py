"""The store contract: every backend must pass these, through the protocols alone (no SQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.events import ESCALATION, MESSAGE, TICKET_LINKED
from bridge.store import (
    Acceptance,
    ClaimedDelivery,
    DeliveryFilter,
    DestinationSummary,
    Echo,
    FollowUp,
    Lease,
    NewEvent,
    SettingsInUse,
    Store,
    StoredMessage,
)
from bridge.store.migrations import SCHEMA_VERSION
from tests.clock import FakeClock
from tests.store_backends import AGAIN, BACKENDS

NOW = 1_700_000_000.0
LEASE = 10.0


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                clock: FakeClock) -> AsyncIterator[Store]:
    opened = await BACKENDS[request.param](tmp_path, clock)
    yield opened
    await opened.close()


@pytest.fixture
async def another_process(request: pytest.FixtureRequest, store: Store,
                          clock: FakeClock) -> AsyncIterator[Store]:
    """The same store, opened as a second process (a restarted bridge, a replica) opens it."""
    opened = await AGAIN[request.node.callspec.params["store"]](store, clock)
    yield opened
    await opened.close()


def new_event(dedup_key: str, ordering_key: str = "bot/c1",
              destinations: Sequence[str] = ("slack",), text: str | None = None) -> NewEvent:
    chatbot_id, thread_id = ordering_key.split("/", 1)
    message = StoredMessage(chatbot_id, thread_id, "USER_MESSAGE", text, None, None) \
        if text else None
    return NewEvent(kind=MESSAGE, body=f'{{"n":"{dedup_key}"}}', dedup_key=dedup_key,
                    ordering_key=ordering_key, destinations=destinations, message=message,
                    conversation=(chatbot_id, thread_id))


async def seed(store: Store) -> None:
    """d1 (e1 slack), d2 (e1 jira), d3 (e2 slack, same conversation), d4 (e3 slack, another)."""
    await store.accept(new_event("e1", "bot/c1", ["slack", "jira"]), NOW, 60)
    await store.accept(new_event("e2", "bot/c1", ["slack"]), NOW, 60)
    await store.accept(new_event("e3", "bot/c2", ["slack"]), NOW, 60)


async def claim(store: Store, now: float = NOW, owner: str = "w1", limit: int = 10,
                lease: float = LEASE) -> dict[int, ClaimedDelivery]:
    return {job.id: job for job in await store.claim(owner, now, limit, lease)}


async def claimed_soon(store: Store, owner: str) -> dict[int, ClaimedDelivery]:
    """What `owner` claims at NOW once the server has let a closed connection's locks go
    (its backend ends a moment after the client closes it), within a few seconds."""
    for _ in range(50):
        if taken := await claim(store, owner=owner):
            return taken
        await asyncio.sleep(0.1)
    return {}


async def status_of(store: Store, delivery_id: int) -> tuple[str, int]:
    [row] = await store.deliveries(ids=[delivery_id])
    return row.status, row.attempts


# Accept and dedup


async def test_accept_stores_the_event_and_one_delivery_per_destination(store):
    accepted = await store.accept(new_event("k1", destinations=["slack", "jira"]), NOW, 60)
    assert accepted.status == "accepted"
    rows = await store.deliveries()
    assert sorted((row.destination, row.status, row.event_id) for row in rows) == [
        ("jira", "pending", accepted.event_id), ("slack", "pending", accepted.event_id)]
    assert await store.queue_depth() == {"pending": 2, "delivered": 0, "failed": 0, "skipped": 0}
    assert await store.oldest_pending() == NOW


async def test_a_dedup_key_seen_within_the_window_is_a_duplicate_of_the_first(store):
    first = await store.accept(new_event("k1"), NOW, 60)
    assert await store.accept(new_event("k1"), NOW + 59, 60) == Acceptance(
        "duplicate", first.event_id)
    other = await store.accept(new_event("k2"), NOW + 59, 60)
    assert other.status == "accepted" and other.event_id > first.event_id
    again = await store.accept(new_event("k1"), NOW + 60, 60)
    assert again.status == "accepted" and again.event_id > other.event_id
    assert len(await store.deliveries()) == 3


async def test_concurrent_copies_of_a_body_make_one_event(store):
    bodies = [new_event(f"k{n % 10}", f"bot/c{n % 10}") for n in range(50)]
    outcomes = await asyncio.gather(*(store.accept(event, NOW, 600) for event in bodies))
    accepted = {o.event_id for o in outcomes if o.status == "accepted"}
    assert len(accepted) == 10
    assert {o.event_id for o in outcomes} == accepted  # every copy names its first
    assert len(await store.deliveries()) == 10


async def test_an_escalation_marks_its_conversation_escalated(store):
    await store.accept(new_event("m1", "bot/c1"), NOW, 60)
    record = await store.conversation("bot", "c1")
    assert record is not None and record.escalated_at is None
    escalation = NewEvent(kind="CONVERSATION_ESCALATED", body="{}", dedup_key="x1",
                          ordering_key="bot/c1", destinations=["slack"],
                          conversation=("bot", "c1"), escalation=True)
    await store.accept(escalation, NOW + 5, 60)
    await store.accept(new_event("m2", "bot/c1"), NOW + 9, 60)
    record = await store.conversation("bot", "c1")
    assert record is not None
    assert (record.first_seen, record.last_seen, record.escalated_at) == (NOW, NOW + 9, NOW + 5)


# Claims: per-conversation order


async def test_only_the_oldest_pending_delivery_per_destination_and_conversation_is_claimed(
        store):
    await seed(store)
    first = await store.claim("w1", NOW, 10, LEASE)
    assert [(job.destination, job.ordering_key, job.attempts) for job in first] == [
        ("slack", "bot/c1", 1), ("jira", "bot/c1", 1), ("slack", "bot/c2", 1)]
    assert first[0].payload == {"n": "e1"} and first[0].kind == MESSAGE
    assert await claim(store) == {}
    assert await store.finish(first[0].lease, "delivered", NOW)
    [next_one] = (await claim(store)).values()
    assert (next_one.destination, next_one.payload) == ("slack", {"n": "e2"})


async def test_a_finished_delivery_of_any_outcome_unblocks_its_conversation(store):
    await seed(store)
    jobs = await store.claim("w1", NOW, 10, LEASE)
    assert await store.finish(jobs[0].lease, "failed", NOW, "gave up")
    assert [job.payload for job in (await claim(store)).values()] == [{"n": "e2"}]


async def test_a_claim_takes_at_most_limit_oldest_first(store):
    await seed(store)
    first = await claim(store, limit=2)
    second = await claim(store, limit=2)
    assert len(first) == 2 and len(second) == 1 and max(first) < min(second)


async def test_concurrent_claimers_never_share_a_delivery(store):
    await seed(store)
    claims = await asyncio.gather(*[claim(store, owner=f"w{n}") for n in range(4)])
    taken = [delivery_id for claimed in claims for delivery_id in claimed]
    assert len(taken) == len(set(taken)) == 3


async def test_a_delivery_waiting_for_its_retry_still_holds_back_its_conversation(store):
    await seed(store)
    jobs = await store.claim("w1", NOW, 10, LEASE)
    assert await store.reschedule(jobs[0].lease, NOW + 30, "Slack answered 503", NOW)
    assert jobs[0].id not in await claim(store, NOW + 29, lease=60)
    later = await claim(store, NOW + 30)
    assert jobs[0].id in later and {"n": "e2"} not in [job.payload for job in later.values()]


async def test_next_due_is_the_next_retry_time_still_ahead(store):
    await seed(store)
    assert await store.next_due(NOW) is None  # due already: claim's business, not a timer's
    jobs = await store.claim("w1", NOW, 10, LEASE)
    assert await store.next_due(NOW) is None
    await store.reschedule(jobs[0].lease, NOW + 5, "slack: HTTP 503", NOW)
    assert await store.next_due(NOW) == NOW + 5
    assert await store.next_due(NOW + 5) is None


# Leases: renewed, taken over when they run out, and guarded


async def test_a_renewed_lease_keeps_the_delivery_however_long_the_call_takes(store):
    await seed(store)
    [job] = (await claim(store, limit=1)).values()
    for beat in range(1, 10):  # a call of 90 s with a lease of 10 s, renewed every 3 s or so
        now = NOW + beat * LEASE * 0.9
        assert await store.heartbeat([job.lease], now + LEASE) == {job.id}
        assert job.id not in await claim(store, now + 1, owner="w2")
    assert await store.finish(job.lease, "delivered", NOW + 90, "C1/1.0")
    assert await status_of(store, job.id) == ("delivered", 1)


async def test_an_expired_lease_is_taken_over_and_the_late_finish_is_refused(store):
    await seed(store)
    [stale] = (await claim(store, limit=1)).values()
    assert await claim(store, NOW + LEASE - 0.1, owner="w2", limit=1) != {stale.id: stale}
    taken = (await claim(store, NOW + LEASE, owner="w2"))[stale.id]
    assert taken.attempts == 2 and taken.token != stale.token

    assert not await store.finish(stale.lease, "delivered", NOW + 11, "late")
    assert not await store.reschedule(stale.lease, NOW + 60, "late error", NOW + 11)
    assert await store.heartbeat([stale.lease], NOW + 30) == set()
    assert await store.release([stale.lease]) == 0
    assert await status_of(store, stale.id) == ("pending", 2)

    assert await store.finish(taken.lease, "delivered", NOW + 12, "C1/2.0")
    [row] = await store.deliveries(ids=[stale.id])
    assert (row.status, row.note, row.last_error) == ("delivered", "C1/2.0", None)
    history = await store.attempts(stale.id, limit=10)
    assert [(a.attempt, a.outcome, a.worker) for a in history] == [
        (2, "delivered", "w2"), (1, "abandoned", "w1")]


async def test_a_stopped_processs_leases_are_taken_at_once_a_live_ones_are_not(
        store, another_process):
    await seed(store)
    held = await claim(store, owner="w1")
    assert await claim(another_process, owner="w2") == {}  # w1's process lives: it is its
    await store.close()  # the process dies: no release, its leases still run for LEASE
    taken = await claimed_soon(another_process, owner="w2")  # the clock stands still: at NOW
    assert sorted(taken) == sorted(held) and all(job.attempts == 2 for job in taken.values())
    [abandoned, *_] = await another_process.attempts(1)
    assert (abandoned.outcome, abandoned.worker) == ("abandoned", "w1")
    assert await another_process.finish(taken[1].lease, "delivered", NOW)


async def test_a_delivery_with_an_attempt_cut_off_is_claimed_uncertain(store):
    await seed(store)
    first = await claim(store, limit=1)
    [stale] = first.values()
    assert not stale.uncertain  # a first attempt: nothing was sent before it
    claimed = await claim(store, NOW + LEASE, owner="w2")
    taken = claimed.pop(stale.id)
    assert taken.uncertain  # w1 stopped renewing mid-attempt: it may have been sent
    assert [job.uncertain for job in claimed.values()] == [False, False]  # first attempts
    assert await store.release([taken.lease]) == 1  # w2 shuts down before trying
    again = (await claim(store, NOW + LEASE, owner="w3"))[stale.id]
    assert again.uncertain  # still: w1's attempt is the last one that ran
    assert await store.reschedule(again.lease, NOW + LEASE, "HTTP 429", NOW + LEASE)
    retried = (await claim(store, NOW + LEASE, owner="w4"))[stale.id]
    assert retried.uncertain  # w3 was refused: whether w1's attempt landed is still unknown


async def test_release_undoes_a_claim_but_not_a_finish(store):
    await seed(store)
    jobs = await store.claim("w1", NOW, 10, LEASE)
    assert await store.finish(jobs[1].lease, "delivered", NOW)
    assert await store.release([jobs[0].lease, jobs[1].lease]) == 1
    assert await status_of(store, jobs[0].id) == ("pending", 0)
    assert await status_of(store, jobs[1].id) == ("delivered", 1)
    again = await claim(store, owner="w2")
    assert jobs[0].id in again and again[jobs[0].id].attempts == 1


# Coalescing: what waits behind a leased delivery goes along with it


async def queue_kinds(store: Store, kinds: Sequence[str], conversation: str = "bot/c1") -> None:
    """One slack delivery per kind, in this order, in one conversation."""
    for n, kind in enumerate(kinds):
        event = NewEvent(kind=kind, body=f'{{"n":{n}}}', dedup_key=f"{conversation}-{n}",
                         ordering_key=conversation, destinations=["slack"])
        await store.accept(event, NOW, 60)


async def take(store: Store, head: ClaimedDelivery, limit: int = 10,
               now: float = NOW) -> list[ClaimedDelivery]:
    return await store.take_queued(head.lease, frozenset({MESSAGE}), limit, now)


async def test_take_queued_stops_at_another_kind_and_at_the_limit(store):
    await queue_kinds(store, [MESSAGE, MESSAGE, MESSAGE, ESCALATION, MESSAGE])
    await queue_kinds(store, [MESSAGE], conversation="bot/c2")
    jobs = await claim(store)
    assert sorted(jobs) == [1, 6]
    assert [job.id for job in await take(store, jobs[1], limit=1)] == [2]
    taken = await take(store, jobs[1])  # again, by the holder: the run up to the escalation
    assert [(job.id, job.attempts, job.token) for job in taken] == [
        (2, 1, jobs[1].token), (3, 1, jobs[1].token)]
    assert await status_of(store, 5) == ("pending", 0)
    assert await claim(store, owner="w2") == {}  # every head is leased, the rest wait behind


async def test_only_the_holder_of_the_heads_lease_takes_what_follows(store):
    await queue_kinds(store, [MESSAGE, MESSAGE])
    head = (await claim(store))[1]
    stranger = replace(head, owner="w2", token="forged")
    assert await take(store, stranger) == []
    assert await store.finish(head.lease, "delivered", NOW, "C1/1.0")
    assert await take(store, head) == []  # finished: the lease holds nothing any more


async def test_a_coalesced_finish_sets_the_taken_ones_with_the_head_at_once(store):
    await queue_kinds(store, [MESSAGE, MESSAGE, MESSAGE, MESSAGE])
    head = (await claim(store))[1]
    taken = await take(store, head)
    assert await store.finish(head.lease, "delivered", NOW, "C1/1.5",
                              coalesced=[job.lease for job in taken[:2]])
    rows = {row.id: row for row in await store.deliveries()}
    assert [(rows[n].status, rows[n].note, rows[n].attempts) for n in (1, 2, 3)] == [
        ("delivered", "C1/1.5", 1)] * 3
    assert await store.release([taken[2].lease]) == 1
    assert await status_of(store, 4) == ("pending", 0)
    assert list(await claim(store, owner="w2")) == [4]


async def test_what_a_dead_worker_took_is_taken_over_with_the_head(store):
    await queue_kinds(store, [MESSAGE, MESSAGE, MESSAGE])
    stale = (await claim(store, owner="w1"))[1]
    dead = await take(store, stale)
    head = (await claim(store, NOW + LEASE, owner="w2"))[1]
    assert await take(store, head, now=NOW + LEASE) == [
        replace(job, attempts=2, owner="w2", token=head.token) for job in dead]
    assert await store.release([dead[0].lease]) == 0  # w1, late, gives back nothing
    assert not await store.finish(stale.lease, "delivered", NOW + 11, "late",
                                  coalesced=[job.lease for job in dead])
    assert await store.finish(head.lease, "delivered", NOW + 12, "C1/2.0",
                              coalesced=[Lease(2, "w2", head.token)])
    assert await status_of(store, 2) == ("delivered", 2)
    history = await store.attempts(2, limit=10)
    assert [(a.attempt, a.outcome, a.worker) for a in history] == [
        (2, "delivered", "w2"), (1, "abandoned", "w1")]


async def test_a_heartbeat_renews_what_was_taken_with_the_lease(store):
    await queue_kinds(store, [MESSAGE, MESSAGE, MESSAGE])
    head = (await claim(store, owner="w1"))[1]
    await take(store, head)
    assert await store.heartbeat([head.lease], NOW + 3 * LEASE) == {1}
    assert await claim(store, NOW + 2 * LEASE, owner="w2") == {}
    assert await take(store, replace(head, owner="w2"), now=NOW + 2 * LEASE) == []


# Bring-forward: once a destination answers again, what waits for it goes now


async def test_bring_forward_wakes_only_that_destinations_deliveries_waiting_for_it(store):
    await seed(store)  # d1 slack c1, d2 jira c1, d3 slack c1 (behind d1), d4 slack c2
    jobs = await claim(store)
    assert await store.reschedule(jobs[1].lease, NOW + 100, "slack: HTTP 503", NOW,
                                  "unavailable")
    assert await store.reschedule(jobs[2].lease, NOW + 100, "jira: HTTP 503", NOW,
                                  "unavailable")
    assert await store.reschedule(jobs[4].lease, NOW + 100, "slack: HTTP 429", NOW,
                                  "rate_limited")
    assert await store.bring_forward("slack", "unavailable", NOW + 5) == 1
    assert list(await claim(store, NOW + 5)) == [1]
    assert await store.next_due(NOW + 5) == NOW + 100  # jira's and the rate-limited one


async def test_waiting_counts_pending_deliveries_per_destination(store):
    await seed(store)
    jobs = await claim(store)
    assert await store.finish(jobs[4].lease, "delivered", NOW)
    assert await store.waiting_by_destination() == {"slack": 2, "jira": 1}


# History and notes


async def test_a_delivery_keeps_each_attempts_error_and_its_note_apart(store):
    await store.accept(new_event("k1"), NOW, 60)
    for attempt in range(1, 5):
        [job] = await store.claim("w1", NOW + attempt * 100, 1, LEASE)
        assert await store.reschedule(job.lease, NOW + attempt * 100 + 1,
                                      f"HTTP 50{attempt}", NOW + attempt * 100)
    [job] = await store.claim("w1", NOW + 1000, 1, LEASE)
    assert await store.finish(job.lease, "delivered", NOW + 1000, "C1/1700000000.1")
    [row] = await store.deliveries()
    assert (row.status, row.attempts, row.note, row.last_error) == (
        "delivered", 5, "C1/1700000000.1", None)
    assert [(a.attempt, a.error) for a in row.errors] == [
        (4, "HTTP 504"), (3, "HTTP 503"), (2, "HTTP 502")]


async def test_a_failed_delivery_keeps_its_reason_as_its_error(store):
    await store.accept(new_event("k1"), NOW, 60)
    [job] = await store.claim("w1", NOW, 1, LEASE)
    assert await store.finish(job.lease, "failed", NOW + 1, "slack: channel_not_found")
    [row] = await store.deliveries()
    assert (row.status, row.last_error, row.note) == (
        "failed", "slack: channel_not_found", None)
    assert [(a.outcome, a.error, a.at) for a in row.errors] == [
        ("failed", "slack: channel_not_found", NOW + 1)]


async def test_a_finish_queues_its_follow_ups_as_new_events(store):
    await store.accept(new_event("k1", destinations=["jira"]), NOW, 60)
    [job] = await store.claim("w1", NOW, 1, LEASE)
    follow_up = FollowUp(TICKET_LINKED, '{"issueKey":"SUP-1"}', "bot/c1", ["slack"])
    assert await store.finish(job.lease, "delivered", NOW, "SUP-1", [follow_up])
    [linked] = await store.claim("w1", NOW, 10, LEASE)
    assert (linked.kind, linked.destination, linked.payload) == (
        TICKET_LINKED, "slack", {"issueKey": "SUP-1"})
    assert linked.event_id > job.event_id


async def test_deliveries_of_a_conversation_by_its_key_or_its_thread_id_taken_literally(store):
    for key in ("bot/c_1", "other/c_1", "bot/cX1", "bot/c%1x"):
        await store.accept(new_event(key, key), NOW, 60)
    assert sorted(row.ordering_key for row in await store.deliveries(conversation="c_1")) == [
        "bot/c_1", "other/c_1"]
    assert [row.ordering_key for row in await store.deliveries(conversation="bot/c_1")] == [
        "bot/c_1"]
    assert await store.deliveries(conversation="c%1") == []


# Operator commands: retry and prune


async def test_retry_requeues_failed_ones_in_bulk_and_skipped_ones_only_by_id(store):
    for n, destination in enumerate(["slack", "slack", "crm"]):
        await store.accept(new_event(f"k{n}", f"bot/c{n}", [destination]), NOW, 60)
    jobs = await store.claim("w1", NOW, 10, LEASE)
    assert await store.finish(jobs[0].lease, "failed", NOW, "boom")
    assert await store.finish(jobs[1].lease, "skipped", NOW, "dry run")
    assert await store.finish(jobs[2].lease, "failed", NOW, "boom")
    assert await store.retry(failed=True, destination="slack", now=NOW + 1) == 1
    assert await status_of(store, jobs[0].id) == ("pending", 0)
    assert await status_of(store, jobs[2].id) == ("failed", 1)
    assert await store.retry(failed=True, now=NOW + 1) == 1
    assert await status_of(store, jobs[1].id) == ("skipped", 1)
    assert await store.retry(ids=[jobs[1].id], now=NOW + 1) == 1
    assert await store.retry(now=NOW + 1) == 0  # never "all" by default
    assert (await store.queue_depth())["pending"] == 3


async def test_prune_removes_old_finished_events_and_ids_are_never_reused(store):
    day = 86_400.0
    for n in range(3):
        await store.accept(new_event(f"old{n}", f"bot/old{n}", text="hi"), NOW - 40 * day, 60)
    await store.accept(new_event("open", "bot/open", text="hi"), NOW - 40 * day, 60)
    jobs = await store.claim("w1", NOW - 40 * day, 10, LEASE)
    for job in jobs:
        if job.ordering_key != "bot/open":
            assert await store.finish(job.lease, "delivered", NOW - 40 * day)
    pruned = await store.prune(NOW - 30 * day, NOW, 100)
    assert (pruned.events, pruned.deliveries, pruned.messages, pruned.dedup) == (3, 3, 3, 4)
    assert [row.ordering_key for row in await store.deliveries()] == ["bot/open"]
    newest = max(job.event_id for job in jobs)
    later = await store.accept(new_event("old2", "bot/old2", text="back"), NOW, 60)
    assert later.event_id > newest
    assert [m.question for m in await store.transcript("bot", "old2")] == ["back"]


# Per-destination conversation state


async def test_each_destination_keeps_its_own_state_per_conversation(store):
    assert await store.link_state("bot", "c1", "slack") is None
    await store.save_link("bot", "c1", "slack", {"channel": "C1", "thread_ts": "1.1"}, "C1/1.1")
    await store.save_link("bot", "c1", "jira", {"key": "SUP-1", "transcript_upto": 3}, "SUP-1")
    await store.save_link("bot", "c2", "slack", {"channel": "C1", "thread_ts": "2.2"}, "C1/2.2")
    assert await store.link_state("bot", "c1", "slack") == {"channel": "C1", "thread_ts": "1.1"}
    assert await store.link_state("bot", "c1", "jira") == {"key": "SUP-1", "transcript_upto": 3}
    assert await store.link_state("bot", "c1", "crm") is None
    assert await store.conversation_by_ref("slack", "C1/2.2") == ("bot", "c2")
    assert await store.conversation_by_ref("jira", "C1/2.2") is None
    assert await store.conversation_by_ref("jira", "SUP-1") == ("bot", "c1")


async def test_saving_state_replaces_it_and_its_ref(store):
    await store.save_link("bot", "c1", "jira", {"key": "SUP-1", "transcript_upto": 3}, "SUP-1")
    await store.save_link("bot", "c1", "jira", {"key": "SUP-9"}, "SUP-9")
    assert await store.link_state("bot", "c1", "jira") == {"key": "SUP-9"}
    assert await store.conversation_by_ref("jira", "SUP-1") is None
    assert await store.conversation_by_ref("jira", "SUP-9") == ("bot", "c1")
    await store.save_link("bot", "c1", "jira", {"note": "é ✓", "n": [1, 2]})
    assert await store.link_state("bot", "c1", "jira") == {"note": "é ✓", "n": [1, 2]}
    assert await store.conversation_by_ref("jira", "SUP-9") is None


async def test_conversations_list_every_destinations_link(store, clock):
    await store.accept(new_event("m1", "bot/c1"), clock.now(), 60)
    await store.save_link("bot", "c1", "slack", {"channel": "C1", "thread_ts": "1.1"}, "C1/1.1")
    await store.save_link("bot", "c1", "jira", {"key": "SUP-1"}, "SUP-1")
    clock.advance(5)
    await store.save_link("bot", "c0", "slack", {"channel": "C1", "thread_ts": "0.1"}, "C1/0.1")
    [newest, older] = await store.conversations(10)
    assert (newest.thread_id, older.thread_id) == ("c0", "c1")
    assert (newest.first_seen, older.last_seen) == (clock.now(), clock.now() - 5)
    assert [(link.destination, link.ref, link.state) for link in older.links] == [
        ("jira", "SUP-1", {"key": "SUP-1"}),
        ("slack", "C1/1.1", {"channel": "C1", "thread_ts": "1.1"})]
    record = await store.conversation("bot", "c1")
    assert record is not None and record.link("jira") == older.links[0]


# Transcripts and echoes


async def test_messages_build_the_conversations_transcript_oldest_first(store):
    for n, question in enumerate(["Hi", "Anyone there?", "Hello?"]):
        await store.accept(new_event(f"k{n}", "bot/c1", text=question), NOW + n, 60)
    await store.accept(new_event("other", "bot/c2", text="elsewhere"), NOW, 60)
    transcript = await store.transcript("bot", "c1")
    assert [(m.question, m.received_at) for m in transcript] == [
        ("Hi", NOW), ("Anyone there?", NOW + 1), ("Hello?", NOW + 2)]
    assert await store.transcript("bot", "c1", after_id=transcript[0].id) == transcript[1:]


async def test_an_echo_is_recognised_once_until_it_expires(store):
    echo = Echo("bot", "c1", "Thanks! ", "Ana", source="Ev1")
    await store.remember_echo(echo, NOW, 60)
    assert await store.consume_echo(Echo("bot", "c1", "Thanks!", "Ana"), NOW + 1)
    assert not await store.consume_echo(Echo("bot", "c1", "Thanks!", "Ana"), NOW + 2)
    await store.remember_echo(echo, NOW, 60)
    assert not await store.consume_echo(Echo("bot", "c1", "Thanks!", "Ana"), NOW + 60)
    await store.remember_echo(echo, NOW, 60)
    await store.forget_echo("Ev1")
    assert not await store.consume_echo(Echo("bot", "c1", "Thanks!", "Ana"), NOW + 1)


# Health and version


async def test_a_healthy_store_is_writable_and_at_the_current_schema_version(store):
    await store.check_writable()
    info = await store.info()
    assert info.schema_version == SCHEMA_VERSION


# Capabilities: declared by every backend, a no-op where it needs none

def _contract_methods() -> set[str]:
    protocols = [cls for cls in Store.__mro__ if getattr(cls, "_is_protocol", False)]
    return {name for cls in protocols for name, value in vars(cls).items()
            if callable(value) and not name.startswith("_")}


async def test_a_backend_implements_every_method_of_the_contract(store):
    missing = sorted(name for name in _contract_methods()
                     if not callable(getattr(store, name, None)))
    assert "serialised" in _contract_methods() and "shared_pacing" in _contract_methods()
    assert missing == []


async def test_opening_again_and_migrating_again_change_nothing(store):
    await seed(store)
    await store.open()
    await store.migrate_now()
    assert (await store.info()).schema_version == SCHEMA_VERSION
    assert len(await store.deliveries()) == 4


async def test_serialised_work_runs_one_holder_at_a_time(store):
    order: list[str] = []

    async def hold(name: str) -> None:
        async with store.serialised("slack-thread:bot/c1"):
            order.append(f"{name} in")
            await asyncio.sleep(0.05)
            order.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"]) \
        or store.shared_pacing() is None  # one process: nothing else to hold against


async def test_shared_pacing_is_the_stores_budget_where_replicas_share_one(store):
    budgets = store.shared_pacing()
    if budgets is None:
        return  # one process delivers: Slack's pace is kept in that process
    left, held_until = await budgets.take_token("C1", NOW, 2.0, 1.0)
    assert left == 1.0 and held_until == 0.0
    await budgets.hold_channel("C1", NOW, NOW + 30)
    assert (await budgets.take_token("C1", NOW, 2.0, 1.0))[1] == NOW + 30



# Settings in use


async def test_each_process_records_the_settings_it_runs_with_and_forgets_them_on_stop(store):
    serve = SettingsInUse("host-a:10", "serve", "f1", NOW, {"slack": "s1", "templates": "t1"})
    worker = SettingsInUse("host-b:20", "worker", "f1", NOW + 1, {"slack": "s1"})
    await store.record_settings(serve)
    await store.record_settings(worker)
    assert await store.settings_in_use() == [serve, worker]

    reloaded = replace(serve, fingerprint="f2", loaded_at=NOW + 5, sections={"slack": "s2"})
    await store.record_settings(reloaded)
    assert await store.settings_in_use() == [worker, reloaded]

    await store.forget_settings("host-b:20")
    assert await store.settings_in_use() == [reloaded]


async def test_a_refused_settings_file_is_recorded_beside_the_settings_kept(store):
    kept = SettingsInUse("host-a:10", "serve", "f1", NOW, {"slack": "s1"})
    refused = replace(kept, rejected="settings.toml: slack.channel: unknown key",
                      rejected_at=NOW + 3)
    await store.record_settings(refused)
    [found] = await store.settings_in_use()
    assert (found.fingerprint, found.rejected, found.rejected_at) == (
        "f1", "settings.toml: slack.channel: unknown key", NOW + 3)
    assert (found.host, found.pid) == ("host-a", 10)


# The operator console: its signing key, paused destinations, filtered pages and bulk actions.

async def test_the_console_key_is_the_first_one_kept_for_every_process(store, another_process):
    assert await store.console_key("session", "first") == "first"
    assert await another_process.console_key("session", "second") == "first"
    assert await store.console_key("csrf", "other") == "other"


async def test_a_paused_destination_waits_and_goes_out_in_order_when_resumed(store):
    await seed(store)
    assert await store.pause("slack", NOW)
    assert not await store.pause("slack", NOW)
    assert await store.paused() == {"slack": NOW}
    [jira] = (await claim(store)).values()
    assert jira.destination == "jira"
    assert await store.finish(jira.lease, "delivered", NOW)
    assert await claim(store, now=NOW + 3600) == {}  # neither attempted nor failed
    assert await store.resume("slack")
    assert not await store.resume("slack")
    resumed = await claim(store, now=NOW + 3601, owner="w2")
    assert [(job.destination, job.ordering_key) for job in resumed.values()] == [
        ("slack", "bot/c1"), ("slack", "bot/c2")]
    assert min(resumed) == 1  # the conversation's first delivery, before its second


async def test_a_pause_holds_for_every_process(store, another_process):
    await seed(store)
    await another_process.pause("slack", NOW)
    assert {job.destination for job in (await claim(store)).values()} == {"jira"}


async def test_the_summary_counts_each_destinations_queue(store):
    await seed(store)
    jobs = await claim(store)
    await store.finish(jobs[2].lease, "failed", NOW + 1, "channel_not_found")
    await store.finish(jobs[4].lease, "delivered", NOW + 2)
    await store.reschedule(jobs[1].lease, NOW + 60, "HTTP 503", NOW + 1)
    summary = {line.destination: line
               for line in await store.destination_summary(["jira", "slack", "crm"], NOW + 5)}
    assert summary["crm"] == DestinationSummary("crm")
    assert summary["jira"].failed == 1 and summary["jira"].last_error == "channel_not_found"
    assert summary["jira"].last_failure == NOW + 1
    slack = summary["slack"]
    assert (slack.waiting, slack.due, slack.retrying, slack.last_success) == (2, 1, 1, NOW + 2)


async def test_delivery_pages_filter_and_seek_below_an_id(store):
    await seed(store)
    jobs = await claim(store)
    await store.finish(jobs[2].lease, "failed", NOW, "HTTP 500: 50% of _all_ down")
    newest = await store.delivery_page(DeliveryFilter(), limit=2)
    assert [row.id for row in newest] == [4, 3]
    assert [row.id for row in await store.delivery_page(DeliveryFilter(), before=3)] == [2, 1]
    assert [row.id for row in await store.delivery_page(
        DeliveryFilter(destination="slack", conversation="c1"))] == [3, 1]
    assert [row.id for row in await store.delivery_page(DeliveryFilter(error="50% of _ALL"))] \
        == [2]
    assert await store.delivery_page(DeliveryFilter(error="_x")) == []
    assert await store.delivery_page(DeliveryFilter(since=NOW + 1)) == []
    assert await store.count_matching(DeliveryFilter(status="pending")) == 3


async def test_bulk_retry_and_cancel_touch_only_what_matches(store):
    await seed(store)
    jobs = await claim(store)
    await store.finish(jobs[1].lease, "failed", NOW, "boom")
    await store.finish(jobs[2].lease, "failed", NOW, "boom")
    assert await store.retry_matching(DeliveryFilter(destination="slack"), now=NOW) == 1
    assert await status_of(store, 1) == ("pending", 0)
    assert await status_of(store, 2) == ("failed", 1)
    # d4 is held by a worker: cancelling leaves it to finish as it goes.
    assert await store.cancel_matching(DeliveryFilter(status="pending"), now=NOW) == 2
    assert await status_of(store, 4) == ("pending", 1)
    [row] = await store.deliveries(ids=[3])
    assert (row.status, row.note) == ("skipped", "cancelled in the console")
    assert await store.cancel_matching(DeliveryFilter(), ids=[2], now=NOW) == 0


# The console's conversation list


async def conversations_seen(store: Store, clock: FakeClock, threads: Sequence[str]) -> None:
    """Each thread seen a second after the one before: the last is the newest."""
    for thread in threads:
        clock.advance(1)
        await store.save_link("bot", thread, "slack", {"channel": "C1", "thread_ts": thread})


async def test_conversation_pages_seek_newest_first_to_the_end(store, clock):
    await conversations_seen(store, clock, ["c1", "c2", "c3", "c4", "c5"])
    await store.save_link("other", "c5", "jira", {"key": "SUP-5"}, "SUP-5")  # c5's time too
    pages, before = [], None
    while True:
        page = await store.conversation_page("", before, limit=2)
        pages.append([(record.chatbot_id, record.thread_id) for record in page.records])
        if page.older is None:
            break
        before = page.older
    assert pages == [[("other", "c5"), ("bot", "c5")], [("bot", "c4"), ("bot", "c3")],
                     [("bot", "c2"), ("bot", "c1")]]


async def test_a_conversation_is_found_by_its_visitors_name_or_email(store, clock):
    await conversations_seen(store, clock, ["c1", "c2", "c3"])
    await store.save_link("bot", "c1", "slack",
                          {"channel": "C1", "visitor": "Ana Lima <ana@example.com>"})
    await store.save_link("bot", "c3", "slack",
                          {"channel": "C1", "visitor": "Bob <bob_x@example.com>"})

    async def found(search: str) -> list[str]:
        return [record.thread_id
                for record in (await store.conversation_page(search)).records]

    assert await found("ANA@example") == ["c1"]
    assert await found("ana lima") == ["c1"]
    assert await found("bob_x") == ["c3"]
    assert await found("bob%") == [] and await found("b_b") == []  # wildcards are text
    assert await found("c2") == ["c2"]
    assert await found("nobody") == []


async def test_a_search_reads_a_bounded_window_and_the_next_page_reads_on(store, clock,
                                                                         monkeypatch):
    from bridge.store import console_sql

    monkeypatch.setattr(console_sql, "SEARCH_WINDOW", 3)
    await conversations_seen(store, clock, ["c1", "c2", "c3", "c4", "c5"])
    await store.save_link("bot", "c1", "slack", {"visitor": "Ana <ana@example.com>"})
    await conversations_seen(store, clock, ["c2", "c3", "c4", "c5"])  # c1 is now the oldest
    first = await store.conversation_page("ana", limit=10)
    assert first.records == [] and first.older is not None
    assert first.older[1:] == ("bot", "c3")  # the third newest: the window's end
    second = await store.conversation_page("ana", first.older, limit=10)
    assert [record.thread_id for record in second.records] == ["c1"]
    assert second.older is None
