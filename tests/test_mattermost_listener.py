"""Mattermost's WebSocket listener: a real websockets client against the fake on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from bridge.app import create_app, open_bridge
from bridge.destinations import with_plugin_metrics
from bridge.destinations.mattermost_listener import (
    NAME,
    PAGE_SIZE,
    REFUSED_WAIT,
    SKEW_MARGIN,
    Backoff,
    Heard,
    heard,
    replies_listener,
    websocket_url,
)
from bridge.destinations.plugin import Inbound
from bridge.errors import StoreError
from bridge.events import CHAT_REPLY
from bridge.metrics import Metrics
from bridge.redact import Redactor
from bridge.store import Store
from tests.clock import FakeClock
from tests.console_support import PASSWORD_HASH, log_in, serving
from tests.fake_mattermost import BOT, TOKEN, FakeMattermost
from tests.metric_samples import value
from tests.settings_files import TOKENS
from tests.slack_harness import message
from tests.store_backends import AGAIN, BACKENDS

DEADLINE = 20.0
CHATBOT = "chatbot_123"
CHANNEL = "mm_conv"
SALES = "mm_sales"  # a route's channel for its chatbots' threads
ROOT = "root0000000000000000000001"
SALES_ROOT = "root0000000000000000000002"
SITEGPT = "https://sitegpt.test/api/v0"


@pytest.fixture
def fake() -> Iterator[FakeMattermost]:
    with FakeMattermost(channels=(CHANNEL, SALES, "mm_leads")) as server:
        yield server


def mattermost(fake: FakeMattermost, **changes: Any) -> dict[str, Any]:
    return {"url": fake.url, "bot_token": TOKEN, "channel": CHANNEL, "burst": 1000,
            "per_second": 1000.0, **changes}


def replies_on(fake: FakeMattermost, **changes: Any) -> dict[str, Any]:
    """Mattermost with replies on (a SiteGPT key), a route sending sales' threads elsewhere."""
    return {"mattermost": mattermost(fake, **changes), "sitegpt": {"api_key": "sk-test"},
            "routes": [{"chatbots": ["bot_sales"], "mattermost_channel": SALES}]}


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll `check` (plain or async) until it is truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {found!r}")
        await asyncio.sleep(0.01)


@dataclass
class Replica:
    """One bridge listening: its own store connection, metrics and listener task."""

    store: Store
    metrics: Metrics
    task: asyncio.Task[None]
    woken: list[int] = field(default_factory=list)

    def count(self, outcome: str) -> float:
        return value(generate_latest(self.metrics.registry).decode(),
                     "sitegpt_bridge_mattermost_posts_total", outcome=outcome)

    def listening(self) -> bool:
        return value(generate_latest(self.metrics.registry).decode(),
                     "sitegpt_bridge_mattermost_listening") == 1

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(self.task, DEADLINE)


@dataclass
class Listening:
    """A fake Mattermost, a store with a conversation in each threads' channel, listeners."""

    fake: FakeMattermost
    clock: FakeClock
    settings: Any
    store: Store
    backend: str
    replicas: list[Replica] = field(default_factory=list)
    opened: list[Store] = field(default_factory=list)  # closed after the test

    async def start(self, store: Store | None = None) -> Replica:
        """A listener on `store` (the first store by default), as `serve` starts it."""
        woken: list[int] = []
        inbound = Inbound(self.settings, store or self.store, self.clock,
                          lambda: woken.append(1), with_plugin_metrics(Metrics()))
        job = replies_listener(inbound)
        assert job is not None
        replica = Replica(store or self.store, inbound.metrics,
                          asyncio.create_task(job), woken)  # type: ignore[arg-type]
        self.replicas.append(replica)
        return replica

    async def started(self, store: Store | None = None) -> Replica:
        """A listener, once it listens (connected and caught up)."""
        replica = await self.start(store)
        await eventually(replica.listening, "the listener to listen")
        return replica

    async def again(self) -> Store:
        """The store opened again, as another replica or a restarted bridge opens it."""
        self.opened.append(await AGAIN[self.backend](self.store, self.clock))
        return self.opened[-1]

    def reply(self, text: str, root: str = ROOT, channel: str = CHANNEL, sender: str = "alice",
              ago: float = 0.0, **post: Any) -> dict[str, Any]:
        """A person writes `text` in the thread of `root`, `ago` seconds before now."""
        return self.fake.publish({"channel_id": channel, "root_id": root, "message": text,
                                  "create_at": millis(self.clock.now() - ago), **post},
                                 sender=sender)

    async def stored(self) -> list[dict[str, Any]]:
        """The CHAT_REPLY events stored, as their bodies, oldest first."""
        rows = [row for row in await self.store.deliveries(limit=1000) if row.kind == CHAT_REPLY]
        bodies = [await self.store.event_body(row.event_id) for row in reversed(rows)]
        return [json.loads(body or "{}") for body in bodies]

    async def texts(self) -> list[str]:
        return [body["data"]["text"] for body in await self.stored()]

    async def texts_are(self, *texts: str) -> bool:
        """Whether these replies are stored, in any order (conversations have none together)."""
        return sorted(await self.texts()) == sorted(texts)


