"""Mattermost destination: the real httpx client against a fake Mattermost on 127.0.0.1."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.cli import main
from bridge.destinations import build_destinations
from bridge.destinations.base import Delivered, Delivery
from bridge.destinations.mattermost import MattermostDestination
from bridge.destinations.mattermost_server import MESSAGE_LIMIT
from bridge.destinations.shared import Shared
from bridge.errors import ConfigError, PermanentError, RetryableError
from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.store import open_store
from bridge.store.sqlite import SQLiteStore
from bridge.templating import CUT_MARKER, Templates, mattermost_link, mattermost_text
from bridge.worker import Worker
from tests.clock import FakeClock
from tests.fake_mattermost import TOKEN, FakeMattermost
from tests.fake_slack import FakeSlack
from tests.slack_harness import message


@dataclass
class Harness:
    store: SQLiteStore
    mattermost: MattermostDestination
    worker: Worker
    clock: FakeClock
    fake: FakeMattermost

    async def accept(self, body: dict[str, Any]) -> int:
        event = parse_event(body["event"], body)
        destinations = [name for name, destination in self.worker.destinations.items()
                        if destination.accepts(event.event)]
        accepted = await self.store.accept(new_event(event, body, destinations),
                                           self.clock.now(), 600)
        return accepted.event_id

    async def statuses(self) -> list[tuple[str, str | None]]:
        rows = await self.store.deliveries(limit=1000)
        return [(row.status, row.last_error or row.note) for row in reversed(rows)]


@pytest.fixture
def fake() -> Iterator[FakeMattermost]:
    with FakeMattermost() as server:
        yield server


def mattermost_settings(fake: FakeMattermost, **changes: Any) -> dict[str, Any]:
    return {"url": fake.url, "bot_token": TOKEN, "channel": "mm_conv",
            "leads_channel": "mm_leads", "escalation_mention": "@support-team",
            "burst": 1000, "per_second": 1000.0, **changes}


@pytest.fixture
async def harness(make_settings, fake, clock):
    built: list[Harness] = []

    async def build(extra: dict[str, Any] | None = None, **mattermost: Any) -> Harness:
        settings = make_settings({"mattermost": mattermost_settings(fake, **mattermost),
                                  **(extra or {})})
        store = open_store(settings.store.url)
        destination = build_destinations(settings, Templates(settings.templates.dir),
                                         Shared(settings, clock))
        chosen = {"mattermost": destination["mattermost"]}
        worker = Worker(store, chosen, settings.delivery, clock, random.Random(7))
        built.append(Harness(store, destination["mattermost"], worker, clock, fake))
        return built[-1]

    yield build
    for item in built:
        await item.mattermost.aclose()
        await item.store.close()


def escalation(thread: str, **user: Any) -> dict[str, Any]:
    return {"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": "chatbot_123", "threadId": thread, "user": user or None}}


def ticket_linked(thread: str, key: str = "SUP-7") -> dict[str, Any]:
    return {"event": "BRIDGE_TICKET_LINKED", "data": {
        "chatbotId": "chatbot_123", "threadId": thread, "issueKey": key,
        "issueUrl": f"https://jira.example/browse/{key}"}}


def ticket_status(thread: str, status: str, category: str = "indeterminate",
                  key: str = "SUP-7", changed_at: int = 1) -> dict[str, Any]:
    return {"event": "JIRA_TICKET_STATUS", "data": {
        "chatbotId": "chatbot_123", "threadId": thread, "issueKey": key, "status": status,
        "category": category, "changedAt": changed_at}}


LEAD = {"event": "NEW_LEAD_CAPTURE", "data": {
    "chatbotId": "chatbot_123", "leadDetails": {"id": "lead_1", "name": "Ann",
                                                "email": "ann@example.com"}}}


def messages(posts: list[dict[str, Any]]) -> list[str]:
    return [post["message"] for post in posts]


def shown(posts: list[dict[str, Any]]) -> list[str]:
    """Every message the posts show, in order: a reply carrying a backlog shows each."""
    return [part for post in posts for part in post["message"].split("\n\n")]


async def test_each_conversation_is_one_root_post_and_its_replies_in_order(harness):
    h = await harness()
    for n in range(6):
        await h.accept(message("thread_A", f"A{n}"))
        if n % 2 == 0:
            await h.accept(message("thread_B", f"B{n}"))
    await h.worker.drain()

    roots = h.fake.roots()
    assert len(roots) == 2 and all(root["channel_id"] == "mm_conv" for root in roots)
    by_thread = {("thread_A" if "thread\\_A" in root["message"] else "thread_B"): root["id"]
                 for root in roots}
    assert shown(h.fake.thread(by_thread["thread_A"])) == [
        f":bust_in_silhouette: **Visitor:** A{n}" for n in range(6)]
    assert len(shown(h.fake.thread(by_thread["thread_B"]))) == 3
    state = await h.store.link_state("chatbot_123", "thread_A", "mattermost")
    assert state and state["root_id"] == by_thread["thread_A"]
    assert "AI answering" in h.fake.root(by_thread["thread_A"])["message"]


async def test_sources_sent_with_titles_show_as_links_not_as_objects(harness):
    h = await harness()
    await h.accept(message("thread_A", "Plans start at $10", kind="NORMAL_MESSAGE", sources=[
        {"url": "https://example.com/pricing", "title": "@all Pricing"},
        "https://example.com/faq"]))
    await h.worker.drain()
    [root] = h.fake.roots()
    [reply] = messages(h.fake.thread(root["id"]))
    assert "(https://example.com/pricing)" in reply and "(https://example.com/faq)" in reply
    assert "title=" not in reply and "@all" not in reply


async def test_an_escalation_mentions_the_group_with_the_request_and_patches_the_root(harness):
    h = await harness()
    await h.accept(message("thread_A", "I want a refund"))
    await h.accept(escalation("thread_A", name="Ann", email="ann@example.com"))
    await h.worker.drain()

    [root] = h.fake.roots()
    _, escalated = h.fake.thread(root["id"])
    assert escalated["message"].startswith("@support-team :rotating_light: **Ann** asked")
    fields = escalated["props"]["attachments"][0]["fields"]
    assert {"title": "Request", "value": "I want a refund", "short": False} in fields
    assert "ann@\u2060example\\.com" in [field["value"] for field in fields]
    assert h.fake.patches[-1]["id"] == root["id"]
    assert "Escalated: waiting for a human" in h.fake.root(root["id"])["message"]


async def test_the_root_leads_with_visitor_and_question_and_follows_the_status(harness):
    h = await harness()
    question = "Can I get a refund for order 42? " + "Please explain. " * 20
    await h.accept(message("thread_A", question))
    await h.worker.drain()
    [root] = h.fake.roots()
    lines = h.fake.root(root["id"])["message"].split("\n")
    assert lines[0].startswith(":bust_in_silhouette: **Visitor**: Can I get a refund")
    assert len(lines[0]) < 200 and lines[0].endswith("… \\[cut\\]")  # escaped, shown as is
    assert lines[1] == ":robot_face: AI answering"
    assert lines[2].startswith("**chatbot\\_123** · conversation thread\\_A · [Open in SiteGPT]")
    patched = len(h.fake.patches)
    await h.accept(message("thread_A", "and another thing"))  # not the first: nothing changes
    await h.worker.drain()
    assert len(h.fake.patches) == patched

    steps = [(escalation("thread_A", name="Ann", email="ann@example.com"),
              ":rotating_light: Escalated: waiting for a human"),
             (message("thread_A", "On it", kind="AGENT_MESSAGE", agentName="Bob"),
              ":technologist: **Bob (agent) is handling**"),
             (ticket_linked("thread_A"),
              "is handling** · [SUP\\-7](https://jira.example/browse/SUP-7)"),
             (ticket_status("thread_A", "Done", category="done"), ":white_check_mark: Resolved")]
    for event, status in steps:
        await h.accept(event)
        await h.worker.drain()
        headline, shown_status, _ = h.fake.root(root["id"])["message"].split("\n")
        assert headline.startswith(":bust_in_silhouette: **Ann** (ann@\u2060example\\.com): Can")
        assert status in shown_status
    assert h.fake.patches[-1]["id"] == root["id"]


async def test_a_lead_in_a_conversation_names_the_visitor_on_its_root(harness):
    h = await harness()
    await h.accept(message("thread_A", "hello"))
    await h.accept({**LEAD, "data": {**LEAD["data"], "threadId": "thread_A"}})
    await h.worker.drain()
    [root] = [post for post in h.fake.roots() if post["channel_id"] == "mm_conv"]
    assert h.fake.root(root["id"])["message"].startswith(
        ":bust_in_silhouette: **Ann** (ann@\u2060example\\.com): hello")


async def test_a_lead_goes_to_the_leads_channel_with_a_card(harness):
    h = await harness()
    await h.accept(LEAD)
    await h.worker.drain()
    [post] = h.fake.posts
    assert post["channel_id"] == "mm_leads" and post["root_id"] == ""
    assert "**Ann**" in post["message"]
    assert post["props"]["attachments"][0]["fields"][0]["title"] == "Email"


async def test_ticket_link_and_status_show_in_the_thread_and_on_the_root(harness):
    h = await harness()
    await h.accept(message("thread_A", "help"))
    await h.accept(ticket_linked("thread_A"))
    await h.accept(ticket_status("thread_A", "In Progress", changed_at=1))
    await h.accept(ticket_status("thread_A", "In Progress", changed_at=2))  # said twice
    await h.accept(ticket_status("thread_A", "Done", "done", changed_at=3))
    await h.worker.drain()

    [root] = h.fake.roots()
    replies = messages(h.fake.thread(root["id"]))
    assert replies[1] == (":ticket: Jira ticket created: "
                          "[SUP\\-7](https://jira.example/browse/SUP-7)")
    assert "to **In Progress**" in replies[2] and "to **Done**" in replies[3]
    assert len(replies) == 4
    assert "Resolved · [SUP\\-7](https://jira.example/browse/SUP-7) (Done)" in (
        h.fake.root(root["id"])["message"])
    assert [status for status, _ in await h.statuses()] == [
        "delivered", "delivered", "delivered", "skipped", "delivered"]


async def test_a_ticket_link_from_jira_follows_to_every_chat_tool(make_settings, clock):
    """The worker addresses Jira's follow-up to each destination taking its kind."""
    with FakeMattermost() as fake, FakeSlack() as slack:
        settings = make_settings({
            "mattermost": mattermost_settings(fake),
            "slack": {"bot_token": "xoxb-test", "api_url": slack.api_url, "channel": "C_CONV",
                      "burst": 1000, "per_second": 1000.0}})
        store = open_store(settings.store.url)
        destinations = build_destinations(settings, Templates(), Shared(settings, clock))
        chosen = {name: destinations[name] for name in ("slack", "mattermost")}
        worker = Worker(store, chosen, settings.delivery, clock, random.Random(7))
        h = Harness(store, chosen["mattermost"], worker, clock, fake)  # type: ignore[arg-type]
        try:
            for n in range(3):
                await h.accept(message("thread_A", f"m{n}"))
            await h.accept(escalation("thread_A", name="Ann"))
            await worker.drain()
            slack_state = await store.link_state("chatbot_123", "thread_A", "slack")
            mm_state = await store.link_state("chatbot_123", "thread_A", "mattermost")
        finally:
            for destination in destinations.values():
                await destination.aclose()
            await store.close()
    assert slack_state and mm_state and slack_state["thread_ts"] != mm_state["root_id"]
    assert len(slack.parents()) == 1 and len(fake.roots()) == 1
    assert len(shown(fake.thread(fake.roots()[0]["id"]))) == 4
    assert "Visitor: m2" in str(slack.thread("C_CONV", slack.parents()[0]["ts"]))


