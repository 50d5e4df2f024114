"""Jira's webhooks end to end: a ticket the bridge opened, its progress in the Slack thread."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from bridge.app import Bridge, create_app, open_bridge
from bridge.cli import main
from bridge.destinations.jira_plugin import back_channel
from bridge.errors import ConfigError, StoreBusy, StoreError
from bridge.jira_events import jira_routes
from bridge.samples import load_sample
from bridge.store import Acceptance, NewEvent
from tests.clock import FakeClock
from tests.fake_jira import FakeJira, basic_auth
from tests.fake_slack import FakeSlack, fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)
from tests.first_release import first_release_store
from tests.metric_samples import webhook_counts
from tests.postgres import database_for_this_run
from tests.settings_files import TOKENS, deep_merge

SECRET = "jira-cloud-webhook-secret"
TOKEN = "dc-token-7Qm2xV9pL4"
EMAIL, API_TOKEN = "bridge@acme.test", "jira-api-token"
CHATBOT = "chatbot_123"
WEBHOOKS = Path(__file__).parent / "jira_webhooks"
IDENTIFIER = "X-Atlassian-Webhook-Identifier"


def webhook(name: str, key: str) -> dict[str, Any]:
    """A recorded Jira webhook body from tests/jira_webhooks/, about the ticket `key`."""
    body = json.loads((WEBHOOKS / f"{name}.json").read_text(encoding="utf-8"))
    body["issue"]["key"] = key
    return body


def hub_signature(raw: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@dataclass
class Desk:
    """The bridge between a fake Slack and a fake Jira Cloud, Jira's webhooks switched on."""

    bridge: Bridge
    client: httpx.AsyncClient
    slack: FakeSlack
    jira: FakeJira
    clock: FakeClock

    async def escalated(self, thread: str = "thread_A") -> str:
        """A visitor writes and asks for a human: a thread in Slack, a ticket in Jira. Its key."""
        await self.sitegpt("messages", {"event": "ADD_MESSAGE", "data": {
            "chatbotId": CHATBOT, "threadId": thread, "messageType": "USER_MESSAGE",
            "question": f"I cannot log in ({thread})"}})
        escalation = load_sample("escalation")
        escalation["data"]["threadId"] = thread
        await self.sitegpt("escalations", escalation)
        await self.bridge.worker.drain()
        ticket = await self.bridge.store.link_state(CHATBOT, thread, "jira")
        assert ticket and (await self.slack_thread(thread))[1]
        return str(ticket["key"])

    async def slack_thread(self, thread: str = "thread_A") -> tuple[str, str]:
        """The conversation's Slack channel and thread ts, as the Slack destination keeps them."""
        state = await self.bridge.store.link_state(CHATBOT, thread, "slack")
        assert state and state.get("channel") and state.get("thread_ts")
        return str(state["channel"]), str(state["thread_ts"])

    async def sitegpt(self, endpoint: str, body: dict[str, Any]) -> None:
        answer = await self.client.post(f"/webhooks/{endpoint}", json=body,
                                        headers={"X-WEBHOOK-TOKEN": TOKENS[endpoint]})
        assert answer.status_code == 200, answer.text

    async def send(self, body: dict[str, Any] | bytes, identifier: str | None = None,
                   signature: str | bytes | None = "sign", query: str = "") -> httpx.Response:
        """POST /jira/webhook as Jira Cloud does: signed with the secret unless told otherwise."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers: dict[str, str | bytes] = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "Atlassian Webhook HTTP Client"}
        if identifier:
            headers[IDENTIFIER] = identifier
        if signature == "sign":
            signature = hub_signature(raw)
        if signature is not None:
            headers["X-Hub-Signature"] = signature
        return await self.client.post(f"/jira/webhook{query}", content=raw, headers=headers)

    async def delivered(self, body: dict[str, Any], identifier: str | None = None) -> str:
        answer = await self.send(body, identifier)
        assert answer.status_code == 200, answer.text
        await self.bridge.worker.drain()
        return str(answer.json()["status"])

    async def thread(self, thread: str = "thread_A") -> list[str]:
        """The texts posted in the conversation's thread, in order."""
        return [post["text"] for post in self.slack.thread(*await self.slack_thread(thread))]

    async def parent_now(self, thread: str = "thread_A") -> str:
        """The parent message as its last update left it, blocks and all."""
        _, thread_ts = await self.slack_thread(thread)
        updates = [item for item in self.slack.updates if item["ts"] == thread_ts]
        return str(updates[-1]["blocks"])

    def comment_post(self, key: str) -> dict[str, Any]:
        [post] = [post for post in self.slack.posts
                  if post.get("text") == f"Dana Agent commented on {key}"]
        return post

    async def stored_events(self) -> int:
        return len(await self.bridge.store.deliveries(limit=1000))


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira("Cloud", basic_auth(EMAIL, API_TOKEN)) as fake:
        yield fake