def millis(seconds: float) -> int:
    return int(seconds * 1000)


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def listening(make_settings, fake, clock, tmp_path,
                    backend) -> AsyncIterator[Callable[..., Any]]:
    made: list[Listening] = []

    async def build(**changes: Any) -> Listening:
        settings = make_settings(replies_on(fake, **changes))
        store = await BACKENDS[backend](tmp_path, clock)
        await store.save_link(CHATBOT, "thread_1", NAME, {"channel": CHANNEL, "root_id": ROOT},
                              ref=f"{CHANNEL}/{ROOT}")
        await store.save_link("bot_sales", "thread_2", NAME,
                              {"channel": SALES, "root_id": SALES_ROOT},
                              ref=f"{SALES}/{SALES_ROOT}")
        made.append(Listening(fake, clock, settings, store, backend, opened=[store]))
        return made[-1]

    yield build
    for item in made:
        for replica in item.replicas:
            replica.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await replica.task
        for store in item.opened:
            await store.close()


async def test_a_reply_in_a_conversation_s_thread_is_stored_once_as_a_chat_reply(listening):
    s = await listening()
    replica = await s.started()
    post = s.reply("We ship on Monday.", sender="jane")

    stored = await eventually(s.stored, "the reply stored")
    assert stored == [{"event": CHAT_REPLY, "data": {
        "chatbotId": CHATBOT, "threadId": "thread_1", "tool": "mattermost", "channel": CHANNEL,
        "root": ROOT, "post": post["id"], "user": "jane_id", "userName": "@jane",
        "text": "We ship on Monday."}}]
    assert [row.destination for row in await s.store.deliveries()] == ["sitegpt"]
    assert replica.woken and replica.count("accepted") == 1
    assert s.fake.socket_headers[0]["authorization"] == f"Bearer {TOKEN}"


def person(**post: Any) -> dict[str, Any]:
    return post


NOT_REPLIES = {
    "the bot's own post": person(user_id=BOT["id"]),
    "a post flagged from a bot": person(props={"from_bot": "true"}),
    "a post of an incoming webhook": person(props={"from_webhook": "true"}),
    "a thread's root": person(root_id=""),
    "a system post": person(type="system_join_channel"),
    "a private note": person(message="// the visitor sounds upset"),
    "a private note after spaces": person(message="  \n//note"),
    "a post in another thread": person(root_id="elsewhere0000000000000000"),
    "a thread's root post id in another channel": person(channel_id="mm_leads"),
}


@pytest.mark.parametrize("post", NOT_REPLIES.values(), ids=NOT_REPLIES.keys())
async def test_what_is_not_a_person_s_reply_for_the_visitor_is_not_stored(listening, post):
    s = await listening()
    replica = await s.started()
    s.reply("not for the visitor", **post)
    s.reply("for the visitor")  # heard after the other on the same socket

    await eventually(s.stored, "the reply after it")
    assert await s.texts() == ["for the visitor"]
    assert replica.count("ignored") >= 1


async def test_the_private_note_prefix_is_the_one_set(listening):
    s = await listening(private_note_prefix="!")
    await s.started()
    for text in ("! only for us", "// for the visitor", "last"):
        s.reply(text)

    await eventually(lambda: s.texts_are("// for the visitor", "last"), "both replies")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_two_replicas_hear_a_reply_and_the_store_keeps_one(listening):
    s = await listening()
    first = await s.started()
    second = await s.started(await s.again())
    await eventually(lambda: len(s.fake.sockets) == 2, "both sockets open")
    s.reply("Only once, please.")

    await eventually(lambda: first.count("accepted") + first.count("duplicate")
                     + second.count("accepted") + second.count("duplicate") == 2,
                     "both replicas to hear the reply")
    assert await s.texts() == ["Only once, please."]
    assert first.count("accepted") + second.count("accepted") == 1


