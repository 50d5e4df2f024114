
"""What the support team sees in Slack: parents that lead with the visitor, escalations that
carry the request, readable feedback, times and sources. Real slack_sdk against the fake Slack."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bridge.event_rows import new_event
from bridge.events import TICKET_LINKED, TICKET_STATUS, InvalidEvent, parse_event
from bridge.templating import CUT_MARKER, slack_date
from tests.slack_harness import (  # noqa: F401 (fixtures)
    Harness,
    fresh_fake_fixture,
    harness_fixture,
    message,
)

JIRA = {"url": "https://acme.atlassian.net", "email": "a@b.c", "api_token": "t",
        "project": "SUP"}
HOSTILE = "<!channel> <https://evil.example|x> @here *bold* \u202etxt.exe\u202c <@U666>"


def escalation(thread: str = "thread_A", **user: Any) -> dict[str, Any]:
    return {"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": "chatbot_123", "threadId": thread, "user": user or None}}


async def follow_up(h: Harness, kind: str, data: dict[str, Any]) -> None:
    """A follow-up Jira (or its webhook) makes, as the store keeps it for Slack."""
    body = {"event": kind, "data": {"chatbotId": "chatbot_123", "threadId": "thread_A", **data}}
    await h.store.accept(new_event(parse_event(kind, body), body, ["slack"]), h.clock.now(), 0)


def linked(key: str = "SUP-7") -> dict[str, Any]:
    return {"issueKey": key, "issueUrl": f"https://acme.atlassian.net/browse/{key}",
            "created": True}


def headline(message: dict[str, Any]) -> str:
    """The parent's first section: who, what they asked, and the status line."""
    return str(message["blocks"][0]["text"]["text"])


def context_line(message: dict[str, Any]) -> str:
    return str(message["blocks"][1]["elements"][0]["text"])


def valid_block_kit(messages: list[dict[str, Any]]) -> None:
    """Every block passes slack_sdk's own Block Kit models, as Slack would take it."""
    for sent in messages:
        for block in sent.get("blocks") or []:
            Block.parse(block).validate_json()  # type: ignore[union-attr]


def live_links(messages: list[dict[str, Any]]) -> list[str]:
    """Every <...> Slack would read as a link, a mention or a date in these messages."""
    return re.findall(r"<[^<>]*>", json.dumps(messages, ensure_ascii=False))


async def test_the_parent_leads_with_the_visitor_and_their_question(harness):
    h = await harness()
    await h.accept(message("thread_A", "How do I   reset\nmy password?"))
    await h.worker.drain()
    [parent] = h.fake.parents()
    assert headline(parent) == (":bust_in_silhouette: *Visitor*: How do I reset my password?\n"
                                ":robot_face: AI answering")
    below = context_line(parent)
    assert "*chatbot_123*" in below and "`thread_A`" in below
    assert "<https://sitegpt.ai/chatbot_123/chat-history/thread_A|Open in SiteGPT>" in below
    assert parent["text"].endswith("· chatbot_123 · thread_A")

    await h.accept(escalation(name="John Doe", email="john@example.com"))
    await h.worker.drain()
    shown = headline(h.fake.updates[-1])
    assert shown.startswith(":bust_in_silhouette: *John Doe*: How do I reset my password?")
    assert shown.endswith("Escalated: waiting for a human")
    valid_block_kit(h.fake.posts + h.fake.updates)


async def test_the_first_question_is_kept_and_cut_and_an_email_names_a_nameless_visitor(
        harness):
    h = await harness()
    await h.accept(escalation(email="ana@example.com"))
    await h.worker.drain()
    assert headline(h.fake.parents()[0]).startswith(":bust_in_silhouette: *ana@example.com*\n")
    await h.accept(message("thread_A", "word " * 100))
    await h.accept(message("thread_A", "a second question"))
    await h.worker.drain()
    asked = headline(h.fake.updates[-1]).split("\n")[0]
    assert asked.endswith(CUT_MARKER) and len(asked) < 200
    assert "second" not in json.dumps(h.fake.updates)
    updates = len(h.fake.updates)
    await h.accept(message("thread_A", "a third one"))
    await h.worker.drain()
    assert len(h.fake.updates) == updates  # nothing new for the parent: no update


