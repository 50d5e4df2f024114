"""Two replicas on one PostgreSQL database: nothing lost, nothing twice, whoever does the work.

Each replica here is what one `serve` process holds: its own store (pool, wake-up listener),
its own destinations and its own worker, sharing only the database, as two hosts would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bridge.app import Bridge, create_app, open_bridge
from bridge.clock import SystemClock
from bridge.destinations.base import Delivery
from bridge.errors import RetryableError
from bridge.event_rows import new_event
from bridge.events import MESSAGE, parse_event
from bridge.settings import Settings
from bridge.store import ClaimedDelivery
from bridge.store.postgres.store import PostgresStore
from tests.fake_jira import FakeJira, basic_auth
from tests.fake_slack import FakeSlack
from tests.postgres import query
from tests.servers import serving

CHATBOT, THREAD = "chatbot_123", "thread_456"
EMAIL, API_TOKEN = "support@example.com", "cloud-token"
WAIT = 20.0


def message(thread: str, text: str) -> dict[str, Any]:
    return {"event": MESSAGE, "data": {"chatbotId": CHATBOT, "threadId": thread,
                                       "messageType": "USER_MESSAGE", "question": text}}


@dataclass
class Replica:
    """One replica's store and destinations (its worker only when a test starts it)."""

    bridge: Bridge

    @property
    def store(self) -> PostgresStore:
        store = self.bridge.store
        assert isinstance(store, PostgresStore)
        return store

    async def accept(self, body: dict[str, Any], destinations: list[str]) -> int:
        event = parse_event(body["event"], body)
        accepted = await self.store.accept(new_event(event, body, destinations), time.time(), 600)
        return accepted.event_id

    async def attempt(self, job: ClaimedDelivery) -> Any:
        """Deliver `job` the way this replica's worker would, whatever its lease says."""
        event = parse_event(job.kind, job.payload)
        destination = self.bridge.destinations[job.destination]
        return await destination.deliver(Delivery(job, event, self.store, SystemClock()))


@pytest.fixture
async def replicas(make_settings, postgres_url) -> AsyncIterator[Any]:
    """Two replicas built from the same settings, on the test's database."""
    built: list[Replica] = []

    async def build(extra: dict[str, Any], served: bool = False) -> tuple[Replica, Replica]:
        """`served`: each runs in a server's own event loop, which opens and closes it."""
        settings = make_settings({"store": {"url": postgres_url, "pool_size": 4}, **extra})
        pair = (_replica(settings), _replica(settings))
        if not served:
            built.extend(pair)
            for replica in pair:
                await replica.store.open()
        return pair

    yield build
    for replica in built:
        await replica.bridge.close()


def _replica(settings: Settings) -> Replica:
    """What `serve` opens, without its HTTP server: store, destinations, worker."""
    return Replica(open_bridge(settings, check_templates=False))


