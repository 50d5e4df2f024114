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
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.store import open_store
from tests.fake_mattermost import TOKEN, FakeMattermost
from tests.fake_slack import FakeSlack
from tests.queued_messages import accept_messages, pending_count

pytestmark = pytest.mark.slow  # kill -9 and takeovers take seconds

MESSAGES = 30
# Far longer than any wait below: a worker that starts after a kill -9 must not wait for the
# dead one's leases to run out, since the kernel let go of its lock on the store.
LEASE = "120s"


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


def worker_settings(make_settings, fake: FakeSlack):
    """Settings for a worker posting to `fake` at full speed, with a lease no takeover waits out."""
    return make_settings({
        "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                  "burst": 1000, "per_second": 1000.0},
        "delivery": {"lease": LEASE, "poll_interval": "0.1s"},
        "log": {"format": "json"},
    })


def kill_mid_stream_then_restart(url: str, cwd: Path, posts: Callable[[], int], gap: float,
                                 destination: str = "slack") -> subprocess.Popen[bytes]:
    """Messages keep coming while a worker posts them; it is killed after a few posts, and
    a second worker delivers the rest. The second, stopped, is returned."""
    config = cwd / "settings.toml"
    first = start_worker(config, cwd)
    arriving = threading.Thread(target=lambda: asyncio.run(
        accept_messages(url, range(1, MESSAGES), gap=gap, destination=destination)))
    try:
        asyncio.run(accept_messages(url, range(1), destination=destination))
        wait_for(lambda: posts() >= 2)  # the thread's first post and m00: it is up
        arriving.start()
        wait_for(lambda: posts() >= 5)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    arriving.join()
    assert posts() < MESSAGES + 1  # it really died mid-stream
    second = start_worker(config, cwd)
    try:
        wait_for(lambda: asyncio.run(pending_count(url)) == 0)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    return second


def test_kill_9_mid_stream_then_restart_delivers_everything_once(make_settings, tmp_path):
    """Messages keep coming while the worker posts them, several to a reply, and it is killed.

    Every message is shown, in order; what repeats is at most the one reply in flight.
    """
    with FakeSlack(post_delay=0.1) as fake:
        settings = worker_settings(make_settings, fake)
        second = kill_mid_stream_then_restart(settings.store.url, tmp_path,
                                              lambda: len(fake.posts), gap=0.05)

    parents = fake.parents()
    assert len(parents) == 1
    replies = [post["text"].split("\n") for post in fake.thread("C1", parents[0]["ts"])]
    shown = [line for reply in replies for line in reply]
    assert any(len(reply) > 1 for reply in replies)  # several messages went in one reply
    assert list(dict.fromkeys(shown)) == [f"Visitor: m{n:02d}" for n in range(MESSAGES)]
    doubled = {line for line, count in Counter(shown).items() if count > 1}
    assert any(doubled <= set(reply) for reply in replies)  # all from one reply, if any
    assert second.returncode == 0  # SIGTERM is a clean exit


def test_kill_9_mid_post_to_mattermost_then_restart_posts_nothing_twice(make_settings,
                                                                         tmp_path):
    """Mattermost answers every post late, so the kill lands after a post is made and before
    the worker hears of it: the restarted worker finds that post and does not make it again."""
    with FakeMattermost(post_delay=0.2) as fake:
        settings = make_settings({
            "mattermost": {"url": fake.url, "bot_token": TOKEN, "channel": "mm_conv",
                           "burst": 1000, "per_second": 1000.0},
            "delivery": {"lease": LEASE, "poll_interval": "0.1s"}, "log": {"format": "json"}})
        second = kill_mid_stream_then_restart(settings.store.url, tmp_path,
                                              lambda: len(fake.posts), gap=0.1,
                                              destination="mattermost")

    [root] = fake.roots()
    shown = [line for post in fake.thread(root["id"]) for line in post["message"].split("\n\n")]
    assert shown == [f":bust_in_silhouette: **Visitor:** m{n:02d}" for n in range(MESSAGES)]
    assert second.returncode == 0


