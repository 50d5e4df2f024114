"""The Jira destination: the real `jira` client against a fake Jira, driven by the real worker."""

from __future__ import annotations

import json
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.destinations import build_destinations
from bridge.destinations.base import Delivered, Delivery
from bridge.destinations.jira import PREVIEW_MARKER, JiraDestination, conversation_label
from bridge.errors import PermanentError, TemplateError
from bridge.event_rows import new_event
from bridge.events import (
    ESCALATION,
    MESSAGE,
    TICKET_LINKED,
    Conversation,
    Event,
    MessageEvent,
    canonical_json,
    parse_event,
)
from bridge.samples import load_sample
from bridge.store import DeliveryRow
from bridge.store.sqlite import SQLiteStore
from bridge.template_check import sample_events
from bridge.templating import CUT_MARKER, Templates, jira_escape
from bridge.worker import Worker
from tests.clock import FakeClock
from tests.failing_store import FullDisk
from tests.fake_jira import NOT_AUTHENTICATED, FakeJira, basic_auth, java_length

CHATBOT, THREAD = "chatbot_123", "thread_456"
EMAIL, API_TOKEN, PAT = "support@example.com", "cloud-token-s3cret", "server-pat-s3cret"
CONVERSATION = Conversation(CHATBOT, THREAD)
LABEL = conversation_label(CONVERSATION)


class SlackStandIn:
    """Takes the place of the Slack destination: records the ticket links it is sent."""

    name = "slack"

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def accepts(self, kind: str) -> bool:
        return kind == TICKET_LINKED

    async def deliver(self, delivery: Delivery) -> Delivered:
        self.bodies.append(delivery.claimed.body)
        return Delivered()

    async def verify(self) -> str:
        return "stand-in"

    async def aclose(self) -> None:
        pass

    def render_samples(self, samples: Any) -> None:
        return None  # it cannot show what it would send


@dataclass
class Bridge:
    """A store, the Jira destination, a Slack stand-in and the real worker, on a fake clock."""

    store: SQLiteStore
    jira: JiraDestination
    slack: SlackStandIn
    worker: Worker
    clock: FakeClock
    escalations: list[int] = field(default_factory=list)

    async def say(self, text: str, kind: str = "USER_MESSAGE", answer: str | None = None,
                  agent: str | None = None) -> None:
        """A message arrives through the messages webhook (kept for transcripts only)."""
        question = None if kind == "AGENT_MESSAGE" else text
        reply = text if kind == "AGENT_MESSAGE" else answer
        body = {"event": MESSAGE, "data": {
            "chatbotId": CHATBOT, "threadId": THREAD, "question": question, "answer": reply,
            "messageType": kind, "agentName": agent}}
        await self.store.accept(
            new_event(parse_event(MESSAGE, body), body, []), self.clock.now(), window=0)
        self.clock.advance(60)

    async def escalate(self, body: dict[str, Any] | None = None) -> DeliveryRow:
        """An escalation arrives; the worker delivers it (and any follow-up); its row."""
        body = body or load_sample("escalation")
        accepted = await self.store.accept(
            new_event(parse_event(ESCALATION, body), body, ["jira"]), self.clock.now(), window=0)
        self.escalations.append(accepted.event_id)
        await self.worker.drain()
        return await self.row(accepted.event_id)

    async def retry(self) -> DeliveryRow:
        """Let the backoff pass and run the worker again; the latest escalation's row."""
        self.clock.advance(600)
        await self.worker.drain()
        return await self.row(self.escalations[-1])

    async def row(self, event_id: int) -> DeliveryRow:
        rows = await self.store.deliveries(limit=100)
        return next(row for row in rows if row.event_id == event_id and row.destination == "jira")


OpenBridge = Callable[..., Awaitable[Bridge]]


def cloud_settings(fake: FakeJira, **jira: Any) -> dict[str, Any]:
    return {"url": fake.url, "email": EMAIL, "api_token": API_TOKEN, "project": "SUP",
            "timeout_seconds": 5.0} | jira