@pytest.fixture
async def desk(make_settings, fake, jira, clock):
    opened: list[Desk] = []

    async def build(jira_settings: dict[str, Any] | None = None,
                    store: dict[str, Any] | None = None) -> Desk:
        """The bridge with the back-channel on; None in `jira_settings` leaves a key unset."""
        merged = deep_merge({"url": jira.url, "email": EMAIL, "api_token": API_TOKEN,
                             "project": "SUP", "webhook_secret": SECRET, "webhook_token": TOKEN,
                             "comments_to_slack": True}, jira_settings or {})
        data = {
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C_CONV",
                      "burst": 1000, "per_second": 1000.0},
            "jira": {name: value for name, value in merged.items() if value is not None},
            "store": store or {}}
        bridge = open_bridge(make_settings(data), clock)
        app = create_app(bridge, run_worker=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        opened.append(Desk(bridge, client, fake, jira, clock))
        return opened[-1]

    yield build
    for item in opened:
        await item.client.aclose()
        await item.bridge.close()


# status changes ----------------------------------------------------------------------------------

async def test_a_status_change_is_told_in_the_thread_and_shown_on_the_parent(desk):
    d = await desk()
    key = await d.escalated()
    assert await d.delivered(webhook("issue-updated-status", key), "wh-1") == "accepted"
    notice = (await d.thread())[-1]
    assert notice == f"{key} moved to In Progress by Dana Agent"
    parent = await d.parent_now()
    assert f"{key}>" in parent and "In Progress" in parent and "Resolved" not in parent


async def test_a_status_in_the_done_category_shows_the_parent_resolved(desk):
    d = await desk()
    key = await d.escalated()
    await d.delivered(webhook("issue-updated-status", key), "wh-1")
    await d.delivered(webhook("issue-updated-done", key), "wh-2")
    thread = await d.thread()
    assert thread[-1] == f"{key} moved to Done by Dana Agent"
    [done_notice] = [post for post in d.slack.posts if post.get("text") == thread[-1]]
    assert ":white_check_mark:" in str(done_notice["blocks"])
    parent = await d.parent_now()
    assert ":white_check_mark: Resolved" in parent and "(Done)" in parent


async def test_edits_that_leave_the_status_alone_say_nothing(desk):
    d = await desk()
    key = await d.escalated()
    before = await d.thread()
    answer = await d.send(webhook("issue-updated-fields", key), "wh-edit")
    assert answer.json() == {"status": "ignored", "reason": "no status change"}
    await d.bridge.worker.drain()
    assert await d.thread() == before


async def test_a_burst_gives_one_notice_per_status_change(desk):
    d = await desk()
    key = await d.escalated()
    moved = webhook("issue-updated-status", key)
    # A second webhook registered for the same events reports the same change under its own id.
    for identifier, body in [("wh-a", moved), ("wh-b", moved),
                             ("wh-c", webhook("issue-updated-fields", key)),
                             ("wh-d", webhook("issue-updated-fields", key) | {"timestamp": 1}),
                             ("wh-e", webhook("issue-updated-done", key)),
                             ("wh-f", webhook("issue-updated-done", key))]:
        assert (await d.send(body, identifier)).status_code == 200
    await d.bridge.worker.drain()
    notices = [text for text in await d.thread() if " moved to " in text]
    assert notices == [f"{key} moved to In Progress by Dana Agent",
                       f"{key} moved to Done by Dana Agent"]


async def test_a_late_retry_of_an_earlier_change_does_not_undo_a_later_one(desk):
    d = await desk()
    key = await d.escalated()
    await d.delivered(webhook("issue-updated-done", key), "wh-2")
    # Jira retries a delivery that failed: the move to In Progress comes in after Done.
    assert await d.delivered(webhook("issue-updated-status", key), "wh-1") == "accepted"
    notices = [text for text in await d.thread() if " moved to " in text]
    assert notices == [f"{key} moved to Done by Dana Agent"]
    assert ":white_check_mark: Resolved" in await d.parent_now()
    rows = await d.bridge.store.deliveries(limit=1)
    assert rows[0].status == "skipped" and "shows a later status (Done)" in str(rows[0].note)


async def test_after_a_deletion_a_late_status_change_says_nothing(desk):
    d = await desk()
    key = await d.escalated()
    await d.delivered(webhook("issue-deleted", key), "wh-del")
    before = await d.thread()
    await d.delivered(webhook("issue-updated-status", key), "wh-late")
    assert await d.thread() == before
    assert key not in await d.parent_now()


async def test_a_ticket_opened_before_the_upgrade_is_followed(desk, tmp_path):
    first_release_store(tmp_path / "data" / "bridge.db")  # thread_A has SUP-7 and a thread
    d = await desk()
    d.clock.advance(180)  # the lease of the worker killed mid-delivery runs out
    answer = await d.send(webhook("issue-updated-status", "SUP-7"), "wh-up")
    assert answer.json()["status"] == "accepted"
    await d.bridge.worker.drain()
    thread = await d.thread()
    assert thread[-1] == "SUP-7 moved to In Progress by Dana Agent"
    assert thread[0].startswith("Visitor: still there?")  # what waited in the queue goes first
    parent = await d.parent_now()
    assert "SUP-7" in parent and "In Progress" in parent


# who may call ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("signature", "why"), [
    (None, "unsigned"),
    ("sha256=" + "0" * 64, "wrong signature"),
    (hub_signature(b"{}", "another-secret"), "signed with another secret"),
    ("sha1=" + "0" * 40, "another algorithm"),
    ("", "empty"),
    ("sha256=\u00e9".encode("latin-1"), "not ASCII"),
    (b"sha256=" + bytes(range(0x80, 0x100)), "every non-ASCII byte"),
    ("SHA256=\u00c9\u0130".encode(), "UTF-8 capitals"),
    ("sha256=" + "0" * 6000, "6,000 characters"),
])
async def test_requests_without_a_valid_signature_are_refused(desk, signature, why):
    d = await desk({"webhook_token": None})
    key = await d.escalated()
    before = await d.stored_events()
    answer = await d.send(webhook("issue-updated-status", key), "wh-1", signature=signature)
    assert answer.status_code == 401, why
    assert await d.stored_events() == before


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_nul_in_the_ticket_key_is_no_ticket_of_ours_on_every_store(desk, backend):
    d = await desk(store={"url": database_for_this_run()} if backend == "postgresql" else None)
    key = await d.escalated()
    before = await d.stored_events()
    answer = await d.send(webhook("issue-updated-status", key + "\u0000"), "wh-1")
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert await d.stored_events() == before


