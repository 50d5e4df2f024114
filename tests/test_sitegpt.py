"""SiteGPT destination: replies and mode changes sent with httpx (respx), Slack told (fake)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx
from slack_sdk import WebClient

from bridge.destinations import build_destinations
from bridge.destinations.shared import Shared
from bridge.destinations.sitegpt import SiteGPTDestination, sitegpt_destination
from bridge.destinations.slack import SlackDestination, slack_destination
from bridge.destinations.slack_replies import SlackReplies, plain_text
from bridge.errors import TemplateError
from bridge.event_rows import new_event
from bridge.events import (
    MODE_CHANGE,
    SLACK_REPLY,
    THREAD_NOTICE,
    Event,
    canonical_json,
    parse_event,
)
from bridge.settings import Settings
from bridge.store import Echo, NewEvent, open_store
from bridge.store.sqlite import SQLiteStore
from bridge.template_check import sample_events
from bridge.templating import Templates
from bridge.worker import Worker
from tests.clock import FakeClock
from tests.fake_slack import FakeSlack, fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)

API = "https://sitegpt.test/api/v0"
KEY = "sk-live-secret-key"
CHATBOT = "chatbot_123"
MESSAGE_PATH = f"/chatbots/{CHATBOT}/message"
ACCEPTED = httpx.Response(200, json={"messageType": "AGENT_MESSAGE", "answer": "ok"})


@dataclass
class Harness:
    store: SQLiteStore
    slack: SlackDestination
    sitegpt: SiteGPTDestination
    worker: Worker
    clock: FakeClock
    fake: FakeSlack
    api: respx.Router
    serial: int = 0

    async def conversation(self, thread: str = "thread_A") -> str:
        """A conversation the bridge has posted to Slack; its thread's ts."""
        body = {"event": "ADD_MESSAGE", "data": {
            "chatbotId": CHATBOT, "threadId": thread, "messageType": "USER_MESSAGE",
            "question": "Where is my order?"}}
        await self.store.accept(new_event(parse_event("ADD_MESSAGE", body), body, ["slack"]),
                                self.clock.now(), 600)
        await self.worker.drain()
        state = await self.store.link_state(CHATBOT, thread, "slack")
        assert state and state["thread_ts"]
        return str(state["thread_ts"])

    async def reply(self, thread_ts: str, text: str, user: str = "U_ANA",
                    thread: str = "thread_A") -> str:
        """A member answers in the thread; the reply event is stored. Its ts."""
        person = WebClient(token=f"xoxp-{user}", base_url=self.fake.api_url)
        ts = str(person.chat_postMessage(channel="C_CONV", thread_ts=thread_ts, text=text)["ts"])
        self.serial += 1
        await self.stored(SLACK_REPLY, {
            "chatbotId": CHATBOT, "threadId": thread, "slackEventId": f"Ev{self.serial}",
            "channel": "C_CONV", "threadTs": thread_ts, "ts": ts, "user": user, "text": text})
        return ts

    async def stored(self, kind: str, data: dict[str, Any]) -> None:
        body = canonical_json({"event": kind, "data": data})
        self.serial += 1
        await self.store.accept(NewEvent(
            kind=kind, body=body, dedup_key=f"test:{self.serial}",
            ordering_key=f"{data['chatbotId']}/{data['threadId']}", destinations=["sitegpt"]),
            self.clock.now(), 600)

    async def rows(self, destination: str = "sitegpt") -> list[tuple[str, str | None]]:
        rows = await self.store.deliveries(limit=1000)
        return [(row.status, row.last_error or row.note) for row in reversed(rows)
                if row.destination == destination]

    def bot_posts(self, thread_ts: str) -> list[dict[str, Any]]:
        return [post for post in self.fake.thread("C_CONV", thread_ts) if post.get("bot_id")]


