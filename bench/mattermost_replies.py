"""A reply written in Mattermost reaching SiteGPT: the WebSocket event to SiteGPT's API call.

The bridge `serve`, the fake Mattermost, the fake SiteGPT API (bench/sitegpt_server.py) and
this process each run apart. The fake Mattermost notes when it sent each member's reply on its
WebSocket and when the bridge's ✅ on it arrived; the fake SiteGPT notes when the reply arrived;
all on the same monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.bodies import message_body
from bench.delivery import DELIVERY_TIMEOUT, PROGRESS_POLL, Latency, Webhooks
from bench.mattermost import Mattermost, bridge_with, fake_mattermost, latency_of
from bench.mattermost import mattermost_section as mattermost_on
from bench.mattermost_server import PUBLISH
from bench.servers import Server, fake_service
from bench.sitegpt_server import API_KEY, API_PATH, ARRIVALS

MEMBERS = ("ana", "ben", "cleo")  # who answer, in turn
CONVERSATIONS = 10


@dataclass
class SiteGPT:
    """The fake SiteGPT API's process and what it has taken so far."""

    process: subprocess.Popen[str]
    url: str
    arrived: dict[str, float] = field(default_factory=dict)  # marker -> when it arrived
    agents: dict[str, str] = field(default_factory=dict)  # marker -> the name it went in
    refused: int = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PATH}"

    async def refresh(self, client: httpx.AsyncClient) -> None:
        seen = (await client.get(f"{self.url}{ARRIVALS}")).json()
        self.arrived, self.agents = seen["arrived"], seen["agents"]
        self.refused = seen["refused"]


@contextlib.contextmanager
def fake_sitegpt() -> Iterator[SiteGPT]:
    with fake_service("bench.sitegpt_server") as (process, url):
        yield SiteGPT(process, url)


@dataclass(frozen=True)
class Sent:
    """A member's reply as the fake Mattermost sent it on the WebSocket."""

    marker: str
    post_id: str
    at: float


@dataclass(frozen=True)
class ReplyLatency:
    # Each member's first reply, not counted: it looks the member up (cached after), and the
    # very first also makes SiteGPT's client and asks Mattermost who the bot is.
    first_ms: list[float]
    sitegpt: Latency  # WebSocket event -> SiteGPT API call arrived
    marked: Latency  # WebSocket event -> the ✅ on the post arrived


def run_mattermost_replies(replies: int = 200) -> ReplyLatency:
    with tempfile.TemporaryDirectory(prefix="bridge-bench-replies-") as folder, \
            fake_mattermost() as mattermost, fake_sitegpt() as sitegpt, \
            bridge_with(Path(folder), None, [*mattermost_on(mattermost),
                                             *sitegpt_section(sitegpt)]) as bridge:
        return asyncio.run(_latency(bridge, mattermost, sitegpt, replies))


def sitegpt_section(sitegpt: SiteGPT) -> list[str]:
    return ["[sitegpt]", f"api_url = {json.dumps(sitegpt.api_url)}",
            f"api_key = {json.dumps(API_KEY)}"]


async def _latency(bridge: Server, mattermost: Mattermost, sitegpt: SiteGPT,
                   count: int) -> ReplyLatency:
    """Threads first, by webhook; then one reply at a time, each waited for at both ends."""
    run = uuid.uuid4().hex[:8]
    openers = [f"{run}-{n}" for n in range(CONVERSATIONS)]
    async with Webhooks(bridge, 1) as webhooks, httpx.AsyncClient() as client:
        await webhooks.send_all([message_body(run, n, f"{run}-replies-{n}")
                                 for n in range(CONVERSATIONS)])
        await _until(client, mattermost.refresh, lambda: mattermost.sockets > 0 and all(
            marker in mattermost.threads for marker in openers), "threads and a listener")
        roots = [mattermost.threads[marker] for marker in openers]

        async def reply(serial: int) -> Sent:
            sent = await _publish(client, mattermost, roots[serial % len(roots)],
                                  MEMBERS[serial % len(MEMBERS)], f"{run}-reply-{serial}")
            await _until(client, _both(mattermost, sitegpt), lambda: sent.marker in
                         sitegpt.arrived and sent.post_id in mattermost.marked, sent.marker)
            return sent

        first = [await reply(serial) for serial in range(len(MEMBERS))]
        counted = [await reply(serial) for serial in range(len(MEMBERS), len(MEMBERS) + count)]
    _check(sitegpt)
    return ReplyLatency(
        [(sitegpt.arrived[sent.marker] - sent.at) * 1e3 for sent in first],
        latency_of(sitegpt.arrived, {sent.marker: sent.at for sent in counted}),
        latency_of(mattermost.marked, {sent.post_id: sent.at for sent in counted}))


def _check(sitegpt: SiteGPT) -> None:
    """The replies went as asked: with the key, in the names Mattermost gives the members."""
    if sitegpt.refused:
        raise RuntimeError(f"the fake SiteGPT refused {sitegpt.refused} calls")
    if (names := set(sitegpt.agents.values())) != {member.capitalize() for member in MEMBERS}:
        raise RuntimeError(f"the replies went in the names {sorted(names)}")


async def _publish(client: httpx.AsyncClient, mattermost: Mattermost, root_id: str,
                   member: str, marker: str) -> Sent:
    answer = (await client.post(f"{mattermost.url}{PUBLISH}", json={
        "root_id": root_id, "sender": member,
        "message": f"It left the warehouse today, tracking on its way (#{marker})"})).json()
    if answer["reached"] != 1:
        raise RuntimeError(f"the reply reached {answer['reached']} sockets, not the bridge's")
    return Sent(marker, answer["id"], answer["sent"])


def _both(mattermost: Mattermost, sitegpt: SiteGPT) -> Callable[[httpx.AsyncClient],
                                                                 Awaitable[None]]:
    async def refresh(client: httpx.AsyncClient) -> None:
        await mattermost.refresh(client)
        await sitegpt.refresh(client)
    return refresh


async def _until(client: httpx.AsyncClient,
                 refresh: Callable[[httpx.AsyncClient], Awaitable[None]],
                 done: Callable[[], bool], what: str) -> None:
    deadline = time.perf_counter() + DELIVERY_TIMEOUT
    await refresh(client)
    while not done():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"waited {DELIVERY_TIMEOUT:g} s for {what}")
        await asyncio.sleep(PROGRESS_POLL)
        await refresh(client)
