"""A Slack message as plain text, roughly as the thread shows it: `render` prints it for people."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

MARGIN = "┃ "
DIVIDER = "─" * 40
LINK = re.compile(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>")
BARE_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)>")
MENTION = re.compile(r"<!(here|channel|everyone)>")
GROUP = re.compile(r"<!subteam\^([A-Z0-9]+)(?:\|([^>]+))?>")
DATE = re.compile(r"<!date\^[^|>]*\|([^>]*)>")
USER = re.compile(r"<@([A-Z0-9]+)(?:\|([^>]+))?>")


def picture(body: str, state: str = "on") -> str:
    """The call's body (JSON, as `render --json` prints it) drawn as the thread shows it.

    `state` is how Slack runs with these settings ("on", or why it runs dry).
    """
    call = json.loads(body)
    return "\n".join([_heading(call, state), *(MARGIN + line for line in _message(call))])


def _heading(call: dict[str, Any], state: str) -> str:
    """Where it goes: the channel, and whether Slack runs dry (then no channel may be set)."""
    where = f"to {call['channel']}" if call.get("channel") else "to"
    if state != "on" or not call.get("channel"):
        where += " (dry run)"
    if call.get("reply_broadcast"):
        where += ", also sent to the channel"
    return where


def _message(call: dict[str, Any]) -> list[str]:
    blocks = call.get("blocks") or []
    if not blocks and "text" not in call:  # not a message (a reaction): its arguments
        return [json.dumps({key: value for key, value in call.items() if key != "channel"},
                           ensure_ascii=False)]
    if not blocks:
        return _text(str(call["text"]))
    return [line for block in blocks for line in _block(block)]


def _block(block: dict[str, Any]) -> list[str]:
    draw = BLOCKS.get(str(block.get("type")))
    return draw(block) if draw else [f"[{block.get('type')} block]"]


def _section(block: dict[str, Any]) -> list[str]:
    lines = _text(_words(block.get("text")))
    fields = [_words(item) for item in block.get("fields") or []]
    lines += [f"{left:<30}  {right}".rstrip()
              for left, right in zip(fields[::2], [*fields[1::2], ""], strict=False)]
    accessory = block.get("accessory")
    if accessory:
        lines.append(_element(accessory))
    return lines


def _header(block: dict[str, Any]) -> list[str]:
    return [_words(block.get("text")).upper()]


def _context(block: dict[str, Any]) -> list[str]:
    return _text(" · ".join(_element(item) for item in block.get("elements") or []))


def _actions(block: dict[str, Any]) -> list[str]:
    return ["  ".join(_element(item) for item in block.get("elements") or [])]


def _divider(block: dict[str, Any]) -> list[str]:
    return [DIVIDER]


def _image(block: dict[str, Any]) -> list[str]:
    return [f"[image: {block.get('alt_text') or block.get('image_url', '')}]"]


def _rich_text(block: dict[str, Any]) -> list[str]:
    return ["[rich text]"]


def _element(element: dict[str, Any]) -> str:
    if element.get("type") == "button":
        return f"[ {_words(element.get('text'))} ]"
    if element.get("type") == "image":
        return f"[{element.get('alt_text') or 'image'}]"
    return _words(element)


def _words(text: Any) -> str:
    """A text object's words, with Slack's link and mention markup made readable."""
    if isinstance(text, dict):
        text = text.get("text", "")
    text = LINK.sub(lambda match: f"{match[2]} ({match[1]})", str(text or ""))
    text = BARE_LINK.sub(r"\1", text)
    text = DATE.sub(r"\1", text)
    text = MENTION.sub(r"@\1", text)
    text = GROUP.sub(lambda match: f"@{match[2] or match[1]}", text)
    return USER.sub(lambda match: f"@{match[2] or match[1]}", text)


def _text(text: str) -> list[str]:
    return _words(text).splitlines() or [""]


BLOCKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "section": _section, "header": _header, "context": _context, "actions": _actions,
    "divider": _divider, "image": _image, "rich_text": _rich_text,
}
