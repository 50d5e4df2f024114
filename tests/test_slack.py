"""Slack destination: the real slack_sdk client against a fake Slack Web API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bridge.destinations.base import Delivered, Delivery
from bridge.destinations.slack import SlackDestination
from bridge.errors import PermanentError
from bridge.event_rows import new_event
from bridge.events import MESSAGE, TICKET_LINKED, canonical_json, parse_event
from bridge.samples import load_sample
from bridge.store import ClaimedDelivery, open_store
from bridge.templating import CUT_MARKER, Templates
from bridge.worker import Worker
from tests.failing_store import FullDisk
from tests.slack_harness import (  # noqa: F401 (fixtures)
    Harness,
    fresh_fake_fixture,
    harness_fixture,
    message,
)


def texts(posts: list[dict[str, Any]]) -> list[str]:
    return [post["text"] for post in posts]


def shown(posts: list[dict[str, Any]]) -> list[str]:
    """Every message the posts show, in order: a reply with several shows a line for each."""
    return [line for post in posts for line in post["text"].split("\n")]


async def test_one_thread_per_conversation_in_order_while_another_interleaves(harness):
    h = await harness()
    for n in range(20):
        await h.accept(message("thread_A", f"A{n}"))
        if n % 2 == 0:
            await h.accept(message("thread_B", f"B{n}"))
    await h.worker.drain()

    parents = h.fake.parents()
    assert len(parents) == 2
    by_thread = {p["text"].rsplit(" ", 1)[-1]: p["ts"] for p in parents}
    a_replies = h.fake.thread("C_CONV", by_thread["thread_A"])
    b_replies = h.fake.thread("C_CONV", by_thread["thread_B"])
    assert shown(a_replies) == [f"Visitor: A{n}" for n in range(20)]
    assert shown(b_replies) == [f"Visitor: B{n}" for n in range(0, 20, 2)]
    state = await h.store.link_state("chatbot_123", "thread_A", "slack")
    assert state and state["thread_ts"] == by_thread["thread_A"]


async def test_thread_survives_a_restart(harness, clock, fake):
    h = await harness()
    await h.accept(message("thread_A", "before"))
    await h.worker.drain()
    await h.slack.aclose()
    again = SlackDestination(h.slack.settings, Templates(), clock)  # as after a restart
    h.worker.destinations = {"slack": again}
    await h.accept(message("thread_A", "after"))
    await h.worker.drain()
    await again.aclose()
    assert len(fake.parents()) == 1
    assert texts(fake.thread("C_CONV", fake.parents()[0]["ts"])) == [
        "Visitor: before", "Visitor: after"]


async def test_two_workers_racing_on_a_new_conversation_make_one_parent(harness):
    h = await harness()
    second = Worker(h.store, {"slack": h.slack}, h.worker.settings, h.clock, random.Random(3))
    for n in range(6):
        await h.accept(message("thread_new", f"m{n}"))
    await asyncio.gather(h.worker.drain(), second.drain())
    assert len(h.fake.parents()) == 1
    assert shown(h.fake.thread("C_CONV", h.fake.parents()[0]["ts"])) == [
        f"Visitor: m{n}" for n in range(6)]


async def test_429_waits_for_retry_after_then_delivers_once(harness):
    h = await harness()
    await h.accept(message("thread_A", "first"))
    h.fake.fail_next("chat.postMessage", status=429, error="ratelimited",
                     headers={"Retry-After": "30"})
    await h.worker.drain()
    [(status, error)] = await h.statuses()
    assert status == "pending" and "ratelimited" in (error or "")
    [row] = await h.store.deliveries()
    assert 30 <= row.next_attempt_at - h.clock.now() <= 31
    h.clock.advance(10)
    await h.worker.drain()
    assert h.fake.posts == []
    h.clock.advance(21)
    await h.worker.drain()
    assert [s for s, _ in await h.statuses()] == ["delivered"]
    assert len(h.fake.parents()) == 1 and len(h.fake.posts) == 2


async def test_rate_limited_channel_is_held_while_other_channels_carry_on(harness):
    h = await harness()
    h.slack.pacer.hold("C_CONV", 60)
    await h.accept(message("thread_A", "waits"))
    await h.accept({"event": "NEW_LEAD_CAPTURE", "data": {
        "chatbotId": "chatbot_123", "leadDetails": {"id": "lead_1", "name": "Ann"}}})
    await h.worker.drain()
    assert [p["channel"] for p in h.fake.posts] == ["C_LEADS"]
    assert [s for s, _ in await h.statuses()] == ["pending", "delivered"]


async def test_outage_then_recovery_loses_and_doubles_nothing(harness):
    h = await harness()
    h.fake.outage_status = 503
    for n in range(5):
        await h.accept(message("thread_A", f"m{n}"))
    for _ in range(6):
        await h.worker.drain()
        h.clock.advance(5)
    assert h.fake.posts == []
    rows = await h.store.deliveries()
    assert all(row.status == "pending" for row in rows)
    assert "HTTP 503" in (rows[-1].last_error or "")
    h.fake.outage_status = None
    for _ in range(10):
        h.clock.advance(5)
        await h.worker.drain()
    assert len(h.fake.parents()) == 1
    assert shown(h.fake.thread("C_CONV", h.fake.parents()[0]["ts"])) == [
        f"Visitor: m{n}" for n in range(5)]


@pytest.mark.parametrize("error", ["invalid_auth", "channel_not_found", "is_archived"])
async def test_permanent_slack_errors_fail_at_once_with_the_reason(harness, error):
    h = await harness()
    await h.accept(message("thread_A", "hello"))
    h.fake.fail_next("chat.postMessage", error=error)
    await h.worker.drain()
    [(status, reason)] = await h.statuses()
    assert status == "failed"
    assert reason == f"slack: chat.postMessage: {error}"
    assert "xoxb" not in reason


async def test_visitor_text_cannot_mention_or_plant_links(harness):
    h = await harness()
    hostile = "<!channel> hi <https://evil.example|click here> & <@U123> <!subteam^S1>"
    await h.accept(message("thread_A", hostile, kind="NORMAL_MESSAGE",
                           sources=["https://docs.example/a?x=1&y=<2>"]))
    await h.accept({"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": "chatbot_123", "threadId": "thread_A",
        "user": {"name": "<!here> Mallory", "email": "<mailto:x@evil.example|boss@corp>"}}})
    await h.worker.drain()
    posted = "".join(str(post) for post in h.fake.posts)
    for live in ("<!channel>", "<https://evil.example", "<@U123>", "<!here>", "<mailto:"):
        assert live not in posted
    assert "&lt;!channel&gt; hi &lt;https://evil.example|click here&gt; &amp;" in posted
    escalation = h.fake.posts[-1]["blocks"][0]["text"]["text"]
    assert escalation.startswith("<!subteam^S0123> ")  # only the configured mention is live
    # "<" or ">" in a URL would end the link early: it is shown as text instead
    assert "https://docs.example/a?x=1&amp;y=&lt;2&gt;" in posted
    assert "<https://docs.example" not in posted


def links(post: dict[str, Any]) -> list[str]:
    """Every <...> Slack would read as a link or mention in a post's texts."""
    return re.findall(r"<[^<>]*>", json.dumps(post, ensure_ascii=False))


