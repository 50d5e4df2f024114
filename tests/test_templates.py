"""The bundled templates and the template check: every sample renders, overrides and broken ones."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.app import open_bridge
from bridge.cli import main
from bridge.destinations import REGISTRY, build_destinations
from bridge.destinations.base import sample_renderer
from bridge.destinations.shared import Shared
from bridge.destinations.sitegpt import NOTICES, SiteGPTDestination
from bridge.destinations.slack import BATCH_PREVIEW, SlackDestination
from bridge.destinations.slack_render import BATCH
from bridge.errors import ConfigError, TemplateError
from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.samples import load_sample, sample_names
from bridge.store import open_store
from bridge.template_check import check_templates, sample_events
from bridge.templating import Templates, builtin_dir
from bridge.worker import Worker

# Every destination switched on, so each registered one renders its templates (replies from
# Slack, the sitegpt destination, need the bot token, the signing secret and a SiteGPT key).
ALL_ON = {
    "slack": {"escalation_mention": "<!here>", "bot_token": "xoxb-test", "channel": "C_CONV",
              "signing_secret": "shh"},
    "sitegpt": {"api_key": "sk-test"},
    "jira": {"url": "https://jira.example", "email": "bot@example.com", "api_token": "t",
             "project": "SUP"},
    "crm": {"kind": "webhook", "webhook": {"url": "https://crm.example/hook"}},
    "mattermost": {"url": "http://127.0.0.1:9", "bot_token": "mm-test", "channel": "mm_conv",
                   "escalation_mention": "@support-team"},
    "chatbots": [{"id": "chatbot_123", "name": "Support <Bot> & Co"}],
}
SLACK_TEMPLATES = sorted(path.relative_to(builtin_dir()).as_posix()
                         for path in (builtin_dir() / "slack").glob("*.j2"))
# Slack templates another destination renders: the notices about replies sent from Slack.
RENDERED_BY = {f"slack/{notice}.json.j2": SiteGPTDestination.name for notice in NOTICES}


class RecordingTemplates(Templates):
    """Notes which templates were rendered at the top level."""

    def __init__(self, user_dir: Path | None = None) -> None:
        super().__init__(user_dir)
        self.rendered: set[str] = set()

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        self.rendered.add(name)
        return super().render(name, context)


def write_templates(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("variant", [{}, ALL_ON], ids=["defaults", "all-on"])
async def test_every_bundled_template_renders_every_sample_it_applies_to(make_settings, variant):
    settings = make_settings(variant)
    templates = RecordingTemplates()
    destinations = build_destinations(settings, templates)
    try:
        report = check_templates(templates, destinations)
        assert report.problems == []
        assert report.unpreviewed == [], "every destination should implement render_samples"
        assert set(report.rendered) == set(destinations)
        assert all(count > 0 for count in report.rendered.values())
    finally:
        for destination in destinations.values():
            await destination.aclose()
    used = {name for name in templates.names()
            if RENDERED_BY.get(name, name.split("/")[0]) in destinations
            and not Path(name).name.startswith("_")}
    assert used - templates.rendered == set(), "templates no sample reaches"


async def test_all_registered_destinations_come_up_with_everything_on(make_settings):
    destinations = build_destinations(make_settings(ALL_ON), Templates())
    try:
        assert set(destinations) == set(REGISTRY)
    finally:
        for destination in destinations.values():
            await destination.aclose()


def test_every_sample_is_a_valid_event():
    events = sample_events()
    assert set(events) == set(sample_names())
    assert {event.event for event in events.values()} == {
        "ADD_MESSAGE", "CONVERSATION_ESCALATED", "NEW_LEAD_CAPTURE", "BRIDGE_TICKET_LINKED",
        "SLACK_THREAD_REPLY", "SLACK_MODE_CHANGE", "JIRA_TICKET_STATUS", "JIRA_TICKET_COMMENT",
        "JIRA_TICKET_DELETED", "SLACK_HANDLING", "BRIDGE_THREAD_NOTICE", "CHAT_THREAD_REPLY"}


def slack_output(settings: Any, templates: Templates) -> dict[str, Any]:
    """Every Slack template's output: Slack's own messages and the notices about replies."""
    slack = SlackDestination(settings, templates)
    rendered = {**slack.render_samples(sample_events()),
                **SiteGPTDestination(settings, templates, Shared(settings))
                .render_samples(sample_events())}
    return {label: json.loads(text) for label, text in rendered.items()}


def test_an_empty_extension_of_each_slack_template_changes_nothing(make_settings, tmp_path):
    settings = make_settings(ALL_ON)
    folder = write_templates(tmp_path / "mine", {
        name: f'{{% extends "default:{name}" %}}' for name in SLACK_TEMPLATES})
    assert slack_output(settings, Templates(folder)) == slack_output(settings, Templates())


@pytest.mark.parametrize("name", SLACK_TEMPLATES)
def test_each_slack_template_has_fallback_and_blocks_to_extend(make_settings, tmp_path, name):
    settings = make_settings(ALL_ON)
    folder = write_templates(tmp_path / "mine", {name: (
        f'{{% extends "default:{name}" %}}'
        "{% block fallback %}[test] {{ super() }}{% endblock %}"
        '{% block blocks %}{{ super() }}, {"type": "divider"}{% endblock %}')})
    original = slack_output(settings, Templates())
    extended = slack_output(settings, RecordingTemplates(folder))
    changed = [label for label in original if original[label] != extended[label]]
    assert changed, f"no sample renders {name}"
    for label in changed:
        before, after = original[label], extended[label]
        if BATCH_PREVIEW in label and name != BATCH:  # its message's part of the batch changed
            assert "[test] " in after["text"] and {"type": "divider"} in after["blocks"]
            continue
        assert after["text"] == "[test] " + before["text"]
        assert after["blocks"] == [*before["blocks"], {"type": "divider"}]


def test_a_lead_override_adds_a_line_to_the_builtin_body(make_settings, tmp_path):
    folder = write_templates(tmp_path / "mine", {"slack/lead.json.j2": (
        '{% extends "default:slack/lead.json.j2" %}\n'
        "{% block body %}{{ super() }}\n:moneybag: <@U0SALES> please call back{% endblock %}\n")})
    output = slack_output(make_settings(), Templates(folder))
    text = output["lead: chat.postMessage (lead)"]["blocks"][0]["text"]["text"]
    assert text.startswith(":star: *New lead* from *Support Bot*\n*Name:* John Doe")
    assert text.endswith("Open the lead in SiteGPT>\n:moneybag: <@U0SALES> please call back")


def test_a_syntax_error_is_reported_with_file_and_line_by_check(make_settings, tmp_path, capsys):
    folder = write_templates(tmp_path / "mine", {
        "slack/ticket.json.j2": '{\n  "text": {{ ticket.key | tojson }\n}\n'})
    make_settings({"templates": {"dir": str(folder)}})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 1
    out = capsys.readouterr().out
    where = folder / "slack" / "ticket.json.j2"
    assert f"templates: FAILED: {where}:2: unexpected '}}'" in out
    assert "templates: from " in out and "slack/ticket.json.j2" in out


def test_an_override_named_like_no_template_is_warned_of_with_the_one_meant(
        make_settings, tmp_path, capsys, caplog):
    folder = write_templates(tmp_path / "mine", {
        "slack/leed.json.j2": "{}", "crm/own-format.j2": "{}"})  # a typo; a file of its own
    settings = make_settings({"templates": {"dir": str(folder)}})
    warning = (f"templates: WARNING: slack/leed.json.j2 in {folder} replaces no template; "
               "did you mean slack/lead.json.j2?")
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "WARNING" in line] == [warning]
    assert f"  templates: rename the file in {folder} to the template it should replace" in lines
    caplog.set_level("WARNING", "bridge")
    bridge = open_bridge(settings)
    asyncio.run(bridge.close())
    assert [record.getMessage() for record in caplog.records] == [warning]


def test_check_names_each_sample_a_broken_override_fails_on(make_settings, tmp_path, capsys):
    folder = write_templates(tmp_path / "mine", {"slack/lead.json.j2": (
        '{% extends "default:slack/lead.json.j2" %}\n'
        "{% block body %}{{ lead.company }}{% endblock %}")})
    make_settings({"templates": {"dir": str(folder)}})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 1
    [line] = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("templates: FAILED")]
    assert f"{folder / 'slack' / 'lead.json.j2'}:2: 'dict object' has no attribute" in line
    assert "(rendering sample: slack lead, slack lead-custom-fields)" in line


async def test_a_mistake_inside_the_jira_transcript_loop_is_caught(make_settings, tmp_path):
    folder = write_templates(tmp_path / "mine", {"jira/_transcript.j2": (
        "{% macro transcript_markup(lines, empty) %}{% for line in lines %}{{ line.nickname }}"
        "{% endfor %}{% endmacro %}")})
    settings = make_settings({**ALL_ON, "templates": {"dir": str(folder)}})
    templates = Templates(folder)
    destinations = build_destinations(settings, templates)
    try:
        report = check_templates(templates, destinations)
    finally:
        for destination in destinations.values():
            await destination.aclose()
    assert any("_transcript.j2:1: " in problem and "nickname" in problem
               and "jira escalation" in problem for problem in report.problems)


def test_check_passes_with_the_builtins(make_settings, tmp_path, capsys):
    make_settings()
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    out = capsys.readouterr().out
    assert "templates: ok: " in out and "FAILED" not in out


def test_a_missing_templates_folder_is_a_problem(make_settings, tmp_path):
    settings = make_settings({"templates": {"dir": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError) as caught:
        open_bridge(settings)
    assert caught.value.problems == [f"templates.dir: {tmp_path / 'nowhere'} is not a folder"]


def test_open_bridge_refuses_a_template_that_fails_a_sample(make_settings, tmp_path):
    folder = write_templates(tmp_path / "mine", {"slack/message_agent.json.j2": "{{ nope }}"})
    settings = make_settings({"templates": {"dir": str(folder)}})
    with pytest.raises(ConfigError) as caught:
        open_bridge(settings)
    assert caught.value.problems == [
        f"{folder / 'slack' / 'message_agent.json.j2'}:1: 'nope' is undefined"
        " (rendering sample: slack message-agent)"]
    assert not (tmp_path / "data").exists(), "the store is not opened before templates pass"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_to_start_with_a_broken_template(make_settings, tmp_path,
                                                                 command):
    folder = write_templates(tmp_path / "mine", {
        "slack/parent.json.j2": "{% if %}", "slack/lead.json.j2": "{{ lead.nope }}"})
    make_settings({"templates": {"dir": str(folder)}, "server": {"port": 1}})
    done = subprocess.run(
        [sys.executable, "-m", "bridge", command, "--config", str(tmp_path / "settings.toml")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "sitegpt-bridge: templates failed their check; the bridge will not start"
    assert sorted(lines[1:]) == sorted([
        f"  - {folder / 'slack' / 'lead.json.j2'}:1: 'dict object' has no attribute 'nope'"
        " (rendering sample: slack lead, slack lead-custom-fields)",
        f"  - {folder / 'slack' / 'parent.json.j2'}:1: Expected an expression, got 'end of"
        " statement block'",
    ])


async def test_invalid_json_from_a_template_fails_the_delivery_naming_it(make_settings, tmp_path,
                                                                          sample, clock):
    settings = make_settings()
    folder = write_templates(tmp_path / "mine", {
        "slack/message_visitor.json.j2": '{"text": {{ message.question }}}'})
    slack = SlackDestination(settings, Templates(folder), clock)
    store = open_store(settings.store.url)
    try:
        body = sample("message-visitor")
        await store.accept(new_event(parse_event(body["event"], body), body, ["slack"]),
                           clock.now(), 600)
        await Worker(store, {"slack": slack}, settings.delivery, clock).drain()
        [row] = await store.deliveries()
    finally:
        await slack.aclose()
        await store.close()
    assert row.status == "failed" and row.attempts == 1
    assert row.last_error is not None
    assert row.last_error.startswith(
        "slack: template error: slack/message_visitor.json.j2: output is not valid JSON")


@pytest.mark.parametrize("output, problem", [
    ('["a list"]', 'must render a JSON object with a "text" string'),
    ('{"text": 3}', 'must render a JSON object with a "text" string'),
    ('{"text": "t", "blocks": {}}', '"blocks" must be a list'),
])
def test_slack_checks_the_shape_of_its_json(make_settings, tmp_path, output, problem):
    folder = write_templates(tmp_path / "mine", {"slack/lead.json.j2": output})
    render = sample_renderer(SlackDestination(make_settings(), Templates(folder)))
    assert render is not None
    with pytest.raises(TemplateError, match=rf"^slack/lead\.json\.j2: {problem}"):
        render({"lead": sample_events()["lead"]})


def test_files_that_are_not_templates_are_left_alone(make_settings, tmp_path):
    folder = write_templates(tmp_path / "mine", {
        "README.md": "{{ not a template }", "slack/notes.txt": "{% nope %}"})
    bridge = open_bridge(make_settings({"templates": {"dir": str(folder)}}))
    try:
        assert "README.md" not in check_templates(bridge.templates, bridge.destinations).loaded
    finally:
        asyncio.run(bridge.close())


# What a hostile sender can put in any field SiteGPT's payloads carry: a mention and a link
# for Slack, a link for Jira, and dates out of datetime's range.
HOSTILE_TEXT = [
    "<!channel> <https://evil.example|Click> <@U0HOSTILE> [Click|https://evil.example]",
    "@all @channel @here ~town-square [Click](https://evil.example) ![x](http://evil.example/"
    "i.png) www.evil.example\n# Heading\n| a | b |\n```",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
]
SITEGPT_EVENTS = ("ADD_MESSAGE", "CONVERSATION_ESCALATED", "NEW_LEAD_CAPTURE")
# What would be live markup in each destination's output, by the name of the destination.
PLANTED = {"slack": ("<!channel>", "<https://evil", "<@U0HOSTILE>"), "jira": ("[Click|https",),
           "mattermost": ("@U0HOSTILE", "@all", "@channel", "@here", "~town", "https://evil",
                          "http://evil", "[Click](", "![x](", "www.evil", "\\n#", "\\n|", "```")}
NOT_MARKUP = ("metadata", "summary")
SITEGPT_TARGET = re.compile(r"\]\(https://sitegpt\.ai/[^)\s]*\)")


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every string in a JSON value."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, (*path, index))]
    return [path] if isinstance(value, str) else []


def _replaced(body: Any, path: tuple[Any, ...], text: str) -> Any:
    copy = json.loads(json.dumps(body))
    *parents, last = path
    target = copy
    for part in parents:
        target = target[part]
    target[last] = text
    return copy


def hostile_samples(text: str) -> dict[str, Any]:
    """SiteGPT's samples with every string field that still validates replaced by `text`."""
    events = {}
    for name in sample_names():
        body = load_sample(name)
        if body["event"] not in SITEGPT_EVENTS:
            continue
        for path in _leaves(body["data"]):
            changed = _replaced(body, ("data", *path), text)
            try:
                parse_event(changed["event"], changed)
            except ValueError:
                continue
            body = changed
        events[name] = parse_event(body["event"], body)
    return events


