"""Delivery benchmarks: webhook 200 to Slack post, worker throughput, a burst under Slack's pacing.

The bridge, the fake Slack (bench/slack_server.py) and this process each run apart; the fake
notes when each post arrives on the same monotonic clock as the one the 200s are timed with.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.bodies import message_body
from bench.load import percentile, read_response, request_head
from bench.servers import (
    TOKEN,
    Server,
    bridge_env,
    bridge_settings,
    fake_service,
    free_port,
    python_command,
    start,
)
from bench.slack_server import ARRIVALS
from tests.postgres import created_database

UNPACED = (1000, 1000.0)  # [slack] burst, per_second: pacing out of the way
DELIVERY_TIMEOUT = 120.0
PROGRESS_POLL = 0.01


@dataclass
class Slack:
    """The fake Slack's process and what it has seen so far."""

    process: subprocess.Popen[str]
    api_url: str
    arrived: dict[str, float]
    order: list[str]
    rate_limited: int = 0
    posts: int = 0
    lookups: int = 0  # conversations.replies calls: looking for what a cut-off attempt posted

    async def refresh(self, client: httpx.AsyncClient) -> None:
        seen = (await client.post(f"{self.api_url}{ARRIVALS}", headers={
            "Authorization": "Bearer xoxb-bench"})).json()
        self.arrived, self.order = seen["arrived"], seen["order"]
        self.rate_limited, self.posts = seen["rate_limited"], seen.get("posts", 0)
        self.lookups = seen.get("lookups", 0)

    async def seen_now(self) -> Slack:
        async with httpx.AsyncClient() as client:
            await self.refresh(client)
        return self


@contextlib.contextmanager
def fake_slack(rate: float | None = None) -> Iterator[Slack]:
    pacing = () if rate is None else ("--channel-rate", str(rate), "--channel-burst", "3")
    with fake_service("bench.slack_server", *pacing) as (process, api_url):
        yield Slack(process, api_url, {}, [])


@dataclass(frozen=True)
class Latency:
    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Throughput:
    conversations: int
    messages: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


@dataclass(frozen=True)
class Burst:
    messages: int
    rate: float
    seconds: float
    delivered: int
    rate_limited: int
    in_order: bool


@dataclass(frozen=True)
class Lookups:
    """Lookups for what a cut-off attempt posted, over every delivery of the runs above."""

    deliveries: int
    lookups: int

    @property
    def per_thousand(self) -> float:
        return 1000 * self.lookups / max(self.deliveries, 1)

    def __add__(self, other: Lookups) -> Lookups:
        return Lookups(self.deliveries + other.deliveries, self.lookups + other.lookups)


@dataclass(frozen=True)
class DeliveryReport:
    latency: Latency
    throughput: list[Throughput]
    burst: Burst
    across_replicas: Latency | None = None
    lookups: Lookups = Lookups(0, 0)


@dataclass(frozen=True)
class DeliveryOptions:
    latency_messages: int = 200
    throughput_messages: int = 300
    burst_messages: int = 200
    burst_rate: float = 20.0
    postgres: str = ""  # where to make a database for the two-replica run; "" skips it


def run_delivery(options: DeliveryOptions) -> DeliveryReport:
    with tempfile.TemporaryDirectory(prefix="bridge-bench-delivery-") as folder:
        with fake_slack() as slack, bridge_process(Path(folder) / "healthy", slack,
                                                   UNPACED) as bridge:
            latency = asyncio.run(_latency(bridge, slack, options.latency_messages))
            throughput = [asyncio.run(_throughput(bridge, slack, count,
                                                  options.throughput_messages))
                          for count in (1, 10, 100)]
            lookups = _lookups(slack)
        with fake_slack(options.burst_rate) as slack, bridge_process(
                Path(folder) / "paced", slack, (3, options.burst_rate)) as bridge:
            burst = asyncio.run(_burst(bridge, slack, options))
            lookups += _lookups(slack)
        across = _across_replicas(Path(folder), options) if options.postgres else None
    return DeliveryReport(latency, throughput, burst, across, lookups)


def _lookups(slack: Slack) -> Lookups:
    """What the fake Slack was asked to look up, for the messages it was given."""
    seen = asyncio.run(slack.seen_now())
    return Lookups(len(seen.arrived), seen.lookups)


def _across_replicas(folder: Path, options: DeliveryOptions) -> Latency:
    """Webhooks to a replica without a worker; the other replica's worker posts them."""
    with created_database(options.postgres, "bridge_bench_") as url, fake_slack() as slack, \
            bridge_process(folder / "receiver", slack, UNPACED, url, ["--no-worker"]) as receiver, \
            bridge_process(folder / "deliverer", slack, UNPACED, url):
        return asyncio.run(_latency(receiver, slack, options.latency_messages))