async def test_a_signature_of_another_body_is_refused(desk):
    d = await desk()
    key = await d.escalated()
    earlier = json.dumps(webhook("issue-updated-status", key)).encode()
    tampered = json.dumps(webhook("issue-updated-done", key)).encode()
    answer = await d.send(tampered, "wh-1", signature=hub_signature(earlier))
    assert answer.status_code == 401
    assert (await d.send(tampered, "wh-1")).status_code == 200


async def test_a_wrong_signature_is_refused_even_with_the_right_token(desk):
    d = await desk()
    key = await d.escalated()
    answer = await d.send(webhook("issue-updated-status", key), "wh-1",
                          signature="sha256=" + "1" * 64, query=f"?token={TOKEN}")
    assert answer.status_code == 401


@pytest.mark.parametrize(("query", "status"), [
    (f"?token={TOKEN}", 200),
    ("?token=dc-token-7Qm2xV9pL5", 401),
    ("?token=", 401),
    ("?tokens=" + TOKEN, 401),
    ("", 401),
    (f"?token={TOKEN}%C3%A9", 401),
    ("?token=%E9%FF", 401),
    ("?token=%ED%A0%80%00", 401),
    ("?token=" + "%C3%A9" * 1000, 401),
])
async def test_data_center_is_let_in_by_the_token_in_its_url(desk, caplog, query, status):
    d = await desk({"webhook_secret": None})
    key = await d.escalated()
    caplog.set_level(logging.DEBUG)
    answer = await d.send(webhook("issue-updated-status", key), signature=None, query=query)
    assert answer.status_code == status
    # httpx's own lines are the test client's: what the bridge logs is everything else.
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records
                       if not record.name.startswith(("httpx", "httpcore")))
    assert "jira" in logged and "token=" not in logged and TOKEN[5:] not in logged