@pytest.fixture
def api() -> Iterator[respx.Router]:
    with respx.mock(base_url=API, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def harness(make_settings, fake, api, clock):
    built: list[Harness] = []

    async def build(**extra: Any) -> Harness:
        settings = make_settings({
            "slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": "C_CONV",
                      "signing_secret": "shh", "burst": 1000, "per_second": 1000.0},
            "sitegpt": {"api_url": API, "api_key": KEY}, **extra})
        store = open_store(settings.store.url)
        shared = Shared(settings, clock)
        slack = slack_destination(settings, Templates(), shared)
        sitegpt = sitegpt_destination(settings, Templates(), shared)
        assert sitegpt is not None
        worker = Worker(store, {"slack": slack, "sitegpt": sitegpt}, settings.delivery, clock,
                        random.Random(7))
        built.append(Harness(store, slack, sitegpt, worker, clock, fake, api))
        return built[-1]

    yield build
    for item in built:
        await item.slack.aclose()
        await item.sitegpt.aclose()
        await item.store.close()


def sent(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


async def test_a_reply_reaches_the_visitor_as_the_member_who_wrote_it(harness):
    h = await harness()
    route = h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await h.conversation()
    reply_ts = await h.reply(thread_ts, "We ship today &amp; <https://track.example/1|track it>")
    await h.worker.drain()

    assert sent(route) == [{
        "message": "We ship today & track it (https://track.example/1)", "from": "AGENT",
        "threadId": "thread_A", "agentName": "Ana",
        "iconUrl": "https://avatars.example/ana-192.png"}]
    assert route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"
    assert h.fake.reactions == [
        {"channel": "C_CONV", "timestamp": reply_ts, "name": "white_check_mark"}]
    assert await h.rows() == [("delivered", "sent to the visitor as Ana")]


async def test_the_echo_from_sitegpt_is_not_posted_again_but_only_once(harness):
    h = await harness()
    h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "  On its way!  ")
    await h.worker.drain()
    before = len(h.bot_posts(thread_ts))
    echo = {"event": "ADD_MESSAGE", "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "messageType": "AGENT_MESSAGE",
        "question": None, "answer": "On its way!", "agentName": "Ana", "agentId": "x"}}
    for _ in range(2):  # SiteGPT's echo, then the same words typed again in SiteGPT itself
        event = parse_event("ADD_MESSAGE", echo)
        await h.store.accept(new_event(event, echo, ["slack"]), h.clock.now(), 0)
        await h.worker.drain()
    (echo_status, echo_reason), (again_status, _) = (await h.rows("slack"))[-2:]
    assert (echo_status, echo_reason) == ("skipped", "echo of a reply sent from Slack")
    assert again_status == "delivered"
    assert len(h.bot_posts(thread_ts)) == before + 1


async def test_a_chatbot_s_own_key_is_used_for_its_conversations(harness):
    h = await harness(chatbots=[{"id": CHATBOT, "sitegpt_api_key": "sk-own-key"}])
    route = h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    await h.reply(await h.conversation(), "hello")
    await h.worker.drain()
    assert route.calls[0].request.headers["authorization"] == "Bearer sk-own-key"


async def test_5xx_is_retried_then_delivered_once(harness):
    h = await harness()
    route = h.api.post(MESSAGE_PATH).mock(side_effect=[
        httpx.Response(503, text="<html>busy</html>"), ACCEPTED])
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "hello")
    await h.worker.drain()
    [(status, error)] = await h.rows()
    assert status == "pending" and error == f"sitegpt: POST {MESSAGE_PATH}: HTTP 503"
    h.clock.advance(5)
    await h.worker.drain()
    assert route.call_count == 2
    assert [status for status, _ in await h.rows()] == ["delivered"]
    assert len(h.fake.reactions) == 1
    assert len(h.bot_posts(thread_ts)) == 1  # the visitor's message, no notice


async def test_429_waits_for_retry_after(harness):
    h = await harness()
    h.api.post(MESSAGE_PATH).mock(return_value=httpx.Response(
        429, json={"message": "Too many requests"}, headers={"Retry-After": "30"}))
    await h.reply(await h.conversation(), "hello")
    await h.worker.drain()
    [row] = [row for row in await h.store.deliveries() if row.destination == "sitegpt"]
    assert row.status == "pending" and "HTTP 429: Too many requests" in (row.last_error or "")
    assert 30 <= row.next_attempt_at - h.clock.now() <= 31


