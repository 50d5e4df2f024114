"""Operator commands: render, send-test, deliveries, retry, conversations: output, exit codes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from bridge.app import create_app, open_bridge
from bridge.commands import UNTRUNCATED_WIDTH, as_new_test, local_iso, local_time, webhook_url
from bridge.destinations import REGISTRY
from bridge.destinations.plugin import Plugin
from bridge.destinations.slack import SlackDestination
from bridge.event_rows import new_event
from bridge.events import LEAD, parse_event
from bridge.samples import load_sample
from bridge.sections import Section, ServerSettings
from bridge.settings import Settings
from bridge.store import open_store
from bridge.store.sqlite import SQLiteStore
from bridge.template_check import sample_events
from bridge.templating import Templates
from tests.command_line import run
from tests.loopback import LoopbackServer
from tests.settings_files import TOKENS

NOW = 1_700_000_000.0
LONG_ERROR = "slack: chat.postMessage: channel_not_found " + "and then some " * 20


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch):
    """Tables fit the terminal's width: the tests see none, whatever runs them (xdist says 80)."""
    monkeypatch.setenv("COLUMNS", str(UNTRUNCATED_WIDTH))


@pytest.fixture
def config(make_settings, tmp_path) -> Callable[..., str]:
    """Writes the settings file and returns its path, for --config."""
    def write(extra: dict[str, Any] | None = None) -> str:
        make_settings(extra)
        return str(tmp_path / "settings.toml")
    return write


def json_stream(text: str) -> list[Any]:
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return values


async def with_store(settings: Settings, work: Callable[[SQLiteStore], Any]) -> Any:
    store = open_store(settings.store.url)
    try:
        return await work(store)
    finally:
        await store.close()


async def add(store: SQLiteStore, body: dict[str, Any], destination: str,
              outcome: tuple[str, str] | None) -> None:
    """One event with one delivery, finished as told or left pending after a failed attempt."""
    event = parse_event(body["event"], body)
    await store.accept(new_event(event, body, [destination]), NOW, 600)
    [claimed] = await store.claim("seed", NOW, 1, 60)
    if outcome is None:
        await store.reschedule(claimed.lease, NOW + 300, "slack: chat.postMessage: HTTP 503", NOW)
    else:
        await store.finish(claimed.lease, outcome[0], NOW, outcome[1])  # type: ignore[arg-type]


SEEDED = [  # ids 1..5, in this order
    ("message-visitor", "slack", ("delivered", "C_CONV/1700000000.000100")),
    ("message-agent", "slack", ("failed", LONG_ERROR)),
    ("lead", "slack", ("skipped", "dry run: slack.bot_token is not set")),
    ("lead-custom-fields", "crm", ("failed", "crm: HTTP 400 Bad Request")),
    ("escalation", "slack", None),
]


SLACK_STATE = {"channel": "C_CONV", "thread_ts": "1700000000.000100", "escalated_at": NOW}
JIRA_STATE = {"key": "SUP-7", "transcript_upto": 0}


@pytest.fixture
def seeded(config, make_settings) -> str:
    path = config()

    async def seed(store: SQLiteStore) -> None:
        for name, destination, outcome in SEEDED:
            await add(store, load_sample(name), destination, outcome)
        await store.save_link("chatbot_123", "thread_456", "slack", SLACK_STATE,
                              ref="C_CONV/1700000000.000100")
        await store.save_link("chatbot_123", "thread_456", "jira", JIRA_STATE, ref="SUP-7")

    asyncio.run(with_store(make_settings(), seed))
    return path


def statuses(settings: Settings) -> dict[int, tuple[str, int]]:
    rows = asyncio.run(with_store(settings, lambda store: store.deliveries(limit=100)))
    return {row.id: (row.status, row.attempts) for row in rows}


# render ------------------------------------------------------------------------------------------

def test_render_sample_prints_exactly_what_slack_would_be_sent(config, make_settings, capsys):
    path = config({"slack": {"channel": "C_CONV", "leads_channel": "C_LEADS"}})
    code, out, err = run(capsys, "render", "--json", "--sample", "message-bot-answer",
                         "--config", path)
    assert code == 0
    expected = SlackDestination(make_settings({"slack": {
        "channel": "C_CONV", "leads_channel": "C_LEADS"}}), Templates()).render_samples(
        {"message-bot-answer": sample_events()["message-bot-answer"]})
    assert json_stream(out) == [json.loads(text) for text in expected.values()]
    assert err.splitlines() == [
        "# slack: message-bot-answer: chat.postMessage (parent of a new thread)",
        "# slack: message-bot-answer: chat.postMessage (in the thread)"]
    parent, message = json_stream(out)
    assert parent["channel"] == message["channel"] == "C_CONV"
    assert message["text"].startswith("Visitor: How do I reset my password?")


