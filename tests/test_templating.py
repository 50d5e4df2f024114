"""Templates: user overrides and `default:` extends, the sandbox, filters, errors with file:line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from bridge.destinations import make_settings
from bridge.destinations.slack import SlackDestination
from bridge.errors import TemplateError
from bridge.template_check import sample_events
from bridge.templating import (
    CUT_MARKER,
    Templates,
    cut,
    format_date,
    jira_escape,
    link_safe,
    slack_escape,
    slack_link,
)

SECRET = "xoxb-very-secret-token"


def user_templates(tmp_path: Path, files: dict[str, str]) -> Templates:
    folder = tmp_path / "mine"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return Templates(folder)


def test_a_user_file_replaces_the_builtin_of_the_same_name(tmp_path):
    templates = user_templates(tmp_path, {
        "slack/ticket.json.j2": '{"text": "mine {{ ticket.key }}"}'})
    assert templates.render_json("slack/ticket.json.j2", {"ticket": {"key": "SUP-1"}}) == {
        "text": "mine SUP-1"}
    assert "Jira ticket" in Templates().render("slack/ticket.json.j2", {
        "ticket": {"key": "SUP-1", "url": "https://x", "created": True}})


def test_an_override_extends_the_builtin_through_the_default_prefix(tmp_path):
    templates = user_templates(tmp_path, {"slack/ticket.json.j2": (
        '{% extends "default:slack/ticket.json.j2" %}'
        "{% block fallback %}New ticket {{ ticket.key }}{% endblock %}"
        "{% block body %}{{ super() }} (please triage){% endblock %}")})
    context = {"ticket": {"key": "SUP-1", "url": "https://jira/SUP-1", "created": True}}
    message = templates.render_json("slack/ticket.json.j2", context)
    assert message["text"] == "New ticket SUP-1"
    assert message["blocks"][0]["text"]["text"] == (
        ":ticket: Jira ticket created: <https://jira/SUP-1|SUP-1> (please triage)")


def test_builtins_stay_reachable_without_a_user_folder():
    templates = Templates()
    assert "slack/lead.json.j2" in templates.names()
    builtin = templates.load("default:slack/lead.json.j2").filename or ""
    assert builtin.endswith(os.path.join("templates", "slack", "lead.json.j2"))


@pytest.mark.parametrize("source, expected", [
    ("a\n{% if %}\n", ":2: Expected an expression"),
    ("a\nb {{ nope }}\n", ":2: 'nope' is undefined"),
    ('a\n{% include "missing.j2" %}', ":2: template not found: missing.j2"),
    ('{% extends "default:slack/missing.j2" %}', ":1: template not found: default:slack/missing"),
    ("{{ 'x' | cut }}", ":1: cut() missing 1 required positional argument"),
])
def test_errors_name_the_users_file_and_line(tmp_path, source, expected):
    templates = user_templates(tmp_path, {"slack/lead.json.j2": source})
    with pytest.raises(TemplateError) as caught:
        templates.render("slack/lead.json.j2", {})
    assert str(caught.value).startswith(str(tmp_path / "mine" / "slack" / "lead.json.j2"))
    assert expected in str(caught.value)


def test_render_json_refuses_output_that_is_not_json_naming_the_template(tmp_path):
    templates = user_templates(tmp_path, {"slack/lead.json.j2": '{"text": {{ lead.name }}}'})
    with pytest.raises(TemplateError, match=r"^slack/lead\.json\.j2: output is not valid JSON"):
        templates.render_json("slack/lead.json.j2", {"lead": {"name": "Ann"}})


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum() }}",
    "{{ range.__self__ }}",
    "{{ dashboard_url.__globals__ }}",
    "{{ cut.__globals__ }}",
    "{{ environ }}",
    "{{ os }}",
    "{{ config }}",
    "{{ settings }}",
    "{{ request }}",
    '{% include "../settings.toml" %}',
    '{% include "default:../settings.toml" %}',
    '{% include "/etc/hostname" %}',
]


@pytest.mark.parametrize("source", ESCAPES)
def test_the_sandbox_refuses_every_way_out(tmp_path, monkeypatch, source):
    monkeypatch.setenv("BRIDGE_SLACK__BOT_TOKEN", SECRET)
    (tmp_path / "settings.toml").write_text(f'[slack]\nbot_token = "{SECRET}"\n')
    templates = user_templates(tmp_path, {"slack/lead.json.j2": source})
    with pytest.raises(TemplateError) as caught:
        templates.render("slack/lead.json.j2", {"lead": {"name": "Ann"}})
    assert SECRET not in str(caught.value)


def test_only_harmless_globals_are_left():
    assert set(Templates().env.globals) == {
        "range", "dict", "cycler", "joiner", "namespace", "dashboard_url"}


def test_namespace_and_loops_still_work_for_template_authors(tmp_path):
    templates = user_templates(tmp_path, {"x.j2": (
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }}{% set sep = joiner('/') %}{% for x in 'ab' %}{{ sep() }}{{ x }}"
        "{% endfor %}")})
    assert templates.render("x.j2", {}) == "3a/b"


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value, *(item for part in value.values() for item in _walk(part))]
    if isinstance(value, list | tuple):
        return [value, *(item for part in value for item in _walk(part))]
    return [value]


class RecordingTemplates(Templates):
    """Keeps every context a template is given."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[dict[str, Any]] = []

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        self.contexts.append(dict(context))
        return super().render(name, context)