@pytest.mark.parametrize("failure", [httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow"),
                                     httpx.ConnectError("refused")])
async def test_timeouts_and_connection_errors_are_retried(harness, failure):
    h = await harness()
    h.api.post(MESSAGE_PATH).mock(side_effect=failure)
    await h.reply(await h.conversation(), "hello")
    await h.worker.drain()
    [(status, error)] = await h.rows()
    assert status == "pending" and error and error.startswith(f"sitegpt: POST {MESSAGE_PATH}: ")
    assert h.fake.reactions == []


@pytest.mark.parametrize(("status", "body", "shown"), [
    (400, {"message": "threadId is required"}, "HTTP 400: threadId is required"),
    (401, {"error": f"Invalid API key {KEY}"}, "HTTP 401: Invalid API key ***"),
    (403, {"error": {"code": "forbidden", "message": "Plan does not allow agents"}},
     "HTTP 403: Plan does not allow agents"),
    (404, {"message": "Thread not found"}, "HTTP 404: Thread not found"),
])
async def test_4xx_fails_at_once_and_says_why_in_the_thread(harness, status, body, shown):
    h = await harness()
    route = h.api.post(MESSAGE_PATH).mock(return_value=httpx.Response(status, json=body))
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "hello")
    await h.worker.drain()
    [(state, error)] = await h.rows()
    assert state == "failed" and error == f"sitegpt: POST {MESSAGE_PATH}: {shown}"
    assert KEY not in (error or "")
    notice = h.bot_posts(thread_ts)[-1]
    assert notice["text"].startswith(":warning: Not delivered to the visitor (reply by <@U_ANA>)")
    assert shown in notice["text"] and KEY not in str(notice)
    assert route.call_count == 1 and h.fake.reactions == []
    assert not await h.store.consume_echo(Echo(CHATBOT, "thread_A", "hello", "Ana"), 0)


async def test_a_refusal_that_echoes_another_credential_is_told_without_it(harness):
    h = await harness()
    h.api.post(MESSAGE_PATH).mock(return_value=httpx.Response(
        400, json={"message": "bad request; your Slack token is xoxb-test"}))
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "hello")
    await h.worker.drain()
    notice = h.bot_posts(thread_ts)[-1]
    assert "your Slack token is ***" in notice["text"] and "xoxb-test" not in str(notice)


async def test_retryable_failures_are_told_only_when_given_up(harness):
    h = await harness(delivery={"max_attempts": 2, "backoff_initial": "1s", "backoff_cap": "1s",
                                "poll_interval": "0.05s"})
    h.api.post(MESSAGE_PATH).mock(return_value=httpx.Response(502))
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "hello")
    await h.worker.drain()
    assert len(h.bot_posts(thread_ts)) == 1  # no notice yet
    h.clock.advance(5)
    await h.worker.drain()
    [(status, error)] = await h.rows()
    assert status == "failed" and "gave up after 2 attempts" in (error or "")
    assert "HTTP 502" in h.bot_posts(thread_ts)[-1]["text"]


async def test_a_chatbot_without_a_key_is_told_in_the_thread(harness):
    h = await harness(sitegpt={"api_url": API},
                      chatbots=[{"id": "other_bot", "sitegpt_api_key": "sk-other"}])
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "hello")
    await h.worker.drain()
    [(status, error)] = await h.rows()
    assert status == "failed" and f"no API key for chatbot {CHATBOT}" in (error or "")
    assert "no API key" in h.bot_posts(thread_ts)[-1]["text"]