def test_render_shows_people_what_the_thread_would_show(config, capsys):
    path = config({"slack": {"channel": "C_CONV", "bot_token": "xoxb-t"}})
    code, out, err = run(capsys, "render", "--sample", "escalation", "--config", path)
    assert code == 0
    assert err.splitlines() == ["# slack: escalation: chat.postMessage (in the thread)",
                                "# slack: escalation: chat.update (the thread's parent)"]
    assert out.splitlines() == [
        "to C_CONV, also sent to the channel",
        "┃ :rotating_light: *John Doe* asked for a human on *chatbot_123*",
        "┃ :email: user@example.com",
        "┃ :telephone_receiver: +1234567890",
        "┃ Open the conversation in SiteGPT "
        "(https://sitegpt.ai/chatbot_123/chat-history/thread_456)",
        "to C_CONV",  # the parent names the visitor, as the escalation does in a live run
        "┃ :bust_in_silhouette: *John Doe*",
        "┃ :rotating_light: Escalated: waiting for a human",
        "┃ *chatbot_123* · conversation `thread_456` · "
        "Open in SiteGPT (https://sitegpt.ai/chatbot_123/chat-history/thread_456)"]


@pytest.mark.parametrize(("slack", "heading"), [
    ({}, "to (dry run)"),
    ({"channel": "C_CONV"}, "to C_CONV (dry run)"),
    ({"channel": "C_CONV", "bot_token": "xoxb-t"}, "to C_CONV"),
])
def test_render_says_where_it_goes_and_when_slack_runs_dry(config, capsys, slack, heading):
    code, out, _ = run(capsys, "render", "--sample", "lead", "--config", config({"slack": slack}))
    assert code == 0
    assert out.splitlines()[0] == heading
    assert '"channel"' not in out


def test_render_the_batch_sample_shows_the_one_reply_a_backlog_becomes(config, capsys, tmp_path):
    folder = tmp_path / "mine" / "slack"
    folder.mkdir(parents=True)
    (folder / "message_visitor.json.j2").write_text(
        '{% extends "default:slack/message_visitor.json.j2" %}'
        "{% block fallback %}[mine] {{ super() }}{% endblock %}")
    path = config({"slack": {"channel": "C_CONV"}, "templates": {"dir": str(tmp_path / "mine")}})
    code, out, err = run(capsys, "render", "--json", "--sample", "messages-batch", "--config", path)
    assert code == 0
    assert err.splitlines() == [
        "# slack: thread_456: chat.postMessage (in the thread), 6 waiting messages in one reply"]
    [batch] = json_stream(out)
    lines = batch["text"].splitlines()
    assert lines[0].startswith("Dana: ")  # in the samples' order, each with its own look
    assert lines[-1] == "[mine] Visitor: I still can't log in, can I talk to a person?"
    stamps = [block for block in batch["blocks"] if block["type"] == "context"
              and block["elements"][-1]["text"].startswith("<!date^")]
    assert len(stamps) == 6  # each message shows its time


REPLIES_ON = {"slack": {"bot_token": "xoxb-t", "channel": "C_CONV", "signing_secret": "s"},
              "sitegpt": {"api_key": "sk-render-secret"}}


@pytest.mark.parametrize(("sample", "call"), [
    ("slack-reply", "POST /chatbots/chatbot_123/message"),
    ("mode-change", "PATCH /chatbots/chatbot_123/threads/thread_456"),
])
def test_render_sample_of_a_reply_from_slack_shows_the_call_and_the_notices(config, capsys,
                                                                           sample, call):
    code, out, err = run(capsys, "render", "--sample", sample, "--config", config(REPLIES_ON))
    assert code == 0
    headings = err.splitlines()
    assert headings[0] == f"# sitegpt: {sample}: {call}"
    assert headings[-1].startswith(f"# sitegpt: {sample}: chat.postMessage (in the thread, if")
    request, *rest = json_stream(out)
    assert f"{request['method']} {request['path']}" == call
    assert rest[-1]["thread_ts"] == "1700000000.000100" and rest[-1]["text"].startswith(":warning:")
    assert "sk-render-secret" not in out + err