@contextlib.contextmanager
def bridge_process(folder: Path, slack: Slack, pacing: tuple[int, float],
                   store_url: str | None = None, flags: Sequence[str] = ()) -> Iterator[Server]:
    folder.mkdir()
    port = free_port()
    settings = bridge_settings(folder, port, slack.api_url, pacing, store_url)
    command = python_command("-m", "bridge", "serve", "--config", str(settings), *flags)
    server = start("sitegpt-bridge", command, port, folder / "bridge.log", "/readyz",
                   bridge_env(), 200)
    try:
        yield server
    finally:
        server.stop()


async def _latency(bridge: Server, slack: Slack, count: int) -> Latency:
    """One message at a time into threads that exist already: 200 OK to the post's arrival."""
    run = uuid.uuid4().hex[:8]
    threads = [f"{run}-latency-{n}" for n in range(10)]
    async with Webhooks(bridge, 1) as webhooks, httpx.AsyncClient() as client:
        await webhooks.send_all([message_body(run, n, thread) for n, thread in enumerate(threads)])
        await delivered(client, slack, [f"{run}-{n}" for n in range(len(threads))])
        acknowledged: dict[str, float] = {}
        for serial in range(len(threads), len(threads) + count):
            await webhooks.send(message_body(run, serial, threads[serial % len(threads)]))
            acknowledged[f"{run}-{serial}"] = time.perf_counter()
            await delivered(client, slack, [f"{run}-{serial}"])
    delays = sorted(slack.arrived[marker] - at for marker, at in acknowledged.items())
    return Latency(count, percentile(delays, 50) * 1e3, percentile(delays, 99) * 1e3,
                   delays[-1] * 1e3)


async def _throughput(bridge: Server, slack: Slack, conversations: int,
                      count: int) -> Throughput:
    """`count` messages spread over `conversations`, sent at once: first sent to last posted."""
    run = uuid.uuid4().hex[:8]
    bodies = [message_body(run, n, f"{run}-{n % conversations}") for n in range(count)]
    started = time.perf_counter()
    async with Webhooks(bridge, 16) as webhooks, httpx.AsyncClient() as client:
        await webhooks.send_all(bodies)
        await delivered(client, slack, [f"{run}-{n}" for n in range(count)])
    last = max(slack.arrived[f"{run}-{n}"] for n in range(count))
    return Throughput(conversations, count, last - started)


async def _burst(bridge: Server, slack: Slack, options: DeliveryOptions) -> Burst:
    """A burst into one conversation against a fake that answers 429 above its rate."""
    run = uuid.uuid4().hex[:8]
    markers = [f"{run}-{n}" for n in range(options.burst_messages)]
    started = time.perf_counter()
    async with Webhooks(bridge, 1) as webhooks, httpx.AsyncClient() as client:
        for serial in range(options.burst_messages):  # in order: one conversation's messages
            await webhooks.send(message_body(run, serial, f"{run}-burst"))
        await delivered(client, slack, markers)
    seconds = max(slack.arrived[marker] for marker in markers) - started
    return Burst(messages=options.burst_messages, rate=options.burst_rate, seconds=seconds,
                 delivered=sum(marker in slack.arrived for marker in markers),
                 rate_limited=slack.rate_limited,
                 in_order=[m for m in slack.order if m.startswith(run)] == markers)


class Webhooks:
    """Keep-alive connections to the bridge's messages webhook, to send bodies quickly."""

    def __init__(self, bridge: Server, connections: int) -> None:
        self.host, self.port, self.head = request_head(f"{bridge.url}/webhooks/messages", TOKEN)
        self.connections = connections
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self.idle = asyncio.Queue()

    async def __aenter__(self) -> Webhooks:
        for _ in range(self.connections):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()

    async def send(self, body: bytes) -> None:
        reader, writer = await self.idle.get()
        writer.write((self.head % len(body)).encode() + body)
        status, _ = await read_response(reader)
        self.idle.put_nowait((reader, writer))
        if status != 200:
            raise RuntimeError(f"the bridge answered {status}")

    async def send_all(self, bodies: list[bytes]) -> None:
        await asyncio.gather(*(self.send(body) for body in bodies))


async def delivered(client: httpx.AsyncClient, slack: Slack, markers: list[str],
                    timeout: float = DELIVERY_TIMEOUT) -> None:
    deadline = time.perf_counter() + timeout
    while not all(marker in slack.arrived for marker in markers):
        if time.perf_counter() > deadline:
            missing = sum(marker not in slack.arrived for marker in markers)
            raise RuntimeError(f"{missing} of {len(markers)} messages never reached Slack")
        await asyncio.sleep(PROGRESS_POLL)
        await slack.refresh(client)