async def test_429_waits_for_the_reset_then_delivers_once(harness):
    h = await harness()
    await h.accept(message("thread_A", "first"))
    await h.worker.drain()
    h.fake.fail_next("posts", 429, **{"X-Ratelimit-Reset": "30"})
    await h.accept(message("thread_A", "second"))
    await h.worker.drain()
    status, reason = (await h.statuses())[-1]
    assert status == "pending" and "HTTP 429" in (reason or "") and "30 s" in (reason or "")
    row = (await h.store.deliveries())[0]
    assert 30 <= row.next_attempt_at - h.clock.now() <= 31
    h.clock.advance(31)
    await h.worker.drain()
    assert [status for status, _ in await h.statuses()] == ["delivered", "delivered"]
    assert len(h.fake.posts) == 3


async def test_server_errors_and_timeouts_are_retried_until_delivered(harness):
    h = await harness(timeout_seconds=0.3)
    h.fake.fail_next("posts", 503)
    h.fake.fail_next("posts", 200, delay=1.0)  # posted, answered too late: a timeout
    await h.accept(message("thread_A", "hello"))
    await h.worker.drain()
    [(status, reason)] = await h.statuses()
    assert status == "pending" and "HTTP 503" in (reason or "")
    h.clock.advance(5)
    await h.worker.drain()
    [(status, reason)] = await h.statuses()
    assert status == "pending" and "timed out" in (reason or "")
    h.clock.advance(5)
    await h.worker.drain()
    assert [status for status, _ in await h.statuses()] == ["delivered"]