async def test_without_secret_or_token_the_endpoint_is_not_there(desk):
    d = await desk({"webhook_secret": None, "webhook_token": None})
    answer = await d.send({"webhookEvent": "jira:issue_updated"})
    assert answer.status_code == 404


@pytest.mark.parametrize(("raw", "status", "error"), [
    (b"{not json", 400, "body is not JSON"),
    (b"\xff\xfe", 400, "body is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "body is not JSON"),
    (b"[]", 422, "body"),
    (b'{"timestamp": 1}', 422, "webhookEvent"),
    (b'{"webhookEvent": 7}', 422, "webhookEvent"),
    (b'{"webhookEvent": "jira:issue_updated"}', 422, "issue: required"),
    (b'{"webhookEvent": "jira:issue_updated", "issue": {"key": ""}}', 422, "issue.key"),
    (b'{"webhookEvent": "jira:issue_deleted", "issue": {"id": 5}}', 422, "issue.key"),
    (b'{"webhookEvent": "comment_created", "issue": {"key": "SUP-1"}}', 422, "comment"),
    (b'{"webhookEvent": "comment_created", "issue": {"key": "SUP-1"}, "comment": {"body": 5}}',
     422, "comment.body"),
    (b'{"webhookEvent": "jira:issue_updated", "issue": {"key": "SUP-1"}, "changelog": []}',
     422, "changelog"),
])
async def test_malformed_bodies_get_400_or_422_never_500(desk, raw, status, error):
    d = await desk()
    answer = await d.send(raw)
    assert answer.status_code == status
    assert error in answer.json()["error"]


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"9" * 400])
async def test_numbers_json_has_not_are_refused_and_nothing_is_stored(desk, number):
    d = await desk()
    key = await d.escalated()
    before = await d.stored_events()
    raw = json.dumps(webhook("comment-created-adf", key)).encode()
    raw = raw.replace(b'"version": 1', b'"version": ' + number, 1)
    answer = await d.send(raw, "wh-nan")
    assert answer.status_code == 422
    assert "not a Jira webhook: body:" in answer.json()["error"]
    assert await d.stored_events() == before


@pytest.mark.parametrize("half_an_emoji", [b"\\ud83d", b"\xed\xa0\xbd"])
async def test_half_an_emoji_in_a_name_is_stored_as_a_replacement_or_refused(desk,
                                                                            half_an_emoji):
    d = await desk()
    key = await d.escalated()
    raw = json.dumps(webhook("issue-updated-status", key)).encode()
    raw = raw.replace(b'"displayName": "Dana Agent"', b'"displayName": "Dana ' + half_an_emoji
                      + b'"', 1)
    answer = await d.send(raw, "wh-surrogate")
    if half_an_emoji.startswith(b"\\"):  # JSON's escape: valid JSON, kept as U+FFFD
        assert answer.json()["status"] == "accepted"
        await d.bridge.worker.drain()
        assert (await d.thread())[-1] == f"{key} moved to In Progress by Dana \ufffd"
    else:  # the bytes of a surrogate are not UTF-8
        assert answer.status_code == 400
        assert "body is not JSON" in answer.json()["error"]


