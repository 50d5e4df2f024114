"""Catching up after a Slack outage: 300 messages in 20 conversations, Slack down for 20 s.

The fake Slack enforces Slack's own per-channel budget (a burst of 3, then one post a second)
and the bridge runs with the default [slack] pacing. Measured as a user sees it: from Slack's
return to the last message shown, the 429s on the way, and how long the next live message
takes once the backlog is shown.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.bodies import message_body
from bench.delivery import Slack, Webhooks, bridge_process, delivered, fake_slack
from bench.servers import Server
from bench.slack_server import OUTAGE

SLACK_RATE = 1.0  # Slack's: a post a second per channel after a burst of 3
DEFAULT_PACING = (3, 1.0)  # [slack] burst, per_second as shipped
CATCH_UP_TIMEOUT = 900.0


@dataclass(frozen=True)
class BacklogOptions:
    conversations: int = 20
    messages_each: int = 15
    outage_seconds: float = 20.0


@dataclass(frozen=True)
class Backlog:
    messages: int
    conversations: int
    outage_seconds: float
    caught_up_seconds: float  # from Slack's return to the last message shown
    posts: int
    rate_limited: int
    in_order: bool
    live_seconds: float  # a new message once the backlog is shown: webhook 200 to its post
    lookups: int = 0  # conversations.replies: retries after an outage must cost none


def run_backlog(options: BacklogOptions) -> Backlog:
    with (tempfile.TemporaryDirectory(prefix="bridge-bench-backlog-") as folder,
          fake_slack(SLACK_RATE) as slack,
          bridge_process(Path(folder) / "backlog", slack, DEFAULT_PACING) as bridge):
        return asyncio.run(_backlog(bridge, slack, options))


async def _backlog(bridge: Server, slack: Slack, options: BacklogOptions) -> Backlog:
    run = uuid.uuid4().hex[:8]
    threads = [f"{run}-c{n}" for n in range(options.conversations)]
    expected = {thread: [f"{run}-{n}-{m}" for m in range(options.messages_each)]
                for n, thread in enumerate(threads)}
    gap = options.outage_seconds / options.messages_each
    async with Webhooks(bridge, 4) as webhooks, httpx.AsyncClient() as client:
        await _outage(client, slack, 503)
        started = time.perf_counter()
        for m in range(options.messages_each):  # every conversation says something each round
            await webhooks.send_all([_body(run, thread, n, m) for n, thread in enumerate(threads)])
            await asyncio.sleep(max(started + (m + 1) * gap - time.perf_counter(), 0))
        await _outage(client, slack, 0)
        back = time.perf_counter()
        markers = [marker for wanted in expected.values() for marker in wanted]
        await delivered(client, slack, markers, CATCH_UP_TIMEOUT)
        caught_up = max(slack.arrived[marker] for marker in markers) - back
        posts, rate_limited = slack.posts, slack.rate_limited
        in_order = all(_shown_in_order(slack.order, wanted) for wanted in expected.values())
        print(f"caught up {caught_up:.1f} s after Slack's return", file=sys.stderr, flush=True)
        live = f"{run}-0-live"
        async with Webhooks(bridge, 1) as fresh:  # the others idled past the keep-alive
            await fresh.send(message_body(run, 0, threads[0]).replace(
                f"(#{run}-0)".encode(), f"(#{live})".encode()))
        sent = time.perf_counter()
        await delivered(client, slack, [live])
    return Backlog(len(markers), options.conversations, options.outage_seconds, caught_up, posts,
                   rate_limited, in_order, slack.arrived[live] - sent, slack.lookups)


def _body(run: str, thread: str, conversation: int, serial: int) -> bytes:
    body = message_body(run, 0, thread)
    return body.replace(f"(#{run}-0)".encode(), f"(#{run}-{conversation}-{serial})".encode())


def _shown_in_order(order: list[str], wanted: list[str]) -> bool:
    """Each message first shown after the one before it (a repeated post may show it again)."""
    first: dict[str, int] = {}
    for position, marker in enumerate(order):
        first.setdefault(marker, position)
    return [first.get(marker, -1) for marker in wanted] == sorted(
        first.get(marker, -1) for marker in wanted) and all(marker in first for marker in wanted)


async def _outage(client: httpx.AsyncClient, slack: Slack, status: int) -> None:
    answer = await client.post(f"{slack.api_url}{OUTAGE}", params={"status": status})
    answer.raise_for_status()