@pytest.mark.parametrize("text", HOSTILE_TEXT,
                         ids=["markup", "markdown", "after-9999", "before-0001"])
async def test_hostile_text_in_any_field_renders_inert_in_every_destination(make_settings, text):
    destinations = build_destinations(make_settings(ALL_ON), Templates())
    try:
        samples = hostile_samples(text)
        rendered = {}
        for name in ("slack", "mattermost", "jira", "crm"):
            previews = sample_renderer(destinations[name])
            assert previews is not None
            rendered |= {f"{name} {label}": output
                         for label, output in previews(samples).items()}
    finally:
        for destination in destinations.values():
            await destination.aclose()
    assert any(label.startswith("jira") for label in rendered)
    assert any(label.startswith("mattermost") for label in rendered)
    for label, output in rendered.items():  # the CRM is sent JSON values, not markup
        planted = PLANTED.get(label.split()[0], ())
        shown = _shown(output)
        if label.startswith("mattermost"):  # the visitor's words inside a link into SiteGPT
            shown = SITEGPT_TARGET.sub("](sitegpt)", shown)
        assert not [mark for mark in planted if mark in shown], (label, shown)


def _shown(output: str) -> str:
    """A preview less what is never read as markup: Slack's message metadata and Mattermost's
    bridge props (data for the bridge) and a Jira ticket's summary (plain text)."""
    try:
        call = json.loads(output)
    except json.JSONDecodeError:
        return output
    if isinstance(call, dict) and isinstance(call.get("props"), dict):  # Mattermost's
        call["props"].pop("sitegpt_bridge", None)  # what the post carries, for the bridge
    return json.dumps({key: value for key, value in call.items() if key not in NOT_MARKUP},
                      ensure_ascii=False) if isinstance(call, dict) else output