async def test_a_body_over_the_limit_is_refused_unread(desk):
    d = await desk({"webhook_max_body_bytes": 100_000})
    answer = await d.send(b"{" + b" " * 100_000 + b"}")
    assert answer.status_code == 413


async def test_a_long_ticket_fits_though_it_is_larger_than_sitegpts_bodies(desk):
    """Jira sends the whole issue: a long description must not cost the status notice."""
    d = await desk()
    key = await d.escalated()
    body = webhook("issue-updated-status", key)
    body["issue"]["fields"]["description"] = "A long story. " * 30_000  # ~420 KB
    assert len(json.dumps(body)) > d.bridge.settings.server.max_body_bytes
    assert await d.delivered(body, "wh-long") == "accepted"
    assert (await d.thread())[-1] == f"{key} moved to In Progress by Dana Agent"


async def test_every_request_is_counted_by_its_outcome(desk):
    d = await desk()
    key = await d.escalated()
    body = webhook("issue-updated-status", key)
    answers = [await d.send(body, "wh-m1"), await d.send(body, "wh-m1"),
               await d.send(webhook("issue-updated-fields", key), "wh-m2"),
               await d.send(body, signature="sha256=" + "0" * 64),
               await d.send(b"{not json"), await d.send(b"[]"),
               await d.send(b"{" + b" " * 1_100_000 + b"}")]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 401, 400, 422, 413]
    text = (await d.bridge.metrics.exposition(d.bridge.store, d.clock.now())).decode()
    assert webhook_counts(text, "jira") == {
        "accepted": 1, "duplicate": 1, "ignored": 1, "unauthorized": 1, "invalid_json": 1,
        "invalid": 1, "too_large": 1, "disconnected": 0, "unavailable": 0}


async def test_a_flood_of_refusals_is_one_log_line_per_kind_and_interval(desk, caplog):
    d = await desk()
    caplog.set_level(logging.WARNING, logger="bridge.jira_events")
    for _ in range(50):
        assert (await d.send(b"[]")).status_code == 422
        assert (await d.send(b"{}", signature=None)).status_code == 401
    assert [record.getMessage() for record in caplog.records] == [
        "jira /jira/webhook rejected (422 invalid): not a Jira webhook: body: Input should be "
        "a valid dictionary or instance of JiraWebhook",
        "jira /jira/webhook rejected (401 unauthorized): missing or wrong X-Hub-Signature or "
        "token"]
    d.clock.advance(10)
    await d.send(b"[]")
    assert "jira /jira/webhook rejected (422 invalid) 49 more times in the last 10 s" in [
        record.getMessage() for record in caplog.records]


# store first, once -------------------------------------------------------------------------------

async def test_jiras_retries_of_one_delivery_are_stored_once(desk):
    d = await desk()
    key = await d.escalated()
    body = webhook("issue-updated-status", key)
    first = await d.send(body, "d1a3c9e0-5f1b-4c52-9b5e-0c1d2e3f4a5b")
    again = await d.send(body | {"timestamp": body["timestamp"] + 60_000},
                         "d1a3c9e0-5f1b-4c52-9b5e-0c1d2e3f4a5b")
    assert first.json()["status"] == "accepted"
    assert again.json() == {"status": "duplicate", "id": first.json()["id"]}
    await d.bridge.worker.drain()
    assert sum(" moved to " in text for text in await d.thread()) == 1


async def test_without_an_identifier_copies_are_recognised_by_their_body(desk):
    d = await desk()
    key = await d.escalated()
    body = webhook("issue-updated-status", key)
    assert (await d.send(body)).json()["status"] == "accepted"
    assert (await d.send(body)).json()["status"] == "duplicate"
    assert (await d.send(body | {"timestamp": 1})).json()["status"] == "accepted"