def server_settings(fake: FakeJira, **jira: Any) -> dict[str, Any]:
    return {"url": fake.url, "personal_access_token": PAT, "project": "SUP",
            "timeout_seconds": 5.0} | jira


@pytest.fixture
def cloud() -> Any:
    with FakeJira("Cloud", basic_auth(EMAIL, API_TOKEN)) as fake:
        yield fake


@pytest.fixture
def server() -> Any:
    with FakeJira("Server", f"Bearer {PAT}") as fake:
        yield fake


@pytest.fixture
async def open_bridge(make_settings, tmp_path: Path, clock: FakeClock) -> AsyncIterator[OpenBridge]:
    opened: list[Bridge] = []

    async def open_(fake: FakeJira, jira: dict[str, Any] | None = None, db: str = "bridge.db",
                    chatbots: list[dict[str, Any]] | None = None,
                    templates: Path | None = None,
                    delivery: dict[str, Any] | None = None) -> Bridge:
        extra: dict[str, Any] = {"jira": jira or cloud_settings(fake), "delivery": delivery or {}}
        if chatbots:
            extra["chatbots"] = chatbots
        settings = make_settings(extra)
        store = SQLiteStore(tmp_path / db, synchronous="NORMAL")
        destination = build_destinations(settings, Templates(templates))["jira"]
        assert isinstance(destination, JiraDestination)
        slack = SlackStandIn()
        worker = Worker(store, {"jira": destination, "slack": slack}, settings.delivery, clock,
                        random.Random(7))
        bridge = Bridge(store, destination, slack, worker, clock)
        opened.append(bridge)
        return bridge

    yield open_
    for bridge in opened:
        await bridge.jira.aclose()
        await bridge.store.close()


def linked_body(key: str, fake: FakeJira, created: bool) -> str:
    return canonical_json({"event": TICKET_LINKED, "data": {
        "chatbotId": CHATBOT, "threadId": THREAD, "issueKey": key,
        "issueUrl": f"{fake.url}/browse/{key}", "created": created}})


# Creating the ticket