TAKEOVER_BOUND = 30.0  # what a user may wait, after a crash, for a conversation to move again


def test_a_second_worker_on_the_store_waits_and_says_who_delivers(make_settings, tmp_path):
    settings = make_settings({"delivery": {"lease": LEASE, "poll_interval": "0.1s"},
                              "log": {"format": "json"}})
    config = tmp_path / "settings.toml"
    first = start_worker(config, tmp_path)
    lock = settings.store.sqlite_path.with_name("bridge.db-worker.lock")
    wait_for(lambda: lock.is_file() and lock.read_text() == f"{first.pid}\n")  # it delivers
    second = subprocess.Popen([sys.executable, "-m", "bridge", "worker", "--config",
                               str(config)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items()
                                   if not k.startswith("BRIDGE_")})
    logged: list[str] = []
    reading = threading.Thread(target=lambda: logged.extend(second.stderr or ()), daemon=True)
    reading.start()
    try:
        wait_for(lambda: any('"outcome": "waiting"' in line for line in logged))
    finally:
        second.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGTERM)
        second.wait(10)
        first.wait(10)
    [waiting] = [line for line in logged if '"outcome": "waiting"' in line]
    assert f"pid {first.pid} delivers from it; this worker waits" in waiting
    assert second.returncode == 0 and first.returncode == 0


def test_kill_9_mid_delivery_a_second_worker_takes_over_within_the_bound(make_settings,
                                                                         tmp_path):
    with FakeSlack(post_delay=0.3) as fake:
        settings = worker_settings(make_settings, fake)
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

    print(f"the second worker finished {took:.1f} s after the kill (lease {LEASE})")
    [parent] = fake.parents()
    replies = [post["text"].split("\n") for post in fake.thread("C1", parent["ts"])]
    shown = [line for reply in replies for line in reply]
    assert list(dict.fromkeys(shown)) == [f"Visitor: m{n:02d}" for n in range(10)]
    doubled = {line for line, count in Counter(shown).items() if count > 1}
    assert any(doubled <= set(reply) for reply in replies)  # all from one reply, if any
    # The killed worker's attempt (the reply's messages), taken over without waiting out
    # its lease.
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


KILLS = 3


def test_kill_9_again_and_again_while_posts_land_posts_nothing_twice(make_settings, tmp_path):
    """Each kill comes while a post has landed in Slack and its answer is still on the way.

    The next worker finds the killed one's post in the thread and records it: every message
    is shown exactly once.
    """
    with FakeSlack(answer_delay=0.4) as fake:
        settings = worker_settings(make_settings, fake)
        config = tmp_path / "settings.toml"
        arriving = threading.Thread(target=lambda: asyncio.run(
            accept_messages(settings.store.url, range(MESSAGES), gap=0.15)))
        arriving.start()
        for _ in range(KILLS):
            worker = start_worker(config, tmp_path)
            try:
                before = len(fake.posts)
                wait_for(lambda: len(fake.posts) > before and fake.unanswered() > 0)  # noqa: B023
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
            finally:
                worker.kill()
        arriving.join()
        last = start_worker(config, tmp_path)
        try:
            wait_for(lambda: asyncio.run(pending_count(settings.store.url)) == 0, timeout=60)
        finally:
            last.send_signal(signal.SIGTERM)
            last.wait(10)
        history = asyncio.run(abandoned(settings.store.url))

    parent = fake.parents()[0]
    shown = [line for post in fake.thread("C1", parent["ts"]) for line in post["text"].split("\n")]
    print(f"{KILLS} kills: {len(shown) - len(set(shown))} messages shown twice,"
          f" {len(fake.parents()) - 1} parents twice, {len(fake.lookups())} lookups")
    assert len(fake.parents()) == 1
    assert shown == [f"Visitor: m{n:02d}" for n in range(MESSAGES)]  # each once, in order
    assert len(set(history)) >= KILLS  # each killed worker left an attempt cut off
    assert len(fake.lookups()) >= KILLS  # and each was looked for before posting again