async def test_the_event_is_stored_before_the_answer_and_delivered_later(desk):
    d = await desk()
    key = await d.escalated()
    before = len(d.slack.posts)
    answer = await d.send(webhook("issue-updated-status", key), "wh-1")
    assert answer.json()["status"] == "accepted"
    assert len(d.slack.posts) == before
    [row] = [row for row in await d.bridge.store.deliveries(limit=100)
             if row.event_id == answer.json()["id"]]
    assert (row.destination, row.status, row.ordering_key) == (
        "slack", "pending", f"{CHATBOT}/thread_A")


async def test_tickets_the_bridge_did_not_open_are_answered_and_ignored(desk, caplog):
    d = await desk()
    await d.escalated()
    before = await d.stored_events()
    caplog.set_level(logging.DEBUG, logger="bridge.jira_events")
    answer = await d.send(webhook("issue-updated-status", "OPS-99"), "wh-1")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ignored",
                             "reason": "OPS-99 is not a ticket the bridge opened"}
    assert await d.stored_events() == before
    assert "OPS-99 is not a ticket the bridge opened" in caplog.text


async def test_events_the_bridge_does_not_follow_are_answered_and_ignored(desk):
    d = await desk()
    answer = await d.send({"webhookEvent": "jira:worklog_updated", "timestamp": 1})
    assert answer.json() == {"status": "ignored", "reason": "not an event the bridge follows"}


async def test_updates_are_delivered_in_order_per_conversation(desk):
    d = await desk()
    key_a = await d.escalated("thread_A")
    key_b = await d.escalated("thread_B")
    d.slack.fail_next("chat.postMessage", status=503)
    await d.send(webhook("issue-updated-status", key_a), "a1")
    await d.send(webhook("comment-created-adf", key_a), "a2")
    await d.sitegpt("messages", {"event": "ADD_MESSAGE", "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "messageType": "USER_MESSAGE",
        "question": "any news?"}})
    await d.send(webhook("issue-updated-done", key_a), "a3")
    await d.bridge.worker.drain()  # the first of thread_A's fails: the rest wait behind it
    assert not any(" moved to " in text for text in await d.thread("thread_A"))
    await d.send(webhook("issue-updated-status", key_b), "b1")
    await d.bridge.worker.drain()  # Slack takes thread_B's: thread_A's are brought forward
    assert (await d.thread("thread_B"))[-1] == f"{key_b} moved to In Progress by Dana Agent"
    d.clock.advance(60)
    await d.bridge.worker.drain()
    tail = (await d.thread("thread_A"))[-4:]
    assert tail[0] == f"{key_a} moved to In Progress by Dana Agent"
    assert tail[1] == f"Dana Agent commented on {key_a}"
    assert tail[2].startswith("Visitor: any news?")
    assert tail[3] == f"{key_a} moved to Done by Dana Agent"


# comments ----------------------------------------------------------------------------------------

async def test_a_wiki_markup_comment_is_shown_as_escaped_mrkdwn(desk):
    d = await desk()
    key = await d.escalated()
    await d.delivered(webhook("comment-created-wiki", key), "wh-c1")
    post = d.comment_post(key)
    heading, body = post["blocks"]
    assert heading["elements"][0]["text"].startswith(":speech_balloon: *Dana Agent* commented on <")
    text = body["text"]["text"]
    assert text.startswith("*Fixed*\nHi team, I reset *John*'s password &amp; sent him a link: "
                           "<https://docs.example.com/reset?lang=en&amp;ref=jira|reset guide>")
    assert "• checked the SSO logs\n• cleared the ~old~ session" in text
    assert "Ping &lt;!channel&gt; and &lt;@U0ADMIN&gt;, see @ben." in text
    assert "```user.reset(force=True) # if a &lt; b```" in text
    assert "<!channel>" not in json.dumps(post) and "<@U0ADMIN>" not in json.dumps(post)