async def test_a_reply_written_while_the_socket_is_down_is_read_back(listening, caplog):
    caplog.set_level(logging.INFO, "bridge")
    s = await listening()
    s.reply("written before the bridge ever listened", ago=600)
    replica = await s.started()
    s.fake.refuse_sockets(503)
    s.fake.drop_sockets()
    missed = [s.reply("written while it reconnects"),
              s.reply("in a route's channel", root=SALES_ROOT, channel=SALES)]
    assert [s.fake.live[post["id"]] for post in missed] == [0, 0], "no socket heard them"

    s.fake.accept_sockets()
    await eventually(lambda: s.texts_are("in a route's channel", "written while it reconnects"),
                     "the missed replies read back")
    assert replica.count("accepted") == 2
    assert s.fake.connections == 2
    socket = websocket_url(s.fake.url)
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("bridge")]
    assert [line for line in lines if "listening for replies on" in line] == [
        f"mattermost: listening for replies on {socket}",
        f"mattermost: listening for replies on {socket} again"]


async def test_a_reply_behind_a_page_of_later_posts_is_read_back(listening):
    s = await listening()
    replica = await s.started()
    s.fake.refuse_sockets(503)
    s.fake.drop_sockets()
    s.reply("the first of many", ago=30)
    for n in range(PAGE_SIZE + 10):
        s.fake.publish({"channel_id": CHANNEL, "root_id": ROOT, "message": f"answer {n}",
                        "user_id": BOT["id"], "create_at": millis(s.clock.now() - 20)},
                       sender=BOT["username"])

    s.fake.accept_sockets()
    await eventually(lambda: s.texts_are("the first of many"), "the reply on the second page")
    assert replica.count("ignored") >= PAGE_SIZE + 10


async def test_a_channel_the_bot_cannot_read_is_named_and_the_others_read_back(listening, caplog):
    s = await listening()
    replica = await s.started()
    s.fake.refuse_sockets(503)
    s.fake.drop_sockets()
    s.reply("in a route's channel", root=SALES_ROOT, channel=SALES)
    s.reply("in the threads' channel")
    s.fake.fail_next("lookup", 403)  # the route's channel is read back first

    s.fake.accept_sockets()
    await eventually(lambda: s.texts_are("in the threads' channel"), "the readable reply")
    await eventually(replica.listening, "listening again despite the channel")
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING and record.name.startswith("bridge")]
    assert any(f"is the bot a member of routes.mattermost_channel {SALES}" in line
               for line in warnings), warnings


async def test_a_restart_reads_back_from_where_the_last_run_stopped(listening):
    s = await listening()
    s.reply("written before the first start", ago=SKEW_MARGIN * 5)
    first = await s.started()
    heard_live = s.reply("heard live")
    await eventually(s.stored, "the live reply")
    await first.stop()
    assert await s.store.listener_cursor(NAME) >= heard_live["create_at"] / 1000

    s.clock.advance(3600)  # the bridge was down an hour
    s.reply("written while the bridge was down", ago=60)
    restarted = await s.started(await s.again())

    # Read back from the cursor, less a margin: the reply heard live again, but not the one
    # written before the first start.
    assert await s.texts() == ["heard live", "written while the bridge was down"]
    assert (restarted.count("accepted"), restarted.count("duplicate")) == (1, 1)


@pytest.mark.parametrize("refusal", ["upgrade", "users/me"])
async def test_a_refused_token_is_retried_slowly_and_logged_once_naming_it(
        listening, caplog, refusal):
    s = await listening()
    if refusal == "upgrade":
        s.fake.refuse_sockets(401)
    else:
        s.fake.fail_next("me", 401, times=1000)
    begun = s.clock.now()
    replica = await s.start()
    await eventually(lambda: len(s.fake.socket_headers) >= 3, "three attempts")
    assert s.clock.now() - begun >= 2 * REFUSED_WAIT, "a refused token waits long"
    s.fake.accept_sockets()
    s.fake.script.clear()
    await eventually(replica.listening, "the listener to listen")
    s.reply("after the token works")

    await eventually(s.stored, "the reply")
    errors = bridge_errors(caplog)
    assert len(errors) == 1 and "mattermost.bot_token is not accepted" in errors[0], errors