async def test_fields_sitegpt_fills_in_cannot_mention_or_relabel_links(harness):
    h = await harness()
    thread = "t1|Pwned>"
    await h.accept(message(thread, "hi", kind="NORMAL_MESSAGE", sources=[
        "!channel", "https://evil.example|Reset your password here", "javascript:alert(1)",
        "https://docs.example/a?x=1&y=2"]))
    await h.accept({"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": "chatbot_123", "threadId": thread,
        "dashboardUrl": "https://evil.example/phish|Open the real dashboard"}})
    lead = copy.deepcopy(load_sample("lead"))
    lead["data"]["dashboardUrl"] = "https://evil.example/lead|Open the lead in SiteGPT"
    await h.accept(lead)
    await h.worker.drain()

    found = [link for post in h.fake.posts for link in links(post)]
    assert "<!channel>" not in found and "<!subteam^S0123>" in found
    assert not [link for link in found if "evil.example" in link or "javascript" in link]
    assert "<https://docs.example/a?x=1&amp;y=2|/a>" in found  # labelled with its path
    dashboard = "https://sitegpt.ai/chatbot_123/chat-history/t1%7CPwned%3E"
    assert f"<{dashboard}|Open the conversation in SiteGPT>" in found  # escalation: rebuilt
    assert f"<{dashboard}|Open in SiteGPT>" in found  # the parent
    posted = json.dumps(h.fake.posts, ensure_ascii=False)
    assert "!channel" in posted and "Reset your password here" in posted  # shown, as text


@pytest.mark.parametrize(("url", "label"), [
    ("https://evil.example/chat", "Open in evil.example"),
    ("https://sitegpt.ai.evil.example/chat", "Open in sitegpt.ai.evil.example"),
    ("https://sitegpt.ai@evil.example/chat", "Open in evil.example"),
    ("https://notsitegpt.ai/chat", "Open in notsitegpt.ai"),
    ("https://app.sitegpt.ai/chat", None),
    ("https://SiteGPT.ai:443/chat", None),
])
async def test_a_dashboard_link_elsewhere_than_sitegpt_is_labelled_with_its_host(harness, url,
                                                                                label):
    h = await harness()
    await h.accept(message("thread_A", "help"))
    await h.accept({"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": "chatbot_123", "threadId": "thread_A", "dashboardUrl": url}})
    lead = copy.deepcopy(load_sample("lead"))
    lead["data"]["dashboardUrl"] = url
    await h.accept(lead)
    await h.worker.drain()
    found = [link for post in h.fake.posts for link in links(post) if url in link]
    expected = ([f"<{url}|{label}>"] * 2 if label else
                [f"<{url}|Open the conversation in SiteGPT>", f"<{url}|Open the lead in SiteGPT>"])
    assert sorted(found) == sorted(expected)


async def test_long_text_is_cut_with_a_marker_never_rejected(harness):
    h = await harness()
    await h.accept(message("thread_A", "x" * 50_000 + " &amp; end", kind="NORMAL_MESSAGE"))
    await h.worker.drain()
    reply = h.fake.posts[-1]
    assert len(reply["text"]) <= 40_000 and reply["text"].endswith(CUT_MARKER)
    for block in reply["blocks"]:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
            assert block["text"]["text"].endswith(CUT_MARKER)
    assert [s for s, _ in await h.statuses()] == ["delivered"]


async def test_escalation_is_broadcast_and_marks_the_parent(harness, sample):
    h = await harness()
    await h.accept(sample("message-visitor"))
    await h.accept(sample("escalation"))
    await h.worker.drain()
    escalation = h.fake.posts[-1]
    assert escalation["reply_broadcast"] is True
    body = escalation["blocks"][0]["text"]["text"]
    for expected in ("John Doe", "user@example.com", "+1234567890",
                     "https://sitegpt.ai/chatbot_123/chat-history/thread_456"):
        assert expected in body
    [update] = h.fake.updates
    assert update["ts"] == h.fake.parents()[0]["ts"]
    assert "Escalated" in str(update["blocks"])


