"""Jira comment bodies, wiki markup or Atlassian Document Format, as escaped Slack mrkdwn."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.templating import CUT_MARKER, all_visible, slack_escape

SAFE_SCHEMES = ("http://", "https://", "mailto:")
MAX_DEPTH = 40  # a deeper ADF tree is cut short rather than exhausting the stack
# Jira keeps at most 32,767 characters of a comment; more is not a comment Jira sent.
MAX_WIKI_CHARS = 32_768
# A line break typed as "\\" while a comment's lines are converted together: "\n" parts lines.
_BREAK = "\x0b"
_CODE_OPENER = re.compile(r"\{(code|noformat)(?::[^{}]*)?\}")
_HEADING = re.compile(r"^h[1-6]\.\s+(.*)$")
_QUOTE_LINE = re.compile(r"^bq\.\s+(.*)$")
_LIST_ITEM = re.compile(r"^([*#-]+)\s+(.*)$")
_RULE = re.compile(r"^-{4,}\s*$")
_LINE_FORM_STARTS = ("h", "b", "*", "#", "-")
# No pattern below scans past a "[", "{" or line end looking for its end, so each runs in time
# linear in the text: a thousand unclosed "[~" cost no more than one.
_CLOUD_MENTION = re.compile(r"\[~accountid:[^\[\]\n]*\]")
_MENTION = re.compile(r"\[~([^\[\]\n]+)\]")
_LINK = re.compile(r"\[([^\[\]|\n]*)\|([^\[\]\n]*)\]|\[([^\[\]|\n]+)\]")
_IMAGE = re.compile(r"!([^!\s|][^!|\n\x0b]*)(?:\|[^!\n\x0b]*)?!")
_COLOR_OR_PANEL = re.compile(r"\{(?:color|panel)(?::[^{}\n]*)?\}")
_ESCAPED = re.compile(r"\\([\\\[\]{}|*_+\-^~?!#()])")
_KEPT = re.compile("\x00(\\d+)\x00")
_ICONS = {"(/)": ":white_check_mark:", "(x)": ":x:", "(!)": ":warning:",
          "(i)": ":information_source:", "(y)": ":thumbsup:", "(n)": ":thumbsdown:",
          "(on)": ":bulb:", "(*)": ":star:"}


@dataclass(frozen=True)
class _Marks:
    """Marks of `length` characters around words on one line, like `+under+`: where one may
    open and where one may close (group 1: its first character, which names the closing one)."""

    opens: re.Pattern[str]
    closes: re.Pattern[str]
    closing: Mapping[str, str]
    length: int = 1


# Each pattern starts with the mark itself, which the regex engine looks for at C speed.
_PLAIN_MARKS = _Marks(re.compile(r"([+^~])(?<![\w+^~].)(?=\S)"),
                      re.compile(r"([+^~])(?<=\S.)(?![\w+^~])"),
                      {"+": "+", "^": "^", "~": "~"})
_STRIKE = _Marks(re.compile(r"(-)(?<![\w-].)(?=\S)"), re.compile(r"(-)(?<=\S.)(?![\w-])"),
                 {"-": "-"})
_MONOSPACE = _Marks(re.compile(r"(\{)(?=\{)"), re.compile(r"(\})(?=\})"), {"{": "}"}, 2)
# A "??" that finds no other after it can only be the last on its line: a plain pattern is
# linear here, as the opening and the closing mark are the same.
_CITATION = re.compile(r"\?\?([^\n\x0b]+?)\?\?")
_LINE_ENDS = re.compile(r"[\n\x0b]")


def comment_mrkdwn(body: Any) -> str:
    """A comment body as Jira sent it (wiki markup text, or an ADF document) in Slack mrkdwn.

    Everything the commenter typed is escaped: it can neither mention anyone in Slack nor
    plant a link other than one Jira itself showed as a link to an http(s) or mailto address.
    """
    if isinstance(body, dict):
        return adf_mrkdwn(body)
    text = str(body or "")
    shown = wiki_mrkdwn(text[:MAX_WIKI_CHARS])
    return f"{shown} {CUT_MARKER}" if len(text) > MAX_WIKI_CHARS else shown


def comment_text(body: Any) -> str:
    """The plain words of a comment body, for looking for the bridge's own marker."""
    if isinstance(body, dict):
        return "".join(_adf_words(body, 0))
    return str(body or "")


