"""The console's HTML preview of a Slack message: blocks and mrkdwn drawn, any other text inert."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import pytest

from bridge.destinations.slack_preview import mrkdwn, preview
from tests.console_support import HOSTILE


def message(*blocks: dict[str, Any]) -> str:
    return json.dumps({"channel": "C1", "text": "fallback", "blocks": list(blocks)})


def mrkdwn_text(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


@pytest.mark.parametrize(("text", "drawn"), [
    ("*bold* _italic_ ~gone~", "<strong>bold</strong> <em>italic</em> <del>gone</del>"),
    ("`a *b*` and ```x\n_y_```", "<code>a *b*</code> and <pre>x<br>_y_</pre>"),
    ("<https://example.com/a_b?x=1&amp;y=2|the *page*>",
     '<a href="https://example.com/a_b?x=1&amp;y=2" rel="noreferrer">the <strong>page'
     "</strong></a>"),
    ("<mailto:ana@example.com>", '<a href="mailto:ana@example.com" rel="noreferrer">'
                                 "mailto:ana@example.com</a>"),
    ("<@U0AGENT|ana> <!here> <!subteam^S1|support>",
     '<span class="sl-mention">@ana</span> <span class="sl-mention">@here</span> '
     '<span class="sl-mention">@support</span>'),
    ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
    ("Tom &amp; Jerry &lt;3", "Tom &amp; Jerry &lt;3"),
])
def test_mrkdwn_is_drawn_as_slack_shows_it(text, drawn):
    assert mrkdwn(text) == drawn


@pytest.mark.parametrize("hostile", [
    HOSTILE,
    "&lt;script&gt;alert(1)&lt;/script&gt;",  # as the bridge escapes it for Slack
    "<javascript:alert(1)|click me>",
    '<https://example.com/" onmouseover="alert(1)|x>',
    "*<img src=x onerror=alert(1)>*",
])
def test_hostile_text_stays_text(hostile):
    drawn = str(preview(message({"type": "section", "text": mrkdwn_text(hostile)},
                                {"type": "context", "elements": [mrkdwn_text(hostile)]},
                                {"type": "header",
                                 "text": {"type": "plain_text", "text": hostile}})))
    tags = Tags()
    tags.feed(drawn)
    assert {tag for tag, _ in tags.found} <= {"div", "a", "strong", "em", "del", "br"}
    for _, attributes in tags.found:
        assert {name for name, _ in attributes} <= {"class", "href", "rel"}
        assert all(value.startswith(("https:", "mailto:")) for name, value in attributes
                   if name == "href")


class Tags(HTMLParser):
    """Every tag the preview made, with its attributes as the browser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, [(name, value or "") for name, value in attrs]))


def test_blocks_are_drawn_section_fields_context_divider_buttons():
    drawn = preview(message(
        {"type": "header", "text": {"type": "plain_text", "text": "New *lead*"}},
        {"type": "section", "text": mrkdwn_text("Asked:"),
         "fields": [mrkdwn_text("*Name*\nAna"), mrkdwn_text("*Email*\nana@example.com")]},
        {"type": "divider"},
        {"type": "context", "elements": [mrkdwn_text("via SiteGPT"),
                                         {"type": "image", "alt_text": "logo"}]},
        {"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open"},
             "style": "primary", "url": "https://example.com"}]},
        {"type": "video"}))
    assert drawn == (
        '<div class="sl-header">New *lead*</div>'
        '<div class="sl-section"><div>Asked:</div><div class="sl-fields">'
        "<div><strong>Name</strong><br>Ana</div>"
        "<div><strong>Email</strong><br>ana@example.com</div></div></div>"
        "<hr>"
        '<div class="sl-context">via SiteGPT · [logo]</div>'
        '<div class="sl-actions"><span class="sl-button sl-primary">Open</span></div>'
        "<p>[video block]</p>")


def test_a_message_without_blocks_is_its_text_and_a_reaction_is_not_a_message():
    assert preview(json.dumps({"channel": "C1", "text": "*hi*"})) == \
        '<div class="sl-section"><strong>hi</strong></div>'
    assert preview(json.dumps({"channel": "C1", "name": "eyes", "timestamp": "1.2"})) is None