async def test_anonymous_escalation_says_so(harness, sample):
    h = await harness()
    await h.accept(sample("escalation-anonymous"))
    await h.worker.drain()
    assert "anonymous visitor" in h.fake.posts[-1]["text"]


async def test_ticket_link_replies_in_thread_and_shows_on_the_parent(harness):
    h = await harness(extra={"jira": {
        "url": "https://acme.atlassian.net", "email": "a@b.c", "api_token": "t", "project": "SUP"}})
    await h.accept(message("thread_A", "help"))
    body = {"event": TICKET_LINKED, "data": {
        "chatbotId": "chatbot_123", "threadId": "thread_A", "issueKey": "SUP-7",
        "issueUrl": "https://acme.atlassian.net/browse/SUP-7", "created": True}}
    event = parse_event(TICKET_LINKED, body)
    await h.store.accept(new_event(event, body, ["slack"]), h.clock.now(), 0)
    await h.worker.drain()
    reply = h.fake.posts[-1]
    assert reply["thread_ts"] == h.fake.parents()[0]["ts"]
    assert "<https://acme.atlassian.net/browse/SUP-7|SUP-7>" in str(reply["blocks"])
    assert "SUP-7" in str(h.fake.updates[-1]["blocks"])
    assert canonical_json(body)  # the follow-up body Jira produces is plain JSON


async def test_leads_go_to_the_leads_channel_with_every_field(harness, sample):
    h = await harness()
    await h.accept(sample("lead-custom-fields"))
    await h.worker.drain()
    [post] = h.fake.posts
    assert post["channel"] == "C_LEADS" and "thread_ts" not in post
    for expected in ("Ana María Nuñez", "+34 600 000 000", "Company", "Nuñez Consulting",
                     "Team size", "11-50", "Support Bot", "leads/lead_790"):
        assert expected in str(post["blocks"])


async def test_unfurling_is_off_and_each_event_is_one_reply(harness, sample):
    h = await harness()
    await h.accept(sample("message-bot-answer"))
    await h.worker.drain()
    assert len(h.fake.posts) == 2
    assert all(p["unfurl_links"] is False and p["unfurl_media"] is False for p in h.fake.posts)


async def test_dry_run_logs_the_message_and_records_skipped(make_settings, clock, caplog):
    settings = make_settings()
    store = open_store(settings.store.url)
    destination = SlackDestination(settings, Templates(), clock)
    worker = Worker(store, {"slack": destination}, settings.delivery, clock)
    body = message("thread_A", "hello from a newcomer")
    await store.accept(new_event(parse_event("ADD_MESSAGE", body), body, ["slack"]), clock.now(), 9)
    with caplog.at_level(logging.INFO):
        await worker.drain()
    [row] = await store.deliveries()
    assert row.status == "skipped" and "dry run" in (row.note or "")
    assert "hello from a newcomer" in caplog.text
    await destination.aclose()
    await store.close()


LIVE_AND_DRY = ("message-visitor", "message-bot-answer", "escalation", "ticket-linked", "lead")


async def run_one_by_one(h: Harness, sample: Callable[[str], Any]) -> None:
    for name in LIVE_AND_DRY:  # one at a time: a live run would merge waiting messages
        await h.accept(sample(name))
        await h.worker.drain()


async def test_a_dry_run_logs_every_call_a_live_run_makes(harness, sample, caplog, make_settings,
                                                         tmp_path, clock):
    live = await harness()
    await run_one_by_one(live, sample)
    calls = len(live.fake.posts) + len(live.fake.updates)
    settings = make_settings({"store": {"url": f"sqlite:///{tmp_path}/dry.db"},
                              "slack": {"channel": "C_CONV", "leads_channel": "C_LEADS"}})
    store = open_store(settings.store.url)
    slack = SlackDestination(settings, Templates(), clock)
    dry = Harness(store, slack, Worker(store, {"slack": slack}, settings.delivery, clock),
                  clock, live.fake)
    with caplog.at_level(logging.INFO, "bridge"):
        await run_one_by_one(dry, sample)
    await slack.aclose()
    await store.close()
    logged = [record.getMessage().split(": {")[0] for record in caplog.records
              if record.getMessage().startswith("slack dry run")]
    parent = next(record.getMessage() for record in caplog.records
                  if "would start the thread" in record.getMessage())
    assert "I still can" in parent  # the parent leads with the question, as a live one does
    assert logged == [
        "slack dry run (no bot_token), would start the thread in C_CONV with the parent",
        "slack dry run (no bot_token), would reply in the thread in C_CONV",
        "slack dry run (no bot_token), would reply in the thread in C_CONV",
        "slack dry run (no bot_token), would reply in the thread in C_CONV",
        "slack dry run (no bot_token), would update the thread's parent in C_CONV",
        "slack dry run (no bot_token), would reply in the thread in C_CONV",
        "slack dry run (no bot_token), would update the thread's parent in C_CONV",
        "slack dry run (no bot_token), would update the escalation's post in C_CONV",
        "slack dry run (no bot_token), would post in C_LEADS"]
    assert len(logged) == calls


