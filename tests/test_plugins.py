"""A destination plugs in with its own files and one registry line: the echo example, end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from bridge.app import open_bridge
from bridge.cli import main
from bridge.destinations import REGISTRY
from bridge.errors import ConfigError
from bridge.event_rows import new_event
from bridge.events import MESSAGE, parse_event
from bridge.redact import Redactor
from bridge.samples import load_sample
from tests.echo import PLUGIN

HOOK = "https://echo.test/hooks/in"
TOKEN = "sec-echo-token"


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.Router]:
    """The echo plugin registered, as its one line in bridge/plugins.py would; its hook mocked."""
    monkeypatch.setitem(REGISTRY, PLUGIN.name, PLUGIN)  # register(PLUGIN), undone after the test
    with respx.mock(assert_all_called=False) as router:
        yield router


async def test_its_section_is_read_its_events_stored_for_it_and_delivered(echo, make_settings,
                                                                         clock):
    hook = echo.post(HOOK).mock(return_value=httpx.Response(201, json={"id": "e-1"}))
    settings = make_settings({"echo": {"url": HOOK, "token": TOKEN}})
    assert settings.echo.token.get_secret_value() == TOKEN
    bridge = open_bridge(settings, clock)  # its templates render every sample at start-up
    try:
        [messages] = [endpoint for endpoint in bridge.endpoints() if endpoint.kind == MESSAGE]
        assert "echo" in messages.destinations
        body = load_sample("message-visitor")
        await bridge.store.accept(new_event(parse_event(MESSAGE, body), body,
                                            messages.destinations), clock.now(), 600)
        await bridge.worker.drain()
        [row] = [row for row in await bridge.store.deliveries() if row.destination == "echo"]
    finally:
        await bridge.close()
    assert (row.status, row.note) == ("delivered", "echoed as e-1")
    [call] = hook.calls
    assert call.request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(call.request.content) == {
        "thread": "thread_456", "said": "I still can't log in, can I talk to a person?"}


def test_its_settings_are_checked_as_every_section_is(echo, make_settings, monkeypatch):
    with pytest.raises(ConfigError) as caught:
        make_settings({"echo": {"url": HOOK, "tokn": TOKEN}})
    assert caught.value.problems == ["echo.tokn: unknown key; did you mean token?"]
    monkeypatch.setenv("BRIDGE_ECHO__TOKEN", TOKEN)
    assert make_settings({"echo": {"url": HOOK}}).echo.token.get_secret_value() == TOKEN


def test_its_sample_renders_through_its_templates(echo, make_settings, capsys, tmp_path):
    make_settings({"echo": {"url": HOOK, "token": TOKEN}})
    config = str(tmp_path / "settings.toml")
    assert main(["render", "--sample", "echo-message", "--target", "echo",
                 "--config", config]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"thread": "thread_echo", "said": "Is anyone there?"}
    assert "# echo: echo-message: POST" in err


def test_check_shows_its_line_and_its_half_set_settings(echo, make_settings, capsys, tmp_path):
    make_settings({"echo": {"url": HOOK, "token": TOKEN}})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    out = capsys.readouterr().out
    assert f"echo: ok: posts to {HOOK}" in out.splitlines()
    assert TOKEN not in out
    make_settings({"echo": {"token": TOKEN}})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 1
    assert "echo: FAILED: echo.token set but not echo.url: messages are not echoed" in (
        capsys.readouterr().out.splitlines())


def test_redact_masks_its_secret(echo, make_settings):
    settings = make_settings({"echo": {"url": HOOK, "token": TOKEN}})
    assert Redactor.for_settings(settings)(f"401: bad token {TOKEN}") == "401: bad token ***"


def test_without_its_registry_line_the_bridge_knows_no_echo(make_settings):
    with pytest.raises(ConfigError) as caught:
        make_settings({"echo": {"url": HOOK}})
    assert caught.value.problems == ["echo: unknown key"]
