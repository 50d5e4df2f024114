
"""Claim and Resolve on a thread's parent: signed interactions in, the parent and Jira updated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from tests.fake_jira import FakeJira, basic_auth
from tests.fake_slack import fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)
from tests.settings_files import TOKENS
from tests.slack_site import CHATBOT, Site, api_fixture, site_fixture  # noqa: F401 (fixtures)

EMAIL, TOKEN = "bot@example.com", "jira-s3cret"


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira("Cloud", basic_auth(EMAIL, TOKEN)) as server:
        yield server


def with_jira(jira: FakeJira, **more: Any) -> dict[str, Any]:
    return {"jira": {"url": jira.url, "email": EMAIL, "api_token": TOKEN, "project": "SUP",
                     "timeout_seconds": 5.0, **more}}


def headline(message: dict[str, Any]) -> str:
    return str(message["blocks"][0]["text"]["text"])


def parent_now(s: Site, thread_ts: str) -> dict[str, Any]:
    """The parent as Slack shows it: its last update, else as it was posted."""
    updates = [update for update in s.fake.updates if update["ts"] == thread_ts]
    return updates[-1] if updates else next(p for p in s.fake.parents() if p["ts"] == thread_ts)


def lines(s: Site, thread_ts: str) -> list[str]:
    return [post["text"] for post in s.fake.thread("C_CONV", thread_ts)]


async def escalate(s: Site) -> None:
    body = {"event": "CONVERSATION_ESCALATED", "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "user": {"name": "Ann"}}}
    answer = await s.client.post("/webhooks/escalations", json=body,
                                 headers={"X-WEBHOOK-TOKEN": TOKENS["escalations"]})
    assert answer.status_code == 200
    await s.bridge.worker.drain()


async def test_the_parent_offers_claim_and_resolve_beside_the_mode_buttons(site):
    s = await site()
    thread_ts = await s.conversation()
    [actions] = [block for block in parent_now(s, thread_ts)["blocks"]
                 if block["type"] == "actions"]
    assert [button["text"]["text"] for button in actions["elements"]] == [
        "I'll take it", "Resolve", "Take over", "Hand back to AI"]
    Block.parse(actions).validate_json()  # type: ignore[union-attr]


async def test_a_claim_names_who_handles_it_and_a_second_claim_takes_over(site):
    s = await site()
    thread_ts = await s.conversation()
    assert (await s.press("sitegpt_claim", thread_ts, user="U_ANA")).status_code == 200
    await s.bridge.worker.drain()
    assert headline(parent_now(s, thread_ts)).endswith(":technologist: *<@U_ANA> is handling*")
    assert lines(s, thread_ts)[-1] == ":raising_hand: <@U_ANA> is handling this conversation."

    await s.press("sitegpt_claim", thread_ts, user="U_ANA", action_ts="1700000101.000001")
    await s.press("sitegpt_claim", thread_ts, user="U_BEN", action_ts="1700000102.000001")
    await s.bridge.worker.drain()
    assert headline(parent_now(s, thread_ts)).endswith("*<@U_BEN> is handling*")
    assert lines(s, thread_ts)[1:] == [  # Ana's second press changed nothing: no line
        ":raising_hand: <@U_ANA> is handling this conversation.",
        ":raising_hand: <@U_BEN> took this over from <@U_ANA>."]


async def test_resolve_moves_the_ticket_once_and_the_parent_shows_it(site, jira):
    s = await site(with_jira(jira, resolve_transition="Done"))
    thread_ts = await s.conversation()
    await escalate(s)
    [key] = jira.issues
    for answer in [await s.press("sitegpt_resolve", thread_ts),
                   await s.press("sitegpt_resolve", thread_ts),  # Slack's retry of it
                   await s.press("sitegpt_resolve", thread_ts, user="U_ANA",
                                 action_ts="1700000103.000001")]:  # pressed again
        assert answer.status_code == 200
    await s.bridge.worker.drain()

    assert len(jira.calls("POST", f"/rest/api/2/issue/{key}/transitions")) == 1
    assert jira.issues[key]["fields"]["status"]["name"] == "Done"
    shown = headline(parent_now(s, thread_ts))
    assert shown.endswith(f":white_check_mark: Resolved by <@U_BEN> · "
                          f"<{jira.url}/browse/{key}|{key}> (Done)")
    resolved = [line for line in lines(s, thread_ts) if "resolved this conversation" in line]
    assert resolved == [":white_check_mark: <@U_BEN> resolved this conversation."]
    rows = await s.bridge.store.deliveries(limit=100)
    assert {row.status for row in rows} <= {"delivered", "skipped"}
    for sent in [*s.fake.posts, *s.fake.updates]:
        for block in sent.get("blocks") or []:
            Block.parse(block).validate_json()  # type: ignore[union-attr]


async def test_without_a_resolve_transition_the_ticket_is_left_alone(site, jira):
    s = await site(with_jira(jira))
    thread_ts = await s.conversation()
    await escalate(s)
    await s.press("sitegpt_resolve", thread_ts)
    await s.bridge.worker.drain()
    assert jira.calls("POST", "/rest/api/2/issue/SUP-1/transitions") == []
    assert "Resolved by <@U_BEN>" in headline(parent_now(s, thread_ts))


async def test_a_transition_jira_does_not_offer_fails_naming_the_setting(site, jira):
    s = await site(with_jira(jira, resolve_transition="Shipped"))
    thread_ts = await s.conversation()
    await escalate(s)
    await s.press("sitegpt_resolve", thread_ts)
    await s.bridge.worker.drain()
    [failed] = [row for row in await s.bridge.store.deliveries(limit=100)
                if row.destination == "jira" and row.status == "failed"]
    assert "offers no transition 'Shipped'" in (failed.last_error or "")
    assert "resolve_transition" in (failed.last_error or "")


async def test_the_visitor_writing_after_resolve_reopens_it(site):
    s = await site()
    thread_ts = await s.conversation()
    await s.press("sitegpt_resolve", thread_ts)
    await s.bridge.worker.drain()
    assert "Resolved by <@U_BEN>" in headline(parent_now(s, thread_ts))
    again = {"event": "ADD_MESSAGE", "data": {"chatbotId": CHATBOT, "threadId": "thread_A",
                                              "messageType": "USER_MESSAGE", "question": "no"}}
    await s.client.post("/webhooks/messages", json=again,
                        headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
    await s.bridge.worker.drain()
    assert "Reopened: the visitor wrote again" in headline(parent_now(s, thread_ts))
    await s.press("sitegpt_resolve", thread_ts, action_ts="1700000104.000001")
    await s.bridge.worker.drain()
    assert "Resolved by <@U_BEN>" in headline(parent_now(s, thread_ts))


async def test_claim_and_resolve_work_without_a_sitegpt_key(site):
    s = await site(drop=("sitegpt.api_key",))
    events = await s.send({"type": "url_verification", "challenge": "c"})
    assert events.status_code == 404  # replies from Slack stay off
    thread_ts = await s.conversation()
    [actions] = [block for block in s.fake.parents()[0]["blocks"] if block["type"] == "actions"]
    assert [button["action_id"] for button in actions["elements"]] == [
        "sitegpt_claim", "sitegpt_resolve"]
    take_over = await s.press("sitegpt_take_over", thread_ts)
    assert take_over.json()["status"] == "ignored"
    await s.press("sitegpt_claim", thread_ts, action_ts="1700000105.000001")
    await s.bridge.worker.drain()
    assert "*<@U_BEN> is handling*" in headline(parent_now(s, thread_ts))
    assert "sitegpt" not in s.bridge.destinations


async def test_a_hostile_user_id_cannot_ping_or_link(site):
    s = await site()
    thread_ts = await s.conversation()
    await s.press("sitegpt_claim", thread_ts, user="U1><!channel> <https://evil.example|x")
    await s.bridge.worker.drain()
    shown = json.dumps([parent_now(s, thread_ts), *s.fake.thread("C_CONV", thread_ts)])
    assert "<!channel>" not in shown and "<https://evil" not in shown


async def test_take_over_shows_who_handles_it_and_hand_back_clears_it(site):
    s = await site()
    for mode in ("AGENT", "AI"):
        s.api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").respond(200, json={"mode": mode})
    thread_ts = await s.conversation()
    await s.press("sitegpt_take_over", thread_ts)
    await s.bridge.worker.drain()
    assert headline(parent_now(s, thread_ts)).endswith("*<@U_BEN> is handling*")
    await s.press("sitegpt_hand_back", thread_ts, action_ts="1700000106.000001")
    await s.bridge.worker.drain()
    assert headline(parent_now(s, thread_ts)).endswith(":robot_face: AI answering")