async def test_an_adf_comment_is_shown_as_escaped_mrkdwn(desk):
    d = await desk()
    key = await d.escalated()
    await d.delivered(webhook("comment-created-adf", key), "wh-c2")
    post = d.comment_post(key)
    assert post["blocks"][1]["text"]["text"] == (
        "Password reset *done*, see <https://docs.example.com/reset|the guide> &lt;!here&gt; "
        "@John Doe\n• SSO logs checked\n• `x &lt; y &amp; z`")


async def test_the_bridges_own_comment_is_never_echoed(desk, jira):
    d = await desk()
    key = await d.escalated()
    escalation = load_sample("escalation")
    escalation["data"]["threadId"] = "thread_A"
    await d.sitegpt("escalations", escalation | {"again": True})
    await d.bridge.worker.drain()
    [written] = jira.comments(key)  # the bridge commented on its open ticket
    echo = webhook("comment-created-wiki", key)
    echo["comment"]["body"] = written
    before = await d.thread()
    assert (await d.send(echo, "wh-echo")).json() == {
        "status": "ignored", "reason": "the bridge's own comment"}
    recorded = webhook("comment-created-own", key)
    assert (await d.send(recorded, "wh-own")).json()["reason"] == "the bridge's own comment"
    await d.bridge.worker.drain()
    assert await d.thread() == before


async def test_comments_stay_in_jira_unless_switched_on(desk):
    d = await desk({"comments_to_slack": None})
    key = await d.escalated()
    answer = await d.send(webhook("comment-created-adf", key), "wh-c")
    assert answer.json() == {"status": "ignored", "reason": "comments_to_slack is off"}


async def test_comments_by_apps_are_not_shown(desk):
    d = await desk()
    key = await d.escalated()
    body = webhook("comment-created-adf", key)
    body["comment"]["author"] = {"accountId": "557058:automation", "accountType": "app",
                                 "displayName": "Automation for Jira"}
    assert (await d.send(body, "wh-app")).json()["reason"] == "a comment written by an app"


# deletion ----------------------------------------------------------------------------------------

async def test_a_deleted_ticket_is_no_longer_shown_on_the_parent(desk):
    d = await desk()
    key = await d.escalated()
    await d.delivered(webhook("issue-updated-status", key), "wh-1")
    assert key in await d.parent_now()
    thread_before = await d.thread()
    await d.delivered(webhook("issue-deleted", key), "wh-del")
    parent = await d.parent_now()
    assert key not in parent and "Escalated: waiting for a human" in parent
    assert await d.thread() == thread_before
    rows = await d.bridge.store.deliveries(limit=5)
    assert rows[0].status == "delivered" and "deleted" in str(rows[0].note)


async def test_a_deletion_is_retried_until_the_parent_shows_it(desk):
    d = await desk()
    key = await d.escalated()
    d.slack.fail_next("chat.update", status=503)
    await d.delivered(webhook("issue-deleted", key), "wh-del")
    assert key in await d.parent_now()
    d.clock.advance(60)
    await d.bridge.worker.drain()
    assert key not in await d.parent_now()


# settings, check, templates ----------------------------------------------------------------------

def test_check_says_whether_the_back_channel_is_on(make_settings):
    off = make_settings()
    assert back_channel(off).startswith("off")
    on = make_settings({"jira": {"url": "https://acme.atlassian.net", "email": EMAIL,
                                 "api_token": API_TOKEN, "project": "SUP",
                                 "webhook_secret": SECRET}})
    line = back_channel(on)
    assert line.startswith("on at POST /jira/webhook (Cloud signature)")
    assert "comments to Slack off" in line and SECRET not in line


def test_without_tickets_the_back_channel_stays_off_and_check_says_why(make_settings):
    settings = make_settings({"jira": {"webhook_secret": SECRET}})
    assert not settings.jira.back_channel
    assert back_channel(settings) == (
        "off: [jira] webhook_secret or webhook_token is set, but url is not (no tickets)")


@pytest.mark.parametrize("key", ["webhook_secret", "webhook_token"])
def test_an_empty_secret_or_token_is_refused_at_start_up(make_settings, key):
    with pytest.raises(ConfigError) as caught:
        make_settings({"jira": JIRA_ON | {key: ""}})
    assert f"jira.{key}: must not be empty" in caught.value.problems[0]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