def slack_settings(fake: FakeSlack, **slack: Any) -> dict[str, Any]:
    return {"slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                      "burst": 1000, "per_second": 1000.0, **slack}}


async def taken_over(first: Replica, second: Replica, lease: float = 30.0) -> tuple[
        ClaimedDelivery, ClaimedDelivery]:
    """The same delivery claimed by `first`, then by `second` once the lease has run out."""
    now = time.time()
    [job] = await first.store.claim("first", now, 10, lease)
    [again] = await second.store.claim("second", now + lease, 10, lease)
    assert (again.id, again.attempts) == (job.id, 2)
    return job, again


async def both_attempts(first: Replica, job: ClaimedDelivery, second: Replica,
                        again: ClaimedDelivery) -> list[Any]:
    """`first` is slow at its attempt; `second`, which took it over, starts while it works."""
    slow = asyncio.create_task(first.attempt(job))
    await asyncio.sleep(0.2)
    assert not slow.done()
    return [*await asyncio.gather(slow, second.attempt(again))]


@pytest.fixture
def slow_slack() -> Iterator[FakeSlack]:
    with FakeSlack(post_delay=0.5) as fake:
        yield fake


# Races that must not double anything


async def test_a_replica_taking_over_a_slow_delivery_does_not_start_a_second_thread(
        replicas, slow_slack):
    first, second = await replicas(slack_settings(slow_slack))
    await first.accept(message(THREAD, "Hello?"), ["slack"])
    job, again = await taken_over(first, second)

    await both_attempts(first, job, second, again)

    [parent] = slow_slack.parents()
    assert [post["text"] for post in slow_slack.thread("C1", parent["ts"])] == [
        "Visitor: Hello?", "Visitor: Hello?"]  # the one in-flight call, repeated


async def test_two_replicas_posting_into_new_conversations_at_once_each_start_one(
        replicas, slow_slack):
    first, second = await replicas(slack_settings(slow_slack))
    for n in range(3):
        await first.accept(message(f"thread-{n}", "Hi"), ["slack"])
    jobs = await first.store.claim("first", time.time(), 10, 30)
    await asyncio.gather(*[(first, second)[n % 2].attempt(job) for n, job in enumerate(jobs)])
    assert len(slow_slack.parents()) == 3  # different conversations do not wait on each other


@pytest.fixture
def cloud() -> Iterator[FakeJira]:
    with FakeJira("Cloud", basic_auth(EMAIL, API_TOKEN)) as fake:
        yield fake


def jira_settings(fake: FakeJira) -> dict[str, Any]:
    return {"jira": {"url": fake.url, "email": EMAIL, "api_token": API_TOKEN, "project": "SUP",
                     "timeout_seconds": 5.0}}


async def test_a_replica_taking_over_a_slow_escalation_does_not_open_a_second_ticket(
        replicas, cloud, sample):
    first, second = await replicas(jira_settings(cloud))
    # Both searches for an open ticket are slow: without a lock both find none, both create.
    cloud.script("POST", "/rest/api/2/search/jql", status=0, stall=0.5, times=2)
    cloud.script("GET", "/rest/api/2/search/jql", status=0, stall=0.5, times=2)
    await first.accept(sample("escalation"), ["jira"])
    job, again = await taken_over(first, second)

    outcomes = await both_attempts(first, job, second, again)

    assert len(cloud.created()) == 1
    assert {outcome.note for outcome in outcomes} == {"SUP-1"}
    assert cloud.comments("SUP-1") == []  # the taken-over attempt adds nothing either


async def test_two_replicas_together_keep_to_slacks_pace_in_one_channel(replicas, sample):
    """Each alone keeps to the pace; without a shared budget, two together post at twice it."""
    with FakeSlack(channel_rate=10.0, channel_burst=3) as fake:
        first, second = await replicas(slack_settings(fake, burst=3, per_second=10.0))
        for n in range(14):
            lead = sample("lead")
            lead["data"]["leadDetails"]["id"] = f"lead-{n}"
            await first.accept(lead, ["slack"])
        jobs = await first.store.claim("first", time.time(), 100, 60)
        await asyncio.gather(*[(first, second)[n % 2].attempt(job) for n, job in enumerate(jobs)])
    assert fake.rate_limited == []
    assert len(fake.posts) == 14


async def test_a_429_on_one_replica_holds_the_channel_on_the_other(replicas, sample):
    with FakeSlack() as fake:
        first, second = await replicas(slack_settings(fake))
        for n in range(2):
            lead = sample("lead")
            lead["data"]["leadDetails"]["id"] = f"lead-{n}"
            await first.accept(lead, ["slack"])
        jobs = await first.store.claim("first", time.time(), 100, 60)
        fake.fail_next("chat.postMessage", status=429, error="ratelimited",
                       headers={"Retry-After": "30"})
        with pytest.raises(RetryableError, match="retry after 30"):
            await first.attempt(jobs[0])
        with pytest.raises(RetryableError, match="is rate-limited") as held:
            await second.attempt(jobs[1])
    assert held.value.retry_after is not None and held.value.retry_after > 25
    assert len(fake.posts) == 0


# Dedup and wake-up through real HTTP


async def test_four_copies_posted_two_to_each_replica_at_once_make_one_event(
        replicas, postgres_url, sample):
    first, second = await replicas({}, served=True)
    body = sample("message-visitor")
    with serving(create_app(first.bridge, run_worker=False)) as url_a, \
            serving(create_app(second.bridge, run_worker=False)) as url_b:
        async with httpx.AsyncClient(timeout=WAIT) as client:
            answers = await asyncio.gather(*[
                client.post(f"{url}/webhooks/messages", json=body,
                            headers={"X-WEBHOOK-TOKEN": "tok-messages"})
                for url in (url_a, url_b, url_a, url_b)])
    assert [answer.status_code for answer in answers] == [200] * 4
    assert sorted(answer.json()["status"] for answer in answers) == [
        "accepted", "duplicate", "duplicate", "duplicate"]
    assert query(postgres_url, "SELECT COUNT(*) FROM events") == [(1,)]


async def test_a_webhook_on_one_replica_is_delivered_by_the_others_worker_at_once(
        replicas, sample):
    """The poll is an hour: only the wake-up can make the second replica look in time."""
    with FakeSlack() as fake:
        first, second = await replicas({**slack_settings(fake),
                                        "delivery": {"poll_interval": "1h"}})
        second.bridge.start_worker()
        await asyncio.wait_for(_listening(second.store), WAIT)
        await first.accept(message(THREAD, "Anyone there?"), ["slack"])
        await asyncio.wait_for(_until(lambda: len(fake.posts) >= 2), WAIT)
    assert [post["text"] for post in fake.posts][-1] == "Visitor: Anyone there?"


async def _listening(store: PostgresStore) -> None:
    await _until(lambda: store.listening)


async def _until(condition: Callable[[], Any]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
