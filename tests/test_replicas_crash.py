"""Two `serve` processes on one PostgreSQL database: kill -9 of one, and the other carries on."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bridge.store.migrations import SCHEMA_VERSION
from tests.fake_slack import FakeSlack
from tests.postgres import query
from tests.servers import BridgeProcess
from tests.settings_files import TOKENS

pytestmark = pytest.mark.slow  # kill -9 and takeovers take seconds

MESSAGES = 30
# A lease far longer than the bound: the survivor must not wait for it to run out, since the
# server drops the killed replica's worker lock with its connection.
LEASE = "120s"
TAKEOVER_BOUND = 30.0  # seconds from the kill to the last message in Slack
# Between two webhooks: longer than a post takes, so the stream is still arriving when the
# kill comes however fast or slow the machine.
WEBHOOK_GAP = 0.15


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pending(url: str) -> int:
    [(count,)] = query(url, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
    return int(count)  # type: ignore[call-overload]


def post_message(url: str, n: int) -> httpx.Response:
    body = {"event": "ADD_MESSAGE", "data": {"chatbotId": "bot", "threadId": "t1",
                                              "question": f"m{n:02d}",
                                              "messageType": "USER_MESSAGE"}}
    return httpx.post(f"{url}/webhooks/messages", json=body, timeout=10,
                      headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})


def send_stream(replicas: tuple[BridgeProcess, BridgeProcess]) -> None:
    """SiteGPT's webhooks one every WEBHOOK_GAP, spread over both replicas as a load balancer
    would, which sends one to the other replica when the first is gone."""
    for n in range(MESSAGES):
        one, other = replicas[n % 2], replicas[(n + 1) % 2]
        try:
            answer = post_message(one.url, n)
        except httpx.TransportError:
            answer = post_message(other.url, n)
        assert answer.status_code == 200
        time.sleep(WEBHOOK_GAP)


def test_kill_9_of_the_replica_mid_delivery_the_other_delivers_the_rest_in_order(
        make_settings, tmp_path, postgres_url):
    with FakeSlack(post_delay=0.05) as fake:
        make_settings({
            "store": {"url": postgres_url, "pool_size": 4},
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                      "burst": 1000, "per_second": 1000.0},
            "delivery": {"poll_interval": "0.2s", "lease": LEASE},
            "log": {"format": "json"},
        })
        config = tmp_path / "settings.toml"
        with BridgeProcess(config, cwd=tmp_path) as first, \
                BridgeProcess(config, cwd=tmp_path) as second:
            with ThreadPoolExecutor(1) as sender:
                stream = sender.submit(send_stream, (first, second))
                wait_for(lambda: len(fake.posts) >= 10, 30, "the first ten posts")
                fake.answer_late(5)  # a post lands in Slack, its answer hangs: mid-call
                wait_for(lambda: not fake.late_posts, 30, "a post to hang")
                killed, survivor = holder_and_other(postgres_url, first, second)
                killed.kill()
                killed_at = len(fake.posts)
                kill_time = time.monotonic()
                stream.result()
            wait_for(lambda: pending(postgres_url) == 0, TAKEOVER_BOUND,
                     "the surviving replica to deliver the rest")
            print(f"the survivor finished {time.monotonic() - kill_time:.1f} s after the kill"
                  f" (lease {LEASE})")
            assert survivor.process is not None and survivor.process.poll() is None
    assert killed_at < MESSAGES + 1  # the kill really came mid-stream
    # The killed replica held a delivery; the survivor took it over long before its lease
    # could run out, as soon as the killed one's worker lock was gone.
    [(abandoned,)] = query(postgres_url, "SELECT COUNT(*) FROM delivery_attempts"
                                         " WHERE outcome = 'abandoned' AND worker = %s",
                           (worker_of(killed),))
    assert abandoned >= 1  # the hanging reply's messages (several may share one reply)
    [parent] = fake.parents()
    replies = [post["text"].split("\n") for post in fake.thread("C1", parent["ts"])]
    shown = [line for reply in replies for line in reply]
    assert list(dict.fromkeys(shown)) == [f"Visitor: m{n:02d}" for n in range(MESSAGES)]
    doubled = {line for line, count in Counter(shown).items() if count > 1}
    assert any(doubled <= set(reply) for reply in replies)  # all from the one reply in flight


def worker_of(replica: BridgeProcess) -> str:
    """The worker id the replica logged when its worker started."""
    for line in replica.log.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("worker"):
            return str(record["worker"])
    raise AssertionError(f"no worker id in the log:\n{replica.log}")


def holder_and_other(url: str, *replicas: BridgeProcess) -> tuple[BridgeProcess, BridgeProcess]:
    """The replica whose worker holds the hanging delivery (its lease renewed), the other."""
    [(owner,)] = query(url, "SELECT DISTINCT lease_owner FROM deliveries"
                            " WHERE status = 'pending' AND lease_owner IS NOT NULL")
    first, second = replicas
    return (first, second) if worker_of(first) == owner else (second, first)


def test_replicas_started_at_once_migrate_the_new_database_once(make_settings, tmp_path,
                                                                postgres_url):
    make_settings({"store": {"url": postgres_url}, "log": {"format": "json"}})
    config = tmp_path / "settings.toml"
    replicas = [BridgeProcess(config, cwd=tmp_path) for _ in range(3)]
    with ThreadPoolExecutor(len(replicas)) as pool:
        started = list(pool.map(lambda replica: replica.__enter__(), replicas))
    try:  # each logs the store it opened (from its log thread, so perhaps a moment later)
        wait_for(lambda: all(f"schema version {SCHEMA_VERSION}" in replica.log
                             for replica in started), 10, "every replica's store line")
        logs = [replica.log for replica in started]
    finally:
        for replica in started:
            replica.kill()
    assert sum("migrated the PostgreSQL schema" in log for log in logs) == 1
    assert query(postgres_url, "SELECT COUNT(*) FROM schema_migrations") == [(SCHEMA_VERSION,)]


CONVERSATIONS = 24


def post_to(url: str, thread: str, text: str) -> httpx.Response:
    body = {"event": "ADD_MESSAGE", "data": {"chatbotId": "bot", "threadId": thread,
                                              "question": text, "messageType": "USER_MESSAGE"}}
    return httpx.post(f"{url}/webhooks/messages", json=body, timeout=10,
                      headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})


def leases_by_worker(url: str) -> dict[str, int]:
    rows = query(url, "SELECT lease_owner, COUNT(*) FROM deliveries WHERE status = 'pending'"
                      " AND lease_owner IS NOT NULL GROUP BY lease_owner")
    return {str(owner): int(count) for owner, count in rows}  # type: ignore[call-overload]


def test_kill_9_of_a_replica_with_posts_in_flight_posts_none_of_them_twice(
        make_settings, tmp_path, postgres_url):
    """Slack answers each post a second late; one replica dies holding many of them.

    The survivor takes its deliveries over, finds in Slack the posts that had landed (the
    threads' parents and replies) and posts only what had not.
    """
    with FakeSlack(answer_delay=1.0) as fake:
        make_settings({
            "store": {"url": postgres_url, "pool_size": 4},
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C1",
                      "burst": 1000, "per_second": 1000.0},
            "delivery": {"poll_interval": "0.2s", "lease": "3s"},
            "log": {"format": "json"},
        })
        config = tmp_path / "settings.toml"
        with BridgeProcess(config, cwd=tmp_path) as first, \
                BridgeProcess(config, cwd=tmp_path) as second:
            for n in range(2):
                for c in range(CONVERSATIONS):
                    replica = (first, second)[c % 2]
                    assert post_to(replica.url, f"t{c:02d}", f"m{n}").status_code == 200
            wait_for(lambda: fake.unanswered() >= 8 and len(leases_by_worker(postgres_url)) == 2,
                     30, "both replicas to have posts in flight")
            killed, survivor = (first, second) if worker_of(first) == max(
                (held := leases_by_worker(postgres_url)), key=held.__getitem__) else (second, first)
            killed.kill()
            in_flight = fake.unanswered()
            wait_for(lambda: pending(postgres_url) == 0, 60,
                     "the surviving replica to deliver the rest")
            assert survivor.process is not None and survivor.process.poll() is None

    parents = {post["metadata"]["event_payload"]["conversation"]: post
               for post in fake.parents()}
    shown = {key: [line for post in fake.thread("C1", parent["ts"])
                   for line in post["text"].split("\n")] for key, parent in parents.items()}
    doubled = sum(len(lines) - len(set(lines)) for lines in shown.values())
    print(f"killed holding {held[worker_of(killed)]} leases, {in_flight} posts in flight:"
          f" {doubled} messages and {len(fake.parents()) - len(parents)} parents shown twice,"
          f" {len(fake.lookups())} lookups")
    assert len(fake.parents()) == CONVERSATIONS == len(parents)
    assert all(lines == ["Visitor: m0", "Visitor: m1"] for lines in shown.values()), shown