async def test_a_wrong_token_in_the_settings_is_an_error_naming_the_setting(listening, caplog):
    s = await listening(bot_token="not-the-token")
    replica = await s.start()
    await eventually(lambda: len(s.fake.socket_headers) >= 3, "three attempts")
    await replica.stop()

    errors = bridge_errors(caplog)
    assert errors == ["mattermost: not listening for replies: mattermost: GET"
                      " /api/v4/websocket: HTTP 401: mattermost.bot_token is not accepted"]
    assert "not-the-token" not in caplog.text


def bridge_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the bridge logged as errors (the fake's server logs its refusals too)."""
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.ERROR and record.name.startswith("bridge")]


class Unavailable:
    """The store, but its first `failures` calls to accept raise StoreError."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def accept(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreError("sqlite: database is locked")
        return await self.store.accept(*args, **kwargs)


async def test_a_reply_the_store_cannot_take_is_taken_once_it_can(listening, caplog):
    s = await listening()
    flaky = Unavailable(s.store, failures=3)
    replica = await s.started(flaky)  # type: ignore[arg-type]
    s.reply("kept until stored")

    await eventually(s.stored, "the reply stored at last")
    assert flaky.failures == 0
    assert await s.texts() == ["kept until stored"]
    errors = bridge_errors(caplog)
    assert errors == ["mattermost: not listening for replies: store unavailable:"
                      " sqlite: database is locked"]
    assert replica.count("accepted") == 1


async def test_cancelling_the_listener_closes_its_socket(listening):
    s = await listening()
    replica = await s.started()
    await eventually(lambda: s.fake.sockets, "the socket open")

    await replica.stop()
    await eventually(lambda: not s.fake.sockets, "the socket closed")
    assert not replica.listening()


async def test_cancelling_while_it_waits_to_reconnect_ends_it(listening):
    s = await listening()
    s.fake.refuse_sockets(503)
    replica = await s.start()
    await eventually(lambda: s.fake.socket_headers, "an attempt")

    await replica.stop()
    assert replica.task.cancelled()


@pytest.mark.parametrize("changes", [
    {"mattermost": {"replies": False}},
    {"sitegpt": {"api_key": None}},
    {"mattermost": {"bot_token": None}},
], ids=["replies off", "no SiteGPT key", "Mattermost off"])
def test_nothing_listens_unless_replies_from_mattermost_are_on(make_settings, fake, changes):
    data = replies_on(fake)
    for section, keys in changes.items():
        data[section] = {key: value for key, value in {**data[section], **keys}.items()
                         if value is not None}
    inbound = Inbound(make_settings(data), None, FakeClock(), lambda: None,  # type: ignore[arg-type]
                      Metrics())
    job = replies_listener(inbound)
    try:  # with Mattermost on, only the cursor is kept at the present (replies_off)
        assert (job.__name__ if inspect.iscoroutine(job) else job) == (
            None if "bot_token" in changes.get("mattermost", {}) else "replies_off")
    finally:
        if inspect.iscoroutine(job):
            job.close()


def test_reconnecting_waits_twice_as_long_each_time_up_to_a_minute_until_it_works():
    backoff = Backoff()
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    backoff.reset()
    assert backoff.next() == 1


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8065", "ws://127.0.0.1:8065/api/v4/websocket"),
    ("https://chat.example.com/", "wss://chat.example.com/api/v4/websocket"),
    ("https://example.com/chat", "wss://example.com/chat/api/v4/websocket"),
])
def test_the_websocket_is_found_beside_the_rest_api(url, expected):
    assert websocket_url(url) == expected


def posted(post: Any, sender: Any = "@jane") -> str:
    return json.dumps({"event": "posted", "data": {"post": post, "sender_name": sender}})


POST = {"id": "p1", "channel_id": "c1", "create_at": 1_700_000_000_000, "root_id": "r1",
        "user_id": "u1", "message": "hi", "type": "", "props": {"from_bot": "false"}}


@pytest.mark.parametrize(("message", "expected"), [
    (json.dumps({"event": "hello", "data": {}}), None),
    (json.dumps({"event": "typing", "data": {"parent_id": "r1"}}), None),
    ("not json", None),
    (json.dumps(["posted"]), None),
    (posted("{not a post"), "an unreadable post"),
    (posted(json.dumps({"id": "p1"})), "an unreadable post"),
    (json.dumps({"event": "posted", "data": None}), "an unreadable post"),
])
def test_only_posted_events_carry_posts(message, expected):
    assert heard(message) == expected


def test_a_posted_event_names_its_author_as_mattermost_does():
    found = heard(posted(json.dumps(POST)))
    assert isinstance(found, Heard)
    assert (found.post.id, found.post.root_id, found.sender) == ("p1", "r1", "@jane")
    assert not found.post.flagged("from_bot")
    unnamed = heard(posted(json.dumps(POST), sender=None))
    assert isinstance(unnamed, Heard) and unnamed.sender is None


async def test_through_the_app_a_thread_reply_waits_for_sitegpt(make_settings, fake):
    bridge = open_bridge(make_settings(replies_on(fake)))
    app = create_app(bridge)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        await bridge.store.pause("sitegpt", time.time())  # its deliveries wait, as stored
        answer = await client.post("/webhooks/messages", json=message("thread_9", "Where is it?"),
                                   headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
        assert answer.json()["status"] == "accepted"
        root = (await eventually(fake.roots, "the thread's root post"))[0]
        await eventually(lambda: fake.sockets, "the bridge listening")
        post = fake.publish({"channel_id": CHANNEL, "root_id": root["id"],
                             "message": "It left today."}, sender="jane")

        async def replies() -> list[Any]:
            return [row for row in await bridge.store.deliveries() if row.kind == CHAT_REPLY]

        row = (await eventually(replies, "the reply stored"))[0]
        assert (row.destination, row.status) == ("sitegpt", "pending")
        body = json.loads(await bridge.store.event_body(row.event_id) or "{}")
        assert body["data"] == {
            "chatbotId": CHATBOT, "threadId": "thread_9", "tool": "mattermost",
            "channel": CHANNEL, "root": root["id"], "post": post["id"], "user": "jane_id",
            "userName": "@jane", "text": "It left today."}
    await eventually(lambda: not fake.sockets, "the socket closed with the app")


async def test_through_the_app_a_thread_reply_reaches_the_visitor_and_is_not_posted_back(
        make_settings, fake):
    """The whole way: a webhook makes the thread, a member answers in it, the visitor gets the
    answer from SiteGPT's API as that member, the reply gets its ✅, and the echo SiteGPT sends
    back is not posted in the thread a second time."""
    fake.users["jane_id"] = {"id": "jane_id", "username": "jane", "first_name": "Jane"}
    settings = replies_on(fake)
    settings["sitegpt"]["api_url"] = SITEGPT
    bridge = open_bridge(make_settings(settings))
    app = create_app(bridge)
    with respx.mock(assert_all_called=False) as sitegpt:
        sitegpt.route(host="127.0.0.1").pass_through()  # the fake Mattermost
        answers = sitegpt.post(f"{SITEGPT}/chatbots/{CHATBOT}/message").mock(
            return_value=httpx.Response(200, json={"messageType": "AGENT_MESSAGE"}))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            async def webhook(body: dict[str, Any]) -> None:
                answer = await client.post("/webhooks/messages", json=body,
                                           headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
                assert answer.json()["status"] == "accepted"

            await webhook(message("thread_9", "Where is it?"))
            root = (await eventually(fake.roots, "the thread's root post"))[0]
            await eventually(lambda: fake.sockets, "the bridge listening")
            post = fake.publish({"channel_id": CHANNEL, "root_id": root["id"],
                                 "message": "It left today."}, sender="jane")
            await eventually(lambda: fake.reactions, "the reply marked sent")
            [sent] = [json.loads(call.request.content) for call in answers.calls]
            assert sent == {"message": "It left today.", "from": "AGENT",
                            "threadId": "thread_9", "agentName": "Jane"}
            assert fake.reactions[0]["post_id"] == post["id"]
            await webhook(message("thread_9", "It left today.", "AGENT_MESSAGE",
                                  agentName="Jane"))
            await webhook(message("thread_9", "Thanks a lot"))

            def bridge_posts() -> list[str]:
                return [item["message"] for item in fake.thread(root["id"])
                        if item["user_id"] == BOT["id"]]

            await eventually(lambda: any("Thanks a lot" in text for text in bridge_posts()),
                             "the visitor's next message")
            assert bridge_posts()[-1] == ":bust_in_silhouette: **Visitor:** Thanks a lot"
            assert not any("It left today" in text for text in bridge_posts())


async def test_a_settings_change_stops_and_starts_the_listener_with_the_new_settings(
        make_settings, fake):
    bridge = open_bridge(make_settings(replies_on(fake)))
    app = create_app(bridge)
    async with app.router.lifespan_context(app):
        await eventually(lambda: fake.sockets, "the bridge listening")
        first = fake.connections

        async def change(**mattermost_changes: Any) -> None:
            parts = await bridge.prepare(make_settings(replies_on(fake, **mattermost_changes)))
            bridge.apply(parts, Redactor.for_settings(parts.settings))

        await change(replies=False)
        await eventually(lambda: not fake.sockets, "the listener stopped: replies are off")
        await change(replies=True)
        await eventually(lambda: fake.sockets, "the bridge listening again")
        assert fake.connections == first + 1
    await eventually(lambda: not fake.sockets, "the socket closed with the app")


def test_the_console_overview_says_whether_mattermost_is_listened_to(make_settings, fake):
    settings = make_settings({**replies_on(fake), "console": {"password_hash": PASSWORD_HASH}})
    for client in serving(open_bridge(settings), run_worker=False):
        log_in(client)

        overview_says(client, "<td>mattermost</td><td>listening</td>")
        fake.refuse_sockets(503)
        fake.drop_sockets()
        overview_says(client, "<td>mattermost</td><td>not listening")
        assert "sitegpt_bridge_mattermost_listening" in listening_table(client)


def test_the_console_overview_shows_no_listener_while_replies_are_off(make_settings, fake):
    settings = make_settings({"mattermost": mattermost(fake),
                              "console": {"password_hash": PASSWORD_HASH}})
    for client in serving(open_bridge(settings), run_worker=False):
        log_in(client)
        assert 'id="listening"' not in client.get("/console/").text


def listening_table(client: TestClient) -> str:
    page = client.get("/console/").text.partition('id="listening"')[2]
    return page.partition("</table>")[0]


def overview_says(client: TestClient, state: str) -> None:
    """Wait until the overview's listening table shows `state`."""
    deadline = time.monotonic() + DEADLINE
    while state not in listening_table(client):
        assert time.monotonic() < deadline, f"the overview never said {state!r}"
        time.sleep(0.02)