@pytest.mark.parametrize(("change", "setting"), [
    ({"bot_token": "wrong"}, "mattermost.bot_token is not accepted"),
    ({"channel": "mm_elsewhere"}, "is the bot a member of mattermost.channel mm_elsewhere"),
])
async def test_a_refused_token_or_channel_fails_at_once_naming_the_setting(harness, change,
                                                                          setting):
    h = await harness(**change)
    await h.accept(message("thread_A", "hello"))
    await h.worker.drain()
    [(status, reason)] = await h.statuses()
    assert status == "failed" and setting in (reason or "")
    assert "wrong" not in (reason or "")


async def test_a_message_over_mattermosts_limit_is_cut_not_refused(harness):
    h = await harness()
    # Escaped, every "." doubles: the cut question and answer are then over the limit.
    await h.accept(message("thread_A", "." * 9_000, kind="NORMAL_MESSAGE"))
    await h.worker.drain()
    assert h.fake.refused == []
    [reply] = h.fake.thread(h.fake.roots()[0]["id"])
    assert len(reply["message"]) <= MESSAGE_LIMIT and CUT_MARKER in reply["message"]


async def test_check_names_the_bot_and_each_channel(harness):
    h = await harness()
    line = await h.mattermost.verify()
    assert "bot @sitegpt" in line
    assert "channel name-of-mm_conv (mm_conv) ok" in line
    assert "channel name-of-mm_leads (mm_leads) ok" in line