def test_templates_are_never_given_settings_or_secrets():
    settings = make_settings(slack={"bot_token": SECRET, "channel": "C1",
                                    "signing_secret": "signing-secret-value"},
                             chatbots=[{"id": "chatbot_123", "name": "Bot",
                                        "sitegpt_api_key": "sitegpt-key-value"}])
    templates = RecordingTemplates()
    SlackDestination(settings, templates).render_samples(sample_events())
    values = [item for context in templates.contexts for item in _walk(context)]
    assert len(templates.contexts) >= 10
    assert not [v for v in values if isinstance(v, BaseModel | SecretStr)]
    secrets = (SECRET, "signing-secret-value", "sitegpt-key-value")
    assert not [v for v in values if isinstance(v, str) and any(s in v for s in secrets)]
    assert not [v for v in values if v is os.environ]


def test_slack_escape_neutralises_mentions_and_links():
    assert slack_escape("<!here> & <https://x|y>") == "&lt;!here&gt; &amp; &lt;https://x|y&gt;"
    assert slack_escape(None) == ""


def test_jira_escape_neutralises_links_and_macros():
    escaped = jira_escape("[click|https://evil] {code}")
    assert "\\[" in escaped and "\\{" in escaped
    assert "[click" not in escaped.replace("\\[", "")


def test_cut_keeps_short_text_and_marks_what_it_cuts():
    assert cut("short", 10) == "short"
    assert cut("x" * 50, 20) == "x" * (20 - len(CUT_MARKER)) + CUT_MARKER
    assert len(cut("x" * 50, 20)) == 20


@pytest.mark.parametrize("value, expected", [
    ("2024-01-15T10:30:00Z", "2024-01-15 10:30 UTC"),
    ("2024-01-15T11:30:00+01:00", "2024-01-15 10:30 UTC"),
    (1705314600, "2024-01-15 10:30 UTC"),
    ("not a date", "not a date"),
    (None, ""),
])
def test_date_reads_iso_and_epoch(value, expected):
    assert format_date(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("<!channel> <https://evil.example|Click>", "channel https: evil.example Click"),
    ("[Click|https://evil.example] {code}", "Click https: evil.example code"),
    ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-23:59"),
    ("0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00+23:59"),
    (1e300, "1e+300"),
    (-(10**30), "-1000000000000000000000000000000"),
    (float("nan"), "nan"),
    (["*bold*", {"_it_": "<@U1>"}], "bold it : U1"),
    ("x" * 10_000, "x" * 64),
])
def test_a_date_the_filter_cannot_read_shows_as_inert_text(value, expected):
    assert format_date(value) == expected


HIDDEN = ["\u202e", "\u202a", "\u2066", "\u2069", "\u200e", "\u200b", "\u200d", "\u2060",
          "\ufeff", "\u00ad", "\u061c", "\u2028", "\u00a0", "\x85"]


@pytest.mark.parametrize("hidden", HIDDEN, ids=[f"U+{ord(char):04X}" for char in HIDDEN])
def test_a_url_with_a_bidi_control_or_invisible_character_is_no_link(hidden):
    # "https://evil.example/\u202egpj.exe" reads as ".../exe.jpg" once Slack draws it.
    url = f"https://evil.example/{hidden}gpj.exe"
    assert not link_safe(url)
    assert slack_link(url, "Open") == f"Open: {url}"