async def test_escalation_creates_a_ticket_with_transcript_contacts_and_labels(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    await bridge.say("How do I reset my password?", "NORMAL_MESSAGE", answer="Click Forgot.")
    await bridge.say("I still can't log in, can I talk to a person?")
    await bridge.say("Hi, this is Dana.", "AGENT_MESSAGE", agent="Dana")

    row = await bridge.escalate()

    assert (row.status, row.note) == ("delivered", "SUP-1")
    [fields] = cloud.created()
    assert fields["project"] == {"key": "SUP"}
    assert fields["issuetype"] == {"name": "Task"}
    assert fields["labels"] == ["sitegpt", LABEL]
    assert fields["summary"] == "Chat escalation: John Doe via chatbot_123"
    description = fields["description"]
    assert "[Open the conversation in SiteGPT|https://sitegpt.ai/chatbot_123/chat-history/thread_456]" in description  # noqa: E501
    assert "John Doe" in description and "user@example.com" in description
    assert "\\+1234567890" in description
    order = [description.index(text) for text in (
        "How do I reset my password\\?", "Click Forgot.", "can I talk to a person\\?",
        "*Dana* (agent, 2023-11-14 22:15 UTC): Hi, this is Dana.")]
    assert order == sorted(order)


async def test_ticket_link_follows_to_slack_and_the_conversation_remembers_it(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    await bridge.say("Hello?")

    await bridge.escalate()

    assert bridge.slack.bodies == [linked_body("SUP-1", cloud, created=True)]
    assert await bridge.store.link_state(CHATBOT, THREAD, "jira") == {
        "key": "SUP-1", "transcript_upto": 1}
    assert await bridge.store.conversation_by_ref("jira", "SUP-1") == (CHATBOT, THREAD)
    record = await bridge.store.conversation(CHATBOT, THREAD)
    assert record is not None and record.escalated_at == bridge.clock.now()


async def test_chatbot_settings_choose_project_and_name(open_bridge):
    with FakeJira("Cloud", basic_auth(EMAIL, API_TOKEN),
                  {"SUP": ["Task"], "HELP": ["Task"]}) as fake:
        bridge = await open_bridge(fake, chatbots=[
            {"id": CHATBOT, "name": "Support Bot", "jira_project": "HELP"}])

        await bridge.escalate()

        [fields] = fake.created()
        assert fields["project"] == {"key": "HELP"}
        assert fields["summary"] == "Chat escalation: John Doe via Support Bot"
        assert "*Support Bot*" in fields["description"]


async def test_unseen_anonymous_conversation_still_gets_a_ticket(open_bridge, cloud):
    bridge = await open_bridge(cloud)

    row = await bridge.escalate(load_sample("escalation-anonymous"))

    assert row.status == "delivered"
    [fields] = cloud.created()
    assert fields["summary"] == "Chat escalation: Anonymous visitor via chatbot_123"
    assert "The transcript is empty" in fields["description"]
    assert "* Email: not given" in fields["description"]


async def test_dashboard_link_that_could_break_the_link_markup_is_rebuilt(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    body = load_sample("escalation")
    body["data"]["dashboardUrl"] = "https://evil.example/x|click me]["
    body["data"]["threadId"] = "thread|456]"

    await bridge.escalate(body)

    [fields] = cloud.created()
    assert "|https://sitegpt.ai/chatbot_123/chat-history/thread%7C456%5D]" in fields["description"]
    assert "evil.example" not in fields["description"]


@pytest.mark.parametrize("url", ["https://evil.example/chat", "https://sitegpt.ai.evil.example/c",
                                 "https://sitegpt.ai@evil.example/c"])
async def test_a_dashboard_link_elsewhere_than_sitegpt_is_rebuilt(open_bridge, cloud, url):
    # The ticket labels the link "Open the conversation in SiteGPT": it must lead there.
    bridge = await open_bridge(cloud)
    body = load_sample("escalation")
    body["data"]["dashboardUrl"] = url
    await bridge.escalate(body)
    [fields] = cloud.created()
    assert "|https://sitegpt.ai/chatbot_123/chat-history/thread_456]" in fields["description"]
    assert "evil.example" not in fields["description"]


async def test_a_dashboard_link_into_sitegpt_is_kept(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    body = load_sample("escalation")
    body["data"]["dashboardUrl"] = "https://app.sitegpt.ai/c/thread_456"
    await bridge.escalate(body)
    [fields] = cloud.created()
    assert "|https://app.sitegpt.ai/c/thread_456]" in fields["description"]


# One ticket per conversation


async def test_second_escalation_comments_only_the_new_messages(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    await bridge.say("first question")
    await bridge.escalate()
    await bridge.say("second question")
    await bridge.say("I am still waiting", "AGENT_MESSAGE", agent="Dana")

    row = await bridge.escalate()

    assert (row.status, row.note) == ("delivered", "SUP-1")
    assert len(cloud.issues) == 1
    [comment] = cloud.comments("SUP-1")
    assert "second question" in comment and "I am still waiting" in comment
    assert "first question" not in comment
    assert len(bridge.slack.bodies) == 1  # a comment links nothing new
    state = await bridge.store.link_state(CHATBOT, THREAD, "jira")
    transcript = await bridge.store.transcript(CHATBOT, THREAD)
    assert state is not None and state["transcript_upto"] == transcript[-1].id


async def test_a_moved_ticket_is_commented_under_its_new_key_and_slack_is_told(
        open_bridge, cloud):
    bridge = await open_bridge(cloud)
    await bridge.escalate()
    moved = {**cloud.issues["SUP-1"], "key": "OPS-5"}  # Jira answers the old key with the new
    cloud.issues["SUP-1"] = cloud.issues["OPS-5"] = moved
    await bridge.say("any news")

    row = await bridge.escalate()

    assert (row.status, row.note) == ("delivered", "OPS-5")
    assert "any news" in cloud.comments("OPS-5")[0]
    assert await bridge.store.link_state(CHATBOT, THREAD, "jira") == {
        "key": "OPS-5", "transcript_upto": (await bridge.store.transcript(CHATBOT, THREAD))[-1].id}
    assert bridge.slack.bodies[-1] == linked_body("OPS-5", cloud, created=False)


async def test_escalation_after_the_ticket_is_done_opens_a_new_one(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    await bridge.escalate()
    cloud.close_issue("SUP-1")
    await bridge.say("it broke again")

    row = await bridge.escalate()

    assert row.note == "SUP-2"
    assert cloud.comments("SUP-1") == []
    assert bridge.slack.bodies[-1] == linked_body("SUP-2", cloud, created=True)
    state = await bridge.store.link_state(CHATBOT, THREAD, "jira")
    assert state is not None and state["key"] == "SUP-2"


@pytest.mark.parametrize(("deployment", "search_path"), [
    ("Cloud", "/rest/api/2/search/jql"),  # Cloud's /rest/api/2/search answers 410 Gone
    ("Server", "/rest/api/2/search"),
])
async def test_fresh_database_finds_the_open_ticket_by_label(open_bridge, deployment, search_path):
    authorization = basic_auth(EMAIL, API_TOKEN) if deployment == "Cloud" else f"Bearer {PAT}"
    with FakeJira(deployment, authorization) as fake:
        fake.add_issue(labels=["sitegpt", LABEL], category="done")
        existing = fake.add_issue(labels=["sitegpt", LABEL], category="indeterminate")
        fake.add_issue(labels=["sitegpt", "sitegpt-someoneelse"])
        jira = cloud_settings(fake) if deployment == "Cloud" else server_settings(fake)
        bridge = await open_bridge(fake, jira=jira, db="fresh.db")
        await bridge.say("still locked out after the reset")

        row = await bridge.escalate()

        assert (row.status, row.note) == ("delivered", existing)
        assert fake.created() == []
        [comment] = fake.comments(existing)  # what this store heard, which the ticket lacks
        assert "still locked out after the reset" in comment
        assert bridge.slack.bodies == [linked_body(existing, fake, created=False)]
        searches = [call.path for call in fake.calls(path="/rest/api/")
                    if "/search" in call.path]
        assert searches == [search_path]


async def test_fresh_database_with_only_done_tickets_creates_a_new_one(open_bridge, cloud):
    cloud.add_issue(labels=[LABEL], category="done")
    bridge = await open_bridge(cloud)

    row = await bridge.escalate()

    assert row.note == "SUP-2"
    assert len(cloud.created()) == 1


# Credentials


@pytest.mark.parametrize("deployment", ["Cloud", "Server"])
async def test_auth_header_matches_the_deployment(open_bridge, deployment):
    expected = basic_auth(EMAIL, API_TOKEN) if deployment == "Cloud" else f"Bearer {PAT}"
    with FakeJira(deployment, expected) as fake:
        jira = cloud_settings(fake) if deployment == "Cloud" else server_settings(fake)
        bridge = await open_bridge(fake, jira=jira)

        row = await bridge.escalate()

        assert row.status == "delivered"
        assert {call.headers["authorization"] for call in fake.requests} == {expected}


async def test_rejected_credentials_fail_at_once_with_jiras_message(open_bridge, cloud):
    bridge = await open_bridge(cloud, jira=cloud_settings(cloud, api_token="wrong-s3cret"))

    row = await bridge.escalate()

    assert (row.status, row.attempts) == ("failed", 1)
    assert "HTTP 401" in row.last_error and NOT_AUTHENTICATED in row.last_error
    assert "s3cret" not in row.last_error and "Basic" not in row.last_error


async def test_unknown_project_fails_at_once_with_jiras_message(open_bridge, cloud):
    bridge = await open_bridge(cloud, jira=cloud_settings(cloud, project="NOPE"))

    row = await bridge.escalate()

    assert (row.status, row.attempts) == ("failed", 1)
    assert "HTTP 400: valid project is required" in row.last_error


# Transient failures


async def test_unavailable_jira_is_retried_and_makes_exactly_one_ticket(open_bridge, cloud):
    cloud.script("POST", "/rest/api/2/issue", 503, {"errorMessages": ["Service Unavailable"]})
    bridge = await open_bridge(cloud)

    first = await bridge.escalate()
    assert (first.status, first.attempts) == ("pending", 1)
    assert "HTTP 503: Service Unavailable" in first.last_error

    second = await bridge.retry()
    assert (second.status, second.attempts, second.note) == ("delivered", 2, "SUP-1")
    assert len(cloud.issues) == 1
    assert len(cloud.calls("POST", "/rest/api/2/issue")) == 2


async def test_rate_limit_waits_as_long_as_jira_asks(open_bridge, cloud):
    cloud.script("POST", "/rest/api/2/issue", 429, {"message": "Rate limit exceeded"},
                 headers={"Retry-After": "30"})
    bridge = await open_bridge(cloud, delivery={"backoff_cap": "3m"})

    row = await bridge.escalate()

    assert row.status == "pending" and "HTTP 429" in row.last_error
    assert row.next_attempt_at >= bridge.clock.now() + 30
    assert len(cloud.calls("POST", "/rest/api/2/issue")) == 1  # the client itself never retries


async def test_timeout_is_retryable_and_the_retry_finds_the_ticket_made_meanwhile(open_bridge,
                                                                                cloud):
    cloud.script("POST", "/rest/api/2/issue", status=0, stall=5.0)
    bridge = await open_bridge(cloud, jira=cloud_settings(cloud, timeout_seconds=1.0))

    first = await bridge.escalate()
    assert first.status == "pending"
    assert first.last_error == "jira: create the ticket: no answer within 1 s"

    second = await bridge.retry()
    assert (second.status, second.note) == ("delivered", "SUP-1")
    assert len(cloud.issues) == 1
    assert cloud.comments("SUP-1") == []  # its own ticket, recognised by its marker
    assert cloud.calls("GET", "/rest/api/2/issue/SUP-1")


async def test_a_found_ticket_whose_comment_timed_out_gets_it_once(open_bridge, cloud):
    existing = cloud.add_issue(labels=[LABEL])
    bridge = await open_bridge(cloud, jira=cloud_settings(cloud, timeout_seconds=1.0))
    await bridge.say("anyone there?")
    cloud.script("POST", f"/rest/api/2/issue/{existing}/comment", status=0, stall=5.0)

    first = await bridge.escalate()
    second = await bridge.retry()

    assert (first.status, second.status, second.note) == ("pending", "delivered", existing)
    assert cloud.created() == []
    [comment] = cloud.comments(existing)
    assert "anyone there" in comment


async def test_comment_that_timed_out_is_not_added_twice(open_bridge, cloud):
    bridge = await open_bridge(cloud, jira=cloud_settings(cloud, timeout_seconds=1.0))
    await bridge.escalate()
    cloud.script("POST", "/rest/api/2/issue/SUP-1/comment", status=0, stall=5.0)
    await bridge.say("anyone there?")

    first = await bridge.escalate()
    second = await bridge.retry()

    assert first.status == "pending" and second.status == "delivered"
    assert len(cloud.comments("SUP-1")) == 1
    assert len(cloud.calls("POST", "/rest/api/2/issue/SUP-1/comment")) == 1
    assert cloud.calls("GET", "/rest/api/2/issue/SUP-1/comment")  # the retry looked first


async def test_unreachable_jira_is_retryable(open_bridge, cloud):
    with socket.socket() as bound_not_listening:  # held, so no other test can take the port
        bound_not_listening.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}"
        bridge = await open_bridge(cloud, jira=cloud_settings(cloud, url=url))

        row = await bridge.escalate()

    assert row.status == "pending"
    assert row.last_error == f"jira: search for the ticket: cannot reach {url} (ConnectionError)"


# Markup and limits


ATTACKS = [
    "[click here|https://evil.example/login]",
    "[~admin] please approve",
    "{color:red}URGENT{color} {noformat}x{noformat} {code}y{code} {{mono}}",
    "!https://evil.example/pixel.png!",
    "*bold* _italic_ -deleted- +inserted+ ^sup^ ~sub~ ??cite??",
    "fine\nh1. Refund approved\nbq. quoted\n|| table || head ||\n# item\n----",
    "h2. at the start",
    "C:\\path\\[x] and (x) (!) :)",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_jira_escape_leaves_no_markup(attack):
    escaped = jira_escape(attack)

    plain = re.sub(r"\\[][{}|*_+\-^~?!#()]|&#\d+;", "", escaped).replace("\\\\", "")
    assert not set(plain) & set("[]{}|*_+-^~?!#()\\\n")
    assert not re.match(r"\s*(h[1-6]|bq)\.", escaped)


async def test_visitor_text_cannot_inject_markup_into_the_ticket(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    for attack in ATTACKS:
        await bridge.say(attack)

    await bridge.escalate()

    [fields] = cloud.created()
    description = fields["description"]
    for attack in ATTACKS:
        assert jira_escape(attack) in description
    assert "[click here|" not in description and "{color:red}" not in description
    assert not re.search(r"(?m)^\s*(h[12]|bq)\.", description)


async def test_long_transcript_and_summary_are_cut_with_a_marker(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    for number in range(40):
        await bridge.say(f"message {number} " + "x" * 1000)
    body = load_sample("escalation")
    body["data"]["user"]["name"] = "Jo\nhn " * 60

    row = await bridge.escalate(body)

    assert row.status == "delivered"
    [fields] = cloud.created()
    assert len(fields["summary"]) == 255 and fields["summary"].endswith(CUT_MARKER)
    assert "\n" not in fields["summary"]
    assert len(fields["description"]) == 32_000
    text, footer = fields["description"].rsplit("\n\n", 1)
    assert text.endswith(jira_escape(CUT_MARKER))
    assert re.fullmatch(r"\{color:#97a0af\}sitegpt-bridge:\d+:\d+\{color\}", footer)
    assert "message 0 " in text


async def test_emoji_heavy_summary_and_description_fit_jiras_utf16_limits(open_bridge, cloud):
    bridge = await open_bridge(cloud)
    for number in range(40):
        await bridge.say(f"message {number} " + "\U0001f600" * 1000)
    body = load_sample("escalation")
    body["data"]["user"]["name"] = "\U0001f469\u200d\U0001f4bb" * 200

    row = await bridge.escalate(body)

    assert row.status == "delivered", row.last_error
    [fields] = cloud.created()
    summary, description = fields["summary"], fields["description"]
    assert java_length(summary) <= 255 and summary.endswith(CUT_MARKER)
    assert java_length(summary) >= 254  # filled: only half an emoji may be left out
    assert java_length(description) <= 32_000
    assert "\ufffd" not in summary + description
    assert not re.search("[\ud800-\udfff]", summary + description)
    text, _ = description.rsplit("\n\n", 1)
    assert text.endswith(jira_escape(CUT_MARKER))


async def test_broken_template_fails_at_once_naming_the_file(open_bridge, cloud, tmp_path):
    (tmp_path / "tpl" / "jira").mkdir(parents=True)
    (tmp_path / "tpl" / "jira" / "description.j2").write_text("{{ visitor.nickname }}\n")
    bridge = await open_bridge(cloud, templates=tmp_path / "tpl")

    row = await bridge.escalate()

    assert row.status == "failed"
    assert "description.j2:1" in row.last_error and "nickname" in row.last_error
    assert cloud.created() == []


# check


@pytest.mark.parametrize(("deployment", "words"), [
    ("Cloud", ["Jira Cloud", "email + API token", "Support Bot User", "Task tickets in SUP"]),
    ("Server", ["Jira Server", "personal access token", "Support Bot User"]),
])
async def test_verify_names_the_auth_and_checks_project(open_bridge, deployment, words):
    authorization = basic_auth(EMAIL, API_TOKEN) if deployment == "Cloud" else f"Bearer {PAT}"
    with FakeJira(deployment, authorization) as fake:
        jira = cloud_settings(fake) if deployment == "Cloud" else server_settings(fake)
        bridge = await open_bridge(fake, jira=jira)

        line = await bridge.jira.verify()

        assert all(word in line for word in words), line
        assert fake.calls("GET", "/rest/api/2/myself")
        assert fake.calls("GET", "/rest/api/2/project/SUP")


@pytest.mark.parametrize(("jira", "message"), [
    ({"project": "NOPE"}, "No project could be found with key 'NOPE'."),
    ({"issue_type": "Epic"}, "project SUP has no issue type 'Epic'"),
    ({"api_token": "wrong"}, NOT_AUTHENTICATED),
])
async def test_verify_raises_jiras_message(open_bridge, cloud, jira, message):
    bridge = await open_bridge(cloud, jira=cloud_settings(cloud, **jira))

    with pytest.raises(PermanentError, match=re.escape(message)):
        await bridge.jira.verify()


def test_factory_builds_jira_only_with_a_url(make_settings, cloud):
    assert "jira" not in build_destinations(make_settings(), Templates())

    built = build_destinations(make_settings({"jira": cloud_settings(cloud)}), Templates())["jira"]

    assert isinstance(built, JiraDestination) and built.notify
    assert built.accepts(ESCALATION) and not built.accepts(MESSAGE)
    assert cloud.requests == []  # the client is built on first use


def test_check_command_reports_jira_without_its_secret(make_settings, cloud, tmp_path, capsys):
    make_settings({"jira": cloud_settings(cloud)})

    status = main(["check", "--config", str(tmp_path / "settings.toml")])

    output = capsys.readouterr().out
    assert status == 0
    assert f"jira: Jira Cloud at {cloud.url}, email + API token as Support Bot User" in output
    assert API_TOKEN not in output


def test_labels_with_spaces_are_refused_at_start_up(make_settings):
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        make_settings({"jira": {"labels": ["sitegpt", "needs triage"]}})
    assert refused.value.problems == [
        "jira.labels: Jira labels cannot be empty or contain spaces: ['needs triage']"]


# Previews

CREATE, COMMENT = "create the ticket (issue fields)", "comment on the open ticket (escalated again)"


def previewer(bridge: Bridge, templates: Path | None = None) -> JiraDestination:
    """A Jira destination on the bridge's settings and clock, used only for render_samples."""
    return JiraDestination(bridge.jira.settings, Templates(templates), notify=False,
                           clock=bridge.clock)


async def hear(bridge: Bridge, samples: dict[str, Event]) -> None:
    """The message samples arrive in the mapping's order, all at the clock's present moment."""
    for name, event in samples.items():
        if isinstance(event, MessageEvent):
            await bridge.store.accept(new_event(event, load_sample(name), []), bridge.clock.now(),
                                      window=0)


def preview_marked(text: str) -> str:
    """A ticket's or comment's text with its delivery's marker as the preview shows it."""
    return re.sub(r"sitegpt-bridge:\d+:\d+", PREVIEW_MARKER, text)


def with_preview_marker(fields: dict[str, Any]) -> dict[str, Any]:
    return fields | {"description": preview_marked(fields["description"])}


async def test_previews_are_the_ticket_and_comment_that_deliveries_send(open_bridge, cloud):
    bridge = await open_bridge(cloud, chatbots=[{"id": CHATBOT, "name": "Support <Bot> & Co"}])
    samples = sample_events()

    previews = previewer(bridge).render_samples(samples)
    await hear(bridge, samples)
    await bridge.escalate()
    await hear(bridge, samples)
    await bridge.escalate()

    assert list(previews) == [f"{name}: {what}" for name in ("escalation", "escalation-anonymous")
                              for what in (CREATE, COMMENT)]
    [fields] = cloud.created()
    assert json.loads(previews[f"escalation: {CREATE}"]) == with_preview_marker(fields)
    assert fields["labels"] == ["sitegpt", LABEL]
    assert "Hi, this is Dana from support." in fields["description"]
    [comment] = cloud.comments("SUP-1")
    assert "How do I reset my password\\?" in comment
    assert preview_marked(comment) == previews[f"escalation: {COMMENT}"]


async def test_a_conversation_without_message_samples_previews_an_empty_transcript(open_bridge,
                                                                                  cloud):
    bridge = await open_bridge(cloud)
    samples = {"escalation-anonymous": sample_events()["escalation-anonymous"]}

    previews = previewer(bridge).render_samples(samples)
    await bridge.escalate(load_sample("escalation-anonymous"))

    fields = json.loads(previews[f"escalation-anonymous: {CREATE}"])
    assert fields == with_preview_marker(cloud.created()[0])
    assert fields["labels"][-1] == conversation_label(Conversation(CHATBOT, "thread_789"))
    assert "The transcript is empty" in fields["description"]


async def test_previews_hold_no_secret_and_call_no_one(open_bridge, cloud):
    bridge = await open_bridge(cloud)

    previews = previewer(bridge).render_samples(sample_events())

    text = "".join([*previews, *previews.values()])
    assert previews and API_TOKEN not in text and "Basic " not in text
    assert cloud.requests == []


BROKEN_TRANSCRIPT = ("{% macro transcript_markup(lines, empty) %}"
                     "{% for line in lines %}{{ line.nickname }}{% endfor %}{% endmacro %}")


@pytest.mark.parametrize(("name", "text"), [
    ("summary.j2", "{{ visitor.nickname }}"),
    ("description.j2", "{{ visitor.nickname }}"),
    ("comment.j2", "{{ visitor.nickname }}"),
    ("_transcript.j2", BROKEN_TRANSCRIPT),
])
async def test_a_broken_template_fails_the_preview_naming_the_file(open_bridge, cloud, tmp_path,
                                                                   name, text):
    (tmp_path / "tpl" / "jira").mkdir(parents=True)
    (tmp_path / "tpl" / "jira" / name).write_text(text)
    bridge = await open_bridge(cloud)

    with pytest.raises(TemplateError) as caught:
        previewer(bridge, tmp_path / "tpl").render_samples(sample_events())

    assert str(caught.value).startswith(f"{tmp_path / 'tpl' / 'jira' / name}:1: ")
    assert "nickname" in str(caught.value)
    assert cloud.requests == []


async def test_a_delivery_fails_with_the_message_the_preview_raises(open_bridge, cloud, tmp_path):
    (tmp_path / "tpl" / "jira").mkdir(parents=True)
    (tmp_path / "tpl" / "jira" / "summary.j2").write_text("{{ visitor.nickname }}\n")
    bridge = await open_bridge(cloud, templates=tmp_path / "tpl")

    with pytest.raises(TemplateError) as caught:
        previewer(bridge, tmp_path / "tpl").render_samples(sample_events())
    row = await bridge.escalate()

    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error == f"jira: {caught.value}"


# A delivery cut off after its call (its worker killed, its outcome not recorded)


def reconciled(bridge: Bridge, found: str) -> float:
    return bridge.worker.metrics.registry.get_sample_value(
        "sitegpt_bridge_reconciled_total", {"destination": "jira", "found": found}) or 0.0


async def test_a_ticket_made_by_an_attempt_whose_outcome_was_lost_is_found_not_made_again(
        open_bridge, cloud):
    bridge = await open_bridge(cloud)
    full = FullDisk(bridge.store)
    bridge.worker.store = full
    full.full = True
    first = await bridge.escalate()  # the ticket is made; recording it fails
    full.full = False
    assert first.status == "pending" and len(cloud.issues) == 1

    bridge.clock.advance(bridge.worker.lease)
    await bridge.worker.drain()

    again = await bridge.row(bridge.escalations[-1])
    assert (again.status, again.note) == ("delivered", "SUP-1")
    assert len(cloud.issues) == 1 and cloud.comments("SUP-1") == []
    assert reconciled(bridge, "yes") == 1


async def test_a_comment_added_by_an_attempt_whose_outcome_was_lost_is_not_added_again(
        open_bridge, cloud):
    bridge = await open_bridge(cloud)
    await bridge.escalate()
    await bridge.say("anyone there?")
    full = FullDisk(bridge.store)
    bridge.worker.store = full
    full.full = True
    await bridge.escalate()  # the comment is added; recording it fails
    full.full = False
    bridge.clock.advance(bridge.worker.lease)
    await bridge.worker.drain()

    assert (await bridge.row(bridge.escalations[-1])).status == "delivered"
    assert len(cloud.comments("SUP-1")) == 1
    assert reconciled(bridge, "yes") == 1