async def test_mentions_become_display_names_and_members_are_looked_up_once(harness):
    h = await harness()
    route = h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await h.conversation()
    await h.reply(thread_ts, "<@U_BEN> will call you, <@U_GHOST> too")
    await h.reply(thread_ts, "Ask <@U_BEN|ben> in <#C1|billing>, <!here>")
    await h.worker.drain()
    assert [body["message"] for body in sent(route)] == [
        "@Ben Okafor will call you, @U_GHOST too", "Ask @Ben Okafor in #billing, @here"]
    looked_up = [args["user"] for method, args, _ in h.fake.calls if method == "users.info"]
    assert sorted(looked_up) == ["U_ANA", "U_BEN", "U_GHOST"]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing:UserWarning")
async def test_a_reply_with_nothing_left_to_say_is_skipped(harness):
    h = await harness()
    route = h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    await h.reply(await h.conversation(), "   ")
    await h.worker.drain()
    assert route.call_count == 0
    assert await h.rows() == [("skipped", "the reply has no text")]


@pytest.mark.parametrize(("mode", "said"), [("AGENT", "took over"), ("AI", "handed")])
async def test_mode_buttons_patch_the_thread_and_confirm(harness, mode, said):
    h = await harness()
    route = h.api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").mock(
        return_value=httpx.Response(200, json={"mode": mode}))
    thread_ts = await h.conversation()
    await h.stored(MODE_CHANGE, {"chatbotId": CHATBOT, "threadId": "thread_A",
                                 "channel": "C_CONV", "threadTs": thread_ts, "user": "U_BEN",
                                 "mode": mode})
    await h.worker.drain()
    assert sent(route) == [{"mode": mode}]
    assert route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"
    assert f"<@U_BEN> {said}" in h.bot_posts(thread_ts)[-1]["text"]
    assert await h.rows() == [("delivered", f"mode {mode}")]


async def refused_mode_change(h: Harness) -> str:
    """SiteGPT refuses every mode change of thread_A; its Slack thread's ts."""
    h.api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").mock(
        return_value=httpx.Response(404, json={"message": "Thread not found"}))
    return await h.conversation()


async def store_mode_change(h: Harness, thread_ts: str, mode: str) -> None:
    await h.stored(MODE_CHANGE, {"chatbotId": CHATBOT, "threadId": "thread_A",
                                 "channel": "C_CONV", "threadTs": thread_ts, "user": "U_BEN",
                                 "mode": mode})


async def test_a_refused_mode_change_is_told_in_the_thread(harness):
    h = await harness()
    thread_ts = await refused_mode_change(h)
    await store_mode_change(h, thread_ts, "AGENT")
    await h.worker.drain()
    assert [status for status, _ in await h.rows()] == ["failed"]
    assert h.bot_posts(thread_ts)[-1]["text"].startswith(
        ":warning: Could not take over (asked by <@U_BEN>): sitegpt: PATCH")


async def test_the_thread_is_told_by_a_follow_up_for_whoever_takes_notices(harness):
    h = await harness()
    thread_ts = await refused_mode_change(h)
    await store_mode_change(h, thread_ts, "AI")
    h.worker.destinations = {"sitegpt": h.sitegpt}  # nothing takes notices: none is stored
    await h.worker.drain()
    assert {row.kind for row in await h.store.deliveries()} == {"ADD_MESSAGE", MODE_CHANGE}

    h.worker.destinations = {"slack": h.slack, "sitegpt": h.sitegpt}
    await store_mode_change(h, thread_ts, "AGENT")
    await h.worker.drain()
    notices = [row for row in await h.store.deliveries() if row.kind == THREAD_NOTICE]
    assert [(row.destination, row.status) for row in notices] == [("slack", "delivered")]
    assert h.bot_posts(thread_ts)[-1]["text"].startswith(":warning: Could not take over")


async def test_a_lost_reaction_does_not_fail_the_delivered_reply(harness):
    h = await harness()
    route = h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    thread_ts = await h.conversation()
    h.fake.fail_next("reactions.add", error="missing_scope")
    await h.reply(thread_ts, "hello")
    await h.worker.drain()
    assert route.call_count == 1 and h.fake.reactions == []
    assert await h.rows() == [("delivered", "sent to the visitor as Ana")]


