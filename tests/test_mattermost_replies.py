"""Replies from a Mattermost thread reach the visitor: the SiteGPT destination (respx) asks the
fake Mattermost who wrote them and marks them sent; echoes are skipped per chat tool."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx

from bridge.destinations import build_destinations, unfinished_lines
from bridge.destinations.base import Destination
from bridge.destinations.shared import Shared
from bridge.event_rows import new_event
from bridge.events import CHAT_REPLY, MODE_CHANGE, SLACK_REPLY, canonical_json, parse_event
from bridge.samples import load_sample
from bridge.store import NewEvent, open_store
from bridge.store.sqlite import SQLiteStore
from bridge.templating import Templates
from bridge.worker import Worker
from tests.clock import FakeClock
from tests.fake_mattermost import BOT, TOKEN, FakeMattermost
from tests.fake_slack import FakeSlack, fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)

API = "https://sitegpt.test/api/v0"
KEY = "sk-live-secret-key"
CHATBOT = "chatbot_123"
MESSAGE_PATH = f"/chatbots/{CHATBOT}/message"
ACCEPTED = httpx.Response(200, json={"messageType": "AGENT_MESSAGE", "answer": "ok"})
ANA = {"id": "u_ana", "username": "ana", "first_name": "Ana", "last_name": "Lee"}


@dataclass
class Harness:
    store: SQLiteStore
    destinations: dict[str, Destination]
    worker: Worker
    clock: FakeClock
    mattermost: FakeMattermost
    slack: FakeSlack
    api: respx.Router
    serial: int = 0

    async def message(self, thread: str = "thread_A", **data: Any) -> None:
        body = {"event": "ADD_MESSAGE", "data": {
            "chatbotId": CHATBOT, "threadId": thread, "messageType": "USER_MESSAGE",
            "question": "Where is my order?", **data}}
        chat_tools = [name for name in ("slack", "mattermost") if name in self.destinations]
        await self.store.accept(new_event(parse_event("ADD_MESSAGE", body), body, chat_tools),
                                self.clock.now(), 600)
        await self.worker.drain()

    async def conversation_sitegpt_accepts(self) -> respx.Route:
        """A conversation in Mattermost, and SiteGPT's API taking every reply: its route."""
        await self.message()
        return self.api.post(API + MESSAGE_PATH).mock(return_value=ACCEPTED)

    async def root(self, thread: str = "thread_A") -> str:
        state = await self.store.link_state(CHATBOT, thread, "mattermost")
        assert state and state["root_id"]
        return str(state["root_id"])

    async def reply(self, text: str, user: str = "u_ana", thread: str = "thread_A") -> str:
        """A member answers in the Mattermost thread; the reply is stored as the listener
        stores it. The post's id."""
        root = await self.root(thread)
        post = self.mattermost.reply_by(user, root, text)
        await self.stored(CHAT_REPLY, {
            "chatbotId": CHATBOT, "threadId": thread, "tool": "mattermost",
            "channel": post["channel_id"], "root": root, "post": post["id"], "user": user,
            "userName": "@ana", "text": text})
        return str(post["id"])

    async def stored(self, kind: str, data: dict[str, Any]) -> None:
        self.serial += 1
        await self.store.accept(NewEvent(
            kind=kind, body=canonical_json({"event": kind, "data": data}),
            dedup_key=f"test:{self.serial}", ordering_key=f"{CHATBOT}/{data['threadId']}",
            destinations=["sitegpt"]), self.clock.now(), 600)

    async def rows(self, destination: str | None = None) -> list[tuple[str, str, str | None]]:
        rows = await self.store.deliveries(limit=1000)
        return [(row.kind, row.status, row.last_error or row.note) for row in reversed(rows)
                if destination in (None, row.destination)]

    async def addressed(self, kind: str) -> list[str]:
        return [row.destination for row in await self.store.deliveries(limit=1000)
                if row.kind == kind]

    def thread_messages(self, root: str) -> list[str]:
        """What the bridge posted in the thread (people's own replies left out)."""
        return [post["message"] for post in self.mattermost.thread(root)
                if post["user_id"] == BOT["id"]]


@pytest.fixture
def mattermost() -> Iterator[FakeMattermost]:
    with FakeMattermost() as server:
        server.users[ANA["id"]] = ANA
        yield server


@pytest.fixture
def api() -> Iterator[respx.Router]:
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()  # the fake Mattermost
        yield router


