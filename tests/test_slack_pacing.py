"""Slack pacing: a burst into one channel never meets a 429 from a Slack with the same limits."""

from __future__ import annotations

import random

import pytest

from bridge.destinations.slack_workspace import ChannelPacer
from tests.clock import FakeClock


class SlackBucket:
    """Slack's side: `burst` posts at once, then `per_second`, counted when each post arrives."""

    def __init__(self, burst: int, per_second: float) -> None:
        self.burst, self.per_second = burst, per_second
        self.tokens, self.stamp = float(burst), 0.0

    def allows(self, arrival: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (arrival - self.stamp) * self.per_second)
        self.stamp = arrival
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


async def sent_times(pacer: ChannelPacer, clock: FakeClock, posts: int) -> list[float]:
    times = []
    for _ in range(posts):
        await pacer.acquire("C1")
        times.append(clock.now())
    return times


# Each post takes between no time and this share of a posting interval to reach Slack: most of
# one while a post of the burst is kept in reserve, the rate's headroom when the burst is 1.
@pytest.mark.parametrize(("burst", "per_second", "delay"), [
    (3, 1.0, 0.9), (3, 20.0, 0.9), (10, 5.0, 0.9), (1, 1.0, 0.1)])
async def test_posts_arriving_early_or_late_never_find_slacks_bucket_empty(burst, per_second,
                                                                           delay):
    clock = FakeClock(start=0.0)
    times = await sent_times(ChannelPacer(burst, per_second, clock), clock, 500)
    interval, jitter = 1 / per_second, random.Random(burst)
    arrivals = sorted(sent + jitter.uniform(0, delay * interval) for sent in times)
    slack = SlackBucket(burst, per_second)
    assert [arrival for arrival in arrivals if not slack.allows(arrival)] == []


async def test_pacing_stays_close_to_the_rate_slack_allows():
    clock = FakeClock(start=0.0)
    times = await sent_times(ChannelPacer(3, 1.0, clock), clock, 200)
    assert 200 / 1.0 < times[-1] - times[0] < 200 / 0.85


class UnreachableBudget:
    """A shared budget whose store does not answer."""

    async def take_token(self, channel, now, capacity, rate):
        from bridge.errors import StoreError
        raise StoreError("the store did not answer within 30 s")

    async def hold_channel(self, channel, now, until):
        from bridge.errors import StoreError
        raise StoreError("the store did not answer within 30 s")


async def test_without_its_shared_budget_a_replica_keeps_the_pace_alone():
    clock = FakeClock(0.0)
    pacer = ChannelPacer(burst=3, per_second=1.0, clock=clock, shared=UnreachableBudget())
    for _ in range(4):
        await pacer.acquire("C1")
    assert clock.now() > 2.0  # two from the burst, then about a second each


async def test_a_hold_the_other_replicas_cannot_hear_of_is_still_kept_here():
    clock = FakeClock(0.0)
    pacer = ChannelPacer(burst=3, per_second=1.0, clock=clock, shared=UnreachableBudget())
    pacer.hold("C1", 30.0)
    await pacer.share_hold("C1")  # the store is down: logged, not raised
    assert pacer.held_for("C1") == 30.0