# wiki markup -------------------------------------------------------------------------------------

def wiki_mrkdwn(text: str) -> str:
    """Jira wiki markup as Slack mrkdwn: code blocks kept verbatim, the rest line by line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").replace(_BREAK, "")
    parts: list[str] = []
    position = 0
    for start, end, code in _code_blocks(text):
        parts.append(_wiki_lines(text[position:start]))
        parts.append(f"```{slack_escape(code.strip(chr(10)))}```")
        position = end
    parts.append(_wiki_lines(text[position:]))
    return _tidy("\n".join(part for part in parts if part))


def _code_blocks(text: str) -> Iterator[tuple[int, int, str]]:
    """Each `{code}...{code}` or `{noformat}...{noformat}`: start, end and the code inside.

    A block that never ends is no block; knowing where each kind last ends, an opening that
    comes after it is passed over without looking through the rest of the text again.
    """
    last_end = {kind: text.rfind(f"{{{kind}}}") for kind in ("code", "noformat")}
    position = 0
    while opener := _CODE_OPENER.search(text, position):
        kind = opener[1]
        close = text.find(f"{{{kind}}}", opener.end()) if last_end[kind] >= opener.end() else -1
        if close < 0:
            position = opener.start() + 1
            continue
        yield opener.start(), close + len(kind) + 2, text[opener.end():close]
        position = close + len(kind) + 2


def _wiki_lines(text: str) -> str:
    """Each line's block form (heading, quote, list, rule) around its inline markup; the
    inline markup of all the lines is converted in one pass, which keeps a long text fast."""
    forms: dict[int, tuple[str, str]] = {}  # line number: its form around the converted words
    dropped_if_empty: set[int] = set()
    contents: list[str] = []
    quoting = False
    for number, raw in enumerate(text.split("\n")):
        quoted = quoting and bool(raw.strip())
        line = raw
        if "{quote}" in raw:
            pieces = raw.split("{quote}")
            quoted = False
            for index, piece in enumerate(pieces):
                quoting ^= index > 0
                quoted |= quoting and bool(piece.strip())
            line = "".join(pieces).strip()
            dropped_if_empty.add(number)
        content, form = _line_form(line) if line.startswith(_LINE_FORM_STARTS) else (line, "{}")
        if quoted:
            forms[number] = (form, "> ")
        elif form != "{}":
            forms[number] = (form, "")
        contents.append(content)
    converted = _wiki_inline("\n".join(contents)).split("\n")
    for number, (form, quote) in forms.items():
        words = form.format(converted[number])
        converted[number] = f"{quote}{words}" if quote and words else words
    lines = [line for number, line in enumerate(converted)
             if line or number not in dropped_if_empty]
    return "\n".join(lines).replace(_BREAK, "\n")


def _line_form(line: str) -> tuple[str, str]:
    """A line's words to convert, and the form around them ("{}" stands for the words)."""
    if _RULE.match(line):
        return "", "──────────"
    if heading := _HEADING.match(line):
        return heading[1], "*{}*"
    if quote := _QUOTE_LINE.match(line):
        return quote[1], "> {}"
    if item := _LIST_ITEM.match(line):
        marks = item[1]
        if set(marks) == {"-"} and len(marks) > 1:
            return line, "{}"
        depth = "    " * (len(marks) - 1)
        bullet = "1." if marks.endswith("#") else "•"
        return item[2], f"{depth}{bullet} {{}}"
    return line, "{}"


