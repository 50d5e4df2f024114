"""Logs: one JSON object per line (text on a terminal), with the ids to grep by, never a secret."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from starlette.testclient import TestClient

from bridge.app import create_app, open_bridge
from bridge.cli import main
from bridge.logs import BackgroundHandler, JsonFormatter, configure_logging
from bridge.store import NewEvent, open_store
from bridge.worker import Worker

MESSAGE = {"event": "ADD_MESSAGE",
           "data": {"chatbotId": "bot", "threadId": "t1", "question": "hi", "answer": None,
                    "messageType": "USER_MESSAGE"}}
ESCALATION = {"event": "CONVERSATION_ESCALATED",
              "data": {"chatbotId": "bot", "threadId": "t1", "user": None}}
LEAD = {"event": "NEW_LEAD_CAPTURE",
        "data": {"chatbotId": "bot", "leadDetails": {"id": "lead-1", "email": "a@example.com"}}}
BODIES = {"messages": MESSAGE, "escalations": ESCALATION, "leads": LEAD}
SECRETS = {
    "messages": "whk-messages-5d1e0c7a9b31",
    "escalations": "whk-escalations-8e2f4a6c",
    "leads": "whk-leads-0b9d7c5e3a1f",
    "slack_bot": "xoxb-1111-2222-secretbotvalue",
    "slack_signing": "slack-signing-secret-8c1f2a",
    "jira": "jira-api-token-secret-77aa",
    "hubspot": "pat-na1-hubspot-secret-3c9d",
    "crm_header": "Bearer crm-header-secret-e4f2",
    "crm_signing": "whsec_Y3JtLXNpZ25pbmctc2VjcmV0LTUx",  # Standard Webhooks: whsec_ + base64
    "sitegpt": "sgpt_api_key_secret_0b1d",
    "chatbot_sitegpt": "sgpt_chatbot_key_secret_66",
    "metrics": "metrics-token-secret-9f3e",
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging rewires the root logger; put it back for the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "fmt", "is_json"), [
    (io.StringIO, "auto", True),
    (Terminal, "auto", False),
    (Terminal, "json", True),
    (io.StringIO, "text", False),
])
def test_json_by_default_and_text_on_a_terminal(monkeypatch, stream, fmt, is_json):
    output = stream()
    monkeypatch.setattr(sys, "stderr", output)
    configure_logging("INFO", fmt)
    logging.getLogger("bridge.test").info("hello %s", "there", extra={"event_id": 7})
    line = output.getvalue().strip()
    if is_json:
        entry = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("time"))
        assert entry == {"level": "info", "logger": "bridge.test", "message": "hello there",
                         "event_id": 7}
    else:
        assert line.endswith("INFO hello there") and not line.startswith("{")


def test_a_webhook_line_carries_event_conversation_and_outcome(make_settings, capsys):
    configure_logging("INFO", "json")
    with TestClient(create_app(open_bridge(make_settings()), run_worker=False)) as client:
        client.post("/webhooks/messages", json=MESSAGE, headers={"X-WEBHOOK-TOKEN": "tok-messages"})
        client.post("/webhooks/leads", json=LEAD, headers={"X-WEBHOOK-TOKEN": "tok-leads"})
    lines = json_lines(capsys.readouterr().err)
    accepted = [line for line in lines if line.get("outcome") == "accepted"]
    assert [(line["endpoint"], line["conversation"]) for line in accepted] == [
        ("messages", "bot/t1"), ("leads", "lead:bot/lead-1")]
    assert all(isinstance(line["event_id"], int) for line in accepted)


async def test_a_delivery_line_carries_event_conversation_destination_and_outcome(
        make_settings, clock, capsys):
    settings = make_settings()
    configure_logging("INFO", "json")
    store = open_store(settings.store.url)
    accepted = await store.accept(NewEvent(
        kind="ADD_MESSAGE", body=json.dumps(MESSAGE), dedup_key="k", ordering_key="bot/t1",
        destinations=["slack"]), clock.now(), 600)
    await Worker(store, {}, settings.delivery, clock).drain()  # slack is not configured here
    await store.close()
    lines = json_lines(capsys.readouterr().err)
    delivery = next(line for line in lines if "destination" in line)
    assert delivery["event_id"] == accepted.event_id
    assert (delivery["conversation"], delivery["destination"], delivery["outcome"]) == (
        "bot/t1", "slack", "failed")


class Unauthorized(BaseHTTPRequestHandler):
    """Every Slack, Jira, HubSpot, CRM or SiteGPT call is refused, as with revoked credentials."""

    def _refuse(self) -> None:
        body = b'{"ok": false, "error": "invalid_auth", "errorMessages": ["Unauthorized"]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def settings_with_every_secret(url: str, crm: str) -> dict[str, Any]:
    return {
        "server": {"metrics_token": SECRETS["metrics"]},
        "webhooks": {name: {"tokens": [SECRETS[name]]} for name in BODIES},
        "slack": {"bot_token": SECRETS["slack_bot"], "signing_secret": SECRETS["slack_signing"],
                  "channel": "C0123456789", "api_url": f"{url}/api/", "timeout_seconds": 2},
        "jira": {"url": url, "email": "support@example.com", "api_token": SECRETS["jira"],
                 "project": "SUP", "timeout_seconds": 2},
        "crm": {"kind": crm,
                "hubspot": {"access_token": SECRETS["hubspot"], "api_url": url,
                            "timeout_seconds": 2},
                "webhook": {"url": f"{url}/lead", "signing_secret": SECRETS["crm_signing"],
                            "headers": {"Authorization": SECRETS["crm_header"]},
                            "timeout_seconds": 2}},
        "sitegpt": {"api_url": url, "api_key": SECRETS["sitegpt"]},
        "chatbots": [{"id": "bot", "sitegpt_api_key": SECRETS["chatbot_sitegpt"]}],
        "log": {"level": "DEBUG", "format": "json"},
    }


@pytest.mark.parametrize("crm", ["hubspot", "webhook"])
def test_no_secret_reaches_a_log_line_an_answer_or_check(make_settings, refusing_server, crm,
                                                        tmp_path, capsys):
    settings = make_settings(settings_with_every_secret(refusing_server, crm))
    configure_logging("DEBUG", "json")
    bridge = open_bridge(settings)
    answers: list[str] = []
    with TestClient(create_app(bridge, run_worker=False)) as client:
        for name, body in BODIES.items():
            for token in (SECRETS[name], SECRETS["slack_bot"], SECRETS[name][:-1], ""):
                reply = client.post(f"/webhooks/{name}", json=body,
                                    headers={"X-WEBHOOK-TOKEN": token})
                answers.append(reply.text)
        for authorization in (f"Bearer {SECRETS['metrics'][:-1]}", "Bearer " + SECRETS["metrics"]):
            answers.append(client.get("/metrics", headers={"Authorization": authorization}).text)
        client.portal.call(bridge.worker.drain, 5.0)
    check_code = main(["check", "--verbose", "--config", str(tmp_path / "settings.toml")])
    captured = capsys.readouterr()
    everything = "\n".join([captured.out, captured.err, *answers])

    assert '"outcome": "unauthorized"' in captured.err  # the logs were really captured
    assert '"outcome": "accepted"' in captured.err
    assert '"bot_token": "**********"' in captured.out  # and so was check's output
    assert check_code in (0, 1)
    leaked = [name for name, secret in SECRETS.items() if secret in everything]
    assert leaked == []


class CountingStream(io.StringIO):
    """A stream that counts its writes: each is one system call on a real stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def background_logger(stream: io.StringIO) -> tuple[logging.Logger, BackgroundHandler]:
    handler = BackgroundHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"bridge.test.background.{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger, handler