async def test_an_agent_answering_shows_who_handles_it(harness):
    h = await harness()
    await h.accept(message("thread_A", "help"))
    await h.accept(message("thread_A", "On it", kind="AGENT_MESSAGE", agentName="Alice"))
    await h.worker.drain()
    assert headline(h.fake.updates[-1]).endswith(":technologist: *Alice (agent) is handling*")


async def test_the_escalation_quotes_the_request_and_later_links_the_ticket(harness):
    h = await harness(extra={"jira": JIRA})
    for text in ("first", "my order #12 never came", "where is it?\nplease"):
        await h.accept(message("thread_A", text))
    await h.accept(escalation(name="John Doe", email="john@example.com", phone="+1 555"))
    await h.worker.drain()
    post = h.fake.posts[-1]
    body = post["blocks"][0]["text"]["text"]
    assert body.startswith("<!subteam^S0123> :rotating_light: *John Doe* asked for a human")
    assert ":email: john@example.com" in body and ":telephone_receiver: +1 555" in body
    assert ">my order #12 never came\n>where is it?\n>please" in body
    assert "Jira" not in body

    await follow_up(h, TICKET_LINKED, linked())
    await h.worker.drain()
    [shown] = [update for update in h.fake.updates if update["ts"] == post["ts"]]
    again = shown["blocks"][0]["text"]["text"]
    assert again.startswith("<!subteam^S0123> :rotating_light: *John Doe*")  # the mention stays
    assert "<https://acme.atlassian.net/browse/SUP-7|Jira SUP-7>" in again
    assert ">please" in again
    parent = h.fake.updates[-2] if h.fake.updates[-1]["ts"] == post["ts"] else h.fake.updates[-1]
    assert "SUP-7" in headline(parent) and "*John Doe*" in headline(parent)
    valid_block_kit(h.fake.posts + h.fake.updates)


async def test_a_visitor_writing_after_the_ticket_is_done_shows_as_reopened(harness):
    h = await harness(extra={"jira": JIRA})
    await h.accept(message("thread_A", "help"))
    await h.accept(escalation(name="John Doe"))
    await h.worker.drain()
    await follow_up(h, TICKET_LINKED, linked())
    await follow_up(h, TICKET_STATUS, {"issueKey": "SUP-7", "status": "Done",
                                       "category": "done", "changedAt": 1})
    await h.worker.drain()
    assert ":white_check_mark: Resolved" in headline(h.fake.updates[-1])
    await h.accept(message("thread_A", "it broke again"))
    await h.worker.drain()
    assert "Reopened: the visitor wrote again" in headline(h.fake.updates[-1])
    assert "Resolved" not in headline(h.fake.updates[-1])


@pytest.mark.parametrize("field", ["name", "email", "question"])
async def test_hostile_values_in_the_parent_and_escalation_stay_inert(harness, field):
    h = await harness(extra={"jira": JIRA})
    user = {"name": "Ann", "email": "ann@example.com", field: HOSTILE}
    question = HOSTILE if field == "question" else "help"
    await h.accept(message("thread_A", question))
    await h.accept(escalation(**{k: v for k, v in user.items() if k != "question"}))
    await h.worker.drain()
    await follow_up(h, TICKET_LINKED, linked())
    await h.worker.drain()
    sent = h.fake.posts + h.fake.updates
    found = live_links(sent)
    assert "<!channel>" not in found and "<@U666>" not in found
    assert not [link for link in found if "evil.example" in link]
    escalated = [post for post in h.fake.posts if post.get("reply_broadcast")]
    shown = json.dumps(h.fake.parents() + escalated + h.fake.updates, ensure_ascii=False)
    assert "\u202e" not in shown and "txt.exe" in shown
    assert "&lt;!channel&gt;" in json.dumps(h.fake.updates, ensure_ascii=False)
    valid_block_kit(sent)


@pytest.mark.parametrize(("answer", "line"), [
    ("Yes", "👍 The visitor found the answer helpful"),
    ("no", "👎 The visitor did not find the answer helpful"),
    (HOSTILE, ":speech_balloon: Visitor feedback: &lt;!channel&gt; &lt;https://evil.example|x&gt;"),
])
async def test_feedback_is_one_short_line_with_a_thumb(harness, answer, line):
    h = await harness()
    await h.accept(message("thread_A", answer, kind="FEEDBACK_MESSAGE",
                           question="Was this answer helpful?"))
    await h.worker.drain()
    reply = h.fake.posts[-1]
    assert reply["blocks"][0]["elements"][0]["text"].startswith(line)
    assert "FEEDBACK_MESSAGE" not in json.dumps(reply)
    valid_block_kit([reply])