def test_render_of_a_reply_from_slack_when_replies_are_off_says_so(config, capsys):
    code, out, err = run(capsys, "render", "--sample", "slack-reply", "--config", config())
    assert (code, out) == (2, "")
    assert err == ("sitegpt-bridge: no destination takes SLACK_THREAD_REPLY events with these"
                   " settings (replies are off: they need a SiteGPT API key and a chat tool to"
                   " answer from: [slack] bot_token and signing_secret, or [mattermost] url and"
                   " bot_token; see docs/slack.md and docs/mattermost.md)\n")


def test_render_file_uses_the_users_templates(config, tmp_path, capsys):
    mine = tmp_path / "mine" / "slack"
    mine.mkdir(parents=True)
    (mine / "lead.json.j2").write_text(
        '{% extends "default:slack/lead.json.j2" %}{% block fallback %}Lead {{ lead.id }}'
        "{% endblock %}")
    body = tmp_path / "body.json"
    body.write_text(json.dumps(load_sample("lead-custom-fields")))
    path = config({"templates": {"dir": str(tmp_path / "mine")}})
    code, out, err = run(capsys, "render", "--json", str(body), "--target", "slack",
                         "--config", path)
    assert code == 0
    [lead] = json_stream(out)
    assert lead["text"] == "Lead lead_790"
    assert "*Company:* Nuñez Consulting" in lead["blocks"][0]["text"]["text"]
    assert err == "# slack: body.json: chat.postMessage (lead)\n"


def test_render_file_reads_the_body_as_the_webhook_does(config, tmp_path, capsys):
    # Half an emoji, cut by the sender: the webhook stores U+FFFD in its place, and so the
    # preview shows what would be delivered rather than failing to print it.
    sample = load_sample("lead-custom-fields")
    body = tmp_path / "body.json"
    body.write_text(json.dumps(sample).replace('"Nu\\u00f1ez', '"Nu\\ud83dez'))
    code, out, _ = run(capsys, "render", "--json", str(body), "--target", "slack",
                       "--config", config())
    assert code == 0
    [lead] = json_stream(out)
    assert "*Company:* Nu\ufffdez Consulting" in lead["blocks"][0]["text"]["text"]


@pytest.mark.parametrize("content, arguments, expected", [
    (None, ["FILE"], "{file}: no such file"),
    ("{not json", ["FILE"], "{file}: not JSON: Expecting property name enclosed in double quotes"),
    ('{"event": "ADD_MESSAGE", "data": NaN}', ["FILE"], "{file}: body: NaN is not a JSON number"),
    ("[1, 2]", ["FILE"], '{file}: "event" must be one of ADD_MESSAGE, CONVERSATION_ESCALATED,'),
    ('{"event": "SOMETHING"}', ["FILE"], '{file}: "event" must be one of'),
    ('{"event": "ADD_MESSAGE", "data": {"chatbotId": "c"}}', ["FILE"],
     "{file}: data.threadId: Field required"),
    (None, ["--sample", "nope"], "no sample named 'nope'; known: escalation,"),
    (None, [], "render needs a FILE.json or --sample NAME, one of the two"),
    ("{}", ["FILE", "--sample", "lead"], "render needs a FILE.json or --sample NAME"),
])
def test_render_bad_input_is_one_line_and_exit_2(config, tmp_path, capsys, content, arguments,
                                                 expected):
    file = tmp_path / "payload.json"
    if content is not None:
        file.write_text(content)
    argv = [str(file) if item == "FILE" else item for item in arguments]
    code, out, err = run(capsys, "render", *argv, "--config", config())
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("sitegpt-bridge: " + expected.format(file=file))


def test_render_names_the_broken_template_file_and_line(config, tmp_path, capsys):
    mine = tmp_path / "mine" / "slack"
    mine.mkdir(parents=True)
    (mine / "message_agent.json.j2").write_text('{"text": "ok"}\n{{ message.nope.deeper }}')
    path = config({"templates": {"dir": str(tmp_path / "mine")}})
    code, out, err = run(capsys, "render", "--sample", "message-agent", "--config", path)
    assert code == 1
    assert out == ""
    assert err == (f"sitegpt-bridge: slack: {mine / 'message_agent.json.j2'}:2: "
                   "'dict object' has no attribute 'nope'\n")


