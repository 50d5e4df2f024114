"""Slack's Events API and interactivity routes end to end: signed requests in, SiteGPT out."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from starlette.applications import Starlette

from bridge.errors import StoreError
from bridge.samples import load_sample
from bridge.slack_events import slack_routes
from tests.fake_slack import FakeSlack, fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)
from tests.metric_samples import webhook_counts
from tests.postgres import database_for_this_run
from tests.settings_files import TOKENS
from tests.slack_site import (  # noqa: F401 (fixtures)
    ACCEPTED,
    API,
    CHATBOT,
    MESSAGE_PATH,
    SECRET,
    Site,
    api_fixture,
    envelope,
    signature,
    site_fixture,
)


async def test_url_verification_answers_the_challenge(site):
    s = await site()
    answer = await s.send({"token": "legacy", "challenge": "3eZbrw1aB", "type": "url_verification"})
    assert answer.status_code == 200 and answer.json() == {"challenge": "3eZbrw1aB"}


@pytest.mark.parametrize(("headers", "why"), [
    ({"X-Slack-Signature": "v0=" + "0" * 64}, "wrong signature"),
    ({"X-Slack-Signature": signature(b"{}", "1700000000", secret="other-secret")}, "other key"),
    ({"X-Slack-Request-Timestamp": "1699999699"}, "more than 5 minutes old"),
    ({"X-Slack-Request-Timestamp": "1700000301"}, "more than 5 minutes ahead"),
    ({"X-Slack-Request-Timestamp": "soon"}, "not a number"),
    ({"X-Slack-Request-Timestamp": b"\xb2"}, "a Unicode digit (superscript two, in latin-1)"),
    ({"X-Slack-Request-Timestamp": "\u0661\u0667".encode()}, "Arabic-Indic digits"),
    ({"X-Slack-Request-Timestamp": "9" * 5000}, "5,000 digits"),
    ({"X-Slack-Request-Timestamp": "1700000000 "}, "a trailing space"),
    ({"X-Slack-Signature": ""}, "empty"),
    ({"X-Slack-Signature": "v0=\u00e9".encode("latin-1")}, "a latin-1 byte"),
    ({"X-Slack-Signature": ("v0=" + "\u00e9" * 64).encode()}, "UTF-8 letters"),
    ({"X-Slack-Signature": b"v0=" + bytes(range(0x80, 0x100))}, "every non-ASCII byte"),
    ({"X-Slack-Signature": "v0=" + "f" * 6000}, "6,000 characters"),
])
async def test_unsigned_or_stale_requests_are_refused(site, caplog, headers, why):
    s = await site()
    thread_ts = await s.conversation()
    body = json.dumps(envelope(s.write(thread_ts, "hi"))).encode()
    timestamp = headers.get("X-Slack-Request-Timestamp", "1700000000")
    if isinstance(timestamp, bytes):  # sent as raw bytes; signed as Slack would read them
        timestamp = timestamp.decode("latin-1")
    sent = {"X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": signature(body, timestamp), **headers}
    for path in ("/slack/events", "/slack/interactions"):
        answer = await s.client.post(path, content=body, headers=sent)
        assert answer.status_code == 401, why
    assert await s.sitegpt_rows() == []
    assert not [record for record in caplog.records if record.exc_info], "no traceback"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_nul_in_slack_s_ids_is_no_conversation_on_every_store(site, backend):
    # PostgreSQL's text cannot hold NUL: the lookup failed, and Slack was told 503 forever.
    s = await site({"store": {"url": database_for_this_run()}} if backend == "postgresql" else {})
    thread_ts = await s.conversation()
    for changes in ({"channel": "C_CONV\u0000"}, {"thread_ts": thread_ts + "\u0000"}):
        answer = await s.send(envelope({**s.write(thread_ts, "a reply"), **changes}))
        assert answer.status_code == 200 and answer.json()["status"] == "ignored", changes
    pressed = await s.press("sitegpt_take_over", thread_ts + "\u0000")
    assert pressed.status_code == 200
    assert await s.sitegpt_rows() == []


async def test_a_signature_over_other_bytes_is_refused(site):
    s = await site()
    timestamp = str(int(s.clock.now()))
    good = json.dumps({"type": "url_verification", "challenge": "a"}).encode()
    answer = await s.client.post("/slack/events", content=good.replace(b'"a"', b'"b"'), headers={
        "X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature(good, timestamp)})
    assert answer.status_code == 401


async def test_a_thread_reply_reaches_the_visitor_and_its_echo_stays_out(site):
    s = await site()
    route = s.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await s.conversation()
    reply = s.write(thread_ts, "It ships <https://track.example/9|today> &amp; arrives Monday")
    answer = await s.send(envelope(reply))
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    await s.bridge.worker.drain()

    [call] = route.calls
    assert json.loads(call.request.content) == {
        "message": "It ships today (https://track.example/9) & arrives Monday", "from": "AGENT",
        "threadId": "thread_A", "agentName": "Ana",
        "iconUrl": "https://avatars.example/ana-192.png"}
    assert s.fake.reactions == [
        {"channel": "C_CONV", "timestamp": reply["ts"], "name": "white_check_mark"}]

    bridge_posts = len(s.fake.posts)
    echo = {"event": "ADD_MESSAGE", "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "messageType": "AGENT_MESSAGE",
        "question": None, "answer": "It ships today (https://track.example/9) & arrives Monday",
        "agentName": "Ana", "agentId": "agent_1", "iconUrl": "https://avatars.example/x.png"}}
    answer = await s.client.post("/webhooks/messages", json=echo,
                                 headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
    assert answer.json()["status"] == "accepted"
    await s.bridge.worker.drain()
    assert len(s.fake.posts) == bridge_posts
    echoed = next(row for row in await s.bridge.store.deliveries() if row.destination == "slack")
    assert (echoed.status, echoed.note) == ("skipped", "echo of a reply sent from Slack")


async def test_what_the_routes_store_has_the_shape_of_the_bundled_samples(site):
    s = await site()
    thread_ts = await s.conversation()
    assert (await s.send(envelope(s.write(thread_ts, "hello")))).status_code == 200
    assert (await s.press("sitegpt_take_over", thread_ts)).status_code == 200
    stored = []
    for _ in range(2):  # one at a time: both belong to the same conversation
        [claimed] = await s.bridge.store.claim("test", s.clock.now(), 10, 60)
        stored.append(claimed.payload)
        await s.bridge.store.finish(claimed.lease, "skipped", s.clock.now(), "test")
    assert [shape(body) for body in stored] == [
        shape(load_sample("slack-reply")), shape(load_sample("mode-change"))]


def shape(body: dict[str, Any]) -> dict[str, Any]:
    return {"event": body["event"],
            "data": {key: type(value) for key, value in body["data"].items()}}


IGNORED = {
    "a bot's message": {"bot_id": "B9"},
    "a bot_message subtype": {"subtype": "bot_message"},
    "an edit": {"subtype": "message_changed", "message": {"text": "edited"}},
    "a deletion": {"subtype": "message_deleted", "deleted_ts": "1.2"},
    "someone joining": {"subtype": "channel_join"},
    "a private note": {"text": "  // check the refund first"},
    "a thread's parent": "parent",
    "a message outside any thread": {"thread_ts": None},
    "a thread the bridge did not start": {"thread_ts": "1600000000.000100"},
    "another event type": {"type": "reaction_added"},
}


@pytest.mark.parametrize("case", list(IGNORED))
async def test_what_is_not_a_person_s_reply_is_acknowledged_and_dropped(site, case):
    s = await site()
    route = s.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await s.conversation()
    event = s.write(thread_ts, "a reply")
    changes = IGNORED[case]
    if changes == "parent":
        event["thread_ts"] = event["ts"]
    else:
        assert isinstance(changes, dict)
        event.update(changes)
    event = {key: value for key, value in event.items() if value is not None}
    answer = await s.send(envelope(event))
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    await s.bridge.worker.drain()
    assert await s.sitegpt_rows() == [] and route.call_count == 0


async def test_a_custom_private_note_prefix_is_honoured(site):
    s = await site({"slack": {"private_note_prefix": "(note)"}})
    thread_ts = await s.conversation()
    private = await s.send(envelope(s.write(thread_ts, "(note) VIP customer"), "Ev1"))
    public = await s.send(envelope(s.write(thread_ts, "// not a note here"), "Ev2"))
    assert private.json()["status"] == "ignored" and public.json()["status"] == "accepted"


async def test_slack_s_retries_of_one_event_are_delivered_once(site):
    s = await site()
    route = s.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await s.conversation()
    reply = envelope(s.write(thread_ts, "once only"), "Ev42")
    first = await s.send(reply)
    await s.bridge.worker.drain()
    s.clock.advance(300)
    again = await s.send(reply, **{"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "timeout"})
    await s.bridge.worker.drain()
    assert first.json()["status"] == "accepted"
    assert again.json() == {"status": "duplicate", "id": first.json()["id"]}
    assert route.call_count == 1 and len(s.fake.reactions) == 1


async def test_a_sitegpt_outage_is_retried_then_the_reply_arrives_once(site):
    s = await site()
    route = s.api.post(MESSAGE_PATH).mock(side_effect=[
        httpx.Response(500), httpx.Response(503), ACCEPTED])
    thread_ts = await s.conversation()
    await s.send(envelope(s.write(thread_ts, "bear with us")))
    for _ in range(3):
        await s.bridge.worker.drain()
        s.clock.advance(5)
    assert route.call_count == 3
    assert [status for status, _ in await s.sitegpt_rows()] == ["delivered"]


async def test_a_sitegpt_refusal_shows_in_the_thread(site):
    s = await site()
    s.api.post(MESSAGE_PATH).mock(return_value=httpx.Response(
        404, json={"message": "Thread not found"}))
    thread_ts = await s.conversation()
    await s.send(envelope(s.write(thread_ts, "hello?")))
    await s.bridge.worker.drain()
    notice = s.fake.thread("C_CONV", thread_ts)[-1]
    assert notice.get("bot_id") and "Not delivered to the visitor" in notice["text"]
    assert "HTTP 404: Thread not found" in notice["text"]


async def test_the_parent_carries_the_mode_buttons(site):
    s = await site()
    await s.conversation()
    [parent] = s.fake.parents()
    [actions] = [block for block in parent["blocks"] if block["type"] == "actions"]
    assert [(button["action_id"], button["text"]["text"]) for button in actions["elements"]] == [
        ("sitegpt_claim", "I'll take it"), ("sitegpt_resolve", "Resolve"),
        ("sitegpt_take_over", "Take over"), ("sitegpt_hand_back", "Hand back to AI")]


@pytest.mark.parametrize(("action_id", "mode"), [("sitegpt_take_over", "AGENT"),
                                                 ("sitegpt_hand_back", "AI")])
async def test_a_mode_button_patches_the_thread_and_confirms(site, action_id, mode):
    s = await site()
    route = s.api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").mock(
        return_value=httpx.Response(200, json={"mode": mode}))
    thread_ts = await s.conversation()
    answer = await s.press(action_id, thread_ts)
    assert answer.status_code == 200 and answer.content == b""
    again = await s.press(action_id, thread_ts)  # the same click, sent twice
    assert again.status_code == 200
    await s.bridge.worker.drain()
    assert [json.loads(call.request.content) for call in route.calls] == [{"mode": mode}]
    assert "<@U_BEN>" in s.fake.thread("C_CONV", thread_ts)[-1]["text"]


async def test_buttons_elsewhere_are_acknowledged_and_dropped(site):
    s = await site()
    await s.conversation()
    unknown_message = await s.press("sitegpt_take_over", "1600000000.000100")
    other_button = await s.press("somebody_elses_button", s.fake.parents()[0]["ts"])
    assert unknown_message.json()["status"] == "ignored"
    assert other_button.json()["status"] == "ignored"
    assert await s.sitegpt_rows() == []


@pytest.mark.parametrize(("path", "raw", "status"), [
    ("/slack/events", b"not json", 400),
    ("/slack/events", b'{"no": "type"}', 422),
    ("/slack/interactions", b"payload=%7Bbroken", 400),
    ("/slack/interactions", b"nothing=here", 422),
])
async def test_signed_garbage_is_400_if_not_json_and_422_if_not_slacks(site, path, raw, status):
    s = await site()
    answer = await s.signed(path, raw, "application/octet-stream")
    assert answer.status_code == status
    assert answer.json()["status"] == "rejected"


async def test_an_oversized_body_is_refused_unread(site):
    s = await site({"server": {"max_body_bytes": 1024}})
    answer = await s.send({"type": "url_verification", "challenge": "x" * 2000})
    assert answer.status_code == 413


async def test_every_request_is_counted_by_its_outcome_on_the_metrics(site):
    s = await site({"server": {"max_body_bytes": 1024}})
    thread_ts = await s.conversation()
    reply = envelope(s.write(thread_ts, "counted"), "Ev7")
    answers = [await s.send(reply), await s.send(reply),
               await s.send(envelope(s.write(None, "not in a thread"), "Ev8")),
               await s.send(reply, **{"X-Slack-Signature": "v0=" + "0" * 64}),
               await s.signed("/slack/events", b"{not json", "application/json"),
               await s.signed("/slack/interactions", b"nothing=here", "text/plain"),
               await s.send({"type": "url_verification", "challenge": "x" * 2000})]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 401, 400, 422, 413]
    text = (await s.client.get("/metrics")).text
    assert webhook_counts(text, "slack") == {
        "accepted": 1, "duplicate": 1, "ignored": 1, "unauthorized": 1, "invalid_json": 1,
        "invalid": 1, "too_large": 1, "disconnected": 0, "unavailable": 0}


async def test_a_flood_of_bad_signatures_is_one_log_line_per_interval(site, caplog):
    s = await site()
    caplog.set_level(logging.WARNING, logger="bridge.slack_events")
    forged = {"X-Slack-Signature": "v0=" + "0" * 64}
    for _ in range(50):
        assert (await s.send({"type": "url_verification"}, **forged)).status_code == 401
    assert [record.getMessage() for record in caplog.records] == [
        "slack /slack/events rejected (401 unauthorized): bad or stale X-Slack-Signature"]
    s.clock.advance(10)
    await s.send({"type": "url_verification"}, **forged)
    assert "slack /slack/events rejected (401 unauthorized) 49 more times in the last 10 s" in [
        record.getMessage() for record in caplog.records]


async def test_off_means_no_routes_and_no_buttons(site):
    s = await site(drop=("slack.signing_secret",))
    for path in ("/slack/events", "/slack/interactions"):
        answer = await s.send({"type": "url_verification", "challenge": "c"}, path=path)
        assert answer.status_code == 404
    await s.conversation()
    assert "actions" not in [block["type"] for block in s.fake.parents()[0]["blocks"]]
    assert "sitegpt" not in s.bridge.destinations



class LookupsFail:
    """A store that cannot find any conversation: it is out of reach."""

    async def conversation_by_ref(self, destination: str, ref: str) -> tuple[str, str] | None:
        raise StoreError("database is locked")


REPLY = json.dumps(envelope({"type": "message", "channel": "C_CONV", "user": "U_BEN",
                             "text": "hi", "ts": "1700000001.000200",
                             "thread_ts": "1700000000.000100"})).encode()
BUTTON = urlencode({"payload": json.dumps({
    "type": "block_actions", "user": {"id": "U_BEN", "username": "ben"},
    "container": {"type": "message", "channel_id": "C_CONV", "message_ts": "1700000000.000100"},
    "actions": [{"action_id": "sitegpt_take_over", "block_id": "sitegpt_mode", "type": "button",
                 "action_ts": "1700000100.000001"}]})}).encode()


@pytest.mark.parametrize(("path", "raw", "content_type"), [
    ("/slack/events", REPLY, "application/json"),
    ("/slack/interactions", BUTTON, "application/x-www-form-urlencoded")])
async def test_a_store_that_cannot_answer_gets_slack_to_retry_with_503(
        make_settings, clock, path, raw, content_type):
    settings = make_settings({"slack": {"bot_token": "xoxb-test", "channel": "C_CONV",
                                        "signing_secret": SECRET},
                              "sitegpt": {"api_url": API, "api_key": "sk-test"}})
    app = Starlette(routes=slack_routes(settings, LookupsFail(), clock, lambda: None))
    timestamp = str(int(clock.now()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://b") as client:
        answer = await client.post(path, content=raw, headers={
            "Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": signature(raw, timestamp)})
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "error": "store busy, retry"}