def _wiki_inline(text: str) -> str:
    """Lines of inline markup; the text is escaped first, so every later `<` is the bridge's."""
    escaped = slack_escape(text)
    escaped = escaped.replace("\\\\", _BREAK)
    for icon, emoji in _ICONS.items():
        escaped = escaped.replace(icon, emoji)
    escaped = _COLOR_OR_PANEL.sub("", escaped)
    # Cloud mentions carry only an account id, which means nothing to a reader in Slack.
    escaped = _CLOUD_MENTION.sub("@someone", escaped)
    escaped = _MENTION.sub(r"@\1", escaped)
    escaped = _IMAGE.sub(r"(attachment: \1)", escaped)
    # Links and code are set aside while marks are read, so a "-" in a URL strikes nothing.
    kept: list[str] = []

    def keep(converted: str) -> str:
        kept.append(converted)
        return f"\x00{len(kept) - 1}\x00"

    escaped = _paired(escaped, _MONOSPACE, lambda words: keep(f"`{words}`"))
    escaped = _LINK.sub(lambda match: keep(_wiki_link(match)), escaped)
    escaped = _CITATION.sub(r"_\1_", escaped)
    escaped = _paired(escaped, _PLAIN_MARKS, lambda words: words)
    escaped = _paired(escaped, _STRIKE, lambda words: f"~{words}~")
    escaped = _ESCAPED.sub(r"\1", escaped)
    return _KEPT.sub(lambda match: kept[int(match[1])], escaped)


def _paired(text: str, marks: _Marks, convert: Callable[[str], str]) -> str:
    """Each `mark words mark` on one line converted, as `re.sub` with `mark(.+?)mark` would,
    but in linear time: an opening mark takes the first closing one after it on its line, and
    one with none is passed over without reading the rest of the line again."""
    closes: dict[str, list[int]] = {}
    for found in marks.closes.finditer(text):
        closes.setdefault(found[1], []).append(found.start())
    if not closes:
        return text
    next_close = dict.fromkeys(closes, 0)
    line_end = -1
    pieces: list[str] = []
    position = 0
    for found in marks.opens.finditer(text, position):
        start = found.start()
        closing = marks.closing[found[1]]
        if start < position or closing not in closes:
            continue
        positions = closes[closing]
        # At least one character between the marks; earlier openings moved the search on.
        index = bisect_left(positions, start + marks.length + 1, next_close[closing])
        next_close[closing] = index
        if index == len(positions):
            continue
        if start > line_end:
            line_end = _line_end(text, start)
        close = positions[index]
        if close > line_end:
            continue
        pieces += [text[position:start], convert(text[start + marks.length:close])]
        position = close + marks.length
    pieces.append(text[position:])
    return "".join(pieces)


def _line_end(text: str, start: int) -> int:
    """Where the line (or the part of it up to a typed line break) holding `start` ends."""
    found = _LINE_ENDS.search(text, start)
    return found.start() if found else len(text)


def _wiki_link(match: re.Match[str]) -> str:
    if match[3] is not None:  # [target] alone
        target = match[3].strip()
        if target.startswith("^"):
            return f"(attachment: {target[1:]})"
        return _link(target, target)
    return _link(match[2].strip(), match[1].strip())


def _link(url: str, label: str) -> str:
    """A Slack link when the target is a web or mail address, else only its label."""
    if (not url.lower().startswith(SAFE_SCHEMES) or "|" in url or " " in url
            or not all_visible(url)):
        return label or url
    shown = label.replace("|", "/")
    return f"<{url}|{shown}>" if shown and shown != url else f"<{url}>"


# Atlassian Document Format -----------------------------------------------------------------------

def adf_mrkdwn(document: dict[str, Any]) -> str:
    """An ADF document (Jira Cloud's rich text) as Slack mrkdwn."""
    return _tidy(_adf_block(document, 0, ""))


def _adf_block(node: Any, depth: int, indent: str) -> str:
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return ""
    kind = node.get("type")
    children = _content(node)
    handler = _BLOCKS.get(str(kind))
    if handler is not None:
        return handler(node, children, depth, indent)
    if isinstance(kind, str) and kind in _INLINE_KINDS:
        return _adf_inline(node, depth)
    return "\n".join(filter(None, (_adf_block(child, depth + 1, indent) for child in children)))


def _content(node: dict[str, Any]) -> list[Any]:
    children = node.get("content")
    return children if isinstance(children, list) else []


def _attrs(node: dict[str, Any]) -> dict[str, Any]:
    # Jira sends a dict; anything else is read as no attributes rather than failing the delivery.
    attrs = node.get("attrs")
    return attrs if isinstance(attrs, dict) else {}