async def test_a_dry_run_logs_the_parent_a_lead_in_the_conversation_names(
        fake, sample, caplog, make_settings, tmp_path, clock):
    settings = make_settings({"store": {"url": f"sqlite:///{tmp_path}/dry.db"},
                              "slack": {"channel": "C_CONV", "leads_channel": "C_LEADS"}})
    store = open_store(settings.store.url)
    slack = SlackDestination(settings, Templates(), clock)
    dry = Harness(store, slack, Worker(store, {"slack": slack}, settings.delivery, clock),
                  clock, fake)
    lead = sample("lead")
    lead["data"]["threadId"] = "thread_A"
    with caplog.at_level(logging.INFO, "bridge"):
        for body in (message("thread_A", "do you ship to Spain?"), lead):
            await dry.accept(body)
            await dry.worker.drain()
    await slack.aclose()
    await store.close()
    logged = [record.getMessage() for record in caplog.records
              if record.getMessage().startswith("slack dry run")]
    assert [line.split(": {")[0] for line in logged[-2:]] == [
        "slack dry run (no bot_token), would post in C_LEADS",
        "slack dry run (no bot_token), would update the thread's parent in C_CONV"]
    assert "*John Doe*: do you ship to Spain?" in logged[-1]  # as a live run names them
    assert fake.posts == [] and fake.updates == []


async def test_verify_names_workspace_and_bot(harness):
    h = await harness()
    assert "workspace Acme (T1), bot @bridge (U0BRIDGE)" in await h.slack.verify()
    h.fake.fail_next("auth.test", error="invalid_auth")
    with pytest.raises(PermanentError, match="invalid_auth"):
        await h.slack.verify()


async def test_verify_reads_each_channel_given_by_id_and_names_one_the_bot_cannot_see(harness):
    h = await harness({"chatbots": [{"id": "bot_x", "slack_channel": "C0OTHER99"},
                                    {"id": "bot_y", "slack_channel": "C0CONV1234"}]},
                      channel="C0CONV1234", leads_channel="#leads")
    assert await h.slack.verify() == (
        "ok: workspace Acme (T1), bot @bridge (U0BRIDGE), channel C0CONV1234 ok, "
        "channel #leads (a name: not checked, give its id to check it), channel C0OTHER99 ok")
    assert [args["channel"] for method, args, _ in h.fake.calls
            if method == "conversations.history"] == ["C0CONV1234", "C0OTHER99"]

    h.fake.fail_next("conversations.history", error="missing_scope")
    assert "channel C0CONV1234 (not checked: the app has no history scope)" in (
        await h.slack.verify())
    h.fake.fail_next("conversations.history", error="not_in_channel")
    with pytest.raises(PermanentError, match="not_in_channel: is the bot invited to channel "
                                             "C0CONV1234"):
        await h.slack.verify()
    h = await harness(channel="C0CONV1234", leads_channel="C0MISSING")
    with pytest.raises(PermanentError, match="channel_not_found: is the bot invited to channel "
                                             "C0MISSING"):
        await h.slack.verify()


async def test_unknown_message_type_is_rendered_plainly(harness):
    h = await harness()
    await h.accept(message("thread_A", "what is this", kind="FANCY_NEW_TYPE"))
    await h.worker.drain()
    assert "FANCY_NEW_TYPE" in str(h.fake.posts[-1]["blocks"])


def test_missing_variable_in_a_json_template_is_named(tmp_path):
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "lead.json.j2").write_text('{"text": {{ lead.nickname | tojson }}}')
    from bridge.errors import TemplateError

    with pytest.raises(TemplateError, match=r"lead.json.j2:1: .*'nickname'"):
        Templates(tmp_path).render_json("slack/lead.json.j2", {"lead": {"name": "Ann"}})


async def lose_the_answer_to_the_parent(h: Harness) -> None:
    """Slack posts the parent but its answer never arrives in time (a timeout, a crash)."""
    await h.accept(message("thread_A", "first"))
    h.fake.answer_late(3.0)
    await h.worker.drain()
    [(status, error)] = await h.statuses()
    assert status == "pending" and "chat.postMessage" in (error or "")
    assert len(h.fake.parents()) == 1


async def test_a_parent_whose_answer_was_lost_is_found_again_not_posted_twice(harness):
    h = await harness(timeout_seconds=1)
    await lose_the_answer_to_the_parent(h)
    [lost] = h.fake.parents()
    assert lost["metadata"] == {"event_type": "sitegpt_bridge_thread",
                                "event_payload": {"conversation": "chatbot_123/thread_A"}}
    for name in "BCDE":  # newer parents in the channel: the search pages back past them
        await h.accept(message(f"thread_{name}", "hello"))
    h.fake.page_size = 2
    await h.worker.drain()

    h.clock.advance(300)
    await h.worker.drain()

    assert [s for s, _ in await h.statuses()] == ["delivered"] * 5
    assert len(h.fake.parents()) == 5
    assert texts(h.fake.thread("C_CONV", lost["ts"])) == ["Visitor: first"]
    state = await h.store.link_state("chatbot_123", "thread_A", "slack")
    assert state and state["thread_ts"] == lost["ts"]
    searches = [args for method, args, _ in h.fake.calls if method == "conversations.history"]
    assert len(searches) == 3 and all(args["channel"] == "C_CONV" for args in searches)


async def test_without_the_history_scope_a_retry_posts_a_new_parent_and_loses_nothing(
        harness, caplog):
    h = await harness(timeout_seconds=1)
    await lose_the_answer_to_the_parent(h)
    h.fake.fail_next("conversations.history", status=503)
    h.clock.advance(300)
    await h.worker.drain()
    assert [s for s, _ in await h.statuses()] == ["pending"]  # Slack unwell: look again later
    assert len(h.fake.parents()) == 1

    h.fake.fail_next("conversations.history", error="missing_scope")
    h.clock.advance(300)
    with caplog.at_level(logging.WARNING, logger="bridge.slack"):
        await h.worker.drain()

    assert [s for s, _ in await h.statuses()] == ["delivered"]
    _lost, second = h.fake.parents()
    assert texts(h.fake.thread("C_CONV", second["ts"])) == ["Visitor: first"]
    assert "could not look for an earlier parent of chatbot_123/thread_A" in caplog.text