SALES_ROUTE = {"chatbots": ["bot_sales"], "mattermost_channel": "mm_sales",
               "mattermost_leads_channel": "mm_sales_leads"}
SUPPORT_ROUTE = {"chatbots": ["bot_support"], "mattermost_channel": "mm_support"}


async def test_routes_send_each_chatbots_threads_and_leads_to_its_channels(harness):
    h = await harness({"routes": [SALES_ROUTE, SUPPORT_ROUTE]})
    h.fake.channels |= {"mm_sales", "mm_sales_leads", "mm_support"}
    for chatbot in ("bot_sales", "bot_support", "chatbot_123"):
        await h.accept(message("thread_A", f"hello from {chatbot}", chatbotId=chatbot))
        await h.accept({**LEAD, "data": {**LEAD["data"], "chatbotId": chatbot}})
    await h.worker.drain()

    roots = {root["channel_id"] for root in h.fake.roots() if "Ann" not in root["message"]}
    assert roots == {"mm_sales", "mm_support", "mm_conv"}
    for root in h.fake.roots():
        if "Ann" not in root["message"]:
            [reply] = h.fake.thread(root["id"])
            assert reply["channel_id"] == root["channel_id"]
    leads = [post["channel_id"] for post in h.fake.posts if "**Ann**" in post["message"]]
    # A route without a leads channel leaves them to [mattermost]'s.
    assert sorted(leads) == ["mm_leads", "mm_leads", "mm_sales_leads"]


