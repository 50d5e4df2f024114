"""SiteGPT's, Slack's and Jira's receivers refuse alike: same answers, one log line, one count."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.types import Message

from bridge.errors import StoreBusy, StoreError
from bridge.inbound import REASONS, RECEIVER_OUTCOMES, Refusals, store_unavailable
from bridge.jira_events import jira_routes
from bridge.metrics import WEBHOOK_OUTCOMES, Metrics
from bridge.slack_events import slack_routes
from bridge.store import Acceptance, NewEvent
from bridge.web import Endpoint, SiteGPTReceiver, build_app
from tests.metric_samples import webhook_counts

LIMIT = 1024
SITEGPT_TOKEN = "sitegpt-token"
SLACK_SECRET = "slack-signing-secret"
JIRA_SECRET = "jira-webhook-secret"
MESSAGE = json.dumps({"event": "ADD_MESSAGE", "data": {
    "chatbotId": "bot", "threadId": "t1", "messageType": "USER_MESSAGE", "question": "hi"}})
SLACK_REPLY = json.dumps({"type": "event_callback", "event_id": "Ev1", "event": {
    "type": "message", "channel": "C1", "user": "U1", "text": "hi",
    "ts": "1700000001.000200", "thread_ts": "1700000000.000100"}})
JIRA_STATUS = json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": "SUP-1"},
                          "changelog": {"items": [{"field": "status", "toString": "Done"}]}})
OVERSIZED = json.dumps({"pad": "x" * (LIMIT + 1)})


class UnreachableStore:
    """A store that cannot commit nor look anything up; its queue still answers a scrape."""

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        raise StoreBusy("the store did not commit within 3 s")

    async def conversation_by_ref(self, destination: str, ref: str) -> tuple[str, str] | None:
        raise StoreError("database is locked")

    async def queue_depth(self) -> dict[str, int]:
        return {}

    async def oldest_pending(self) -> float | None:
        return None

    async def waiting_by_destination(self) -> dict[str, int]:
        return {}


@dataclass(frozen=True)
class Sender:
    """How one receiver is called: its path, its label in the metrics, how it signs a body."""

    path: str
    endpoint: str
    sign: Callable[[bytes, float], dict[str, str]]

    def headers(self, raw: bytes, now: float, signed: bool = True) -> dict[str, str]:
        """Signed for `raw`, or as if for other bytes: a wrong token or signature."""
        return self.sign(raw if signed else b"other bytes", now)


def sitegpt_token(raw: bytes, now: float) -> dict[str, str]:
    return {"x-webhook-token": SITEGPT_TOKEN if raw != b"other bytes" else "wrong"}


def slack_signature(raw: bytes, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    base = f"v0:{timestamp}:".encode() + raw
    return {"x-slack-request-timestamp": timestamp,
            "x-slack-signature": "v0=" + hmac.new(SLACK_SECRET.encode(), base,
                                                  hashlib.sha256).hexdigest()}


def jira_signature(raw: bytes, now: float) -> dict[str, str]:
    return {"x-hub-signature": "sha256=" + hmac.new(JIRA_SECRET.encode(), raw,
                                                    hashlib.sha256).hexdigest()}


SENDERS = {
    "sitegpt": Sender("/webhooks/messages", "messages", sitegpt_token),
    "slack": Sender("/slack/events", "slack", slack_signature),
    "jira": Sender("/jira/webhook", "jira", jira_signature),
}
GOOD = {"sitegpt": MESSAGE, "slack": SLACK_REPLY, "jira": JIRA_STATUS}
NOT_THEIRS = {"sitegpt": '{"event": "ADD_MESSAGE"}', "slack": '{"no": "type"}',
              "jira": '{"timestamp": 1}'}


@dataclass(frozen=True)
class BadRequest:
    """A class of bad request: what is sent, and how every receiver answers it."""

    outcome: str
    status: int
    answer: str
    body: Callable[[str], str]
    signed: bool = True
    hangs_up: bool = False


BAD_REQUESTS = [
    BadRequest("unauthorized", 401, "rejected", GOOD.__getitem__, signed=False),
    BadRequest("too_large", 413, "rejected", lambda sender: OVERSIZED),
    BadRequest("disconnected", 400, "rejected", GOOD.__getitem__, hangs_up=True),
    BadRequest("invalid_json", 400, "rejected", lambda sender: "{not json"),
    BadRequest("invalid", 422, "rejected", NOT_THEIRS.__getitem__),
    BadRequest("unavailable", 503, "unavailable", GOOD.__getitem__),
]


@pytest.fixture
def inbound(make_settings, clock) -> Starlette:
    """SiteGPT's, Slack's and Jira's routes in one app, over a store that cannot answer."""
    settings = make_settings({
        "server": {"max_body_bytes": LIMIT},
        "slack": {"bot_token": "xoxb-test", "channel": "C1", "signing_secret": SLACK_SECRET},
        "sitegpt": {"api_url": "https://sitegpt.test/api/v0", "api_key": "sk-test"},
        "jira": {"url": "https://acme.atlassian.net", "email": "b@acme.test",
                 "api_token": "api-token", "project": "SUP", "webhook_secret": JIRA_SECRET,
                 "webhook_max_body_bytes": LIMIT}})
    store: Any = UnreachableStore()
    metrics = Metrics(["messages", "leads"])
    receiver = SiteGPTReceiver(store=store, clock=clock, max_body_bytes=LIMIT,
                               dedup_window=600, metrics=metrics)
    endpoints = [Endpoint("messages", "ADD_MESSAGE", [SITEGPT_TOKEN.encode()], []),
                 Endpoint("leads", "NEW_LEAD", [], [])]
    routes = [*slack_routes(settings, store, clock, lambda: None, metrics),
              *jira_routes(settings, store, clock, lambda: None, metrics)]
    return build_app(receiver, endpoints, extra_routes=routes)