def settings_of(mattermost: FakeMattermost, slack: FakeSlack | None = None,
                **changes: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {
        "mattermost": {"url": mattermost.url, "bot_token": TOKEN, "channel": "mm_conv",
                       "burst": 1000, "per_second": 1000.0, **changes},
        "sitegpt": {"api_url": API, "api_key": KEY}}
    if slack is not None:
        sections["slack"] = {"bot_token": "xoxb-test", "api_url": slack.api_url,
                             "channel": "C_CONV", "signing_secret": "shh", "burst": 1000,
                             "per_second": 1000.0}
    return sections


@pytest.fixture
async def harness(make_settings, mattermost, fake, api, clock):
    built: list[Harness] = []

    async def build(with_slack: bool = False) -> Harness:
        settings = make_settings(settings_of(mattermost, fake if with_slack else None))
        store = open_store(settings.store.url)
        destinations = build_destinations(settings, Templates(), Shared(settings, clock))
        worker = Worker(store, destinations, settings.delivery, clock, random.Random(7))
        built.append(Harness(store, destinations, worker, clock, mattermost, fake, api))
        return built[-1]

    yield build
    for item in built:
        for destination in item.destinations.values():
            await destination.aclose()
        await item.store.close()


def sent(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


async def test_a_reply_reaches_the_visitor_named_as_in_mattermost_and_is_marked_sent(harness):
    h = await harness()
    route = await h.conversation_sitegpt_accepts()
    post = await h.reply("  Your parcel left today.  ")
    await h.worker.drain()
    assert sent(route) == [{"message": "Your parcel left today.", "from": "AGENT",
                            "threadId": "thread_A", "agentName": "Ana Lee"}]
    assert route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"
    assert h.mattermost.reactions == [
        {"user_id": BOT["id"], "post_id": post, "emoji_name": "white_check_mark"}]
    assert (await h.rows("sitegpt"))[-1] == (CHAT_REPLY, "delivered",
                                             "sent to the visitor as Ana Lee")


async def test_a_member_mattermost_cannot_name_is_named_as_the_tool_sent_them(harness):
    h = await harness()
    route = await h.conversation_sitegpt_accepts()
    await h.reply("On it", user="u_gone")  # no such member any more: 404
    await h.worker.drain()
    assert [body["agentName"] for body in sent(route)] == ["ana"]


async def test_a_lookup_mattermost_cannot_answer_now_is_retried_and_sent_once(harness):
    h = await harness()
    route = await h.conversation_sitegpt_accepts()
    h.mattermost.fail_next("user", 503)
    await h.reply("On it")
    await h.worker.drain()
    assert sent(route) == []
    h.clock.advance(120)
    await h.worker.drain()
    assert [body["message"] for body in sent(route)] == ["On it"]


async def test_a_mark_that_fails_leaves_the_reply_sent_once(harness):
    h = await harness()
    route = await h.conversation_sitegpt_accepts()
    h.mattermost.fail_next("reaction", 500)
    await h.reply("On it")
    await h.worker.drain()
    h.clock.advance(3600)
    await h.worker.drain()
    assert len(route.calls) == 1
    assert h.mattermost.reactions == []
    assert (await h.rows("sitegpt"))[-1][:2] == (CHAT_REPLY, "delivered")


async def test_the_echo_shows_in_slack_and_not_again_in_mattermost(harness):
    h = await harness(with_slack=True)
    await h.message()
    h.api.post(API + MESSAGE_PATH).mock(return_value=ACCEPTED)
    await h.reply("Your parcel left today.")
    await h.worker.drain()
    root = await h.root()
    before = h.thread_messages(root)
    await h.message(messageType="AGENT_MESSAGE", question=None,
                    answer="Your parcel left today.", agentName="Ana Lee")
    assert h.thread_messages(root) == before  # Mattermost shows the reply already
    slack_state = await h.store.link_state(CHATBOT, "thread_A", "slack")
    assert slack_state is not None
    slack_texts = [post.get("text", "") for post in
                   h.slack.thread("C_CONV", str(slack_state["thread_ts"]))]
    assert any("Your parcel left today." in text for text in slack_texts)
    assert ("ADD_MESSAGE", "skipped", "echo of a reply sent from Mattermost") in await h.rows(
        "mattermost")


async def test_a_reply_from_slack_shows_in_mattermost_and_not_again_in_slack(harness):
    h = await harness(with_slack=True)
    await h.message()
    h.api.post(API + MESSAGE_PATH).mock(return_value=ACCEPTED)
    slack_state = await h.store.link_state(CHATBOT, "thread_A", "slack")
    assert slack_state is not None
    await h.stored(SLACK_REPLY, {
        "chatbotId": CHATBOT, "threadId": "thread_A", "slackEventId": "Ev1",
        "channel": "C_CONV", "threadTs": slack_state["thread_ts"], "ts": "1700000001.000200",
        "user": "U_ANA", "text": "Sorted, see you"})
    await h.worker.drain()
    [sent_reply] = [row for row in await h.rows("sitegpt") if row[0] == SLACK_REPLY]
    agent = str(sent_reply[2]).removeprefix("sent to the visitor as ")
    await h.message(messageType="AGENT_MESSAGE", question=None, answer="Sorted, see you",
                    agentName=agent)
    assert ("ADD_MESSAGE", "skipped", "echo of a reply sent from Slack") in await h.rows("slack")
    assert any("Sorted, see you" in text for text in h.thread_messages(await h.root()))


async def test_an_agent_message_queued_behind_others_is_not_carried_along(harness):
    """It may be an echo: it goes on its own turn, where it is skipped."""
    h = await harness()
    await h.message()
    h.api.post(API + MESSAGE_PATH).mock(return_value=ACCEPTED)
    await h.reply("On it")
    await h.worker.drain()
    root = await h.root()
    for body in ({"question": "Hello?"},
                 {"messageType": "AGENT_MESSAGE", "question": None, "answer": "On it",
                  "agentName": "Ana Lee"}):
        data = {"chatbotId": CHATBOT, "threadId": "thread_A", "messageType": "USER_MESSAGE",
                **body}
        event = {"event": "ADD_MESSAGE", "data": data}
        await h.store.accept(new_event(parse_event("ADD_MESSAGE", event), event, ["mattermost"]),
                             h.clock.now(), 600)
    await h.worker.drain()
    shown = h.thread_messages(root)
    assert any("Hello?" in message for message in shown)
    assert not any("On it" in message for message in shown)


async def test_a_refused_reply_is_told_in_mattermost_only(harness):
    h = await harness(with_slack=True)
    await h.message()
    h.api.post(API + MESSAGE_PATH).mock(
        return_value=httpx.Response(404, json={"message": "Thread not found"}))
    await h.reply("On it")
    await h.worker.drain()
    assert (await h.rows("sitegpt"))[-1][:2] == (CHAT_REPLY, "failed")
    assert await h.addressed("BRIDGE_THREAD_NOTICE") == ["mattermost"]
    notice = await notice_body(h)
    assert notice["data"]["threadTs"] == await h.root()
    assert notice["data"]["notice"] == "reply_failed"
    assert notice["data"]["context"]["user_name"] == "@ana"
    assert "Thread not found" in notice["data"]["context"]["reason"]
    assert h.thread_messages(await h.root())[-1].startswith(
        ":warning: Not delivered to the visitor (reply by @ana): sitegpt\\: POST")


async def notice_body(h: Harness) -> dict[str, Any]:
    [row] = [row for row in await h.store.deliveries(limit=100)
             if row.kind == "BRIDGE_THREAD_NOTICE"]
    body = await h.store.event_body(row.event_id)
    assert body is not None
    return dict(json.loads(body))


async def test_take_over_pressed_in_mattermost_switches_and_is_told_there(harness):
    h = await harness(with_slack=True)
    await h.message()
    route = h.api.patch(f"{API}/chatbots/{CHATBOT}/threads/thread_A").mock(
        return_value=httpx.Response(200, json={"mode": "AGENT"}))
    root = await h.root()
    await h.stored(MODE_CHANGE, {"chatbotId": CHATBOT, "threadId": "thread_A",
                                 "channel": "mm_conv", "threadTs": root, "user": "u_ana",
                                 "userName": "ana", "tool": "mattermost", "mode": "AGENT"})
    await h.worker.drain()
    assert sent(route) == [{"mode": "AGENT"}]
    assert await h.addressed("BRIDGE_THREAD_NOTICE") == ["mattermost"]


@pytest.mark.parametrize(("sections", "built"), [
    ({}, True),
    ({"replies": False}, False),
])
def test_replies_from_mattermost_need_a_sitegpt_key_and_may_be_turned_off(
        make_settings, mattermost, sections, built):
    settings = make_settings(settings_of(mattermost, **sections))
    assert ("sitegpt" in build_destinations(settings, Templates())) is built


def test_without_a_sitegpt_key_no_reply_goes_anywhere(make_settings, mattermost):
    settings = make_settings({"mattermost": settings_of(mattermost)["mattermost"]})
    assert "sitegpt" not in build_destinations(settings, Templates())


def test_a_sitegpt_key_used_by_mattermost_alone_asks_nothing_of_slack(make_settings,
                                                                      mattermost):
    alone = make_settings(settings_of(mattermost))
    assert unfinished_lines(alone) == []
    half_slack = make_settings({**settings_of(mattermost), "slack": {"signing_secret": "shh"}})
    assert [line for line in unfinished_lines(half_slack) if "Slack" in line] == [
        "replies from Slack: slack.bot_token not set: replies stay off"]
    off = make_settings(settings_of(mattermost, replies=False))
    assert [line for line in unfinished_lines(off) if "Slack" in line] == [
        "replies from Slack: slack.signing_secret, slack.bot_token not set: replies stay off"]


async def test_the_preview_of_a_reply_from_mattermost_shows_the_call_and_the_mark(
        make_settings, mattermost):
    settings = make_settings(settings_of(mattermost))
    destinations = build_destinations(settings, Templates())
    samples = {name: parse_event(load_sample(name)["event"], load_sample(name))
               for name in ("mattermost-reply", "slack-reply")}
    try:
        shown = {label: json.loads(body)
                 for label, body in destinations["sitegpt"].render_samples(samples).items()}
    finally:
        for destination in destinations.values():
            await destination.aclose()
    assert list(shown) == [  # Slack's replies are off: none of its is shown
        "mattermost-reply: POST /chatbots/chatbot_123/message",
        "mattermost-reply: mattermost: a ✅ on the reply (once SiteGPT took it)"]
    assert shown["mattermost-reply: POST /chatbots/chatbot_123/message"]["json"] == {
        "message": "Hi John, I have reset your password: check your inbox for the link.",
        "from": "AGENT", "threadId": "thread_456", "agentName": "ana"}