async def test_check_reads_every_routes_channels_naming_the_route_key(harness):
    h = await harness({"routes": [SALES_ROUTE, SUPPORT_ROUTE]})
    h.fake.channels |= {"mm_sales", "mm_sales_leads"}
    with pytest.raises(PermanentError, match=r"routes\.mattermost_channel mm_support"):
        await h.mattermost.verify()
    h.fake.channels.add("mm_support")
    line = await h.mattermost.verify()
    assert all(f"({channel}) ok" in line for channel in
               ("mm_conv", "mm_leads", "mm_sales", "mm_sales_leads", "mm_support"))


@pytest.mark.parametrize(("change", "expected"), [
    ({"bot_token": "wrong"}, "HTTP 401.*mattermost.bot_token"),
    ({"leads_channel": "mm_gone"}, "HTTP 403.*mattermost.leads_channel mm_gone"),
])
async def test_check_fails_on_a_refused_token_or_an_unseen_channel(harness, change, expected):
    h = await harness(**change)
    with pytest.raises(PermanentError, match=expected):
        await h.mattermost.verify()


def test_the_destination_is_off_unless_url_and_token_are_set(make_settings):
    assert "mattermost" not in build_destinations(make_settings(), Templates())
    half = make_settings({"mattermost": {"url": "http://127.0.0.1:9", "channel": "c"}})
    assert "mattermost" not in build_destinations(half, Templates())
    from bridge.destinations import unfinished_lines
    assert any(line.startswith("mattermost: mattermost.url") for line in unfinished_lines(half))
    with pytest.raises(ConfigError):
        make_settings({"mattermost": {"url": "http://127.0.0.1:9", "bot_token": "t"}})


@pytest.mark.parametrize(("text", "planted"), [
    ("@all @channel @here @jane", ["@all", "@channel", "@here", "@jane"]),
    ("~town-square", ["~town"]),
    ("[Click](https://evil.example) ![x](https://evil.example/i.png)", ["](", "https://"]),
    ("see www.evil.example or http://evil.example", ["www.", "http://"]),
    ("# Heading\n| a | b |\n|---|---|\n```\ncode", ["\n#", "\n|", "```"]),
    ("a\u202egpj.exe", ["\u202e"]),
])
def test_mattermost_text_leaves_nothing_live(text, planted):
    escaped = mattermost_text(text)
    assert [mark for mark in planted if mark in escaped] == []


@pytest.mark.parametrize(("url", "expected"), [
    ("https://jira.example/browse/SUP-7", "[SUP\\-7](https://jira.example/browse/SUP-7)"),
    ("https://wiki.example/a_(b)", "[SUP\\-7](https://wiki.example/a_%28b%29)"),
    ("javascript:alert(1)", "SUP\\-7: javascript\\:alert\\(1\\)"),
    ("https://evil.example/\u202egpj", "SUP\\-7: h\u2060ttps\\://evil\\.example/gpj"),
    ("https://evil.example x", "SUP\\-7: h\u2060ttps\\://evil\\.example x"),
])
def test_mattermost_link_links_only_a_clean_http_url(url, expected):
    assert mattermost_link(url, "SUP-7") == expected


async def test_a_backlog_after_an_outage_goes_in_few_replies_in_order(harness):
    h = await harness()
    await h.accept(message("thread_A", "first"))
    await h.worker.drain()
    h.fake.fail_next("posts", 503)
    for n in range(30):
        await h.accept(message("thread_A", f"m{n:02d} " + "." * 400, kind="NORMAL_MESSAGE"))
    await h.worker.drain()
    h.clock.advance(5)
    await h.worker.drain()

    [root] = h.fake.roots()
    replies = h.fake.thread(root["id"])
    assert all(len(reply["message"]) <= MESSAGE_LIMIT for reply in replies)
    answers = [part for part in shown(replies) if "**chatbot\\_123:**" in part]
    assert [part.split("** ", 1)[1][:3] for part in answers] == [f"m{n:02d}" for n in range(30)]
    assert 2 < len(replies) < 31  # a backlog of 30 goes in a few replies, none cut
    assert CUT_MARKER not in str(replies)
    assert [status for status, _ in await h.statuses()] == ["delivered"] * 31


