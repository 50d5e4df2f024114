"""GET /metrics: webhook and delivery outcomes, attempts, errors, latency and the queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from bridge.app import create_app, open_bridge
from bridge.destinations.base import Delivered, Delivery, Outcome, Skipped
from bridge.destinations.shared import Shared
from bridge.destinations.slack import slack_workspace
from bridge.errors import PermanentError, RetryableError, StoreBusy
from bridge.metrics import Metrics
from bridge.store import open_store
from bridge.web import ENDPOINT_KINDS, Endpoint, SiteGPTReceiver, build_app
from bridge.worker import Worker
from tests.metric_samples import samples, value

MESSAGE = {"event": "ADD_MESSAGE",
           "data": {"chatbotId": "bot", "threadId": "t1", "question": "hi", "answer": None,
                    "messageType": "USER_MESSAGE"}}
GOOD = {"X-WEBHOOK-TOKEN": "tok-messages"}


def message(thread_id: str) -> dict:
    return {**MESSAGE, "data": {**MESSAGE["data"], "threadId": thread_id}}


@pytest.fixture
def client(make_settings, clock):
    settings = make_settings({"webhooks": {"leads": {"tokens": []}},
                              "server": {"max_body_bytes": 1024}})
    with TestClient(create_app(open_bridge(settings, clock), run_worker=False)) as client:
        yield client


WEBHOOK_CASES = [
    ("accepted", "/webhooks/messages", GOOD, json.dumps(message("a"))),
    ("unauthorized", "/webhooks/messages", {"X-WEBHOOK-TOKEN": "wrong"}, json.dumps(MESSAGE)),
    ("unauthorized", "/webhooks/messages", {}, json.dumps(MESSAGE)),
    ("invalid_json", "/webhooks/messages", GOOD, "{not json"),
    ("invalid", "/webhooks/messages", GOOD, json.dumps({"event": "ADD_MESSAGE", "data": {}})),
    ("too_large", "/webhooks/messages", GOOD, json.dumps({"pad": "x" * 2000})),
    ("not_configured", "/webhooks/leads", {"X-WEBHOOK-TOKEN": "anything"}, "{}"),
]


@pytest.mark.parametrize(("outcome", "path", "headers", "body"), WEBHOOK_CASES)
def test_each_webhook_outcome_is_counted_by_endpoint(client, outcome, path, headers, body):
    endpoint = path.rsplit("/", 1)[1]
    client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
    text = client.get("/metrics").text
    assert value(text, "sitegpt_bridge_webhooks_total", endpoint=endpoint, outcome=outcome) == 1
    others = [name for name in ENDPOINT_KINDS if name != endpoint]
    assert all(value(text, "sitegpt_bridge_webhooks_total", endpoint=other, outcome=outcome) == 0
               for other in others)


def test_a_retry_from_sitegpt_counts_as_duplicate(client):
    for _ in range(3):
        client.post("/webhooks/messages", json=MESSAGE, headers=GOOD)
    text = client.get("/metrics").text
    assert value(text, "sitegpt_bridge_webhooks_total", endpoint="messages",
                 outcome="accepted") == 1
    assert value(text, "sitegpt_bridge_webhooks_total", endpoint="messages",
                 outcome="duplicate") == 2


class BusyStore:
    """A store that cannot commit: the web layer answers 503 and counts `unavailable`."""

    async def accept(self, *args: object) -> None:
        raise StoreBusy("the store did not commit within 3 s")

    async def queue_depth(self) -> dict[str, int]:
        raise StoreBusy("the store did not answer")


def test_a_busy_store_counts_unavailable_and_fails_the_scrape(clock):
    receiver = SiteGPTReceiver(store=BusyStore(), clock=clock,  # type: ignore[arg-type]
                               max_body_bytes=4096, dedup_window=600)
    endpoint = Endpoint("messages", "ADD_MESSAGE", [b"tok"], [])
    with TestClient(build_app(receiver, [endpoint])) as client:
        answer = client.post("/webhooks/messages", json=MESSAGE, headers={"X-WEBHOOK-TOKEN": "tok"})
        scrape = client.get("/metrics")
    assert answer.status_code == 503
    counted = generate_latest(receiver.metrics.registry).decode()
    assert value(counted, "sitegpt_bridge_webhooks_total", endpoint="messages",
                 outcome="unavailable") == 1
    assert scrape.status_code == 503 and "store unavailable" in scrape.text


@dataclass
class ScriptedDestination:
    """Answers each conversation as scripted: an outcome, or an error to raise."""

    script: dict[str, Outcome | Exception]
    name: ClassVar[str] = "fake"

    def accepts(self, kind: str) -> bool:
        return True

    async def deliver(self, delivery: Delivery) -> Outcome:
        step = self.script[delivery.event.data.thread_id]  # type: ignore[union-attr]
        if isinstance(step, Exception):
            raise step
        return step

    async def verify(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        pass

    def render_samples(self, samples: Any) -> None:
        return None  # it cannot show what it would send


def rate_limited() -> RetryableError:
    error = RetryableError("Slack says slow down", retry_after=30)
    error.code = "ratelimited"  # type: ignore[attr-defined]
    return error


async def test_deliveries_attempts_errors_latency_and_queue_reach_the_scrape(make_settings,
                                                                          clock):
    settings = make_settings()
    store = open_store(settings.store.url)
    destination = ScriptedDestination({
        "ok": Delivered(note="ts-1"),
        "dry": Skipped("dry run"),
        "slow": rate_limited(),
        "gone": PermanentError("channel_not_found"),
        "bug": KeyError("oops"),
    })
    metrics = Metrics(destinations=["fake"])
    worker = Worker(store, {"fake": destination}, settings.delivery, clock, metrics=metrics)
    receiver = SiteGPTReceiver(store=store, clock=clock, max_body_bytes=4096, dedup_window=600,
                               metrics=metrics)
    endpoint = Endpoint("messages", "ADD_MESSAGE", [b"tok"], ["fake"])
    accepted_at = clock.now()
    with TestClient(build_app(receiver, [endpoint])) as client:
        for thread_id in destination.script:
            client.post("/webhooks/messages", json=message(thread_id),
                        headers={"X-WEBHOOK-TOKEN": "tok"})
        clock.advance(2.0)
        await worker.drain()
        clock.advance(60.0)
        text = client.get("/metrics").text
    await store.close()

    def count(outcome: str) -> float:
        return value(text, "sitegpt_bridge_deliveries_total", destination="fake", outcome=outcome)

    assert (count("delivered"), count("skipped"), count("retry"), count("failed")) == (1, 1, 2, 1)
    assert value(text, "sitegpt_bridge_delivery_attempts_total", destination="fake") == 5
    errors = {code: value(text, "sitegpt_bridge_destination_errors_total", destination="fake",
                          code=code) for code in ("ratelimited", "PermanentError", "KeyError")}
    assert errors == {"ratelimited": 1, "PermanentError": 1, "KeyError": 1}
    latency = "sitegpt_bridge_delivery_latency_seconds"
    assert value(text, f"{latency}_count", destination="fake") == 1
    assert value(text, f"{latency}_sum", destination="fake") == 2.0
    assert value(text, f"{latency}_bucket", destination="fake", le="1.0") == 0
    assert value(text, f"{latency}_bucket", destination="fake", le="2.5") == 1
    assert value(text, "sitegpt_bridge_queue_deliveries", status="pending") == 2
    assert value(text, "sitegpt_bridge_queue_deliveries", status="delivered") == 1
    assert value(text, "sitegpt_bridge_waiting_deliveries", destination="fake") == 2
    assert value(text, "sitegpt_bridge_oldest_pending_age_seconds") == clock.now() - accepted_at


@dataclass
class CountingStore:
    """A store whose queue is always one pending delivery, counting how often it is asked."""

    reads: int = 0

    async def queue_depth(self) -> dict[str, int]:
        self.reads += 1
        return {"pending": 1}

    async def oldest_pending(self) -> float | None:
        return 1_700_000_000.0

    async def waiting_by_destination(self) -> dict[str, int]:
        return {"slack": 1}


async def test_a_flood_of_scrapes_reads_the_queue_once_a_second(clock):
    metrics, store = Metrics(), CountingStore()
    for _ in range(100):
        text = (await metrics.exposition(store, clock.now())).decode()  # type: ignore[arg-type]
        clock.advance(0.005)
    assert store.reads == 1
    age = value(text, "sitegpt_bridge_oldest_pending_age_seconds")
    assert age == pytest.approx(0.495, abs=1e-3)
    clock.advance(0.6)
    await metrics.exposition(store, clock.now())  # type: ignore[arg-type]
    assert store.reads == 2


def test_an_empty_queue_has_no_pending_age(client):
    text = client.get("/metrics").text
    assert value(text, "sitegpt_bridge_oldest_pending_age_seconds") == 0
    assert value(text, "sitegpt_bridge_queue_deliveries", status="pending") == 0
    assert value(text, "sitegpt_bridge_waiting_deliveries", destination="slack") == 0


async def test_how_long_slack_posts_wait_for_their_channel_is_measured(make_settings, clock):
    metrics = Metrics()
    settings = make_settings({"slack": {"burst": 1, "per_second": 1.0}})
    pacer = slack_workspace(Shared(settings, clock, metrics)).pacer
    for _ in range(3):  # one at once, then about a second apart (10% under Slack's rate)
        await pacer.acquire("C1")
    text = generate_latest(metrics.registry).decode()
    wait = "sitegpt_bridge_slack_pacing_wait_seconds"
    assert value(text, f"{wait}_count") == 3
    assert value(text, f"{wait}_bucket", le="0.01") == 1
    assert 2.2 < value(text, f"{wait}_sum") < 2.3
    # The next post would wait a slot more; once the channel is quiet, nothing.
    assert 1.1 < value(text, "sitegpt_bridge_slack_pacing_behind_seconds") < 1.2
    clock.advance(5)
    text = generate_latest(metrics.registry).decode()
    assert value(text, "sitegpt_bridge_slack_pacing_behind_seconds") == 0


@pytest.mark.parametrize(("authorization", "status"), [
    (None, 401),
    ("Bearer wrong-token", 401),
    ("Basic bWV0cmljcy1zZWNyZXQ=", 401),
    ("Bearer metrics-secret-token-0042", 200),
    ("bearer metrics-secret-token-0042", 200),
])
def test_a_metrics_token_is_required_once_set(make_settings, authorization, status):
    settings = make_settings({"server": {"metrics_token": "metrics-secret-token-0042"}})
    headers = {"Authorization": authorization} if authorization else {}
    with TestClient(create_app(open_bridge(settings), run_worker=False)) as client:
        answer = client.get("/metrics", headers=headers)
    assert answer.status_code == status
    assert ("sitegpt_bridge_webhooks_total" in answer.text) == (status == 200)
    assert "metrics-secret-token-0042" not in answer.text


def test_two_bridges_in_one_process_keep_their_own_counts(make_settings):
    settings = make_settings()
    first = create_app(open_bridge(settings), run_worker=False)
    with TestClient(first) as client:
        client.post("/webhooks/messages", json=MESSAGE, headers=GOOD)
        first_text = client.get("/metrics").text
    settings = make_settings({"store": {"url": settings.store.url + "-second"}})
    with TestClient(create_app(open_bridge(settings), run_worker=False)) as client:
        second_text = client.get("/metrics").text
    accepted = {"endpoint": "messages", "outcome": "accepted"}
    assert value(first_text, "sitegpt_bridge_webhooks_total", **accepted) == 1
    assert value(second_text, "sitegpt_bridge_webhooks_total", **accepted) == 0


def test_the_scrape_is_prometheus_text(client):
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "# TYPE sitegpt_bridge_webhooks_total counter" in answer.text


def test_lookups_after_a_cut_off_attempt_start_at_zero_for_every_destination():
    metrics = Metrics(destinations=["slack", "jira"])
    metrics.reconciled("slack", None)
    counts = {labels: value for (name, labels), value in
              samples(generate_latest(metrics.registry).decode()).items()
              if name == "sitegpt_bridge_reconciled_total"}
    assert counts == {
        frozenset({("destination", destination), ("found", found)}): float(
            (destination, found) == ("slack", "unknown"))
        for destination in ("slack", "jira") for found in ("yes", "no", "unknown")}
