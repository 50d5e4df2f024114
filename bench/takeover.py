"""`python -m bench.takeover`: how long a conversation stands still after kill -9 of its worker.

SQLite: a worker is killed while its post to Slack hangs, and a new one is started: the time
from that start to its first post (the conversation moving again). PostgreSQL: two workers on
one database, the one holding the conversation is killed mid-post: the time from the kill to
the survivor's first post, and to the last pending delivery done. Default settings (lease
15 s, poll_interval 1 s), a fake Slack on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.fake_slack import FakeSlack
from tests.postgres import SERVER, created_database
from tests.queued_messages import accept_messages, pending_count

TOKEN = "bench-token-0123456789abcdef"
MESSAGES = 8


def settings_file(folder: Path, store_url: str, slack_url: str) -> Path:
    path = folder / "settings.toml"
    path.write_text(f'[store]\nurl = "{store_url}"\n'
                    f'[webhooks.messages]\ntokens = ["{TOKEN}"]\n'
                    f'[slack]\nbot_token = "xoxb-bench"\napi_url = "{slack_url}"\n'
                    'channel = "C1"\nburst = 1000\nper_second = 1000.0\n')
    tomllib.loads(path.read_text())  # fails here, not in the worker, if it is not TOML
    return path


def start_worker(config: Path) -> subprocess.Popen[bytes]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("BRIDGE_")}
    return subprocess.Popen([sys.executable, "-m", "bridge", "worker", "--config", str(config)],
                            cwd=config.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> float:
    """Wait until `condition` holds; when it did (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the bench waited too long")
        time.sleep(0.01)
    return time.monotonic()


def hang(fake: FakeSlack, url: str) -> None:
    """Start the conversation, hang the worker's next post in Slack, queue more behind it."""
    asyncio.run(accept_messages(url, range(1)))
    wait_for(lambda: len(fake.posts) >= 2)  # the thread's parent and m00
    fake.answer_late(30)
    asyncio.run(accept_messages(url, range(1, MESSAGES)))
    wait_for(lambda: not fake.late_posts)  # the hanging post reached Slack


def kill(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)


def sqlite_restart(folder: Path) -> float:
    """Seconds from starting a worker after kill -9 to its first post."""
    with FakeSlack(post_delay=0.05) as fake:
        url = f"sqlite:///{folder}/bridge.db"
        config = settings_file(folder, url, fake.api_url)
        first = start_worker(config)
        try:
            hang(fake, url)
            kill(first)
            posts = len(fake.posts)
            started = time.monotonic()
            second = start_worker(config)
            moving = wait_for(lambda: len(fake.posts) > posts)
            wait_for(lambda: asyncio.run(pending_count(url)) == 0)
        finally:
            first.kill()
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    return moving - started


def postgres_survivor(folder: Path, server: str) -> tuple[float, float]:
    """Seconds from kill -9 of the replica holding the conversation to the survivor's first
    post, and to the last delivery done."""
    with FakeSlack(post_delay=0.05) as fake, created_database(server, "bridge_bench_") as url:
        config = settings_file(folder, url, fake.api_url)
        first = start_worker(config)
        second = None
        try:
            hang(fake, url)  # all the first's: the second is not started yet
            second = start_worker(config)
            time.sleep(2.0)  # up, and claiming nothing: the conversation is the first's
            kill(first)
            posts = len(fake.posts)
            killed = time.monotonic()
            moving = wait_for(lambda: len(fake.posts) > posts)
            done = wait_for(lambda: asyncio.run(pending_count(url)) == 0)
        finally:
            first.kill()
            if second is not None:
                second.send_signal(signal.SIGTERM)
                second.wait(10)
    return moving - killed, done - killed


def summary(label: str, seconds: list[float]) -> str:
    shown = ", ".join(f"{value:.2f}" for value in seconds)
    return (f"{label}: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s"
            f" ({shown})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", default=SERVER, metavar="URL",
                        help="the server to make a fresh database on, or '' to skip")
    args = parser.parse_args(argv)
    restarts, firsts, finishes = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            restarts.append(sqlite_restart(Path(folder)))
        if args.postgres:
            with tempfile.TemporaryDirectory() as folder:
                first, done = postgres_survivor(Path(folder), args.postgres)
                firsts.append(first)
                finishes.append(done)
    print(summary("sqlite: restart to the first post", restarts))
    if args.postgres:
        print(summary("postgresql: kill to the survivor's first post", firsts))
        print(summary("postgresql: kill to the survivor's last delivery", finishes))


if __name__ == "__main__":
    main()