async def test_a_root_posted_without_an_answer_is_found_not_posted_again(harness):
    h = await harness(timeout_seconds=0.2)
    h.fake.fail_next("posts", 200, delay=0.4)  # the root is made, the answer comes too late
    await h.accept(message("thread_A", "hello"))
    await h.worker.drain()
    [(status, reason)] = await h.statuses()
    assert status == "pending" and "timed out" in (reason or "")
    assert len(h.fake.posts) == 1  # made, though the bridge did not hear back
    h.clock.advance(5)
    await h.worker.drain()
    [root] = h.fake.roots()
    assert shown(h.fake.thread(root["id"])) == [":bust_in_silhouette: **Visitor:** hello"]


async def die_after(h: Harness, post: bool) -> None:
    """A worker takes the next delivery, delivers it (unless not `post`), and dies unrecorded."""
    [job] = await h.store.claim("dead-worker", h.clock.now(), 1, 15)
    if post:
        delivery = Delivery(job, parse_event(job.kind, job.payload), h.store, h.clock)
        assert isinstance(await h.mattermost.deliver(delivery), Delivered)
    h.clock.advance(15)  # its lease runs out: the next claim takes it over, uncertain


@pytest.mark.parametrize("posted", [True, False], ids=["posted", "not-posted"])
@pytest.mark.parametrize("body", [message("thread_A", "again?"), LEAD,
                                  escalation("thread_A", name="Ann")],
                         ids=["message", "lead", "escalation"])
async def test_a_delivery_cut_off_mid_call_is_looked_for_before_it_goes_again(
        harness, posted, body):
    h = await harness()
    await h.accept(message("thread_A", "first"))
    await h.worker.drain()
    await h.accept(body)
    await die_after(h, posted)
    await h.worker.drain()
    assert [status for status, _ in await h.statuses()] == ["delivered", "delivered"]
    assert len(h.fake.lookups) == 1
    carrying = [post for post in h.fake.posts
                if post["props"].get("sitegpt_bridge", {}).get("deliveries") == "2"]
    assert len(carrying) == 1


async def test_a_lookup_that_fails_posts_again_rather_than_lose_the_message(harness):
    h = await harness()
    await h.accept(message("thread_A", "first"))
    await h.worker.drain()
    await h.accept(message("thread_A", "second"))
    await die_after(h, post=False)
    h.fake.fail_next("lookup", 500)
    await h.worker.drain()
    assert [status for status, _ in await h.statuses()] == ["delivered", "delivered"]
    assert len(shown(h.fake.thread(h.fake.roots()[0]["id"]))) == 2


def test_jiras_notices_go_to_mattermost_only_while_it_is_on(make_settings, fake):
    from bridge.jira_events import DESTINATIONS

    assert "mattermost" not in DESTINATIONS.built_with(make_settings())
    on = make_settings({"mattermost": mattermost_settings(fake)})
    assert "mattermost" in DESTINATIONS.built_with(on)
    assert "slack" in DESTINATIONS.built_with(on)


@pytest.mark.parametrize(("token", "code", "expected"), [
    (TOKEN, 0, "mattermost: ok: http://127.0.0.1"),
    ("wrong", 1, "mattermost: FAILED: mattermost: GET /api/v4/users/me: HTTP 401"),
])
def test_check_asks_mattermost_for_the_bot_and_its_channels(make_settings, tmp_path, capsys,
                                                           fake, token, code, expected):
    make_settings({"mattermost": mattermost_settings(fake, bot_token=token)})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == code
    [line] = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("mattermost: ") and ("ok" in line or "FAILED" in line)]
    assert line.startswith(expected)
    assert "wrong" not in line


