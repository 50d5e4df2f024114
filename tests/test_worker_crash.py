"""kill -9 of a worker mid-stream loses nothing: a restart delivers the rest, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bridge.events import parse_event
from bridge.intake import new_event
from bridge.store import open_store
from tests.fake_slack import FakeSlack

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


def test_kill_9_mid_stream_then_restart_delivers_everything_once(make_settings, tmp_path):
    with FakeSlack(post_delay=0.03) as fake:
        settings = make_settings({
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                      "burst": 1000, "per_second": 1000.0},
            "delivery": {"lease": "3s", "poll_interval": "0.1s"},
            "log": {"format": "json"},
        })

        asyncio.run(seed_messages(settings.store.url, MESSAGES))
        config = tmp_path / "settings.toml"
        first = start_worker(config, tmp_path)
        try:
            wait_for(lambda: len(fake.posts) >= 10)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
        delivered_before = len(fake.posts)
        assert delivered_before < MESSAGES + 1  # it really died mid-stream
        second = start_worker(config, tmp_path)
        try:
            wait_for(lambda: asyncio.run(pending_count(settings.store.url)) == 0)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)

    parents = fake.parents()
    assert len(parents) == 1
    replies = [post["text"] for post in fake.thread("C1", parents[0]["ts"])]
    expected = [f"Visitor: m{n:02d}" for n in range(MESSAGES)]
    assert list(dict.fromkeys(replies)) == expected  # every message, in order
    doubled = [text for text, count in Counter(replies).items() if count > 1]
    assert len(doubled) <= 1  # only the one in flight at the kill may repeat
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
        asyncio.run(seed_messages(settings.store.url, 10))
        config = tmp_path / "settings.toml"
        first = start_worker(config, tmp_path)
        wait_for(lambda: len(fake.posts) >= 2)
        second = start_worker(config, tmp_path)  # idle: the conversation is the first's
        try:
            wait_for(lambda: len(fake.posts) >= 4 and posting_now(fake))
            first.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            first.wait(10)
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
    replies = [post["text"] for post in fake.thread("C1", parent["ts"])]
    assert list(dict.fromkeys(replies)) == [f"Visitor: m{n:02d}" for n in range(10)]
    assert sum(count - 1 for count in Counter(replies).values()) <= 1
    assert len(history) == 1  # the killed worker's attempt, taken over once its lease ran out
    assert second.returncode == 0


def posting_now(fake: FakeSlack) -> bool:
    """A chat.postMessage has reached the fake Slack and is waiting for its answer."""
    started = sum(1 for method, _, _ in list(fake.calls) if method == "chat.postMessage")
    return started > len(fake.posts)


async def seed_messages(url: str, count: int) -> None:
    store = open_store(url)
    try:
        for n in range(count):
            body = {"event": "ADD_MESSAGE", "data": {
                "chatbotId": "bot", "threadId": "t1", "question": f"m{n:02d}",
                "messageType": "USER_MESSAGE"}}
            event = parse_event("ADD_MESSAGE", body)
            await store.accept(new_event(event, body, ["slack"]), time.time(), 600)
    finally:
        await store.close()


async def abandoned(url: str) -> list[str]:
    store = open_store(url)
    try:
        rows = await store.deliveries(limit=100)
        return [attempt.worker for row in rows for attempt in await store.attempts(row.id, 10)
                if attempt.outcome == "abandoned"]
    finally:
        await store.close()
