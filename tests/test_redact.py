"""The redactor: configured secrets and the hook URL's path masked in stored and logged text."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
import respx

from bridge.app import open_bridge
from bridge.event_rows import new_event
from bridge.events import LEAD, parse_event
from bridge.logs import configure_logging
from bridge.redact import MASK, RedactingFilter, Redactor
from bridge.samples import load_sample
from tests.bridges import SECRETS, query
from tests.settings_files import deep_merge

HOOK = "https://hooks.example.test/crm/hooks/T0K3N-5f2c9e7a1b3d4c6e"
SECRET_SETTINGS = deep_merge(SECRETS, {"crm": {"webhook": {"url": HOOK}}})


def redactor(make_settings, extra: dict[str, Any] | None = None) -> Redactor:
    return Redactor.for_settings(make_settings(deep_merge(SECRET_SETTINGS, extra or {})))


@pytest.mark.parametrize("secret", [
    "sec-token-1", "sec-token-2", "sec-metrics", "sec-slack-signing", "sec-jira", "sec-jira-pat",
    "sec-hubspot", "sec-crm-signing", "sec-crm-header", "sec-sitegpt", "sec-chatbot",
])
def test_every_configured_secret_is_masked_wherever_it_appears(make_settings, secret):
    redact = redactor(make_settings)
    for text in (f"you sent {secret}", f"Authorization: Bearer {secret}!", f'{{"k":"{secret}"}}'):
        shown = redact(text)
        assert secret not in shown and MASK in shown, text


@pytest.mark.parametrize("echo", [
    'The requested webhook "POST /crm/hooks/T0K3N-5f2c9e7a1b3d4c6e" is not registered',
    "no hook crm/hooks/T0K3N-5f2c9e7a1b3d4c6e here",
    "unknown token T0K3N-5f2c9e7a1b3d4c6e",
    f"cannot POST {HOOK}",
])
def test_the_hook_urls_path_is_masked_as_an_upstream_quotes_it(make_settings, echo):
    shown = redactor(make_settings)(echo)
    assert "T0K3N" not in shown and MASK in shown


def test_the_store_urls_password_is_masked_wherever_it_appears(make_settings):
    url = "postgresql://bridge:sec-pg%2Fpw@db.internal/bridge?sslpassword=sec-key-pass"
    redact = redactor(make_settings, {"store": {"url": url}})
    for text in ("password sec-pg/pw refused", "sec-pg%2Fpw", "key sec-key-pass", url):
        shown = redact(text)
        assert "sec-pg" not in shown and "sec-key" not in shown, text


def test_a_short_hook_path_is_masked_with_its_slash_and_not_as_a_word(make_settings):
    redact = redactor(make_settings, {"crm": {"webhook": {"url": "https://n8n.example/lead"}}})
    assert redact("Cannot POST /lead") == f"Cannot POST {MASK}"
    assert redact("lead lead_790 failed") == "lead lead_790 failed"


def test_jiras_basic_credentials_are_masked_as_the_header_they_became(make_settings):
    cloud = {"url": "https://jira.example", "email": "bot@example.com", "project": "SUP",
             "api_token": "sec-jira"}
    redact = Redactor.for_settings(make_settings({**SECRET_SETTINGS, "jira": cloud}))
    pair = base64.b64encode(b"bot@example.com:sec-jira").decode()
    assert pair not in redact(f"you sent Authorization: Basic {pair}")


def test_a_secret_is_masked_percent_encoded_too(make_settings):
    redact = redactor(make_settings, {"sitegpt": {"api_key": "key/with+odd=chars"}})
    assert redact("GET /x?key=key%2Fwith%2Bodd%3Dchars") == f"GET /x?key={MASK}"


def test_with_no_secret_text_is_left_alone():
    assert Redactor()("nothing to hide") == "nothing to hide"


@respx.mock
async def test_a_hook_that_echoes_its_path_and_our_headers_stores_and_logs_neither(
        make_settings, clock, caplog):
    echo = ('The requested webhook "POST /crm/hooks/T0K3N-5f2c9e7a1b3d4c6e" is not registered;'
            " you sent Authorization: sec-crm-header")
    respx.post(HOOK).respond(404, text=echo)
    settings = make_settings(deep_merge(SECRET_SETTINGS, {"crm": {"kind": "webhook"}}))
    bridge = open_bridge(settings, clock)
    try:
        body = load_sample("lead")
        event = new_event(parse_event(LEAD, body), body, ["crm"])
        await bridge.store.accept(event, clock.now(), 600)
        with caplog.at_level(logging.INFO, logger="bridge"):
            await bridge.worker.drain()
    finally:
        await bridge.close()
    [(status, error)] = query(settings.store.sqlite_path,
                              "SELECT status, last_error FROM deliveries")
    assert status == "failed" and "HTTP 404" in error and MASK in error
    for text in (error, caplog.text):
        assert "T0K3N" not in text and "sec-crm-header" not in text


def test_log_lines_and_tracebacks_carry_no_secret(make_settings, capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", "json", redact=RedactingFilter(redactor(make_settings)))
    try:
        log = logging.getLogger("bridge.test")
        log.warning("upstream said %s", "you sent sec-hubspot")
        try:
            raise RuntimeError(f"echo of {HOOK}")
        except RuntimeError:
            log.exception("unexpected error with %s", "sec-sitegpt")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    written = capsys.readouterr().err
    assert written.count(MASK) == 3 and "RuntimeError: echo of ***" in written
    for secret in ("sec-hubspot", "sec-sitegpt", "T0K3N"):
        assert secret not in written