async def test_the_preview_of_an_escalation_shows_the_root_escalated(make_settings, fake):
    from bridge.samples import load_sample, sample_names

    settings = make_settings({"mattermost": mattermost_settings(fake)})
    destination = build_destinations(settings, Templates())["mattermost"]
    samples = {name: parse_event(load_sample(name)["event"], load_sample(name))
               for name in sample_names() if name == "escalation"}
    rendered = destination.render_samples(samples)
    await destination.aclose()
    assert list(rendered) == ["escalation: POST /api/v4/posts (in the thread)",
                              "escalation: PUT /api/v4/posts/{root}/patch"]
    assert "Escalated" in json.loads(rendered["escalation: PUT /api/v4/posts/{root}/patch"])[
        "message"]


@dataclass
class RecordingBudgets:
    """The store's shared channel budgets, as replicas on PostgreSQL use them: always a token."""

    taken: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    async def take_token(self, channel: str, now: float, capacity: float,
                         rate: float) -> tuple[float, float]:
        self.taken.append(channel)
        return capacity, 0.0

    async def hold_channel(self, channel: str, now: float, until: float) -> None:
        self.held.append(channel)


async def test_replicas_pace_mattermosts_channels_together_apart_from_slacks(make_settings, fake,
                                                                            clock):
    settings = make_settings({"mattermost": mattermost_settings(fake)})
    shared = Shared(settings, clock)
    destination = build_destinations(settings, Templates(), shared)["mattermost"]
    budgets = RecordingBudgets()
    shared.store_is_shared(budgets)  # type: ignore[arg-type]
    server = destination.server  # type: ignore[attr-defined]
    try:
        await server.post("mm_conv", {"message": "paced"})
        fake.fail_next("posts", 429, **{"Retry-After": "30"})
        with pytest.raises(RetryableError):
            await server.post("mm_conv", {"message": "held"})
    finally:
        await destination.aclose()
    assert budgets.taken == ["mattermost:mm_conv", "mattermost:mm_conv"]
    assert budgets.held == ["mattermost:mm_conv"]


async def test_a_queued_message_whose_template_fails_leaves_the_others_to_go(harness, tmp_path):
    mine = tmp_path / "mine" / "mattermost"
    mine.mkdir(parents=True)
    (mine / "message.json.j2").write_text(
        '{% if message.question == "boom" %}{{ no_such_value }}{% endif %}'
        '{% extends "default:mattermost/message.json.j2" %}')
    h = await harness({"templates": {"dir": str(tmp_path / "mine")}})
    await h.accept(message("thread_A", "first"))
    await h.worker.drain()
    h.fake.fail_next("posts", 503)
    for text in ("m1", "m2", "boom", "m3"):
        await h.accept(message("thread_A", text))
    await h.worker.drain()
    h.clock.advance(5)
    await h.worker.drain()
    assert shown(h.fake.thread(h.fake.roots()[0]["id"])) == [
        f":bust_in_silhouette: **Visitor:** {text}" for text in ("first", "m1", "m2", "m3")]
    statuses = [status for status, _ in await h.statuses()]
    assert statuses == ["delivered", "delivered", "delivered", "failed", "delivered"]


@pytest.mark.parametrize(("data", "shown"), [
    ({"messageType": "AGENT_MESSAGE", "answer": "On it", "agentName": "Jane"},
     ":technologist: **Jane:** On it"),
    ({"messageType": "SYSTEM_MESSAGE", "answer": "Closed", "systemMessageType": "CLOSE"},
     ":information_source: **System (CLOSE):** Closed"),
    ({"messageType": "NORMAL_MESSAGE", "answer": "Hello"}, ":robot_face: **chatbot\\_123:** Hello"),
])
async def test_an_answer_follows_its_bold_label_after_a_space(harness, data, shown):
    """`**Jane:**On it` would show its asterisks: a closing ** after a colon must be followed
    by a space or punctuation to close."""
    h = await harness()
    event = {"event": "ADD_MESSAGE", "data": {"chatbotId": "chatbot_123", "threadId": "t",
                                              **data}}
    assert h.mattermost._message(parse_event("ADD_MESSAGE", event))["message"] == shown
