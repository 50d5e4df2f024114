"""kill -9 of a worker mid-stream loses nothing: a restart delivers the rest, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bridge.events import parse_event
from bridge.intake import new_event
from bridge.store import open_store
from tests.fake_slack import FakeSlack

pytestmark = pytest.mark.slow  # kill -9 and takeovers take seconds

MESSAGES = 30


def start_worker(config: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.Popen([sys.executable, "-m", "bridge", "worker", "--config", str(config)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def pending_count(url: str) -> int:
    store = open_store(url)
    try:
        return (await store.queue_depth())["pending"]
    finally:
        await store.close()


async def accept_messages(url: str, serials: range, gap: float = 0.0) -> None:
    store = open_store(url)
    try:
        for n in serials:
            body = {"event": "ADD_MESSAGE", "data": {
                "chatbotId": "bot", "threadId": "t1", "question": f"m{n:02d}",
                "messageType": "USER_MESSAGE"}}
            event = parse_event("ADD_MESSAGE", body)
            await store.accept(new_event(event, body, ["slack"]), time.time(), 600)
            await asyncio.sleep(gap)
    finally:
        await store.close()


def test_kill_9_mid_stream_then_restart_delivers_everything_once(make_settings, tmp_path):
    """Messages keep coming while the worker posts them, several to a reply, and it is killed.

    Every message is shown, in order; what repeats is at most the one reply in flight.
    """
    with FakeSlack(post_delay=0.1) as fake:
        settings = make_settings({
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                      "burst": 1000, "per_second": 1000.0},
            "delivery": {"lease": "3s", "poll_interval": "0.1s"},
            "log": {"format": "json"},
        })
        config = tmp_path / "settings.toml"
        first = start_worker(config, tmp_path)
        try:
            asyncio.run(accept_messages(settings.store.url, range(1)))
            wait_for(lambda: len(fake.posts) >= 2)  # the thread's parent and m00: it is up
            arriving = threading.Thread(target=lambda: asyncio.run(
                accept_messages(settings.store.url, range(1, MESSAGES), gap=0.05)))
            arriving.start()
            wait_for(lambda: len(fake.posts) >= 5)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
        arriving.join()
        assert len(fake.posts) < MESSAGES + 1  # it really died mid-stream
        second = start_worker(config, tmp_path)
        try:
            wait_for(lambda: asyncio.run(pending_count(settings.store.url)) == 0)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)

    parents = fake.parents()
    assert len(parents) == 1
    replies = [post["text"].split("\n") for post in fake.thread("C1", parents[0]["ts"])]
    shown = [line for reply in replies for line in reply]
    assert any(len(reply) > 1 for reply in replies)  # several messages went in one reply
    assert list(dict.fromkeys(shown)) == [f"Visitor: m{n:02d}" for n in range(MESSAGES)]
    doubled = {line for line, count in Counter(shown).items() if count > 1}
    assert any(doubled <= set(reply) for reply in replies)  # all from one reply, if any
    assert second.returncode == 0  # SIGTERM is a clean exit


TAKEOVER_BOUND = 30.0  # what a user may wait, after a crash, for a conversation to move again


def test_kill_9_mid_delivery_a_second_worker_takes_over_within_the_bound(make_settings,
                                                                         tmp_path):
    with FakeSlack(post_delay=0.3) as fake:
        settings = make_settings({
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                      "burst": 1000, "per_second": 1000.0},
            "delivery": {"lease": "3s", "poll_interval": "0.1s"},
            "log": {"format": "json"},
        })
        asyncio.run(accept_messages(settings.store.url, range(1)))
        config = tmp_path / "settings.toml"
        first = start_worker(config, tmp_path)
        wait_for(lambda: len(fake.posts) >= 2)
        second = start_worker(config, tmp_path)  # idle: the conversation is the first's
        arriving = threading.Thread(target=lambda: asyncio.run(  # several go in each reply
            accept_messages(settings.store.url, range(1, 10), gap=0.1)))
        arriving.start()
        try:
            wait_for(lambda: len(fake.posts) >= 4 and posting_now(fake))
            first.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            first.wait(10)
            arriving.join()
            wait_for(lambda: asyncio.run(pending_count(settings.store.url)) == 0,
                     timeout=TAKEOVER_BOUND)
            took = time.monotonic() - killed_at
        finally:
            first.kill()
            second.send_signal(signal.SIGTERM)
            second.wait(10)
        history = asyncio.run(abandoned(settings.store.url))

    print(f"the second worker finished {took:.1f} s after the kill (lease 3 s)")
    [parent] = fake.parents()
    replies = [post["text"].split("\n") for post in fake.thread("C1", parent["ts"])]
    shown = [line for reply in replies for line in reply]
    assert list(dict.fromkeys(shown)) == [f"Visitor: m{n:02d}" for n in range(10)]
    doubled = {line for line, count in Counter(shown).items() if count > 1}
    assert any(doubled <= set(reply) for reply in replies)  # all from one reply, if any
    # The killed worker's attempt (the reply's messages), taken over once its lease ran out.
    assert len(history) >= 1 and len(set(history)) == 1
    assert second.returncode == 0


def posting_now(fake: FakeSlack) -> bool:
    """A chat.postMessage has reached the fake Slack and is waiting for its answer."""
    started = sum(1 for method, _, _ in list(fake.calls) if method == "chat.postMessage")
    return started > len(fake.posts)


async def abandoned(url: str) -> list[str]:
    store = open_store(url)
    try:
        rows = await store.deliveries(limit=100)
        return [attempt.worker for row in rows for attempt in await store.attempts(row.id, 10)
                if attempt.outcome == "abandoned"]
    finally:
        await store.close()
