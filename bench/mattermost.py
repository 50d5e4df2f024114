"""Webhook 200 to Mattermost post, beside Slack's: one bridge posting to both fakes at once.

The bridge, the fake Slack, the fake Mattermost and this process each run apart; both fakes
note when each message arrives on the same monotonic clock the 200s are timed with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.bodies import message_body
from bench.delivery import UNPACED, Latency, Slack, Webhooks, delivered, fake_slack
from bench.load import percentile
from bench.mattermost_server import ARRIVALS
from bench.servers import (
    Server,
    bridge_env,
    bridge_settings,
    fake_service,
    free_port,
    python_command,
)
from bench.servers import start as start_server
from tests.fake_mattermost import TOKEN as MATTERMOST_TOKEN

DELIVERY_TIMEOUT = 120.0
PROGRESS_POLL = 0.01


@dataclass(frozen=True)
class ChatLatency:
    slack: Latency
    mattermost: Latency


@dataclass
class Mattermost:
    """The fake Mattermost's process and what it has seen so far."""

    process: subprocess.Popen[str]
    url: str
    arrived: dict[str, float] = field(default_factory=dict)  # marker -> when posted
    threads: dict[str, str] = field(default_factory=dict)  # marker -> its thread's root post
    marked: dict[str, float] = field(default_factory=dict)  # post id -> when its ✅ came
    sockets: int = 0  # open now: the bridge listening

    async def refresh(self, client: httpx.AsyncClient) -> None:
        seen = (await client.get(f"{self.url}{ARRIVALS}")).json()
        self.arrived, self.threads = seen["arrived"], seen["threads"]
        self.marked, self.sockets = seen["marked"], seen["sockets"]


@contextlib.contextmanager
def fake_mattermost() -> Iterator[Mattermost]:
    with fake_service("bench.mattermost_server") as (process, url):
        yield Mattermost(process, url)


def run_mattermost(messages: int = 200) -> ChatLatency:
    with tempfile.TemporaryDirectory(prefix="bridge-bench-mattermost-") as folder, \
            fake_slack() as slack, fake_mattermost() as mattermost, \
            bridge_with(Path(folder), slack.api_url, mattermost_section(mattermost)) as bridge:
        return asyncio.run(_latency(bridge, slack, mattermost, messages))


def mattermost_section(mattermost: Mattermost) -> list[str]:
    """Mattermost on, its pacing out of the way."""
    return ["[mattermost]", f"url = {json.dumps(mattermost.url)}",
            f"bot_token = {json.dumps(MATTERMOST_TOKEN)}", 'channel = "mm_bench"',
            "burst = 1000", "per_second = 1000.0"]


@contextlib.contextmanager
def bridge_with(folder: Path, slack_url: str | None, sections: list[str]) -> Iterator[Server]:
    """One bridge `serve`, Slack's pacing out of the way, with these settings lines added."""
    port = free_port()
    settings = bridge_settings(folder, port, slack_url, UNPACED)
    settings.write_text(settings.read_text() + "\n".join(sections) + "\n")
    command = python_command("-m", "bridge", "serve", "--config", str(settings))
    server = start_server("sitegpt-bridge", command, port, folder / "bridge.log", "/readyz",
                          bridge_env(), 200)
    try:
        yield server
    finally:
        server.stop()


async def _latency(bridge: Server, slack: Slack, mattermost: Mattermost,
                   count: int) -> ChatLatency:
    """One message at a time into threads both tools have already: 200 OK to each post."""
    run = uuid.uuid4().hex[:8]
    threads = [f"{run}-latency-{n}" for n in range(10)]
    async with Webhooks(bridge, 1) as webhooks, httpx.AsyncClient() as client:
        await webhooks.send_all([message_body(run, n, thread) for n, thread in enumerate(threads)])
        await _both(client, slack, mattermost, [f"{run}-{n}" for n in range(len(threads))])
        acknowledged: dict[str, float] = {}
        for serial in range(len(threads), len(threads) + count):
            await webhooks.send(message_body(run, serial, threads[serial % len(threads)]))
            acknowledged[f"{run}-{serial}"] = time.perf_counter()
            await _both(client, slack, mattermost, [f"{run}-{serial}"])
    return ChatLatency(latency_of(slack.arrived, acknowledged),
                       latency_of(mattermost.arrived, acknowledged))


async def _both(client: httpx.AsyncClient, slack: Slack, mattermost: Mattermost,
                markers: list[str]) -> None:
    await delivered(client, slack, markers)
    deadline = time.perf_counter() + DELIVERY_TIMEOUT
    while not all(marker in mattermost.arrived for marker in markers):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{markers} never reached Mattermost")
        await asyncio.sleep(PROGRESS_POLL)
        await mattermost.refresh(client)


def latency_of(arrived: dict[str, float], started: dict[str, float]) -> Latency:
    """From each start to its arrival, by the same key on both sides."""
    delays = sorted(arrived[key] - at for key, at in started.items())
    return Latency(len(delays), percentile(delays, 50) * 1e3, percentile(delays, 99) * 1e3,
                   delays[-1] * 1e3)