def _inline_run(children: list[Any], depth: int) -> str:
    return "".join(_adf_inline(child, depth + 1) for child in children)


def _paragraph(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    return _inline_run(children, depth)


def _heading(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    text = _inline_run(children, depth).strip()
    return f"*{text}*" if text else ""


def _code_block(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    code = "".join(str(child.get("text", "")) for child in children if isinstance(child, dict))
    return f"```{slack_escape(code)}```"


def _quote(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    inner = "\n".join(_adf_block(child, depth + 1, "") for child in children)
    return "\n".join(f"> {line}" for line in inner.split("\n") if line.strip())


def _bullets(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    return _list(children, depth, indent, lambda _: "•")


def _numbered(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    start = _attrs(node).get("order", 1)
    first = start if isinstance(start, int) else 1
    return _list(children, depth, indent, lambda number: f"{first + number}.")


def _list(items: list[Any], depth: int, indent: str, mark: Callable[[int], str]) -> str:
    lines: list[str] = []
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        first, *rest = _content(item) or [{}]
        lines.append(f"{indent}{mark(number)} {_adf_block(first, depth + 1, indent)}")
        lines += [_adf_block(child, depth + 1, indent + "    ") for child in rest]
    return "\n".join(line for line in lines if line.strip())


def _rule(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    return "──────────"


def _media(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    return "(attachment)"


def _table(node: dict[str, Any], children: list[Any], depth: int, indent: str) -> str:
    rows = []
    for row in children:
        if isinstance(row, dict):
            cells = [_adf_block(cell, depth + 2, "").replace("\n", " ") for cell in _content(row)]
            rows.append(" | ".join(cells))
    return "\n".join(rows)


_BLOCKS: dict[str, Callable[[dict[str, Any], list[Any], int, str], str]] = {
    "paragraph": _paragraph, "heading": _heading, "codeBlock": _code_block,
    "blockquote": _quote, "bulletList": _bullets, "orderedList": _numbered, "rule": _rule,
    "mediaSingle": _media, "mediaGroup": _media, "table": _table,
}
_INLINE_KINDS = frozenset({"text", "hardBreak", "mention", "emoji", "inlineCard", "date",
                           "status"})


def _adf_inline(node: Any, depth: int) -> str:
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return ""
    kind = node.get("type")
    attrs = _attrs(node)
    if kind == "text":
        return _marked(str(node.get("text", "")), node.get("marks"))
    if kind == "hardBreak":
        return "\n"
    if kind == "mention":
        return slack_escape("@" + str(attrs.get("text") or "someone").lstrip("@"))
    if kind == "emoji":
        return slack_escape(attrs.get("text") or attrs.get("shortName") or "")
    if kind == "inlineCard":
        url = str(attrs.get("url") or "")
        return _link(slack_escape(url), slack_escape(url))
    if kind == "status":
        return f"`{slack_escape(attrs.get('text') or '')}`"
    return _adf_block(node, depth + 1, "")


def _marked(text: str, marks: Any) -> str:
    """A text node with its marks; formatting wraps the words, not the spaces around them."""
    escaped = slack_escape(text)
    listed = marks if isinstance(marks, list) else []
    kinds = {str(mark.get("type")): mark for mark in listed if isinstance(mark, dict)}
    if "code" in kinds:
        escaped = f"`{escaped}`"
    core = escaped.strip()
    if not core:
        return escaped
    for kind, wrap in (("strong", "*"), ("em", "_"), ("strike", "~")):
        if kind in kinds:
            core = f"{wrap}{core}{wrap}"
    link = kinds.get("link")
    if link is not None:
        core = _link(slack_escape(_attrs(link).get("href") or ""), core)
    lead = escaped[: len(escaped) - len(escaped.lstrip())]
    return f"{lead}{core}{escaped[len(escaped.rstrip()):]}"


def _adf_words(node: Any, depth: int) -> list[str]:
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return []
    words = [str(node.get("text", ""))] if node.get("type") == "text" else []
    for child in _content(node):
        words += _adf_words(child, depth + 1)
    if node.get("type") in ("paragraph", "heading", "hardBreak"):
        words.append("\n")
    return words


def _tidy(text: str) -> str:
    """No run of blank lines, no trailing spaces."""
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