JIRA_ON = {"url": "https://acme.atlassian.net", "email": EMAIL, "api_token": API_TOKEN,
           "project": "SUP", "webhook_secret": SECRET}


def test_render_sample_shows_the_status_notice_and_the_parent(make_settings, tmp_path, capsys):
    make_settings({"slack": {"channel": "C_CONV"}, "jira": JIRA_ON})
    code, out, err = run(capsys, "render", "--json", "--sample", "jira-ticket-resolved",
                         "--config", str(tmp_path / "settings.toml"))
    assert code == 0
    assert err.splitlines() == [
        "# slack: jira-ticket-resolved: chat.postMessage (in the thread)",
        "# slack: jira-ticket-resolved: chat.update (the thread's parent)"]
    decoder = json.JSONDecoder()
    notice, end = decoder.raw_decode(out)
    parent, _ = decoder.raw_decode(out, end + 1)
    assert notice["text"] == "SUP-42 moved to Done by Dana Agent"
    assert "<https://acme.atlassian.net/browse/SUP-42|SUP-42> moved to *Done*" in str(notice)
    assert ":white_check_mark: Resolved" in str(parent["blocks"])


@pytest.mark.parametrize("sample", ["jira-ticket-comment", "jira-ticket-comment-adf"])
def test_render_sample_shows_a_comment_converted(make_settings, tmp_path, capsys, sample):
    make_settings({"slack": {"channel": "C_CONV"}, "jira": JIRA_ON})
    code, out, _ = run(capsys, "render", "--json", "--sample", sample,
                       "--config", str(tmp_path / "settings.toml"))
    posted = json.loads(out)
    assert code == 0 and posted["text"] == "Dana Agent commented on SUP-42"
    assert "<https://docs.example.com/reset" in posted["blocks"][1]["text"]["text"]


@pytest.mark.parametrize("name", ["ticket_status", "ticket_comment"])
def test_a_broken_override_stops_the_bridge_at_start_up(make_settings, tmp_path, name):
    mine = tmp_path / "mine" / "slack"
    mine.mkdir(parents=True)
    (mine / f"{name}.json.j2").write_text(
        '{% extends "default:slack/' + name + '.json.j2" %}'
        '{% block fallback %}{{ ticket.nothing_here }}{% endblock %}')
    settings = make_settings({"templates": {"dir": str(tmp_path / "mine")}})
    with pytest.raises(ConfigError) as caught:
        open_bridge(settings)
    assert any(f"slack/{name}.json.j2" in line and "jira-ticket" in line
               for line in caught.value.problems), caught.value.problems


def test_check_prints_the_back_channel_line(make_settings, tmp_path, capsys):
    make_settings()
    _, out, _ = run(capsys, "check", "--config", str(tmp_path / "settings.toml"))
    assert "jira back-channel: off (set [jira] webhook_secret or webhook_token" in out


class UnavailableStore:
    """A store that cannot answer: its lookups, or only its writes, raise StoreError."""

    def __init__(self, lookups_fail: bool) -> None:
        self.lookups_fail = lookups_fail

    async def conversation_by_ref(self, destination: str, ref: str) -> tuple[str, str] | None:
        if self.lookups_fail:
            raise StoreError("database is locked")
        return (CHATBOT, "thread_A")

    async def accept(self, event: NewEvent, now: float, window: float) -> Acceptance:
        raise StoreBusy("commit took longer than 3 s")


@pytest.mark.parametrize("lookups_fail", [True, False])
async def test_a_store_that_cannot_answer_gets_jira_to_retry_with_503(make_settings, clock,
                                                                      lookups_fail):
    routes = jira_routes(make_settings({"jira": JIRA_ON}), UnavailableStore(lookups_fail),
                         clock, lambda: None)
    app = Starlette(routes=routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://b") as client:
        raw = json.dumps(webhook("issue-updated-status", "SUP-1")).encode()
        answer = await client.post("/jira/webhook", content=raw,
                                   headers={"X-Hub-Signature": hub_signature(raw)})
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "error": "store busy, retry"}
