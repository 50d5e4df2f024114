"""Routes: some chatbots' conversations go to their own channels, mention and Jira project.

The real worker delivers to the Slack and Jira destinations, whose real clients talk to the
fake Slack and the fake Jira.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.destinations.jira import JiraDestination
from bridge.destinations.slack import SlackDestination
from bridge.errors import ConfigError, PermanentError
from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.settings import Settings
from bridge.store import open_store
from bridge.store.sqlite import SQLiteStore
from bridge.templating import Templates
from bridge.worker import Worker
from tests.clock import FakeClock
from tests.fake_jira import FakeJira, basic_auth
from tests.fake_slack import FakeSlack

EMAIL, TOKEN = "bot@example.com", "jira-s3cret"
SALES = {"chatbots": ["bot_sales", "bot_pricing"], "slack_channel": "C0SALES",
         "leads_channel": "C0SALESLEADS", "escalation_mention": "<!subteam^S0SALES>",
         "jira_project": "SALES"}


@dataclass
class Support:
    """A store, Slack and Jira destinations and the real worker, on a fake clock."""

    settings: Settings
    store: SQLiteStore
    slack: SlackDestination
    jira: JiraDestination
    worker: Worker
    clock: FakeClock
    fake_slack: FakeSlack
    fake_jira: FakeJira

    async def accept(self, body: dict[str, Any], *destinations: str) -> None:
        event = parse_event(body["event"], body)
        await self.store.accept(new_event(event, body, destinations or ["slack", "jira"]),
                                self.clock.now(), 0)

    def posts_in(self, channel: str) -> list[dict[str, Any]]:
        return [post for post in self.fake_slack.posts if post["channel"] == channel]


OpenSupport = Callable[..., Awaitable[Support]]


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture
def fake_jira() -> Iterator[FakeJira]:
    projects = {"SUP": ["Task"], "SALES": ["Task"]}
    with FakeJira("Cloud", basic_auth(EMAIL, TOKEN), projects=projects) as server:
        yield server


@pytest.fixture
async def support(make_settings, fake_slack, fake_jira, clock) -> AsyncIterator[OpenSupport]:
    opened: list[Support] = []

    async def open_support(routes: list[dict[str, Any]] | None = None, **sections: Any) -> Support:
        slack = {"bot_token": "xoxb-test", "api_url": fake_slack.api_url, "channel": "C_CONV",
                 "leads_channel": "C_LEADS", "burst": 1000, "per_second": 1000.0,
                 "escalation_mention": "<!subteam^S0123>"} | sections.pop("slack", {})
        jira = {"url": fake_jira.url, "email": EMAIL, "api_token": TOKEN, "project": "SUP",
                "timeout_seconds": 5.0} | sections.pop("jira", {})
        settings = make_settings({"slack": slack, "jira": jira, "routes": routes or [],
                                  **sections})
        store = open_store(settings.store.url)
        destinations = {"slack": SlackDestination(settings, Templates(), clock),
                        "jira": JiraDestination(settings, Templates(), clock=clock)}
        worker = Worker(store, destinations, settings.delivery, clock, random.Random(5))
        opened.append(Support(settings, store, destinations["slack"], destinations["jira"],
                              worker, clock, fake_slack, fake_jira))
        return opened[-1]

    yield open_support
    for item in opened:
        await item.slack.aclose()
        await item.jira.aclose()
        await item.store.close()


def escalation(chatbot: str, thread: str) -> dict[str, Any]:
    return {"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": chatbot, "threadId": thread, "user": {"name": "Ann", "email": "a@x.io"}}}


def visitor(chatbot: str, thread: str, text: str) -> dict[str, Any]:
    return {"event": "ADD_MESSAGE", "data": {"chatbotId": chatbot, "threadId": thread,
                                             "messageType": "USER_MESSAGE", "question": text}}


def lead(chatbot: str) -> dict[str, Any]:
    return {"event": "NEW_LEAD_CAPTURE", "data": {"chatbotId": chatbot, "leadDetails": {
        "id": f"lead_{chatbot}", "name": "Lee", "capturedAt": "2024-01-15T10:30:00Z"}}}


async def test_two_chatbots_routed_to_two_channels_projects_and_mentions(support):
    s = await support(routes=[SALES])
    for chatbot in ("bot_sales", "bot_support"):
        await s.accept(visitor(chatbot, "t1", "help"), "slack")
        await s.accept(escalation(chatbot, "t1"))
        await s.accept(lead(chatbot), "slack")
    await s.worker.drain()

    projects = sorted(fields["project"]["key"] for fields in s.fake_jira.created())
    assert projects == ["SALES", "SUP"]
    sales, support_channel = s.posts_in("C0SALES"), s.posts_in("C_CONV")
    sales_escalation = next(post for post in sales if post.get("reply_broadcast"))
    support_escalation = next(post for post in support_channel if post.get("reply_broadcast"))
    assert sales_escalation["text"].startswith("<!subteam^S0SALES> ")
    assert support_escalation["text"].startswith("<!subteam^S0123> ")
    assert [post["text"] for post in s.posts_in("C0SALESLEADS")] == ["New lead: Lee"]
    assert [post["text"] for post in s.posts_in("C_LEADS")] == ["New lead: Lee"]
    # each ticket's link reaches its own thread
    assert any("SALES-" in json.dumps(post) for post in sales if post.get("thread_ts"))
    assert any("SUP-" in json.dumps(post) for post in support_channel if post.get("thread_ts"))


async def test_what_a_route_leaves_out_comes_from_the_sections_and_a_chatbot_key_wins(support):
    s = await support(routes=[{"chatbots": ["bot_a", "bot_b"], "slack_channel": "C0TEAM",
                               "escalation_mention": ""},
                              {"chatbots": ["bot_a"], "slack_channel": "C0NEVER"}],
                      chatbots=[{"id": "bot_b", "slack_channel": "C0OWN"}])
    for chatbot in ("bot_a", "bot_b"):
        await s.accept(escalation(chatbot, "t1"))
    await s.accept(lead("bot_a"), "slack")
    await s.worker.drain()
    assert s.posts_in("C0NEVER") == []  # the first route naming a chatbot wins
    [team_escalation] = [post for post in s.posts_in("C0TEAM") if post.get("reply_broadcast")]
    assert team_escalation["text"].startswith("Ann asked")  # an empty mention pings no one
    assert s.posts_in("C0OWN")  # the chatbot's own channel beats its route's
    assert [post["text"] for post in s.posts_in("C_LEADS")] == ["New lead: Lee"]
    assert sorted(f["project"]["key"] for f in s.fake_jira.created()) == ["SUP", "SUP"]


async def test_a_conversation_keeps_its_thread_when_the_routes_change(support, clock):
    before = await support()
    await before.accept(visitor("bot_sales", "t1", "first"), "slack")
    await before.worker.drain()
    after = await support(routes=[SALES])
    await after.store.close()
    after.store = before.store  # the same store, read with the new settings
    after.worker.store = before.store
    await after.accept(visitor("bot_sales", "t1", "second"), "slack")
    await after.accept(visitor("bot_sales", "t2", "new one"), "slack")
    await after.worker.drain()
    [parent] = [post for post in after.posts_in("C_CONV") if not post.get("thread_ts")]
    assert [post["text"] for post in after.fake_slack.thread("C_CONV", parent["ts"])] == [
        "Visitor: first", "Visitor: second"]
    assert [post["text"] for post in after.posts_in("C0SALES") if post.get("thread_ts")] == [
        "Visitor: new one"]


async def test_check_reads_every_routes_channels_and_projects(support):
    s = await support(routes=[SALES])
    said = await s.slack.verify()
    assert "channel C0SALES ok" in said and "channel C0SALESLEADS ok" in said
    assert "SUP, SALES" in await s.jira.verify()
    missing = await support(routes=[SALES, {"chatbots": ["bot_x"], "slack_channel": "C0MISSING",
                                            "jira_project": "NOPE"}])
    with pytest.raises(PermanentError, match="C0MISSING"):
        await missing.slack.verify()
    with pytest.raises(PermanentError, match="NOPE"):
        await missing.jira.verify()


def test_routes_come_as_json_from_the_environment_and_are_validated(tmp_path, monkeypatch):
    path = tmp_path / "settings.toml"
    path.write_text('[[routes]]\nchatbots = ["bot_file"]\nslack_channel = "C0FILE"\n')
    monkeypatch.setenv("BRIDGE_ROUTES", json.dumps([SALES]))
    settings = load_settings(str(path))
    assert settings.route("bot_pricing").jira_project == "SALES"
    assert settings.route("bot_file") is None  # the variable wins over the file, as elsewhere
    monkeypatch.setenv("BRIDGE_ROUTES", json.dumps([{"chatbots": ["b"], "slack_chanel": "C"}]))
    with pytest.raises(ConfigError) as typo:
        load_settings(str(path))
    assert typo.value.problems == [
        "routes.0.slack_chanel: unknown key; did you mean slack_channel? (from BRIDGE_ROUTES)"]
    monkeypatch.setenv("BRIDGE_ROUTES", json.dumps([{"chatbots": []}]))
    with pytest.raises(ConfigError) as empty:
        load_settings(str(path))
    assert empty.value.problems[0].startswith("routes.0.chatbots: ")
