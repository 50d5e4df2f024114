"""The webhook routes: tokens, bounded bodies, validation, storage, dedup, and the health probes."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from bridge.app import Bridge, create_app
from bridge.destinations.base import Destination
from bridge.events import ESCALATION, LEAD, MESSAGE
from bridge.samples import load_sample, webhook_sample_names
from bridge.web import ENDPOINT_KINDS
from tests.bridges import WriteLock, build_bridge, counts, fake, query, readme_example
from tests.postgres import database_for_this_run
from tests.servers import serving
from tests.settings_files import TOKENS

LIMIT = 2048
SAMPLE_ENDPOINTS = {"message": "messages", "escalation": "escalations", "lead": "leads"}


@dataclass
class Webhooks:
    """A bridge app under Starlette's test client, and a look into its store."""

    client: TestClient
    bridge: Bridge

    @property
    def db(self) -> Path:
        return self.bridge.settings.store.sqlite_path

    def post(self, endpoint: str, body: Any = None, *, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        """POST like SiteGPT: JSON with the endpoint's own token unless `headers` says otherwise."""
        if headers is None:
            headers = {"X-WEBHOOK-TOKEN": TOKENS[endpoint]}
        if content is None:
            content = json.dumps(body).encode()
        return self.client.post(f"/webhooks/{endpoint}", content=content, headers=headers)

    def stored_bodies(self) -> list[Any]:
        return [json.loads(body) for (body,) in query(self.db, "SELECT body FROM events")]


OpenWebhooks = Callable[..., Webhooks]


@pytest.fixture
def open_webhooks(make_settings, clock) -> Iterator[OpenWebhooks]:
    with ExitStack() as stack:
        def open_(extra: dict[str, Any] | None = None,
                  destinations: dict[str, Destination] | None = None) -> Webhooks:
            bridge = build_bridge(make_settings(extra), destinations, clock)
            client = stack.enter_context(TestClient(create_app(bridge, run_worker=False)))
            return Webhooks(client, bridge)
        yield open_


@pytest.fixture
def webhooks(open_webhooks) -> Webhooks:
    return open_webhooks({"server": {"max_body_bytes": LIMIT}})


def endpoint_of(sample: str) -> str:
    return SAMPLE_ENDPOINTS[sample.split("-")[0]]


def nothing_stored(db: Path) -> bool:
    return set(counts(db).values()) == {0}


# Tokens


@pytest.mark.parametrize("headers", [
    {},
    {"X-WEBHOOK-TOKEN": ""},
    {"X-WEBHOOK-TOKEN": "wrong"},
    {"X-WEBHOOK-TOKEN": TOKENS["leads"]},
    {"X-WEBHOOK-TOKEN": TOKENS["messages"][:-1]},
    {"X-WEBHOOK-TOKEN": TOKENS["messages"] + "x"},
    {"Authorization": f"Bearer {TOKENS['messages']}"},
    {"X-WEBHOOK-TOKEN": TOKENS["messages"].encode() + b"\xe9"},
    {"X-WEBHOOK-TOKEN": bytes(range(0x80, 0x100))},
    {"X-WEBHOOK-TOKEN": TOKENS["messages"] * 500},
], ids=["missing", "empty", "wrong", "other-endpoint", "prefix", "longer", "other-header",
        "latin-1", "every-non-ascii-byte", "very-long"])
def test_missing_or_wrong_token_is_401_and_stores_nothing(webhooks, sample, headers):
    response = webhooks.post("messages", sample("message-visitor"), headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == "rejected"
    assert nothing_stored(webhooks.db)


def test_any_of_several_tokens_is_accepted(open_webhooks, sample):
    hooks = open_webhooks({"webhooks": {"messages": {"tokens": ["tok-old", "tok-new"]}}})
    for token, name in [("tok-old", "message-visitor"), ("tok-new", "message-agent")]:
        response = hooks.post("messages", sample(name), headers={"x-webhook-token": token})
        assert response.json()["status"] == "accepted"
    assert counts(hooks.db)["events"] == 2


def test_a_non_ascii_token_matches_byte_for_byte(open_webhooks, sample):
    hooks = open_webhooks({"webhooks": {"messages": {"tokens": ["clé-secrète-ü"]}}})
    right = hooks.post("messages", sample("message-visitor"),
                       headers={"x-webhook-token": "clé-secrète-ü".encode()})
    wrong = hooks.post("messages", sample("message-agent"),
                       headers={"x-webhook-token": "clé-secrète-u".encode()})
    assert (right.status_code, wrong.status_code) == (200, 401)


@pytest.mark.parametrize("headers", [{}, {"X-WEBHOOK-TOKEN": ""}, {"X-WEBHOOK-TOKEN": "any"}])
def test_an_endpoint_without_token_never_answers_200(open_webhooks, sample, headers):
    hooks = open_webhooks({"webhooks": {"leads": {"tokens": []}}})
    response = hooks.post("leads", sample("lead"), headers=headers)
    assert response.status_code == 503
    assert "not configured" in response.json()["error"]
    assert nothing_stored(hooks.db)


# Bounded bodies


def padded_message(size: int) -> bytes:
    """A valid message body of exactly `size` bytes."""
    body = load_sample("message-visitor") | {"padding": ""}
    short = len(json.dumps(body).encode())
    body["padding"] = "p" * (size - short)
    return json.dumps(body).encode()


def test_a_body_of_exactly_the_limit_is_accepted_one_byte_more_is_413(webhooks):
    at_limit = webhooks.post("messages", content=padded_message(LIMIT))
    over = webhooks.post("messages", content=padded_message(LIMIT + 1))
    assert at_limit.json()["status"] == "accepted"
    assert over.status_code == 413
    assert counts(webhooks.db)["events"] == 1


@pytest.fixture
def served(make_settings) -> Iterator[tuple[str, Bridge]]:
    """The bridge app under a real uvicorn server: for what only real sockets can show."""
    bridge = build_bridge(make_settings({"server": {"max_body_bytes": LIMIT}}),
                          {"feed": fake(MESSAGE)})
    with serving(create_app(bridge, run_worker=False)) as url:
        yield url, bridge


def status_after_sending(url: str, head: str, chunks: list[bytes]) -> int:
    """Send a request head and some body, never its end; return the status the server answers."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
        conn.sendall(head.encode())
        for chunk in chunks:
            conn.sendall(chunk)
        status_line = conn.makefile("rb").readline()
    return int(status_line.split()[1])


def request_head(extra: str) -> str:
    return ("POST /webhooks/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nX-WEBHOOK-TOKEN: {TOKENS['messages']}\r\n"
            f"{extra}\r\n")


def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_sent(served):
    url, bridge = served
    status = status_after_sending(url, request_head("Content-Length: 10000000\r\n"), [])
    assert status == 413
    assert nothing_stored(bridge.settings.store.sqlite_path)


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(served):
    url, bridge = served
    chunk = b"x" * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 3  # and never the final 0-length chunk
    status = status_after_sending(url, request_head("Transfer-Encoding: chunked\r\n"), chunks)
    assert status == 413
    assert nothing_stored(bridge.settings.store.sqlite_path)


# Validation


@pytest.mark.parametrize("content", [b"{nope", b"", b"\xff\xfe\xfa", b'{"event": "ADD_MESSAGE"'])
def test_a_body_that_is_not_json_is_400(webhooks, content):
    response = webhooks.post("messages", content=content)
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]
    assert nothing_stored(webhooks.db)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999",
                                    b"9" * 400, b"-" + b"1" * 1000, b"9223372036854775808",
                                    b"-9223372036854775809"])
def test_nan_and_infinite_numbers_are_422_and_nothing_is_stored(webhooks, number):
    lead = json.dumps(load_sample("lead")).encode()
    content = lead.replace(b'"leadDetails": {', b'"leadDetails": {"Score": %s, ' % number, 1)
    assert content != lead
    response = webhooks.post("leads", content=content)
    assert response.status_code == 422
    assert response.json()["field"] == "body"
    assert nothing_stored(webhooks.db)


@pytest.mark.parametrize("number", [b"9223372036854775807", b"-9223372036854775808", b"-0"])
def test_integers_a_64_bit_integer_holds_are_stored(webhooks, number):
    lead = json.dumps(load_sample("lead")).encode()
    content = lead.replace(b'"leadDetails": {', b'"leadDetails": {"Score": %s, ' % number, 1)
    assert webhooks.post("leads", content=content).status_code == 200
    [body] = webhooks.stored_bodies()
    assert body["data"]["leadDetails"]["Score"] == int(number)


def nested_message(depth: int) -> bytes:
    deep = b"[" * depth + b"]" * depth
    return b'{"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": "t", "x": %s}}' % deep


def test_a_body_nested_deeper_than_python_goes_is_400_at_any_depth(open_webhooks):
    hooks = open_webhooks()
    # Somewhere near Python's recursion limit parsing still works but re-encoding does not.
    answers = {depth: hooks.post("messages", content=nested_message(depth)).status_code
               for depth in [*range(850, 1050), 100_000]}
    assert set(answers.values()) == {200, 400}
    assert answers[100_000] == 400
    assert counts(hooks.db)["events"] == list(answers.values()).count(200)


def test_half_an_emoji_is_kept_as_a_replacement_character_not_refused(webhooks):
    cut_emoji = (b'{"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": "t",'
                 b' "messageType": "USER_MESSAGE", "question": "thanks \\ud83d",'
                 b' "answer": "\\ud83d\\ude00 glad to help", "\\udc00extra": ["\\ud83d"]}}')
    first = webhooks.post("messages", content=cut_emoji)
    again = webhooks.post("messages", content=cut_emoji)
    assert first.json() == {"status": "accepted", "id": 1}
    assert again.json() == {"status": "duplicate", "id": 1}
    [body] = webhooks.stored_bodies()
    assert body["data"]["question"] == "thanks \ufffd"
    assert body["data"]["answer"] == "\U0001F600 glad to help"  # a whole pair stays an emoji
    assert body["data"]["\ufffdextra"] == ["\ufffd"]
    assert query(webhooks.db, "SELECT question FROM messages") == [("thanks \ufffd",)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_nul_in_any_text_is_kept_as_a_replacement_character_on_every_store(open_webhooks,
                                                                            backend):
    # PostgreSQL's text cannot hold NUL: refused by the store, it was a 503 SiteGPT retried forever.
    store = {"url": database_for_this_run()} if backend == "postgresql" else {}
    webhooks = open_webhooks({"store": store})
    with_nul = (b'{"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": "t\\u0000",'
                b' "messageType": "USER_MESSAGE", "question": "hi\\u0000there"}}')
    first = webhooks.post("messages", content=with_nul)
    again = webhooks.post("messages", content=with_nul)
    assert first.json() == {"status": "accepted", "id": 1}
    assert again.json() == {"status": "duplicate", "id": 1}
    [line] = webhooks.client.portal.call(webhooks.bridge.store.transcript, "c", "t\ufffd")
    assert line.question == "hi\ufffdthere"


def with_data(sample: str, **changes: Any) -> dict[str, Any]:
    body = load_sample(sample)
    body["data"] |= changes
    return body


def without(sample: str, *path: str) -> dict[str, Any]:
    body = load_sample(sample)
    target = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return body


LEAD_DETAILS = load_sample("lead")["data"]["leadDetails"]
INVALID_EVENTS = [
    ("messages", load_sample("lead"), "event"),
    ("messages", {"event": "ADD_MESSAGE"}, "data"),
    ("messages", {"event": "ADD_MESSAGE", "data": "hello"}, "data"),
    ("messages", without("message-visitor", "event"), "event"),
    ("messages", without("message-visitor", "data", "chatbotId"), "data.chatbotId"),
    ("messages", without("message-visitor", "data", "threadId"), "data.threadId"),
    ("messages", with_data("message-visitor", chatbotId=123), "data.chatbotId"),
    ("messages", with_data("message-visitor", question=["a"]), "data.question"),
    ("messages", with_data("message-visitor", sources="https://x"), "data.sources"),
    ("messages", [load_sample("message-visitor")], "body"),
    ("messages", "ADD_MESSAGE", "body"),
    ("messages", None, "body"),
    ("escalations", with_data("escalation", user="John"), "data.user"),
    ("escalations", with_data("escalation", user={"verified": "maybe"}), "data.user.verified"),
    ("escalations", without("escalation", "data", "threadId"), "data.threadId"),
    ("leads", without("lead", "data", "leadDetails"), "data.leadDetails"),
    ("leads", without("lead", "data", "leadDetails", "id"), "data.leadDetails.id"),
    ("leads", with_data("lead", leadDetails=LEAD_DETAILS | {"email": 7}), "data.leadDetails.email"),
]


@pytest.mark.parametrize(("endpoint", "body", "field"), INVALID_EVENTS)
def test_json_that_is_not_the_endpoints_event_is_422_naming_the_field(
        webhooks, endpoint, body, field):
    response = webhooks.post(endpoint, body)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}: ")
    assert nothing_stored(webhooks.db)


def test_there_is_a_sample_for_every_endpoint():
    assert {endpoint_of(name) for name in webhook_sample_names()} == set(ENDPOINT_KINDS)


@pytest.mark.parametrize("name", webhook_sample_names())
def test_every_sample_is_accepted_on_its_own_endpoint_and_refused_on_the_others(webhooks, name):
    body = load_sample(name)
    for other in sorted(set(ENDPOINT_KINDS) - {endpoint_of(name)}):
        refused = webhooks.post(other, body)
        assert (refused.status_code, refused.json()["field"]) == (422, "event")
    accepted = webhooks.post(endpoint_of(name), body)
    assert accepted.json() == {"status": "accepted", "id": 1}
    assert webhooks.stored_bodies() == [body]


def test_sitegpts_curl_example_is_accepted_as_a_transcript_line(webhooks):
    body, _ = readme_example()
    assert webhooks.post("messages", body).json()["status"] == "accepted"
    rows = query(webhooks.db, "SELECT chatbot_id, thread_id, message_type, question, answer"
                              " FROM messages")
    assert rows == [("test_123", "test_thread", "NORMAL_MESSAGE", "Test question", "Test answer")]


def test_an_unknown_message_type_is_accepted_as_a_plain_message(webhooks):
    body = with_data("message-bot-answer", messageType="REACTION_MESSAGE")
    assert webhooks.post("messages", body).json()["status"] == "accepted"
    assert query(webhooks.db, "SELECT message_type FROM messages") == [("REACTION_MESSAGE",)]


def test_extra_keys_anywhere_are_kept_in_the_stored_body(webhooks):
    body = with_data("escalation", priority={"level": 2, "tags": ["vip"]}) | {"version": 2}
    body["data"]["user"]["locale"] = "es-ES"
    assert webhooks.post("escalations", body).json()["status"] == "accepted"
    assert webhooks.stored_bodies() == [body]


def test_lead_custom_fields_of_any_json_type_are_kept(webhooks):
    custom = {"Company": "Nuñez", "Seats": 40, "Budget": 12.5, "Consent": True, "Notes": None,
              "Interests": ["sso", "audit"], "Address": {"city": "Madrid", "zip": "28001"}}
    body = with_data("lead", leadDetails=LEAD_DETAILS | custom)
    assert webhooks.post("leads", body).json()["status"] == "accepted"
    assert webhooks.stored_bodies()[0]["data"]["leadDetails"] == LEAD_DETAILS | custom


# Rejections are logged


REJECTIONS = [
    ("messages", {}, b"{}", 401, "unauthorized"),
    ("messages", {"X-WEBHOOK-TOKEN": "presented-secret"}, b"{}", 401, "unauthorized"),
    ("leads", {"X-WEBHOOK-TOKEN": "presented-secret"}, b"{}", 503, "not_configured"),
    ("messages", None, b"x" * (LIMIT + 1), 413, "too_large"),
    ("messages", None, b"{nope", 400, "invalid_json"),
    ("messages", None, b'{"event": "ADD_MESSAGE"}', 422, "invalid"),
]


@pytest.mark.parametrize(("endpoint", "headers", "content", "status", "reason"), REJECTIONS)
def test_every_rejection_is_logged_in_one_line_with_its_reason_and_no_token(
        open_webhooks, caplog, endpoint, headers, content, status, reason):
    hooks = open_webhooks({"server": {"max_body_bytes": LIMIT},
                           "webhooks": {"leads": {"tokens": []}}})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bridge"):
        response = hooks.post(endpoint, content=content, headers=headers)
    assert response.status_code == status
    [record] = [r for r in caplog.records if r.name == "bridge.web"]
    line = record.getMessage()
    assert record.levelno == logging.WARNING
    assert f"{status} {reason}" in line and endpoint in line
    assert "\n" not in line
    for secret in [*TOKENS.values(), "presented-secret"]:
        assert secret not in caplog.text


def test_a_flood_of_rejections_logs_a_line_and_a_count_while_metrics_count_each(
        open_webhooks, clock, caplog):
    hooks = open_webhooks()
    wrong = {"X-WEBHOOK-TOKEN": "wrong"}
    with caplog.at_level(logging.INFO, logger="bridge"):
        for _ in range(300):
            assert hooks.post("messages", {}, headers=wrong).status_code == 401
        for _ in range(20):
            assert hooks.post("messages", content=b"{nope").status_code == 400
        first = [r.getMessage() for r in caplog.records if r.name == "bridge.web"]
        clock.advance(10)
        assert hooks.post("messages", {}, headers=wrong).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.web"]
    assert first == ["webhook messages rejected (401 unauthorized): missing or wrong "
                     "X-WEBHOOK-TOKEN",
                     "webhook messages rejected (400 invalid_json): body is not JSON: "
                     "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]
    assert lines[2:] == [
        "webhook messages rejected (401 unauthorized) 299 more times in the last 10 s",
        "webhook messages rejected (400 invalid_json) 19 more times in the last 10 s",
        "webhook messages rejected (401 unauthorized): missing or wrong X-WEBHOOK-TOKEN"]
    scraped = hooks.client.get("/metrics").text
    assert 'sitegpt_bridge_webhooks_total{endpoint="messages",outcome="unauthorized"} 301.0' in (
        scraped)
    assert 'sitegpt_bridge_webhooks_total{endpoint="messages",outcome="invalid_json"} 20.0' in (
        scraped)


# Storage and deliveries


DESTINATIONS = {"feed": fake(MESSAGE, ESCALATION, LEAD), "tickets": fake(ESCALATION),
                "crm": fake(LEAD)}


@pytest.mark.parametrize(("name", "expected"), [
    ("message-visitor", ["feed"]), ("escalation", ["feed", "tickets"]), ("lead", ["crm", "feed"]),
])
def test_an_accepted_event_is_stored_with_one_pending_delivery_per_destination(
        open_webhooks, name, expected):
    hooks = open_webhooks(destinations=DESTINATIONS)
    answer = hooks.post(endpoint_of(name), load_sample(name))
    assert answer.status_code == 200
    assert answer.json() == {"status": "accepted", "id": 1}
    rows = query(hooks.db, "SELECT d.destination, d.status, d.attempts, d.ordering_key"
                           " = e.ordering_key FROM deliveries d JOIN events e ON e.id = d.event_id"
                           " WHERE e.id = 1 ORDER BY d.destination")
    assert rows == [(destination, "pending", 0, 1) for destination in expected]


def test_with_no_destination_on_an_event_is_stored_with_no_delivery(webhooks, sample):
    assert webhooks.post("escalations", sample("escalation")).json()["status"] == "accepted"
    assert counts(webhooks.db) == {
        "events": 1, "dedup": 1, "deliveries": 0, "conversations": 1, "messages": 0}


# Deduplication


def test_the_same_body_in_another_key_order_and_layout_is_a_duplicate(open_webhooks, sample):
    hooks = open_webhooks(destinations=DESTINATIONS)
    body = sample("lead-custom-fields")
    first = hooks.post("leads", body)
    reordered = {"data": dict(reversed(body["data"].items())), "event": body["event"]}
    again = hooks.post("leads", content=json.dumps(reordered, indent=4).encode())
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "id": first.json()["id"]}
    assert counts(hooks.db) == {
        "events": 1, "dedup": 1, "deliveries": 2, "conversations": 0, "messages": 0}


def test_a_body_that_differs_in_one_value_is_not_a_duplicate(webhooks, sample):
    first = webhooks.post("messages", sample("message-visitor"))
    other = webhooks.post("messages", with_data("message-visitor", question="Hello?"))
    assert other.json() == {"status": "accepted", "id": first.json()["id"] + 1}


def test_the_same_body_after_the_dedup_window_is_a_new_event(open_webhooks, clock, sample):
    hooks = open_webhooks({"store": {"dedup_window_seconds": 60}},
                          destinations={"feed": fake(MESSAGE)})
    body = sample("message-bot-answer")
    first = hooks.post("messages", body).json()
    clock.advance(59.5)  # halves add up exactly, so the window ends exactly at +60 s
    within = hooks.post("messages", body).json()
    clock.advance(0.5)
    after = hooks.post("messages", body).json()
    clock.advance(30)
    retry_of_second = hooks.post("messages", body).json()
    assert within == {"status": "duplicate", "id": first["id"]}
    assert after == {"status": "accepted", "id": first["id"] + 1}
    assert retry_of_second == {"status": "duplicate", "id": after["id"]}
    assert counts(hooks.db)["deliveries"] == 2


async def test_four_concurrent_identical_posts_make_one_event(served, sample):
    url, bridge = served
    body = sample("message-agent")
    headers = {"X-WEBHOOK-TOKEN": TOKENS["messages"]}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        answers = await asyncio.gather(*[
            client.post("/webhooks/messages", json=body, headers=headers) for _ in range(4)])
    assert [answer.status_code for answer in answers] == [200] * 4
    statuses = sorted(answer.json()["status"] for answer in answers)
    assert statuses == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert {answer.json()["id"] for answer in answers} == {1}
    db = bridge.settings.store.sqlite_path
    assert (counts(db)["events"], counts(db)["deliveries"]) == (1, 1)


# When the store cannot commit


def test_a_locked_store_answers_503_stores_nothing_half_and_recovers(open_webhooks, sample,
                                                                     caplog):
    hooks = open_webhooks({"store": {"commit_timeout_seconds": 0.2}},
                          destinations=DESTINATIONS)
    body = sample("escalation")
    with WriteLock(hooks.db):
        refused = hooks.post("escalations", body)
        assert nothing_stored(hooks.db)
    assert refused.status_code == 503
    assert "retry" in refused.json()["error"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "bridge.web"]
    assert "store" in line and TOKENS["escalations"] not in caplog.text
    # SiteGPT retries the same body: it gets 200, and the event exists once, whole.
    retried = hooks.post("escalations", body)
    assert retried.status_code == 200 and retried.json()["id"] == 1
    assert counts(hooks.db) == {
        "events": 1, "dedup": 1, "deliveries": 2, "conversations": 1, "messages": 0}


# Health probes


def test_healthz_answers_200(webhooks):
    response = webhooks.client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok")


def test_readyz_is_503_while_the_store_is_not_writable(open_webhooks):
    hooks = open_webhooks({"store": {"commit_timeout_seconds": 0.2}})
    assert hooks.client.get("/readyz").json() == {"status": "ready"}
    with WriteLock(hooks.db):
        locked = hooks.client.get("/readyz")
    assert locked.status_code == 503
    assert locked.json()["status"] == "unavailable"
    assert hooks.client.get("/readyz").status_code == 200


def test_readyz_names_the_webhooks_without_a_token(open_webhooks):
    hooks = open_webhooks({"webhooks": {"messages": {"tokens": []}, "leads": {"tokens": []}}})
    answer = hooks.client.get("/readyz")
    assert (answer.status_code, answer.json()) == (
        503, {"status": "unconfigured", "webhooks_without_token": ["messages", "leads"]})


def test_a_webhook_answers_json_with_its_length_and_other_methods_405(webhooks):
    accepted = webhooks.post("messages", {"event": "ADD_MESSAGE", "data": {
        "chatbotId": "bot", "threadId": "t-é", "question": "héllo", "messageType": "USER_MESSAGE"}})
    refused = webhooks.post("messages", content=b"{", headers={"X-WEBHOOK-TOKEN": "wrong"})
    for answer in (accepted, refused):
        assert answer.headers["content-type"] == "application/json"
        assert int(answer.headers["content-length"]) == len(answer.content)
    assert accepted.json() == {"status": "accepted", "id": 1}
    assert refused.status_code == 401 and refused.json()["status"] == "rejected"
    for method in ("GET", "PUT", "DELETE"):
        answer = webhooks.client.request(method, "/webhooks/messages")
        assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert counts(webhooks.db)["events"] == 1