# A backlog: what waits for a thread goes out in as few replies as Slack's limits allow

async def open_thread(h: Harness, thread: str = "thread_A") -> str:
    """The conversation's thread, started by a first message; its parent's ts."""
    await h.accept(message(thread, "first"))
    await h.worker.drain()
    return h.fake.parents()[-1]["ts"]


async def test_a_backlog_becomes_one_reply_each_message_with_its_look_and_time(harness):
    h = await harness()
    parent = await open_thread(h)
    h.fake.outage_status = 503
    await h.accept(message("thread_A", "who are you?"))
    h.clock.advance(60)
    await h.accept(message("thread_A", "a bot", kind="NORMAL_MESSAGE",
                           sources=["https://example.com/a"]))
    await h.worker.drain()
    h.fake.outage_status = None
    h.clock.advance(5)
    await h.worker.drain()

    [_, reply] = h.fake.thread("C_CONV", parent)
    assert reply["text"] == "Visitor: who are you?\nVisitor: a bot\nBot: a bot"
    first, second = int(h.clock.now() - 65), int(h.clock.now() - 5)
    assert [block["type"] for block in reply["blocks"]] == [
        "section", "context", "section", "section", "context"]
    assert reply["blocks"][1]["elements"][-1]["text"].startswith(f"<!date^{first}^{{time}}|")
    sources, stamp = reply["blocks"][4]["elements"]  # the time joins the sources' line
    assert sources["text"] == "Sources: <https://example.com/a|/a>"
    assert stamp["text"].startswith(f"<!date^{second}^{{time}}|")
    notes = {row.note for row in await h.store.deliveries(limit=10)}
    assert notes == {h.fake.posts[1]["channel"] + "/" + h.fake.posts[1]["ts"],
                     f"C_CONV/{reply['ts']}"}


@pytest.mark.parametrize(("kind", "text", "limit"), [
    ("USER_MESSAGE", "x" * 2_900, "text"),  # 13 fit in 39,000 characters of text
    ("NORMAL_MESSAGE", "short", "blocks"),  # 3 blocks each: 16 fit in 50
])
async def test_a_long_backlog_is_cut_at_slacks_limits_into_a_few_replies_in_order(
        harness, kind, text, limit):
    h = await harness()
    parent = await open_thread(h)
    for n in range(60):
        await h.accept(message("thread_A", f"{n:02d} {text}", kind=kind,
                               sources=["https://example.com/a"]))
    await h.worker.drain()

    replies = h.fake.thread("C_CONV", parent)[1:]
    assert 3 <= len(replies) <= 5
    for reply in replies:
        assert len(reply["blocks"]) <= 50 and len(reply["text"]) <= 39_000
        assert CUT_MARKER not in json.dumps(reply)
    shown_numbers = [line.split()[1] for line in shown(replies) if line.startswith("Visitor:")]
    assert shown_numbers == [f"{n:02d}" for n in range(60)]
    assert [s for s, _ in await h.statuses()] == ["delivered"] * 61


async def test_escalations_ticket_links_and_agents_start_replies_of_their_own(harness, sample):
    h = await harness()
    parent = await open_thread(h, "thread_456")
    for text in ("v0", "v1"):
        await h.accept(message("thread_456", text))
    await h.accept(sample("escalation"))
    for text in ("v2", "v3"):
        await h.accept(message("thread_456", text))
    await h.accept(message("thread_456", "a4", kind="AGENT_MESSAGE", agentName="Dana"))
    await h.accept(message("thread_456", "v5"))
    await h.worker.drain()

    replies = texts(h.fake.thread("C_CONV", parent))[1:]
    assert replies[0] == "Visitor: v0\nVisitor: v1"
    assert "asked for a human" in replies[1] and "Visitor" not in replies[1]
    assert replies[2:] == ["Visitor: v2\nVisitor: v3", "Dana: a4\nVisitor: v5"]


async def test_a_reply_whose_answer_was_lost_is_repeated_once_and_nothing_is_lost(harness):
    h = await harness(timeout_seconds=1)
    parent = await open_thread(h)
    for n in range(3):
        await h.accept(message("thread_A", f"m{n}"))
    h.fake.answer_late(3.0)  # Slack shows the reply, but its answer never comes back
    await h.worker.drain()
    assert [s for s, _ in await h.statuses()] == ["delivered", "pending", "pending", "pending"]
    h.clock.advance(300)
    await h.worker.drain()

    batch = "Visitor: m0\nVisitor: m1\nVisitor: m2"
    assert texts(h.fake.thread("C_CONV", parent)) == ["Visitor: first", batch, batch]
    rows = await h.store.deliveries(limit=10)
    assert {(row.status, row.note) for row in rows[:3]} == {
        ("delivered", f"C_CONV/{h.fake.posts[-1]['ts']}")}


async def test_what_a_dead_worker_took_along_goes_with_the_next_reply(harness):
    h = await harness()
    parent = await open_thread(h)
    for n in range(3):
        await h.accept(message("thread_A", f"m{n}"))
    [head] = await h.store.claim("dead-worker", h.clock.now(), 1, 15)
    assert len(await h.store.take_queued(head.lease, frozenset({MESSAGE}), 10,
                                         h.clock.now())) == 2
    await h.worker.drain()
    assert len(h.fake.posts) == 2  # all three wait for the dead worker's lease to run out
    h.clock.advance(15)
    await h.worker.drain()
    assert texts(h.fake.thread("C_CONV", parent))[1:] == ["Visitor: m0\nVisitor: m1\nVisitor: m2"]


