"""Jira comment bodies in Slack: wiki markup and ADF converted, everything typed escaped."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridge.jira_markup import (
    MAX_WIKI_CHARS,
    adf_mrkdwn,
    comment_mrkdwn,
    comment_text,
    wiki_mrkdwn,
)
from bridge.templating import CUT_MARKER


@pytest.mark.parametrize(("wiki", "mrkdwn"), [
    ("plain words", "plain words"),
    ("*bold* and _italic_", "*bold* and _italic_"),
    ("-gone- but well-known re-run", "~gone~ but well-known re-run"),
    ("+under+ ^sup^ ~sub~ ??cited??", "under sup sub _cited_"),
    ("{{a -b- c}}", "`a -b- c`"),
    ("h1. Title", "*Title*"),
    ("bq. quoted line", "> quoted line"),
    ("{quote}one{quote}", "> one"),
    ("{quote}\nfirst\nsecond\n{quote}\nafter", "> first\n> second\nafter"),
    ("* one\n** two\n# first\n## inner", "• one\n    • two\n1. first\n    1. inner"),
    ("----", "──────────"),
    ("{code:python}\nif a < b:\n    pass\n{code}", "```if a &lt; b:\n    pass```"),
    ("{noformat}*raw* [x|y]{noformat}", "```*raw* [x|y]```"),
    ("[guide|https://x.test/a-b-c?p=1&q=2]", "<https://x.test/a-b-c?p=1&amp;q=2|guide>"),
    ("[https://x.test/]", "<https://x.test/>"),
    ("[mail me|mailto:a@b.test]", "<mailto:a@b.test|mail me>"),
    ("[click|javascript:alert(1)]", "click"),
    ("[x|https://a.test/ <!here>]", "x"),
    ("[^report.pdf]", "(attachment: report.pdf)"),
    ("!screen.png|thumbnail!", "(attachment: screen.png)"),
    ("[~dana] and [~accountid:5b10a2844c20165700ede21g]", "@dana and @someone"),
    ("{color:red}warm{color}", "warm"),
    ("(/) done (x) not (!) careful", ":white_check_mark: done :x: not :warning: careful"),
    ("line\\\\next", "line\nnext"),
    ("\\*not bold\\*", "*not bold*"),
    ("<!channel> <@U123> <https://evil.test|trust me> & more",
     "&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil.test|trust me&gt; &amp; more"),
    ("one\r\ntwo\r\n\r\n\r\n\r\nthree", "one\ntwo\n\nthree"),
    ("a\x00b", "ab"),
])
def test_wiki_markup(wiki, mrkdwn):
    assert wiki_mrkdwn(wiki) == mrkdwn


def text(value: str, *marks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": value, **({"marks": list(marks)} if marks else {})}


def doc(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "doc", "version": 1, "content": list(content)}


def paragraph(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "paragraph", "content": list(content)}


def items(*texts: str) -> list[dict[str, Any]]:
    return [{"type": "listItem", "content": [paragraph(text(value))]} for value in texts]


LINK = {"type": "link", "attrs": {"href": "https://x.test/?a=1&b=2"}}


@pytest.mark.parametrize(("document", "mrkdwn"), [
    (doc(paragraph(text("hi "), text("there", {"type": "strong"}), text("!"))), "hi *there*!"),
    (doc(paragraph(text(" soft ", {"type": "em"}), text("x", {"type": "strike"}))),
     "_soft_ ~x~"),
    (doc(paragraph(text("see "), text("docs", LINK))), "see <https://x.test/?a=1&amp;b=2|docs>"),
    (doc(paragraph(text("bad", {"type": "link", "attrs": {"href": "javascript:x"}}))), "bad"),
    (doc(paragraph(text("a < b & <!here>", {"type": "code"}))), "`a &lt; b &amp; &lt;!here&gt;`"),
    (doc(paragraph(text("one"), {"type": "hardBreak"}, text("two"))), "one\ntwo"),
    (doc(paragraph({"type": "mention", "attrs": {"id": "1", "text": "@Dana"}},
                   {"type": "emoji", "attrs": {"shortName": ":smile:", "text": "😄"}})),
     "@Dana😄"),
    (doc({"type": "heading", "attrs": {"level": 2}, "content": [text("Title")]}), "*Title*"),
    (doc({"type": "bulletList", "content": items("a", "b")}), "• a\n• b"),
    (doc({"type": "orderedList", "attrs": {"order": 3}, "content": items("c", "d")}),
     "3. c\n4. d"),
    (doc({"type": "codeBlock", "attrs": {"language": "sh"}, "content": [text("x > 1")]}),
     "```x &gt; 1```"),
    (doc({"type": "blockquote", "content": [paragraph(text("q1")), paragraph(text("q2"))]}),
     "> q1\n> q2"),
    (doc({"type": "rule"}, {"type": "mediaSingle", "content": [{"type": "media"}]}),
     "──────────\n(attachment)"),
    (doc(paragraph({"type": "inlineCard", "attrs": {"url": "https://x.test/browse/SUP-1"}})),
     "<https://x.test/browse/SUP-1>"),
    (doc({"type": "table", "content": [
        {"type": "tableRow", "content": [{"type": "tableCell", "content": [paragraph(text("a"))]},
                                         {"type": "tableCell", "content": [paragraph(text("b"))]}]},
    ]}), "a | b"),
    (doc({"type": "panel", "content": [paragraph(text("inside"))]}), "inside"),
    (doc({"type": "unknownThing"}, paragraph(text("kept"))), "kept"),
    ({"type": "doc", "content": "not a list"}, ""),
])
def test_atlassian_document_format(document, mrkdwn):
    assert adf_mrkdwn(document) == mrkdwn


def test_a_deep_adf_tree_is_cut_short_not_a_crash():
    node: dict[str, Any] = paragraph(text("bottom"))
    for _ in range(5000):
        node = {"type": "blockquote", "content": [node]}
    assert "bottom" not in adf_mrkdwn(doc(node))


@pytest.mark.parametrize(("body", "words"), [
    ("plain {color:#97a0af}sitegpt-bridge:7:1700000600{color}",
     "plain {color:#97a0af}sitegpt-bridge:7:1700000600{color}"),
    (doc(paragraph(text("a")), paragraph(text("sitegpt-bridge:7:1700000600"))),
     "a\nsitegpt-bridge:7:1700000600\n"),
    (None, ""),
])
def test_comment_text_keeps_the_words_for_the_marker_check(body, words):
    assert comment_text(body) == words


def test_comment_mrkdwn_takes_either_format():
    assert comment_mrkdwn("*x*") == "*x*"
    assert comment_mrkdwn(doc(paragraph(text("x", {"type": "strong"})))) == "*x*"


JUNK: list[Any] = [None, 5, 1.5, True, "x", "<!channel>", [], [1], {}, {"a": 1}, ["text"]]
KINDS = ["doc", "paragraph", "text", "heading", "codeBlock", "blockquote", "bulletList",
         "orderedList", "listItem", "rule", "mediaSingle", "table", "tableRow", "tableCell",
         "mention", "emoji", "inlineCard", "status", "hardBreak", "date", "unknown"]


def odd_node(rng: random.Random, depth: int) -> Any:
    """An ADF node as a careless or hostile sender might shape it: any field of any type."""
    if depth > 4 or rng.random() < 0.15:
        return rng.choice(JUNK)
    node: dict[str, Any] = {"type": rng.choice([*KINDS, *JUNK])}
    if rng.random() < 0.8:
        node["content"] = ([odd_node(rng, depth + 1) for _ in range(rng.randint(0, 3))]
                           if rng.random() < 0.8 else rng.choice(JUNK))
    for key, values in (("text", ["<!here> & <@U1>", *JUNK]),
                        ("attrs", [{"text": rng.choice(JUNK), "order": rng.choice(JUNK),
                                    "url": rng.choice(["https://a.test/|x", *JUNK])}, *JUNK]),
                        ("marks", [[{"type": "link", "attrs": rng.choice(JUNK)},
                                    {"type": rng.choice(JUNK)}], *JUNK])):
        if rng.random() < 0.5:
            node[key] = rng.choice(values)
    return node


def test_any_shape_of_adf_converts_without_an_error_and_stays_inert():
    # A comment that fails to convert would be retried, holding up its conversation's thread.
    rng = random.Random(20261130)
    for _ in range(3000):
        text = comment_mrkdwn({"type": "doc", "content": [odd_node(rng, 0)]})
        assert "<!" not in text and "<@" not in text


def test_a_wiki_comment_longer_than_jira_allows_is_cut_with_a_marker():
    shown = comment_mrkdwn("+a " * 100_000)
    assert len(shown) <= MAX_WIKI_CHARS + len(CUT_MARKER) + 1 and shown.endswith(CUT_MARKER)


@pytest.mark.parametrize(("wiki", "mrkdwn"), [
    ("[~ana[x|https://x.test/]", "[~ana<https://x.test/|x>"),
    ("{color:{x}red}warm", "{color:{x}red}warm"),
    ("{code:{x}}a{code}", "{code:{x}}a{code}"),
    ("+a " * 3 + "+b+", "a +a +a +b"),
    ("+a " * 3 + "b+ +c", "a +a +a b +c"),
    ("{{a {{b}} c}}", "`a {{b` c}}"),
    ("-a-b c-\nx-", "~a-b c~\nx-"),
    ("{code:x}a{code:y}b", "{code:x}a{code:y}b"),
])
def test_what_does_not_close_stays_as_typed(wiki, mrkdwn):
    assert wiki_mrkdwn(wiki) == mrkdwn


@pytest.mark.parametrize("hidden", ["\u202e", "\u2066", "\u200b", "\ufeff", "\u00ad"])
def test_a_link_with_a_bidi_control_or_invisible_character_is_only_its_label(hidden):
    url = f"https://evil.example/{hidden}gpj.exe"
    assert wiki_mrkdwn(f"[guide|{url}]") == "guide"
    linked = doc(paragraph(text("guide", {"type": "link", "attrs": {"href": url}})))
    assert adf_mrkdwn(linked) == "guide"
