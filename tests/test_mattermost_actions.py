"""Mattermost's buttons end to end: signed on the root, pressed, stored, shown in the thread."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from bridge.destinations import build_destinations, unfinished_lines
from bridge.destinations.base import Delivered, Skipped
from bridge.errors import ConfigError
from bridge.events import RESOLVED, parse_event
from bridge.samples import load_sample
from bridge.templating import Templates, mattermost_mention
from tests.mattermost_site import (  # noqa: F401 (fixtures)
    ACTIONS,
    CHATBOT,
    MattermostSite,
    mattermost_fixture,
    mattermost_section,
    mm_site_fixture,
    signature,
)
from tests.metric_samples import webhook_counts
from tests.slack_site import API, api_fixture  # noqa: F401 (fixtures)

ALL_BUTTONS = [("claim", "I'll take it"), ("resolve", "Resolve"), ("takeover", "Take over"),
               ("handback", "Hand back to AI")]


# The buttons on the root post


async def test_the_root_carries_the_four_buttons_each_signed_for_its_conversation(mm_site):
    s = await mm_site()
    root = await s.conversation()
    buttons = s.fake.buttons(root)
    assert [(button["id"], button["name"]) for button in buttons] == ALL_BUTTONS
    for button in buttons:
        assert button["id"].isalnum() and button["id"].isascii()
        assert button["integration"] == {"url": ACTIONS, "context": {
            "action": button["id"], "conversation": f"{CHATBOT}/thread_A",
            "signature": signature(button["id"], f"{CHATBOT}/thread_A")}}


async def test_buttons_stay_on_the_root_when_it_is_patched(mm_site):
    s = await mm_site()
    root = await s.conversation()
    await s.store(notice(s, root, "mode_changed", mode="AGENT"))
    await s.bridge.worker.drain()
    assert s.fake.patches[-1]["id"] == root
    assert [button["id"] for button in s.fake.buttons(root)] == [
        button for button, _ in ALL_BUTTONS]


@pytest.mark.parametrize("off", [{"replies": False}, "no SiteGPT key"])
async def test_without_replies_the_root_offers_claim_and_resolve_only(mm_site, off):
    s = await (mm_site(**off) if isinstance(off, dict) else mm_site(sitegpt_key=False))
    root = await s.conversation()
    assert [button["id"] for button in s.fake.buttons(root)] == ["claim", "resolve"]
    # A press of Take over signed as the root would have carried it, while replies were on.
    body = s.pressed(root, "claim")
    key = f"{CHATBOT}/thread_A"
    body["context"] = {"action": "takeover", "conversation": key,
                       "signature": signature("takeover", key)}
    answer = await s.send(body)
    assert answer.status_code == 200 and "Take over and Hand back are off" in (
        answer.json()["ephemeral_text"])
    assert await s.rows("SLACK_MODE_CHANGE") == []


async def test_without_actions_url_there_are_no_buttons_and_no_route(mm_site):
    s = await mm_site(actions_url=None)
    root = await s.conversation()
    assert s.fake.buttons(root) == []
    assert "attachments" not in s.fake.root(root)["props"]
    answer = await s.send({"user_id": "u", "channel_id": "c", "post_id": root,
                           "trigger_id": "t", "context": {}})
    assert answer.status_code == 404


# Presses stored


@pytest.mark.parametrize(("action", "kind", "field", "value", "destinations"), [
    ("claim", "SLACK_HANDLING", "action", "claim", ["mattermost"]),
    ("resolve", "SLACK_HANDLING", "action", "resolve", ["mattermost"]),
    ("takeover", "SLACK_MODE_CHANGE", "mode", "AGENT", ["sitegpt"]),
    ("handback", "SLACK_MODE_CHANGE", "mode", "AI", ["sitegpt"]),
])
async def test_each_button_stores_its_event_once(mm_site, action, kind, field, value,
                                                 destinations):
    s = await mm_site()
    root = await s.conversation()
    body = s.pressed(root, action)
    first, again = await s.send(body), await s.send(body)  # the same press, sent twice
    assert (first.status_code, first.json()) == (200, {})
    assert (again.status_code, again.json()) == (200, {})
    [stored] = await s.bodies(kind)
    assert stored == {"event": kind, "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "channel": "mm_conv", "threadTs": root,
        "user": "u_ben", "userName": "ben", "tool": "mattermost", field: value}}
    assert sorted(row.destination for row in await s.rows(kind)) == destinations


async def test_a_second_press_is_a_new_event(mm_site):
    s = await mm_site()
    root = await s.conversation()
    for _ in range(2):
        assert (await s.press(root, "resolve")).status_code == 200
    assert len(await s.bodies("SLACK_HANDLING")) == 2  # each with its own trigger id


def forged(body: dict[str, Any], case: str) -> dict[str, Any]:
    context = body["context"]
    changes: dict[str, Any] = {
        "missing": {"context": {k: v for k, v in context.items() if k != "signature"}},
        "no context": {"context": None},
        "a list for a context": {"context": [context]},
        "zeros": {"context": {**context, "signature": "0" * 64}},
        "another conversation": {"context": {**context, "conversation": f"{CHATBOT}/thread_B"}},
        "another action": {"context": {**context, "action": "takeover"}},
        "upper case": {"context": {**context, "signature": context["signature"].upper()}},
        "non-ASCII": {"context": {**context, "signature": "\u00e9" * 64}},
        "a number": {"context": {**context, "signature": 12345}},
        "a number for the conversation": {"context": {**context, "conversation": 7}},
        "a newline in the action": {"context": {**context, "action": "claim\nx"}},
        "another token's": {"context": {**context, "signature": signature(
            "claim", context["conversation"], token="another-token")}},
    }
    return {**body, **changes[case]}


FORGERIES = ["missing", "no context", "a list for a context", "zeros", "another conversation",
             "another action", "upper case", "non-ASCII", "a number",
             "a number for the conversation", "a newline in the action", "another token's"]


@pytest.mark.parametrize("case", FORGERIES)
async def test_a_press_without_the_right_signature_is_refused(mm_site, caplog, case):
    s = await mm_site()
    root = await s.conversation()
    await s.conversation("thread_B")
    answer = await s.send(forged(s.pressed(root, "claim"), case))
    assert answer.status_code == 401
    assert answer.json() == {"status": "rejected",
                             "error": "missing or wrong signature in the button's context"}
    assert await s.rows("SLACK_HANDLING", "SLACK_MODE_CHANGE") == []
    assert not [record for record in caplog.records if record.exc_info], "no traceback"


@pytest.mark.parametrize(("where", "reason"), [
    ("the other conversation's root", "belongs to another conversation"),
    ("a reply in the thread", "not on the root post"),
    ("another channel", "not on the root post"),
    ("an unknown post", "not on the root post"),
    ("a NUL in the post id", "not on the root post"),
])
async def test_a_press_elsewhere_than_its_root_is_ignored_saying_why(mm_site, where, reason):
    s = await mm_site()
    root = await s.conversation()
    other = await s.conversation("thread_B")
    body = s.pressed(root, "claim")
    moved = {"the other conversation's root": {"post_id": other},
             "a reply in the thread": {"post_id": s.fake.thread(root)[0]["id"]},
             "another channel": {"channel_id": "mm_elsewhere"},
             "an unknown post": {"post_id": "p" * 26},
             "a NUL in the post id": {"post_id": root + "\u0000"}}[where]
    answer = await s.send({**body, **moved})
    assert answer.status_code == 200 and reason in answer.json()["ephemeral_text"]
    assert await s.rows("SLACK_HANDLING") == []


@pytest.mark.parametrize(("raw", "status"), [
    (b"not json", 400),
    (b'{"user_id": "u", "post_id": "p"', 400),
    (b'{"user_id": NaN}', 422),
    (b"[]", 422),
    (b'{"channel_id": "c", "post_id": "p", "trigger_id": "t", "context": {}}', 422),
    (b'{"user_id": 7, "channel_id": "c", "post_id": "p", "trigger_id": "t"}', 422),
    (b'{"user_id": "u", "channel_id": "c", "post_id": "p", "trigger_id": ""}', 422),
    (b"\xff\xfe{", 400),
])
async def test_what_is_not_a_press_is_refused_400_or_422(mm_site, raw, status):
    s = await mm_site()
    await s.conversation()
    answer = await s.post(raw)
    assert answer.status_code == status and answer.json()["status"] == "rejected"


async def test_an_oversized_body_is_refused_unread(mm_site):
    s = await mm_site({"server": {"max_body_bytes": 1024}})
    root = await s.conversation()
    body = {**s.pressed(root, "claim"), "padding": "x" * 2000}
    answer = await s.send(body)
    assert answer.status_code == 413
    assert await s.rows("SLACK_HANDLING") == []


async def test_every_press_is_counted_under_mattermost_on_the_metrics(mm_site):
    s = await mm_site({"server": {"max_body_bytes": 1024}})
    root = await s.conversation()
    body = s.pressed(root, "claim")
    answers = [await s.send(body), await s.send(body),
               await s.send({**body, "post_id": "p" * 26}),
               await s.send(forged(body, "zeros")), await s.post(b"{not json"),
               await s.post(b"{}"), await s.send({**body, "padding": "x" * 2000})]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 401, 400, 422, 413]
    text = (await s.client.get("/metrics")).text
    assert webhook_counts(text, "mattermost") == {
        "accepted": 1, "duplicate": 1, "ignored": 1, "unauthorized": 1, "invalid_json": 1,
        "invalid": 1, "too_large": 1, "disconnected": 0, "unavailable": 0}


async def test_a_flood_of_forged_presses_is_one_log_line(mm_site, caplog):
    s = await mm_site()
    root = await s.conversation()
    caplog.set_level(logging.WARNING, logger="bridge.mattermost_buttons")
    body = forged(s.pressed(root, "claim"), "zeros")
    for _ in range(20):
        assert (await s.send(body)).status_code == 401
    assert [record.getMessage() for record in caplog.records] == [
        "mattermost /mattermost/actions rejected (401 unauthorized): missing or wrong "
        "signature in the button's context"]


# What Mattermost's thread shows


async def test_a_claim_pressed_in_mattermost_shows_in_its_thread_and_on_the_root(mm_site):
    s = await mm_site()
    root = await s.conversation()
    assert (await s.press(root, "claim")).status_code == 200
    await s.bridge.worker.drain()
    assert s.thread(root)[-1] == ":raising_hand: @ben will take it."
    assert s.status(root) == ":technologist: **@ben is handling**"
    [row] = await s.rows("SLACK_HANDLING")
    assert (row.destination, row.status) == ("mattermost", "delivered")
    marked = s.fake.thread(root)[-1]["props"]["sitegpt_bridge"]
    assert marked == {"deliveries": str(row.id)}  # found again by a retry cut off mid-call


async def test_pressing_again_what_the_root_shows_is_skipped(mm_site):
    s = await mm_site()
    root = await s.conversation()
    for _ in range(2):
        await s.press(root, "claim")
    await s.press(root, "claim", user_id="u_ann", user_name="ann")
    await s.bridge.worker.drain()
    assert s.thread(root)[1:] == [":raising_hand: @ben will take it.",
                                  ":raising_hand: @ann will take it over from @ben."]
    assert [(row.status, row.note) for row in await s.rows("SLACK_HANDLING")] == [
        ("delivered", f"mm_conv/{s.fake.thread(root)[1]['id']}"),
        ("skipped", "the root shows ben's claim already"),
        ("delivered", f"mm_conv/{s.fake.thread(root)[2]['id']}")]
    assert s.status(root) == ":technologist: **@ann is handling**"


async def test_resolve_shows_on_the_root_and_tells_jira(mm_site):
    s = await mm_site()
    root = await s.conversation()
    await s.send(s.pressed(root, "resolve"))
    outcome = await s.deliver_next()
    assert isinstance(outcome, Delivered)
    [follow_up] = outcome.follow_ups
    assert follow_up.kind == RESOLVED and follow_up.destinations == ()
    assert json.loads(follow_up.body)["data"] == {
        "chatbotId": CHATBOT, "threadId": "thread_A", "user": "u_ben",
        "resolvedAt": s.clock.now()}
    assert s.thread(root)[-1] == ":white_check_mark: @ben resolved this conversation."
    assert s.status(root) == ":white_check_mark: Resolved by @ben"

    await s.send(s.pressed(root, "resolve", user_id="u_ann", user_name="ann"))
    assert isinstance(await s.deliver_next(), Skipped)


async def test_the_visitor_writing_after_a_resolve_reopens_it(mm_site):
    s = await mm_site()
    root = await s.conversation()
    await s.press(root, "resolve")
    await s.bridge.worker.drain()
    await s.conversation(question="one more thing")  # the visitor writes again
    assert s.status(root).startswith(":leftwards_arrow_with_hook: Reopened")
    await s.press(root, "resolve")
    await s.bridge.worker.drain()
    assert s.status(root) == ":white_check_mark: Resolved by @ben"
    assert s.thread(root).count(":white_check_mark: @ben resolved this conversation.") == 2


async def test_a_claim_pressed_in_slack_is_not_shown_in_mattermost(mm_site):
    s = await mm_site()
    root = await s.conversation()
    claim = load_sample("slack-claim")
    await s.store({**claim, "data": {**claim["data"], "threadId": "thread_A"}})
    outcome = await s.deliver_next()
    assert isinstance(outcome, Skipped) and "another thread" in outcome.reason
    assert len(s.fake.thread(root)) == 1


@pytest.mark.parametrize(("action", "mode", "line", "status"), [
    ("takeover", "AGENT", ":technologist: @ben took over: the AI stays quiet",
     ":technologist: **@ben is handling**"),
    ("handback", "AI", ":robot_face: @ben handed the conversation back to the AI.",
     ":robot_face: AI answering"),
])
async def test_take_over_and_hand_back_switch_sitegpt_and_say_so_in_the_thread(
        mm_site, api, action, mode, line, status):
    route = api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").mock(
        return_value=httpx.Response(200, json={"mode": mode}))
    api.route(host="127.0.0.1").pass_through()  # the fake Mattermost
    s = await mm_site({"sitegpt": {"api_url": API}})
    root = await s.conversation()
    assert (await s.press(root, action)).status_code == 200
    await s.bridge.worker.drain()
    assert [json.loads(call.request.content) for call in route.calls] == [{"mode": mode}]
    assert s.thread(root)[-1].startswith(line)
    assert s.status(root) == status
    assert [row.destination for row in await s.rows("BRIDGE_THREAD_NOTICE")] == ["mattermost"]


async def test_a_mode_sitegpt_refuses_is_told_in_the_thread(mm_site, api):
    api.patch(f"/chatbots/{CHATBOT}/threads/thread_A").mock(return_value=httpx.Response(
        404, json={"message": "Thread not found @channel [x](https://evil.example)"}))
    api.route(host="127.0.0.1").pass_through()
    s = await mm_site({"sitegpt": {"api_url": API}})
    root = await s.conversation()
    await s.press(root, "takeover")
    await s.bridge.worker.drain()
    told = s.thread(root)[-1]
    assert told.startswith(":warning: Could not take over (asked by @ben): ")
    assert "Thread not found" in told and "@channel" not in told and "](https" not in told
    assert s.status(root) == ":robot_face: AI answering"


def notice(s: MattermostSite, root: str, name: str, **context: Any) -> dict[str, Any]:
    return {"event": "BRIDGE_THREAD_NOTICE", "data": {
        "chatbotId": CHATBOT, "threadId": "thread_A", "channel": "mm_conv", "threadTs": root,
        "notice": name, "context": {"user_id": "u_ben", "user_name": "ben", **context}}}


@pytest.mark.parametrize(("name", "context", "line"), [
    ("reply_failed", {"reason": "sitegpt: HTTP 404: Thread not found"},
     ":warning: Not delivered to the visitor (reply by @ben): sitegpt\\: HTTP 404\\: Thread "
     "not found"),
    ("mode_changed", {"mode": "AGENT"}, ":technologist: @ben took over: the AI stays quiet"),
    ("mode_changed", {"mode": "AI"}, ":robot_face: @ben handed the conversation back"),
    ("mode_failed", {"mode": "AGENT", "reason": "HTTP 403"},
     ":warning: Could not take over (asked by @ben): HTTP 403"),
    ("mode_failed", {"mode": "AI", "reason": "HTTP 403"},
     ":warning: Could not hand back to the AI (asked by @ben): HTTP 403"),
])
async def test_each_notice_is_posted_in_the_thread(mm_site, name, context, line):
    s = await mm_site()
    root = await s.conversation()
    await s.store(notice(s, root, name, **context))
    await s.bridge.worker.drain()
    posted = s.fake.thread(root)[-1]
    assert posted["message"].startswith(line)
    [row] = await s.rows("BRIDGE_THREAD_NOTICE")
    assert row.status == "delivered" and posted["props"]["sitegpt_bridge"] == {
        "deliveries": str(row.id)}


async def test_a_notice_without_the_members_name_shows_their_id(mm_site):
    s = await mm_site()
    root = await s.conversation()
    body = notice(s, root, "reply_failed", reason="timed out")
    del body["data"]["context"]["user_name"]
    await s.store(body)
    await s.bridge.worker.drain()
    assert s.thread(root)[-1] == (
        ":warning: Not delivered to the visitor (reply by u\\_ben): timed out")


async def test_take_over_and_hand_back_show_on_the_root(mm_site):
    s = await mm_site()
    root = await s.conversation()
    await s.store(notice(s, root, "mode_changed", mode="AGENT"))
    await s.bridge.worker.drain()
    assert s.status(root) == ":technologist: **@ben is handling**"
    await s.store(notice(s, root, "mode_changed", mode="AI", user_id="u_ann", user_name="ann"))
    await s.bridge.worker.drain()
    assert s.status(root) == ":robot_face: AI answering"


async def test_a_notice_for_another_tools_thread_is_skipped(mm_site):
    s = await mm_site()
    root = await s.conversation()
    body = notice(s, root, "reply_failed", reason="x")
    body["data"].update(channel="C0123456789", threadTs="1700000000.000100")  # Slack's thread
    await s.store(body)
    await s.bridge.worker.drain()
    [row] = await s.rows("BRIDGE_THREAD_NOTICE")
    assert row.status == "skipped" and len(s.fake.thread(root)) == 1


HOSTILE = ["all", "channel", "here", "Ben", "@all", "ben [x](https://evil.example)",
           "~town-square", "b\u202eneb", "ben\n# heading", ""]


@pytest.mark.parametrize("user_name", HOSTILE)
async def test_a_hostile_member_name_or_reason_stays_inert(mm_site, user_name):
    s = await mm_site()
    root = await s.conversation()
    await s.press(root, "claim", user_id="u_@all", user_name=user_name)
    await s.bridge.worker.drain()
    await s.store(notice(s, root, "reply_failed", user_id="u_@here", user_name=user_name,
                         reason="@channel see [this](https://evil.example) ~town-square"))
    await s.bridge.worker.drain()
    shown = [*s.thread(root)[1:], s.fake.root(root)["message"]]
    assert len(shown) == 3
    for text in shown:
        for live in ("@all", "@channel", "@here", "](https://evil", "~town", "\u202e", "\n#"):
            assert live not in text, (live, text)


@pytest.mark.parametrize(("name", "shown"), [
    ("ben", "@ben"), ("ben.smith-2_x", "@ben.smith-2_x"), ("all", "all"), ("here", "here"),
    ("channel", "channel"), ("Ben", "Ben"), ("@all", "@\u2060all"), (None, "u\\_1"),
    ("", "u\\_1"), ("a b", "a b"), ("[x](y)", "\\[x\\]\\(y\\)"), ("@ben", "@ben"),
    ("@@ben", "@\u2060@\u2060ben"),
])
def test_mattermost_mention_mentions_a_username_only(name, shown):
    assert mattermost_mention(name, "u_1") == shown


# Settings, check and previews


def test_actions_url_must_be_an_http_address(make_settings, mattermost):
    for url in ("ftp://bridge.example.com", "bridge.example.com", "https://"):
        with pytest.raises(ConfigError, match="actions_url"):
            make_settings({"mattermost": mattermost_section(mattermost, actions_url=url)})


def test_check_says_where_the_buttons_call_and_fails_on_a_doubled_path(make_settings,
                                                                      mattermost):
    from bridge.destinations import status_lines

    settings = make_settings({"mattermost": mattermost_section(mattermost)})
    assert (f"mattermost buttons: I'll take it, Resolve (Take over and Hand back need replies "
            f"from Mattermost: [mattermost] replies and a SiteGPT API key): Mattermost calls "
            f"{ACTIONS}") in status_lines(settings)
    assert unfinished_lines(settings) == []
    doubled = make_settings({"mattermost": mattermost_section(
        mattermost, actions_url=ACTIONS + "/")})
    assert unfinished_lines(doubled) == [
        "mattermost: mattermost.actions_url ends with /mattermost/actions: the buttons would "
        f"call {ACTIONS}/mattermost/actions; give the bridge's address alone"]


async def test_the_preview_shows_each_sample_as_mattermost_would_post_it(make_settings,
                                                                        mattermost):
    settings = make_settings({"mattermost": mattermost_section(mattermost)})
    destination = build_destinations(settings, Templates())["mattermost"]
    names = ["mattermost-claim", "mattermost-mode-changed", "mattermost-mode-failed",
             "mattermost-reply-failed", "slack-claim"]
    samples = {name: parse_event(load_sample(name)["event"], load_sample(name))
               for name in names}
    rendered = destination.render_samples(samples)
    await destination.aclose()
    assert list(rendered) == [
        "mattermost-claim: POST /api/v4/posts (in the thread)",
        "mattermost-claim: PUT /api/v4/posts/{root}/patch",
        "mattermost-mode-changed: POST /api/v4/posts (in the thread)",
        "mattermost-mode-changed: PUT /api/v4/posts/{root}/patch",
        "mattermost-mode-failed: POST /api/v4/posts (in the thread)",
        "mattermost-reply-failed: POST /api/v4/posts (in the thread)"]
    patched = json.loads(rendered["mattermost-claim: PUT /api/v4/posts/{root}/patch"])
    assert "**@ana is handling**" in patched["message"]
    assert [action["id"] for action in patched["props"]["attachments"][0]["actions"]] == [
        "claim", "resolve"]


async def test_each_chat_tool_previews_only_the_claims_and_notices_of_its_threads(
        make_settings, mattermost):
    settings = make_settings({"mattermost": mattermost_section(mattermost)})
    destinations = build_destinations(settings, Templates())
    samples = {name: parse_event(load_sample(name)["event"], load_sample(name))
               for name in ("mattermost-claim", "slack-claim", "mattermost-reply-failed")}
    previewed = {name: {label.split(":")[0] for label in destinations[name].render_samples(
        samples)} for name in ("slack", "mattermost")}
    for destination in destinations.values():
        await destination.aclose()
    assert previewed == {"slack": {"slack-claim"},
                         "mattermost": {"mattermost-claim", "mattermost-reply-failed"}}