async def test_a_batch_template_failing_on_real_data_sends_each_message_alone(harness, tmp_path):
    folder = tmp_path / "mine"
    (folder / "slack").mkdir(parents=True)
    (folder / "slack" / "messages_batch.json.j2").write_text(
        '{% extends "default:slack/messages_batch.json.j2" %}'
        "{% block fallback %}{{ messages[3].text }}{% endblock %}")  # only 3 are waiting
    h = await harness()
    h.worker.destinations = {"slack": SlackDestination(h.slack.settings, Templates(folder),
                                                       h.clock, h.slack.workspace)}
    parent = await open_thread(h)
    for n in range(3):
        await h.accept(message("thread_A", f"m{n}"))
    await h.worker.drain()
    assert texts(h.fake.thread("C_CONV", parent))[1:] == [
        "Visitor: m0", "Visitor: m1", "Visitor: m2"]
    assert [s for s, _ in await h.statuses()] == ["delivered"] * 4


async def fill_backlog(h: Harness, bodies: list[dict[str, Any]]) -> str:
    """Messages that waited through an outage, then Slack back: the thread's parent ts."""
    parent = await open_thread(h)
    h.fake.outage_status = 503
    for body in bodies:
        await h.accept(body)
        h.clock.advance(1)
    await h.worker.drain()
    h.fake.outage_status = None
    h.clock.advance(60)
    await h.worker.drain()
    return parent