@pytest.mark.parametrize(("mrkdwn", "plain"), [
    ("a &lt;b&gt; &amp;amp; c", "a <b> &amp; c"),
    ("<https://a.example/x?y=1&amp;z=2|the docs>", "the docs (https://a.example/x?y=1&z=2)"),
    ("<https://a.example>", "https://a.example"),
    ("<https://a.example|https://a.example>", "https://a.example"),
    ("<mailto:ann@a.example|ann@a.example>", "ann@a.example"),
    ("<@U1> and <@U2|bob> and <@U3>", "@Ann and @bob and @U3"),
    ("<#C1|general> <#C2>", "#general #C2"),
    ("<!here> <!channel> <!everyone>", "@here @channel @everyone"),
    ("<!subteam^S1|@support> <!date^1392734382^{date}|Feb 18>", "@support Feb 18"),
    ("*bold* _it_ `code`\nnext line", "*bold* _it_ `code`\nnext line"),
])
def test_slack_text_becomes_plain_text(mrkdwn, plain):
    assert plain_text(mrkdwn, {"U1": "Ann"}) == plain


def test_off_without_a_signing_secret_or_a_key(make_settings):
    base = {"slack": {"bot_token": "xoxb-t", "channel": "C1", "signing_secret": "s"},
            "sitegpt": {"api_key": "k"}}
    def built(settings: Settings) -> SiteGPTDestination | None:
        return sitegpt_destination(settings, Templates(), Shared(settings))

    assert built(make_settings(base)) is not None
    no_secret = {**base, "slack": {"bot_token": "xoxb-t", "channel": "C1"}}
    assert built(make_settings(no_secret)) is None
    assert built(make_settings({**base, "sitegpt": {}})) is None


async def test_an_echo_long_after_the_reply_is_posted_like_any_agent_message(harness):
    h = await harness()
    h.api.post(MESSAGE_PATH).mock(return_value=ACCEPTED)
    await h.reply(await h.conversation(), "Done")
    await h.worker.drain()
    h.clock.advance(3601)
    late = {"event": "ADD_MESSAGE", "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "messageType": "AGENT_MESSAGE",
        "answer": "Done", "agentName": "Ana"}}
    await h.store.accept(new_event(parse_event("ADD_MESSAGE", late), late, ["slack"]),
                         h.clock.now(), 0)
    await h.worker.drain()
    assert [status for status, _ in await h.rows("slack")][-1] == "delivered"


async def test_a_reaction_already_there_counts_as_done(harness, fake):
    h = await harness()
    await h.slack.react("C_CONV", "1700000000.000001", "white_check_mark")
    await h.slack.react("C_CONV", "1700000000.000001", "white_check_mark")
    assert len(fake.reactions) == 1
    assert [method for method, _, _ in fake.calls].count("reactions.add") == 2


# previews ----------------------------------------------------------------------------------------

def previews(settings: Settings, templates: Templates,
             samples: dict[str, Event] | None = None) -> dict[str, Any]:
    sitegpt = sitegpt_destination(settings, templates, Shared(settings))
    assert sitegpt is not None
    rendered = sitegpt.render_samples(sample_events() if samples is None else samples)
    return {label: json.loads(text) for label, text in rendered.items()}


REPLIES_ON = {"slack": {"bot_token": "xoxb-t", "channel": "C1", "signing_secret": "s"},
              "sitegpt": {"api_key": KEY}}