async def test_a_leads_capture_time_shows_in_each_readers_time_zone(harness, sample):
    h = await harness()
    await h.accept(sample("lead"))
    lead = sample("lead")
    lead["data"]["leadDetails"] |= {"id": "lead_2", "capturedAt": "<!channel>"}
    await h.accept(lead)
    await h.worker.drain()
    # Two leads of no conversation go out side by side: either may be posted first.
    texts = [post["blocks"][0]["text"]["text"] for post in h.fake.posts]
    [dated] = [text for text in texts if "<!date" in text]
    [hostile] = [text for text in texts if "<!date" not in text]
    assert "Captured <!date^1705314600^{date_short_pretty} {time}|2024-01-15 10:30 UTC>" in dated
    assert "Captured &lt;!channel&gt;" in hostile


async def test_sources_are_links_titled_by_sitegpt_or_by_the_page_path(harness):
    h = await harness()
    await h.accept(message("thread_A", "answer", kind="NORMAL_MESSAGE", sources=[
        {"url": "https://example.com/docs/reset", "title": "Resetting a password"},
        "https://example.com/docs/billing/",
        {"url": "https://example.com/x", "title": HOSTILE},
        {"url": "https://evil.example|Click", "title": "Safe"}]))
    await h.worker.drain()
    line = h.fake.posts[-1]["blocks"][-1]["elements"][0]["text"]
    assert line.startswith("Sources: <https://example.com/docs/reset|Resetting a password> · "
                           "<https://example.com/docs/billing/|/docs/billing> · "
                           "<https://example.com/x|&lt;!channel&gt; &lt;https://evil.example|x&gt;")
    assert "\u202e" not in line
    found = live_links([h.fake.posts[-1]])
    assert not [link for link in found if "evil.example" in link.split("|")[0]]
    assert "<!channel>" not in found
    valid_block_kit(h.fake.posts)


def test_a_source_that_is_neither_a_url_nor_an_object_with_one_is_refused():
    with pytest.raises(InvalidEvent) as refused:
        parse_event("ADD_MESSAGE", message("thread_A", "x", sources=[{"title": "no url"}]))
    assert refused.value.field == "data.sources.0"


async def test_a_lead_captured_in_the_conversation_names_the_visitor(harness, sample):
    h = await harness()
    await h.accept(message("thread_A", "do you ship to Spain?"))
    await h.worker.drain()
    lead = sample("lead")
    lead["data"]["threadId"] = "thread_A"
    lead["data"]["leadDetails"]["name"] = "<!here> Ana \u202e"
    await h.accept(lead)
    await h.worker.drain()
    assert headline(h.fake.updates[-1]).startswith(
        ":bust_in_silhouette: *&lt;!here&gt; Ana*: do you ship to Spain?")
    assert [post["channel"] for post in h.fake.parents()] == ["C_CONV", "C_LEADS"]
    await h.accept({**lead, "data": {**lead["data"], "leadDetails": {
        **lead["data"]["leadDetails"], "id": "lead_again"}}})
    await h.worker.drain()
    assert len(h.fake.updates) == 1  # the same name again: the parent is left as it is


@pytest.mark.parametrize(("value", "token", "shown"), [
    (1705314600, "{time}", "<!date^1705314600^{time}|2024-01-15 10:30 UTC>"),
    ("2024-01-15T11:30:00+01:00", "{date}", "<!date^1705314600^{date}|2024-01-15 10:30 UTC>"),
    ("2024-01-15T10:30:00", "{date}", "<!date^1705314600^{date}|2024-01-15 10:30 UTC>"),
    ("<!channel>", "{date}", "&lt;!channel&gt;"),
    (True, "{date}", "True"),
    (1705314600, "{time}|x>^https://evil.example", "<!date^1705314600^{time}xhttps://evil.example"
                                                    "|2024-01-15 10:30 UTC>"),
])
def test_slack_date_is_a_date_or_inert_text(value, token, shown):
    assert slack_date(value, token) == shown