async def test_what_the_team_writes_while_replies_are_off_never_reaches_the_visitor(
        make_settings, fake):
    """Turned off, then on again by a settings change: the read-back starts from when they
    were turned on, not from where the listener had got to before."""
    bridge = open_bridge(make_settings(replies_on(fake)))
    app = create_app(bridge, run_worker=False)
    async with app.router.lifespan_context(app):
        await eventually(lambda: fake.sockets, "the bridge listening")
        await bridge.store.save_link(CHATBOT, "thread_9", "mattermost",
                                     {"channel": CHANNEL, "root_id": ROOT}, f"{CHANNEL}/{ROOT}")
        fake.posts.append({"id": ROOT, "channel_id": CHANNEL, "root_id": "", "user_id": BOT["id"],
                           "message": "root", "create_at": int(time.time() * 1000)})

        async def change(**mattermost_changes: Any) -> None:
            parts = await bridge.prepare(make_settings(replies_on(fake, **mattermost_changes)))
            bridge.apply(parts, Redactor.for_settings(parts.settings))

        await change(replies=False)
        await eventually(lambda: not fake.sockets, "the listener stopped: replies are off")
        fake.publish({"channel_id": CHANNEL, "root_id": ROOT, "message": "between us"})
        await change(replies=True)
        await eventually(lambda: fake.sockets, "the bridge listening again")
        fake.publish({"channel_id": CHANNEL, "root_id": ROOT, "message": "for the visitor"})

        async def replies() -> list[str]:
            rows = [row for row in await bridge.store.deliveries() if row.kind == CHAT_REPLY]
            bodies = [json.loads(await bridge.store.event_body(row.event_id) or "{}")
                      for row in rows]
            return [body["data"]["text"] for body in bodies]

        assert await eventually(replies, "the reply written once replies were on") == [
            "for the visitor"]