def counted(scraped: str) -> dict[tuple[str, str], float]:
    """Every refusal counted, by endpoint and outcome."""
    return {(endpoint, outcome): count for endpoint in ("messages", "leads", "slack", "jira")
            for outcome, count in webhook_counts(scraped, endpoint).items() if count}


async def call(app: Starlette, path: str, headers: dict[str, str], raw: bytes,
               hangs_up: bool) -> tuple[int, dict[str, Any]]:
    """POST straight into the ASGI app; `hangs_up` sends half the body, then a disconnect."""
    messages: list[Message] = (
        [{"type": "http.request", "body": raw[:5], "more_body": True},
         {"type": "http.disconnect"}] if hangs_up
        else [{"type": "http.request", "body": raw, "more_body": False}])
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("b", 80),
             "headers": [(name.encode(), value.encode()) for name, value in
                         {"content-type": "application/json", **headers}.items()]}
    await app(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body)


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=lambda bad: bad.outcome)
@pytest.mark.parametrize("name", SENDERS)
async def test_every_receiver_refuses_each_bad_request_alike_logs_it_and_counts_it(
        inbound, clock, caplog, name, bad):
    app = inbound
    sender = SENDERS[name]
    raw = bad.body(name).encode()
    caplog.set_level(logging.WARNING, logger="bridge")
    status, answer = await call(app, sender.path, sender.headers(raw, clock.now(), bad.signed),
                                raw, bad.hangs_up)
    assert (status, answer["status"]) == (bad.status, bad.answer)
    assert isinstance(answer["error"], str) and answer["error"]
    [line] = [record for record in caplog.records if " rejected (" in record.getMessage()]
    assert f"rejected ({bad.status} {bad.outcome})" in line.getMessage()
    assert line.levelno == (logging.ERROR if bad.outcome == "unavailable" else logging.WARNING)
    assert "database is locked" not in answer["error"]  # the store's words are for the log
    assert counted(TestClient(app).get("/metrics").text) == {
        (sender.endpoint, bad.outcome): 1}


async def test_an_unconfigured_sitegpt_webhook_is_refused_and_counted(inbound, clock):
    app = inbound
    status, answer = await call(app, "/webhooks/leads", {"x-webhook-token": "any"}, b"{}", False)
    assert (status, answer["status"]) == (503, "rejected")
    assert counted(TestClient(app).get("/metrics").text) == {("leads", "not_configured"): 1}


def test_every_reason_is_a_counted_outcome_with_one_status():
    assert {reason.outcome for reason in REASONS} == set(WEBHOOK_OUTCOMES) - {"accepted",
                                                                              "duplicate"}
    tested = {bad.outcome: bad.status for bad in BAD_REQUESTS}
    assert set(tested) == {reason.outcome for reason in REASONS} - {"not_configured"}
    assert {reason.outcome: reason.status for reason in REASONS
            if reason.outcome in tested} == tested


def test_slacks_and_jiras_series_start_at_zero(inbound):
    app = inbound
    scraped = TestClient(app).get("/metrics").text
    for endpoint in ("slack", "jira"):
        assert webhook_counts(scraped, endpoint) == dict.fromkeys(RECEIVER_OUTCOMES, 0)


def test_a_flood_of_store_outages_is_one_error_and_one_sum(clock, caplog):
    refusals = Refusals(logging.getLogger("bridge.test"), clock, Metrics())
    caplog.set_level(logging.WARNING, logger="bridge.test")
    for _ in range(30):
        answer = refusals.answer("jira", "jira /jira/webhook",
                                 store_unavailable(StoreBusy("database is locked")))
    clock.advance(10)
    refusals.rejections.flush()
    assert (answer.status, answer.body) == (503, {"status": "unavailable",
                                                  "error": "store busy, retry"})
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.ERROR, "jira /jira/webhook rejected (503 unavailable): store unavailable: "
                        "database is locked"),
        (logging.ERROR, "jira /jira/webhook rejected (503 unavailable) 29 more times in the "
                        "last 10 s")]
    scraped = generate_latest(refusals.metrics.registry).decode()
    assert webhook_counts(scraped, "jira") == {"unavailable": 30}
