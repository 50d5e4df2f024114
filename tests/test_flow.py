"""End to end: SiteGPT's webhooks over HTTP → Slack thread and Jira ticket, linked both ways."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.testclient import TestClient

from bridge.app import create_app, open_bridge
from tests.fake_jira import FakeJira, basic_auth
from tests.fake_slack import FakeSlack
from tests.settings_files import TOKENS


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for delivery"
        time.sleep(0.02)


def post(client: TestClient, endpoint: str, body: dict) -> dict:
    answer = client.post(f"/webhooks/{endpoint}", json=body,
                         headers={"X-WEBHOOK-TOKEN": TOKENS[endpoint]})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_conversation_escalation_and_ticket_reach_slack_and_jira(make_settings, sample):
    with FakeSlack() as slack, FakeJira("Cloud", basic_auth("a@acme.test", "jira-secret")) as jira:
        settings = make_settings({
            "slack": {"bot_token": "xoxb-flow", "api_url": slack.api_url, "channel": "C_SUP",
                      "burst": 100, "per_second": 100.0},
            "jira": {"url": jira.url, "email": "a@acme.test", "api_token": "jira-secret",
                     "project": "SUP"},
        })
        with TestClient(create_app(open_bridge(settings))) as client:
            post(client, "messages", sample("message-visitor"))
            post(client, "messages", sample("message-bot-answer"))
            post(client, "escalations", sample("escalation"))
            wait_until(lambda: any("SUP-" in post["text"] for post in slack.posts))

    [parent] = slack.parents()
    thread = [post["text"] for post in slack.thread("C_SUP", parent["ts"])]
    # The two messages: two replies, or one if the second was waiting when the first went.
    messages = "\n".join(thread[:-2])
    assert messages.startswith("Visitor: I still can't log in")
    assert "\nVisitor: How do I reset my password?" in messages
    assert "John Doe asked for a human" in thread[-2]
    assert "Visitor:" not in thread[-2]  # an escalation is never merged into a batch
    assert thread[-1].startswith("Jira ticket SUP-")
    [ticket] = jira.created()
    description = ticket["description"]
    assert "I still can't log in" in description and "Forgot Password" in description
    assert description.index("I still can't log in") < description.index("Forgot Password")
    assert "https://sitegpt.ai/chatbot_123/chat-history/thread_456" in description
    key = thread[-1].split()[2]
    assert any(key in str(update["blocks"]) for update in slack.updates)