def test_in_the_background_a_burst_goes_out_in_order_in_a_few_writes():
    stream = CountingStream()
    logger, handler = background_logger(stream)
    for n in range(500):
        logger.info("webhook %d", n, extra={"event_id": n})
    handler.flush()
    entries = json_lines(stream.getvalue())
    assert [entry["event_id"] for entry in entries] == list(range(500))
    assert entries[7]["message"] == "webhook 7"
    assert stream.writes < 20
    handler.close()


def test_in_the_background_a_line_says_what_was_true_when_it_was_logged():
    stream = io.StringIO()
    logger, handler = background_logger(stream)
    seen = ["first"]
    logger.info("seen %s", seen)
    seen.append("later")
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        logger.exception("it failed")
    handler.close()  # close writes whatever is still queued
    first, failure = json_lines(stream.getvalue())
    assert first["message"] == "seen ['first']"
    assert failure["message"] == "it failed"
    assert "ValueError: broken on purpose" in failure["exception"]


def test_a_background_writer_that_is_replaced_writes_its_lines_and_stops(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    configure_logging("INFO", "json", background=True)
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, BackgroundHandler)
    configure_logging("INFO", "json")
    assert not handler._thread.is_alive()  # the replaced handler wrote its lines and stopped
    assert type(logging.getLogger().handlers[0]) is logging.StreamHandler


def test_in_the_background_a_call_with_the_wrong_arguments_costs_only_its_own_line(
        monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", False)  # as in production: no traceback
    stream = io.StringIO()
    logger, handler = background_logger(stream)
    logger.info("two values %s %s", "only one")
    logger.info("after it")
    handler.close()
    assert [entry["message"] for entry in json_lines(stream.getvalue())] == ["after it"]