def test_render_refuses_a_missing_templates_folder(config, tmp_path, capsys):
    path = config({"templates": {"dir": str(tmp_path / "nowhere")}})
    code, _, err = run(capsys, "render", "--sample", "lead", "--config", path)
    assert code == 2
    assert err == f"sitegpt-bridge: templates.dir: {tmp_path / 'nowhere'} is not a folder\n"


class LeadsOnly:
    """A destination that takes leads and cannot preview them."""

    name: ClassVar[str] = "fake"

    def accepts(self, kind: str) -> bool:
        return kind == LEAD

    async def deliver(self, delivery: Any) -> Any:
        raise AssertionError("never delivered here")

    async def verify(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        pass

    def render_samples(self, samples: Any) -> None:
        return None  # it cannot show what it would send


@pytest.fixture
def fake_destination(monkeypatch) -> Callable[[bool], None]:
    def register(on: bool) -> None:
        monkeypatch.setitem(REGISTRY, "fake", Plugin(
            name="fake", section=Section, kinds=frozenset({LEAD}),
            build=lambda settings, templates, shared: LeadsOnly() if on else None))
    return register


@pytest.mark.parametrize("on, arguments, code, expected", [
    (True, ["--sample", "lead", "--target", "fake"], 1,
     "sitegpt-bridge: fake: cannot show what it would send"),
    (True, ["--sample", "message-agent", "--target", "fake"], 2,
     "sitegpt-bridge: fake does not take ADD_MESSAGE events"),
    (False, ["--sample", "lead", "--target", "fake"], 2,
     "sitegpt-bridge: fake is switched off in these settings"),
])
def test_render_target_problems(config, capsys, fake_destination, on, arguments, code, expected):
    fake_destination(on)
    result, out, err = run(capsys, "render", *arguments, "--config", config())
    assert (result, out, err) == (code, "", expected + "\n")


def test_render_default_targets_show_every_destination_taking_the_event(config, capsys,
                                                                        fake_destination):
    fake_destination(True)
    code, out, err = run(capsys, "render", "--json", "--sample", "lead", "--config", config())
    assert code == 1, "a destination that cannot preview is a failure"
    assert len(json_stream(out)) == 1
    assert err.splitlines() == ["# slack: lead: chat.postMessage (lead)",
                                "sitegpt-bridge: fake: cannot show what it would send"]


def test_check_says_which_destinations_cannot_preview(config, capsys, fake_destination):
    fake_destination(True)
    code, out, _ = run(capsys, "check", "--config", config())
    assert code == 0
    assert "templates: fake cannot preview; its templates were only loaded" in out


@pytest.mark.parametrize("on", [False, True])
def test_check_lists_every_registered_destination_off_or_verified(config, capsys,
                                                                  fake_destination, on):
    fake_destination(on)  # registered after the built-ins, as one added later would be
    code, out, _ = run(capsys, "check", "--config", config())
    assert code == 0
    names = tuple(f"{name}: " for name in REGISTRY)
    assert [line for line in out.splitlines() if line.startswith(names)] == [
        "slack: dry run (no slack.bot_token): messages are logged, not posted",
        "mattermost: off", "jira: off", "crm: off", "sitegpt: off",
        "fake: ok" if on else "fake: off"]


def test_an_unknown_target_is_refused_by_the_arguments(config, capsys):
    code, out, err = run(capsys, "render", "--sample", "lead", "--target", "fax",
                         "--config", config())
    assert code == 2 and out == ""
    assert "argument --target: invalid choice: 'fax'" in err


# send-test ---------------------------------------------------------------------------------------

class LateApp:
    """The bridge's app, set once the settings know the port it is served on."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.fixture
def running_bridge(config, make_settings) -> Iterator[tuple[str, int]]:
    """A real bridge app on 127.0.0.1; its settings file says host 0.0.0.0 and its port."""
    late = LateApp()
    server = LoopbackServer(late).start()
    path = config({"server": {"host": "0.0.0.0", "port": server.port}})
    bridge = open_bridge(make_settings({"server": {"host": "0.0.0.0", "port": server.port}}))
    late.app = create_app(bridge, run_worker=False)
    try:
        yield path, server.port
    finally:
        server.stop()
        asyncio.run(bridge.close())


def test_send_test_posts_the_sample_with_the_first_token(running_bridge, capsys):
    path, port = running_bridge
    code, out, err = run(capsys, "send-test", "messages", "--config", path)
    assert (code, err) == (0, "")
    heading, answer = out.splitlines()
    assert re.fullmatch(rf"POST http://127\.0\.0\.1:{port}/webhooks/messages \(sample "
                        r"message-bot-answer as send-test-\d{8}-\d{6}-[0-9a-f]{6}\)", heading)
    assert answer == 'HTTP 200 OK: {"status":"accepted","id":1}'
    code, out, _ = run(capsys, "send-test", "messages", "--config", path)
    assert code == 0
    assert out.splitlines()[1:] == ['HTTP 200 OK: {"status":"accepted","id":2}']
    code, out, _ = run(capsys, "conversations", "--json", "--config", path)
    threads = [json.loads(line)["thread_id"] for line in out.splitlines()]
    assert len(set(threads)) == 2 and all(t.startswith("send-test-") for t in threads)


@pytest.mark.parametrize("sample", ["escalation", "lead", "message-bot-answer"])
def test_each_send_test_is_a_new_event_named_as_a_test(sample):
    body = load_sample(sample)
    first, second = as_new_test(body, "send-test-a"), as_new_test(body, "send-test-b")
    assert first != second and first["event"] == body["event"]
    data = first["data"]
    assert "send-test-a" in (data.get("threadId"), data.get("leadDetails", {}).get("id"))
    names = [data.get("user", {}).get("name"), data.get("leadDetails", {}).get("name")]
    assert sample.startswith("message") or "sitegpt-bridge test" in names
    assert "thread_456" not in json.dumps(first)


def test_send_test_finds_the_settings_make_run_used(running_bridge, tmp_path, monkeypatch,
                                                   capsys):
    # As after `make run` on a fresh clone: the bridge serves the example file, nothing else.
    assert running_bridge[0] == str(tmp_path / "settings.toml")
    (tmp_path / "settings.toml").rename(tmp_path / "settings.example.toml")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "send-test", "messages")
    assert err.splitlines() == ["sitegpt-bridge: no settings.toml here, using "
                                "settings.example.toml (copy it to settings.toml to make it yours)"]
    assert (code, out.splitlines()[-1]) == (0, 'HTTP 200 OK: {"status":"accepted","id":1}')


def test_send_test_with_another_sample(running_bridge, capsys):
    path, _ = running_bridge
    code, out, _ = run(capsys, "send-test", "leads", "--sample", "lead-custom-fields",
                       "--config", path)
    assert code == 0
    assert out.splitlines()[1] == 'HTTP 200 OK: {"status":"accepted","id":1}'


def test_send_test_exits_non_zero_when_the_bridge_refuses(running_bridge, config, capsys):
    _, port = running_bridge
    path = config({"server": {"host": "0.0.0.0", "port": port},
                   "webhooks": {"escalations": {"tokens": ["not-the-bridges-token"]}}})
    code, out, _ = run(capsys, "send-test", "escalations", "--config", path)
    assert code == 1
    assert out.splitlines()[1] == (
        'HTTP 401 Unauthorized: {"status":"rejected","error":"missing or wrong X-WEBHOOK-TOKEN"}')


def test_send_test_to_nothing_listening_is_one_line(config, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = config({"server": {"port": port}})
    code, _, err = run(capsys, "send-test", "leads", "--config", path)
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith(f"sitegpt-bridge: cannot reach http://127.0.0.1:{port}/webhooks/leads:")
    assert line.endswith("is the bridge running?")


@pytest.mark.parametrize("extra, arguments, expected", [
    ({"webhooks": {"leads": {"tokens": []}}}, ["leads"],
     "webhooks.leads has no token to send with; set one first"),
    ({}, ["escalations", "--sample", "lead"],
     "sample lead is a NEW_LEAD_CAPTURE event; the escalations webhook takes "
     "CONVERSATION_ESCALATED"),
    ({}, ["messages", "--sample", "nope"], "no sample named 'nope'"),
])
def test_send_test_bad_arguments(config, capsys, extra, arguments, expected):
    code, out, err = run(capsys, "send-test", *arguments, "--config", config(extra))
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith(f"sitegpt-bridge: {expected}")
    assert TOKENS["leads"] not in err


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", "http://127.0.0.1:9000/webhooks/leads"),
    ("0.0.0.0", "http://127.0.0.1:9000/webhooks/leads"),
    ("::", "http://[::1]:9000/webhooks/leads"),
    ("::1", "http://[::1]:9000/webhooks/leads"),
    ("bridge.internal", "http://bridge.internal:9000/webhooks/leads"),
])
def test_webhook_url_reaches_a_wildcard_address_through_loopback(host, expected):
    assert webhook_url(ServerSettings(host=host, port=9000), "leads") == expected


# deliveries --------------------------------------------------------------------------------------

def table(out: str) -> tuple[str, list[str]]:
    header, *rows = out.splitlines()
    return header, rows


def test_deliveries_table_is_aligned_newest_first_with_errors_cut_to_fit(seeded, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("COLUMNS", "140")
    code, out, err = run(capsys, "deliveries", "--config", seeded)
    assert (code, err) == (0, "")
    header, rows = table(out)
    assert header.split() == ["ID", "EVENT", "DESTINATION", "STATUS", "ATTEMPTS", "NEXT",
                              "ATTEMPT", "CONVERSATION", "LAST", "ERROR", "/", "NOTE"]
    assert [row.split()[0] for row in rows] == ["5", "4", "3", "2", "1"]
    status_at = header.index("STATUS")
    assert [row[status_at:].split()[0] for row in rows] == [
        "pending", "failed", "skipped", "failed", "delivered"]
    assert max(len(line) for line in out.splitlines()) == 140
    pending, _, _, failed, delivered = rows
    assert local_time(NOW + 300) in pending and "slack: chat.postMessage: HTTP 503" in pending
    cut = failed[header.index("LAST ERROR"):]
    assert cut.endswith("…") and LONG_ERROR.startswith(cut[:-1]) and len(cut) > 30
    assert delivered.endswith("C_CONV/1700000000.000100")
    assert "5 escalation" in pending and "lead:chatbot_123/lead_790" in rows[1]


def test_deliveries_shows_an_error_stored_with_a_secret_masked(config, make_settings, capsys):
    extra = {"crm": {"kind": "none", "hubspot": {"access_token": "pat-na1-secret-77"}}}
    path = config(extra)
    leaked = "hubspot POST /crm/v3: HTTP 401 you sent Bearer pat-na1-secret-77"
    asyncio.run(with_store(make_settings(extra), lambda store: add(
        store, load_sample("lead"), "crm", ("failed", leaked))))
    for arguments in ([], ["--json"]):
        code, out, _ = run(capsys, "deliveries", *arguments, "--config", path)
        assert code == 0 and "you sent Bearer ***" in out and "pat-na1-secret-77" not in out


def test_deliveries_json_has_stable_keys_for_scripts(seeded, capsys):
    code, out, _ = run(capsys, "deliveries", "--json", "--config", seeded)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [list(row) for row in rows] == [[
        "id", "event_id", "kind", "destination", "conversation", "status", "attempts",
        "next_attempt_at", "last_error", "note", "errors", "created_at", "finished_at"]] * 5
    by_id = {row["id"]: row for row in rows}
    assert by_id[5] | {"created_at": None} == {
        "id": 5, "event_id": 5, "kind": "CONVERSATION_ESCALATED", "destination": "slack",
        "conversation": "chatbot_123/thread_456", "status": "pending", "attempts": 1,
        "next_attempt_at": local_iso(NOW + 300), "last_error": "slack: chat.postMessage: HTTP 503",
        "note": None, "created_at": None, "finished_at": None, "errors": [{
            "attempt": 1, "outcome": "retry", "error": "slack: chat.postMessage: HTTP 503",
            "at": local_iso(NOW)}]}
    assert (by_id[1]["note"], by_id[1]["last_error"]) == ("C_CONV/1700000000.000100", None)
    assert by_id[1]["errors"] == []
    assert by_id[2]["last_error"] == LONG_ERROR, "JSON is never cut"
    assert by_id[1]["finished_at"] == local_iso(NOW)


@pytest.mark.parametrize("arguments, ids", [
    (["--status", "failed"], [4, 2]),
    (["--status", "pending"], [5]),
    (["--conversation", "thread_456"], [5, 2, 1]),
    (["--conversation", "chatbot_123/thread_456"], [5, 2, 1]),
    (["--conversation", "lead:chatbot_123/lead_789"], [3]),
    (["--limit", "2"], [5, 4]),
    (["--status", "failed", "--destination-typo"], None),
])
def test_deliveries_filters(seeded, capsys, arguments, ids):
    code, out, err = run(capsys, "deliveries", "--json", *arguments, "--config", seeded)
    if ids is None:
        assert code == 2 and "unrecognized arguments: --destination-typo" in err
        return
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids


@pytest.mark.parametrize("arguments, expected", [
    (["--limit", "0"], "argument --limit: must be 1 or more, got 0"),
    (["--limit", "many"], "argument --limit: not a whole number: 'many'"),
    (["--status", "lost"], "argument --status: invalid choice: 'lost'"),
])
def test_deliveries_bad_arguments_exit_2(seeded, capsys, arguments, expected):
    code, out, err = run(capsys, "deliveries", *arguments, "--config", seeded)
    assert code == 2 and out == ""
    assert expected in err.splitlines()[-1]


def test_deliveries_with_nothing_to_show(config, make_settings, capsys):
    path = config()
    asyncio.run(with_store(make_settings(), lambda store: store.check_writable()))
    assert run(capsys, "deliveries", "--config", path) == (0, "no deliveries\n", "")
    assert run(capsys, "deliveries", "--json", "--config", path) == (0, "", "")


def test_commands_refuse_a_store_that_does_not_exist(config, tmp_path, capsys):
    path = config()
    for command in ("deliveries", "conversations", "retry"):
        extra = ["--failed"] if command == "retry" else []
        code, out, err = run(capsys, command, *extra, "--config", path)
        assert (code, out) == (2, "")
        assert err == (f"sitegpt-bridge: no store at {tmp_path / 'data' / 'bridge.db'}: "
                       "has the bridge run with these settings?\n")
    assert not (tmp_path / "data" / "bridge.db").exists()


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    code, out, err = run(capsys, "deliveries", "--config", str(tmp_path / "absent.toml"))
    assert (code, out) == (2, "")
    assert err == f"sitegpt-bridge: config file not found: {tmp_path / 'absent.toml'}\n"


# retry -------------------------------------------------------------------------------------------

def test_retry_by_id_requeues_any_finished_delivery(seeded, make_settings, capsys):
    code, out, err = run(capsys, "retry", "1", "3", "--config", seeded)
    assert (code, err) == (0, "")
    assert out == "requeued 2 deliveries; a running worker picks them up within 0.05 s\n"
    after = statuses(make_settings())
    assert after[1] == ("pending", 0) and after[3] == ("pending", 0)
    assert after[2] == ("failed", 1), "others are left alone"


def test_retry_leaves_pending_ones_as_they_are(seeded, make_settings, capsys):
    code, out, _ = run(capsys, "retry", "5", "2", "--config", seeded)
    assert code == 0
    assert out.splitlines() == ["already pending: 5",
                                "requeued 1 delivery; a running worker picks them up within 0.05 s"]
    assert statuses(make_settings())[5] == ("pending", 1)


def test_retry_an_unknown_id_requeues_nothing(seeded, make_settings, capsys):
    before = statuses(make_settings())
    code, out, err = run(capsys, "retry", "2", "99", "98", "--config", seeded)
    assert (code, out) == (2, "")
    assert err == "sitegpt-bridge: no delivery with id 99, 98; nothing was requeued\n"
    assert statuses(make_settings()) == before


@pytest.mark.parametrize("arguments, requeued", [
    (["--failed"], {2, 4}),
    (["--failed", "--destination", "crm"], {4}),
    (["--failed", "--destination", "slack"], {2}),
])
def test_retry_failed_requeues_failed_ones_only_never_skipped(seeded, make_settings, capsys,
                                                                arguments, requeued):
    before = statuses(make_settings())
    code, out, _ = run(capsys, "retry", *arguments, "--config", seeded)
    assert code == 0
    assert out.startswith(f"requeued {len(requeued)} deliver")
    after = statuses(make_settings())
    assert {key for key in after if after[key] != before[key]} == requeued
    assert after[3] == ("skipped", 1)


@pytest.mark.parametrize("arguments, expected", [
    ([], "sitegpt-bridge: retry needs delivery ids or --failed, one of the two"),
    (["1", "--failed"], "sitegpt-bridge: retry needs delivery ids or --failed, one of the two"),
    (["1", "--destination", "slack"], "sitegpt-bridge: --destination goes with --failed"),
    (["0"], "argument ID: must be 1 or more, got 0"),
    (["one"], "argument ID: not a whole number: 'one'"),
])
def test_retry_bad_arguments_exit_2(seeded, make_settings, capsys, arguments, expected):
    before = statuses(make_settings())
    code, out, err = run(capsys, "retry", *arguments, "--config", seeded)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].endswith(expected)
    assert statuses(make_settings()) == before


async def test_store_retry_with_no_ids_and_no_failed_flag_requeues_nothing(seeded,
                                                                           make_settings):
    settings = make_settings()
    assert await with_store(settings, lambda store: store.retry(now=NOW)) == 0
    rows = await with_store(settings, lambda store: store.deliveries())
    assert sorted(row.status for row in rows) == [
        "delivered", "failed", "failed", "pending", "skipped"]


class RunningWorker:
    """The bridge's worker running in its own thread and loop, as `serve` runs it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    async def _run(self) -> None:
        bridge = open_bridge(self.settings)
        bridge.start_worker()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.02)
        await bridge.close()

    def __enter__(self) -> RunningWorker:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_running_worker_picks_up_what_retry_requeues(make_settings, config, capsys):
    path = config()
    settings = make_settings()

    async def seed(store: SQLiteStore) -> None:
        await add(store, load_sample("message-visitor"), "slack", ("failed", "slack: boom"))

    asyncio.run(with_store(settings, seed))
    with RunningWorker(settings):
        code, out, _ = run(capsys, "retry", "--failed", "--config", path)
        assert (code, out.split(";")[0]) == (0, "requeued 1 delivery")
        deadline = time.monotonic() + 10
        while statuses(settings)[1][0] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    # No bot token: the worker's Slack runs dry, so a delivery it handled is "skipped".
    assert statuses(settings)[1] == ("skipped", 1)