def without_stamps(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch's blocks with each message's time taken out again."""
    kept = []
    for block in blocks:
        elements = [item for item in block.get("elements", [])
                    if not str(item.get("text", "")).startswith("<!date^")]
        if block["type"] != "context":
            kept.append(block)
        elif elements:
            kept.append({**block, "elements": elements})
    return kept


async def test_in_a_batch_every_message_type_looks_as_it_does_alone(harness):
    h = await harness()
    bodies = [
        message("thread_A", "Dana here", kind="AGENT_MESSAGE", agentName="Dana"),
        message("thread_A", "who are you?"),
        message("thread_A", "a bot", kind="NORMAL_MESSAGE",
                sources=["https://example.com/a", "https://example.com/b"]),
        message("thread_A", None, kind="SYSTEM_MESSAGE",
                systemMessageType="CONVERSATION_ESCALATED"),
        message("thread_A", "thumbs up", kind="FEEDBACK_MESSAGE"),
    ]
    parent = await fill_backlog(h, bodies)

    [_, reply] = h.fake.thread("C_CONV", parent)
    alone = [h.slack.renderer.message(parse_event("ADD_MESSAGE", body)) for body in bodies]
    assert without_stamps(reply["blocks"]) == [block for one in alone for block in one["blocks"]]
    assert reply["text"] == "\n".join(one["text"] for one in alone)
    assert json.dumps(reply["blocks"]).count("<!date^") == len(bodies)
    assert [s for s, _ in await h.statuses()] == ["delivered"] * 6


async def test_an_override_of_a_message_template_shows_inside_a_batch(harness, tmp_path):
    folder = tmp_path / "mine"
    (folder / "slack").mkdir(parents=True)
    (folder / "slack" / "message_normal.json.j2").write_text(
        '{% extends "default:slack/message_normal.json.j2" %}'
        "{% block answer %}{{ super() }} :sparkles: checked by the team{% endblock %}")
    (folder / "slack" / "message_visitor.json.j2").write_text(  # text only, no blocks
        '{"text": {{ ("Visitor wrote: " ~ message.question) | tojson }}}')
    h = await harness()
    h.worker.destinations = {"slack": SlackDestination(h.slack.settings, Templates(folder),
                                                       h.clock, h.slack.workspace)}
    parent = await fill_backlog(h, [message("thread_A", "hi"),
                                    message("thread_A", "hello", kind="NORMAL_MESSAGE")])

    [_, reply] = h.fake.thread("C_CONV", parent)
    sections = [block["text"]["text"] for block in reply["blocks"] if block["type"] == "section"]
    assert sections == ["Visitor wrote: hi", ":bust_in_silhouette: *Visitor*\nhello",
                        ":robot_face: *Bot*\nhello :sparkles: checked by the team"]
    assert reply["text"] == "Visitor wrote: hi\nVisitor: hello\nBot: hello"


def numbered(n: int, kind: str, text: str, **data: Any) -> dict[str, Any]:
    return message("thread_A", f"m{n:03d} {text}", kind=kind, **data)


BACKLOGS = {
    "very long messages": [numbered(n, kind, "y" * 45_000) for n, kind in enumerate(
        ["USER_MESSAGE", "NORMAL_MESSAGE", "AGENT_MESSAGE", "NORMAL_MESSAGE"] * 3)],
    "text Slack escapes longer": [numbered(n, "NORMAL_MESSAGE", "<&>" * 4_000)
                                  for n in range(20)],
    "many sources": [numbered(n, "NORMAL_MESSAGE", "see these", sources=[
        f"https://docs.example.com/{n}/{'long-path-' * 8}{s}" for s in range(120)])
        for n in range(20)],
    "many short messages": [numbered(n, "USER_MESSAGE", "k") for n in range(200)],
}


@pytest.mark.parametrize("backlog", BACKLOGS.values(), ids=BACKLOGS.keys())
async def test_no_backlog_however_adversarial_goes_beyond_slacks_limits(harness, backlog):
    h = await harness()
    parent = await fill_backlog(h, backlog)

    assert h.fake.refused == []
    replies = h.fake.thread("C_CONV", parent)[1:]
    for reply in replies:
        assert len(reply["blocks"]) <= 50 and len(reply["text"]) <= 40_000
        assert all(len(block.get("text", {}).get("text", "")) <= 3_000
                   for block in reply["blocks"])
    markers = re.findall(r"m\d{3}(?= )", " ".join(json.dumps(r["blocks"]) for r in replies))
    assert list(dict.fromkeys(markers)) == [f"m{n:03d}" for n in range(len(backlog))]
    assert len(replies) < len(backlog)
    assert [s for s, _ in await h.statuses()] == ["delivered"] * (len(backlog) + 1)


# A delivery cut off mid-call (its worker killed, hung, or unable to record the outcome) is
# looked for in Slack before it is posted again.

async def post_and_die(h: Harness, post: bool = True) -> ClaimedDelivery:
    """A worker takes the next delivery, posts it (unless not `post`), and dies unrecorded."""
    [job] = await h.store.claim("dead-worker", h.clock.now(), 1, 15)
    if post:
        delivery = Delivery(job, parse_event(job.kind, job.payload), h.store, h.clock)
        assert isinstance(await h.slack.deliver(delivery), Delivered)
    h.clock.advance(15)  # its lease runs out: the next claim takes it over, uncertain
    return job


def reconciled(h: Harness, found: str) -> float:
    value = h.worker.metrics.registry.get_sample_value(
        "sitegpt_bridge_reconciled_total", {"destination": "slack", "found": found})
    return value or 0.0


async def test_every_post_names_the_deliveries_and_events_it_carries(harness):
    h = await harness()
    parent = await open_thread(h)
    ids = [await h.accept(message("thread_A", f"m{n}")) for n in range(2)]
    await h.worker.drain()
    first, batch = h.fake.thread("C_CONV", parent)
    assert first["metadata"] == {"event_type": "sitegpt_bridge_delivery",
                                 "event_payload": {"event_id": "1", "delivery_id": "1"}}
    assert batch["metadata"]["event_payload"] == {"event_id": ",".join(map(str, ids)),
                                                  "delivery_id": "2,3"}
    assert h.fake.lookups() == []  # nothing was cut off: nothing is looked for


async def test_a_reply_posted_by_a_worker_that_died_is_found_not_posted_again(harness):
    h = await harness()
    parent = await open_thread(h)
    await h.accept(message("thread_A", "m0"))
    job = await post_and_die(h)
    await h.worker.drain()

    [_first, reply] = h.fake.thread("C_CONV", parent)
    assert reply["text"] == "Visitor: m0"
    [row] = await h.store.deliveries(ids=[job.id])
    assert (row.status, row.note) == ("delivered", f"C_CONV/{reply['ts']}")
    [lookup] = h.fake.lookups()
    assert (lookup["channel"], lookup["ts"]) == ("C_CONV", parent)
    assert str(lookup["include_all_metadata"]).lower() in ("1", "true")
    assert reconciled(h, "yes") == 1


async def test_a_batch_posted_by_a_worker_that_died_is_found_with_all_it_carried(harness):
    h = await harness()
    parent = await open_thread(h)
    for n in range(3):
        await h.accept(message("thread_A", f"m{n}"))
    await h.accept(message("thread_A", "later"))  # came after the dead worker's post
    await post_and_die(h)  # m0, with m1 and m2 taken along in one reply
    assert texts(h.fake.thread("C_CONV", parent))[1:] == [
        "Visitor: m0\nVisitor: m1\nVisitor: m2\nVisitor: later"]
    await h.worker.drain()

    assert len(h.fake.thread("C_CONV", parent)) == 2  # nothing posted again
    rows = await h.store.deliveries(limit=10)
    assert {row.status for row in rows} == {"delivered"}
    assert len({row.note for row in rows[:4]}) == 1


async def test_a_worker_that_died_before_posting_leaves_it_to_be_posted_once(harness):
    h = await harness()
    parent = await open_thread(h)
    await h.accept(message("thread_A", "m0"))
    await post_and_die(h, post=False)
    await h.worker.drain()
    assert texts(h.fake.thread("C_CONV", parent))[1:] == ["Visitor: m0"]
    assert len(h.fake.lookups()) == 1 and reconciled(h, "no") == 1


@pytest.mark.parametrize("failure", [
    {"status": 503}, {"status": 429, "error": "ratelimited", "headers": {"Retry-After": "1"}},
    {"error": "missing_scope"}, "timeout"])
async def test_a_lookup_that_fails_posts_again_adding_at_most_one_copy(harness, failure,
                                                                       caplog):
    h = await harness(timeout_seconds=1)
    parent = await open_thread(h)
    await h.accept(message("thread_A", "m0"))
    await post_and_die(h)
    if failure == "timeout":
        h.fake.answer_late(3.0, "conversations.replies")
    else:
        h.fake.fail_next("conversations.replies", **failure)
    with caplog.at_level(logging.WARNING, logger="bridge.slack"):
        await h.worker.drain()

    assert texts(h.fake.thread("C_CONV", parent))[1:] == ["Visitor: m0", "Visitor: m0"]
    assert [s for s, _ in await h.statuses()] == ["delivered", "delivered"]
    assert "could not look for what delivery 2 posted before it was cut off" in caplog.text
    assert reconciled(h, "unknown") == 1


async def test_a_lead_posted_by_a_worker_that_died_is_found_in_the_channel(harness, sample):
    h = await harness()
    await h.accept(sample("lead-custom-fields"))
    await post_and_die(h)
    await h.worker.drain()
    [post] = h.fake.posts
    [(status, note)] = await h.statuses()
    assert (status, note) == ("delivered", f"C_LEADS/{post['ts']}")
    [search] = [args for method, args, _ in h.fake.calls if method == "conversations.history"]
    assert search["channel"] == "C_LEADS"


async def test_a_thread_notice_cut_off_is_found_in_the_thread(harness, sample):
    h = await harness()
    await h.accept(sample("message-visitor"))
    await h.worker.drain()
    [parent] = h.fake.parents()
    await h.accept(sample("escalation"))
    await post_and_die(h)
    await h.worker.drain()
    [_first, escalation] = h.fake.thread("C_CONV", parent["ts"])
    assert escalation["reply_broadcast"] is True and reconciled(h, "yes") == 1
    assert [s for s, _ in await h.statuses()] == ["delivered", "delivered"]


async def test_a_notice_cut_off_mid_call_is_found_not_posted_again(harness):
    h = await harness()
    parent = await open_thread(h)
    await h.accept({"event": "BRIDGE_THREAD_NOTICE", "data": {
        "chatbotId": "chatbot_123", "threadId": "thread_A", "channel": "C_CONV",
        "threadTs": parent, "notice": "reply_failed",
        "context": {"reason": "timed out", "user_id": "U1"}}})
    await post_and_die(h)
    await h.worker.drain()
    [_first, notice] = h.fake.thread("C_CONV", parent)
    assert notice["metadata"]["event_payload"]["delivery_id"] == "2"
    assert reconciled(h, "yes") == 1
    assert [s for s, _ in await h.statuses()] == ["delivered", "delivered"]


async def test_retries_of_deliveries_never_cut_off_look_for_nothing(harness):
    h = await harness()
    await open_thread(h)
    h.fake.fail_next("chat.postMessage", times=2, status=503)
    for n in range(3):
        await h.accept(message("thread_A", f"m{n}"))
    for _ in range(3):
        await h.worker.drain()
        h.clock.advance(300)
    assert [s for s, _ in await h.statuses()] == ["delivered"] * 4
    assert h.fake.lookups() == []


async def test_a_post_whose_outcome_the_full_store_refused_is_found_not_posted_again(harness):
    h = await harness()
    parent = await open_thread(h)
    full = FullDisk(h.store)
    h.worker.store = full
    for n in range(2):
        await h.accept(message("thread_A", f"m{n}"))
    full.full = True
    await h.worker.drain()  # posted; recording it fails, and so does giving back the rest
    assert full.refused and set(full.refused) <= {"finish", "release"}
    full.full = False
    for _ in range(3):
        h.clock.advance(15)
        await h.worker.drain()

    assert texts(h.fake.thread("C_CONV", parent))[1:] == ["Visitor: m0\nVisitor: m1"]
    assert [s for s, _ in await h.statuses()] == ["delivered"] * 3
    assert reconciled(h, "yes") == 1


async def test_a_lookup_waits_for_the_channels_pace_like_a_post(harness):
    h = await harness()
    parent = await open_thread(h)
    await h.accept(message("thread_A", "m0"))
    await post_and_die(h)
    h.slack.pacer.hold("C_CONV", 10.0)  # a 429 told the channel to wait
    await h.worker.drain()
    assert h.fake.lookups() == [] and len(h.fake.posts) == 3  # neither looked nor posted
    assert [s for s, _ in await h.statuses()] == ["delivered", "pending"]

    h.clock.advance(15)
    await h.worker.drain()
    assert len(h.fake.lookups()) == 1  # still uncertain: it looks once the channel may go
    assert texts(h.fake.thread("C_CONV", parent))[1:] == ["Visitor: m0"]


async def test_a_lookup_reads_the_thread_page_by_page_until_it_finds_the_post(harness):
    h = await harness()
    parent = await open_thread(h)
    for n in range(4):  # replies of their own: an escalation's broadcast would do the same
        await h.accept(message("thread_A", f"agent {n}", kind="AGENT_MESSAGE"))
        await h.worker.drain()
    await h.accept(message("thread_A", "m0"))
    await post_and_die(h)
    h.fake.page_size = 2
    await h.worker.drain()

    assert texts(h.fake.thread("C_CONV", parent)).count("Visitor: m0") == 1
    pages = h.fake.lookups()
    assert [page.get("cursor") or "" for page in pages] == ["", "2", "4", "6"]
    assert reconciled(h, "yes") == 1


class ThreadNotingTemplates(Templates):
    """Notes the thread each template is rendered on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, threading.Thread] = {}

    def render(self, name: str, context: Any) -> str:
        self.threads[name] = threading.current_thread()
        return super().render(name, context)


async def test_a_jira_comment_is_converted_off_the_event_loop(make_settings, fake, clock):
    # A long comment takes a while to convert; meanwhile the webhooks must still be answered.
    settings = make_settings({"slack": {"bot_token": "xoxb-test", "api_url": fake.api_url,
                                        "channel": "C_CONV", "burst": 1000, "per_second": 1000.0}})
    store = open_store(settings.store.url)
    templates = ThreadNotingTemplates()
    destination = SlackDestination(settings, templates, clock)
    h = Harness(store, destination, Worker(store, {"slack": destination}, settings.delivery,
                                           clock, random.Random(7)), clock, fake)
    try:
        await h.accept(message("thread_456", "help"))
        await h.accept(load_sample("jira-ticket-comment"))
        await h.worker.drain()
        assert [status for status, _ in await h.statuses()] == ["delivered", "delivered"]
        assert "*Fixed*" in str(fake.posts[-1]["blocks"])
        assert templates.threads["slack/ticket_comment.json.j2"] is not threading.main_thread()
    finally:
        await destination.aclose()
        await store.close()