def test_a_preview_shows_each_api_call_and_what_the_thread_is_told(make_settings):
    shown = previews(make_settings(REPLIES_ON), Templates())
    assert list(shown) == [
        "mode-change: PATCH /chatbots/chatbot_123/threads/thread_456",
        "mode-change: chat.postMessage (in the thread, once SiteGPT switched)",
        "mode-change: chat.postMessage (in the thread, if SiteGPT refuses the switch)",
        "slack-reply: POST /chatbots/chatbot_123/message",
        "slack-reply: reactions.add (once SiteGPT took the reply)",
        "slack-reply: chat.postMessage (in the thread, if SiteGPT refuses the reply)"]
    assert shown["slack-reply: POST /chatbots/chatbot_123/message"] == {
        "method": "POST", "path": "/chatbots/chatbot_123/message", "json": {
            "message": "Hi John, @U0456BEN reset your password & sent a link:"
                       " reset it here (https://example.com/reset)",
            "from": "AGENT", "threadId": "thread_456", "agentName": "U0123ANA"}}
    assert shown["mode-change: PATCH /chatbots/chatbot_123/threads/thread_456"] == {
        "method": "PATCH", "path": "/chatbots/chatbot_123/threads/thread_456",
        "json": {"mode": "AGENT"}}
    refused = shown["slack-reply: chat.postMessage (in the thread, if SiteGPT refuses the reply)"]
    assert (refused["channel"], refused["thread_ts"]) == ("C0123456789", "1700000000.000100")
    assert refused["text"] == (":warning: Not delivered to the visitor (reply by <@U0123ANA>):"
                               " sitegpt: POST /chatbots/chatbot_123/message: HTTP 404:"
                               " Thread not found")
    assert KEY not in json.dumps(shown)


def test_a_preview_leaves_out_what_the_destination_does_not_take(make_settings):
    shown = previews(make_settings(REPLIES_ON), Templates(),
                     {name: event for name, event in sample_events().items()
                      if name not in ("slack-reply", "mode-change")})
    assert shown == {}


def test_a_reply_with_no_text_previews_nothing(make_settings, sample):
    body = sample("slack-reply")
    body["data"]["text"] = "  "
    shown = previews(make_settings(REPLIES_ON), Templates(),
                     {"blank": parse_event(SLACK_REPLY, body)})
    assert shown == {}


@pytest.mark.parametrize("notice", ["reply_failed", "mode_changed", "mode_failed"])
def test_a_broken_notice_fails_the_preview_naming_file_and_line(make_settings, tmp_path, notice):
    (tmp_path / "mine" / "slack").mkdir(parents=True)
    broken = tmp_path / "mine" / "slack" / f"{notice}.json.j2"
    broken.write_text('{\n  "text": {{ nope }}\n}\n')
    with pytest.raises(TemplateError, match=rf"^{broken}:2: 'nope' is undefined$"):
        previews(make_settings(REPLIES_ON), Templates(tmp_path / "mine"))


async def test_the_preview_is_what_a_refused_mode_change_posts(harness):
    h = await harness()
    h.api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").mock(
        return_value=httpx.Response(404, json={"message": "Thread not found"}))
    thread_ts = await h.conversation()
    data = {"chatbotId": CHATBOT, "threadId": "thread_A", "channel": "C_CONV",
            "threadTs": thread_ts, "user": "U_BEN", "mode": "AI"}
    await h.stored(MODE_CHANGE, data)
    await h.worker.drain()
    posted = h.bot_posts(thread_ts)[-1]
    shown = h.sitegpt.render_samples(
        {"press": parse_event(MODE_CHANGE, {"event": MODE_CHANGE, "data": data})})
    preview = json.loads(shown["press: chat.postMessage (in the thread, if SiteGPT refuses the"
                               " switch)"])
    assert (posted["text"], posted["blocks"]) == (preview["text"], preview["blocks"])
    assert posted["text"].startswith(":warning: Could not hand back to the AI (asked by <@U_BEN>)")


async def test_lookups_and_threads_share_one_slack_client_and_pacer(make_settings):
    settings = make_settings(REPLIES_ON)
    destinations = build_destinations(settings, Templates())
    try:
        sitegpt = destinations["sitegpt"]
        assert isinstance(sitegpt, SiteGPTDestination)
        slack = sitegpt.tool("slack")
        assert isinstance(slack, SlackReplies)
        assert slack.workspace is destinations["slack"].workspace  # type: ignore[attr-defined]
        assert slack.workspace.pacer is destinations["slack"].pacer  # type: ignore[attr-defined]
    finally:
        for destination in destinations.values():
            await destination.aclose()