# conversations -----------------------------------------------------------------------------------

def test_conversations_table_and_json(seeded, capsys):
    code, out, _ = run(capsys, "conversations", "--config", seeded)
    assert code == 0
    header, [row] = table(out)
    assert header.split() == ["CONVERSATION", "LAST", "SEEN", "ESCALATED", "LINKS"]
    assert row.split() == ["chatbot_123/thread_456", *local_time(NOW).split(),
                           *local_time(NOW).split(), "jira:SUP-7",
                           "slack:C_CONV/1700000000.000100"]
    assert header.index("LINKS") == row.index("jira:")
    code, out, _ = run(capsys, "conversations", "--json", "--config", seeded)
    assert json.loads(out) == {
        "chatbot_id": "chatbot_123", "thread_id": "thread_456",
        "escalated_at": local_iso(NOW), "first_seen": local_iso(NOW),
        "last_seen": local_iso(NOW), "links": {
            "jira": {"ref": "SUP-7", "state": JIRA_STATE},
            "slack": {"ref": "C_CONV/1700000000.000100", "state": SLACK_STATE}}}


def test_conversations_newest_first_with_a_limit(config, make_settings, capsys):
    path = config()

    async def seed(store: SQLiteStore) -> None:
        for n in range(3):
            body = load_sample("message-visitor")
            body["data"]["threadId"] = f"thread_{n}"
            event = parse_event(body["event"], body)
            await store.accept(new_event(event, body, []), NOW + n, 600)

    asyncio.run(with_store(make_settings(), seed))
    code, out, _ = run(capsys, "conversations", "--json", "--limit", "2", "--config", path)
    assert code == 0
    assert [json.loads(line)["thread_id"] for line in out.splitlines()] == [
        "thread_2", "thread_1"]
    _, rows = table(run(capsys, "conversations", "--config", path)[1])
    assert [row.split()[0] for row in rows] == [f"chatbot_123/thread_{n}" for n in (2, 1, 0)]
    assert all(row.split()[-2:] == ["-", "-"] for row in rows)


def test_ids_and_errors_cannot_drive_the_operators_terminal(config, make_settings, capsys):
    path = config()
    planted = "thread_\x1b]8;;https://evil.example\x07click\x1b]8;;\x07\x1b[2J\u202eA"

    async def seed(store: SQLiteStore) -> None:
        body = load_sample("message-visitor")
        body["data"]["threadId"] = planted
        await add(store, body, "slack", ("failed", f"slack: channel_not_found {planted}"))

    asyncio.run(with_store(make_settings(), seed))
    for command in ("deliveries", "conversations"):
        code, out, _ = run(capsys, command, "--config", path)
        assert code == 0 and "thread_" in out
        assert not any(char in out for char in "\x1b\x07\u202e"), command


def test_conversations_with_nothing_to_show(config, make_settings, capsys):
    path = config()
    asyncio.run(with_store(make_settings(), lambda store: store.check_writable()))
    assert run(capsys, "conversations", "--config", path) == (0, "no conversations\n", "")


def test_every_operator_command_is_registered():
    from bridge.cli import COMMANDS, build_parser

    build_parser()
    assert {"render", "send-test", "deliveries", "retry", "conversations"} <= set(COMMANDS)
