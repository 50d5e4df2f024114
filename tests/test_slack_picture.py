"""How `render` draws a Slack message for people: each kind of block, links and mentions."""

from __future__ import annotations

import json
from typing import Any

from bridge.destinations.slack_picture import DIVIDER, picture


def drawn(call: dict[str, Any]) -> list[str]:
    return picture(json.dumps(call)).splitlines()


def text(words: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": words}


def test_every_kind_of_block_is_drawn_in_order():
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "New lead"}},
        {"type": "section", "text": text("*Ana* wrote <https://x.test/a|here>"),
         "fields": [text("*Name:* Ana"), text("*Team:* 11-50"), text("*Email:* a@x.test")],
         "accessory": {"type": "button", "text": {"type": "plain_text", "text": "Open"}}},
        {"type": "divider"},
        {"type": "context", "elements": [text("<!date^1705316400^{time}|11:00 UTC>"),
                                         {"type": "image", "alt_text": "avatar"}]},
        {"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Take over"}},
            {"type": "button", "text": {"type": "plain_text", "text": "Hand back"}}]},
        {"type": "image", "image_url": "https://x.test/i.png", "alt_text": "a chart"},
        {"type": "video"},
    ]
    assert drawn({"channel": "C1", "text": "fallback", "blocks": blocks}) == [
        "to C1",
        "┃ NEW LEAD",
        "┃ *Ana* wrote here (https://x.test/a)",
        "┃ *Name:* Ana                     *Team:* 11-50",
        "┃ *Email:* a@x.test",
        "┃ [ Open ]",
        f"┃ {DIVIDER}",
        "┃ 11:00 UTC · [avatar]",
        "┃ [ Take over ]  [ Hand back ]",
        "┃ [image: a chart]",
        "┃ [video block]"]


def test_mentions_read_as_names_and_a_plain_message_shows_its_text():
    call = {"channel": "", "reply_broadcast": True,
            "text": "<!here> <!subteam^S0123|support> <@U1> see <https://x.test>\nthanks"}
    assert drawn(call) == ["to (dry run), also sent to the channel",
                           "┃ @here @support @U1 see https://x.test", "┃ thanks"]


def test_a_call_that_is_no_message_shows_its_arguments():
    assert drawn({"channel": "C1", "name": "eyes", "timestamp": "1.2"}) == [
        "to C1", '┃ {"name": "eyes", "timestamp": "1.2"}']
