"""A Slack message as HTML, roughly as the thread shows it: the console's template preview.

Every piece of text is escaped before any tag is added; then only mrkdwn's forms (bold,
italic, strike, code, links to http(s) or mailto, mentions) become tags. No script, no style.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from markupsafe import Markup, escape

from bridge.destinations.slack_picture import DATE, GROUP, MENTION, USER

# Slack's own markup: a link, a mention, a date. A literal "<" in the text is "&lt;" already.
ANGLE = re.compile(r"<([^<>]+)>")
TARGET = re.compile(r"(?:https?|mailto):[^|]+")
CODE = re.compile(r"```(.+?)```|`([^`\n]+)`", re.DOTALL)
STYLES = [(re.compile(rf"(?<![\w{mark}])\{mark}(?=\S)([^{mark}\n]+?)(?<=\S)\{mark}(?![\w{mark}])"),
           tag) for mark, tag in (("*", "strong"), ("_", "em"), ("~", "del"))]


def preview(body: str) -> Markup | None:
    """The call's body (JSON, as `render --json` prints it) as HTML; None for a call that is
    not a message (a reaction)."""
    call = json.loads(body)
    blocks = call.get("blocks") or []
    if not blocks and "text" not in call:
        return None
    if not blocks:
        return Markup(f'<div class="sl-section">{mrkdwn(str(call["text"]))}</div>')
    return Markup("".join(_block(block) for block in blocks))


def mrkdwn(text: str) -> Markup:
    """Slack's mrkdwn as HTML: each plain run unescaped from Slack's entities, escaped for
    HTML, then styled; each <...> form drawn as a link or mention, else shown as text."""
    found, start = [], 0
    for match in ANGLE.finditer(text):
        found += [_styled(text[start:match.start()]), _angle(match[1])]
        start = match.end()
    found.append(_styled(text[start:]))
    return Markup("".join(found).replace("\n", "<br>"))


def _styled(text: str) -> str:
    """Code as it is, the rest bold, italic or struck through where mrkdwn marks it."""
    found, start = [], 0
    for match in CODE.finditer(text):
        found.append(_emphasis(_escaped(text[start:match.start()])))
        if match[1] is not None:
            found.append(f"<pre>{_escaped(match[1])}</pre>")
        else:
            found.append(f"<code>{_escaped(match[2])}</code>")
        start = match.end()
    found.append(_emphasis(_escaped(text[start:])))
    return "".join(found)


def _escaped(text: str) -> str:
    """Slack's three entities (&amp; &lt; &gt;) read, and the text escaped for HTML."""
    return str(escape(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")))


def _emphasis(escaped: str) -> str:
    for pattern, tag in STYLES:
        escaped = pattern.sub(rf"<{tag}>\1</{tag}>", escaped)
    return escaped


def _angle(inner: str) -> str:
    """A link to http(s) or mailto, a mention, a date; anything else is text as it came."""
    target, _, label = inner.partition("|")
    if TARGET.fullmatch(target):
        words = _emphasis(_escaped(label or target))
        return f'<a href="{_escaped(target)}" rel="noreferrer">{words}</a>'
    whole = f"<{inner}>"
    for pattern, name in ((USER, lambda m: m[2] or m[1]), (GROUP, lambda m: m[2] or m[1]),
                          (MENTION, lambda m: m[1])):
        if match := pattern.fullmatch(whole):
            return f'<span class="sl-mention">@{_escaped(name(match))}</span>'
    if match := DATE.fullmatch(whole):
        return _escaped(match[1])
    return _escaped(whole)


def _text(item: Any) -> str:
    """A text object: mrkdwn drawn, plain_text only escaped."""
    if not isinstance(item, dict):
        return _escaped(str(item or ""))
    words = str(item.get("text", ""))
    return str(mrkdwn(words)) if item.get("type") == "mrkdwn" else _escaped(words)


def _element(element: dict[str, Any]) -> str:
    if element.get("type") == "button":
        style = f" sl-{element['style']}" if element.get("style") in ("primary", "danger") \
            else ""
        return f'<span class="sl-button{style}">{_text(element.get("text"))}</span>'
    if element.get("type") == "image":
        return f"[{_escaped(element.get('alt_text') or 'image')}]"
    return _text(element)


def _block(block: dict[str, Any]) -> str:
    draw = BLOCKS.get(str(block.get("type")))
    return draw(block) if draw else f"<p>[{_escaped(str(block.get('type')))} block]</p>"


def _section(block: dict[str, Any]) -> str:
    parts = [f"<div>{_text(block['text'])}</div>"] if block.get("text") else []
    fields = block.get("fields") or []
    if fields:
        parts.append('<div class="sl-fields">'
                     + "".join(f"<div>{_text(item)}</div>" for item in fields) + "</div>")
    if block.get("accessory"):
        parts.append(f"<div>{_element(block['accessory'])}</div>")
    return f'<div class="sl-section">{"".join(parts)}</div>'


def _header(block: dict[str, Any]) -> str:
    return f'<div class="sl-header">{_text(block.get("text"))}</div>'


def _context(block: dict[str, Any]) -> str:
    items = " · ".join(_element(item) for item in block.get("elements") or [])
    return f'<div class="sl-context">{items}</div>'


def _actions(block: dict[str, Any]) -> str:
    items = " ".join(_element(item) for item in block.get("elements") or [])
    return f'<div class="sl-actions">{items}</div>'


def _divider(block: dict[str, Any]) -> str:
    return "<hr>"


def _image(block: dict[str, Any]) -> str:
    return f"<p>[image: {_escaped(block.get('alt_text') or block.get('image_url', ''))}]</p>"


BLOCKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "section": _section, "header": _header, "context": _context, "actions": _actions,
    "divider": _divider, "image": _image,
}
