"""Unique ~500-byte ADD_MESSAGE bodies: one template, filled here and by the wrk script."""

from __future__ import annotations

import json

QUESTION = "How do I reset my password when the link in the email has already expired?"
ANSWER = ("Open the login page, click 'Forgot password' and ask for a new link: each link "
          "works once, for one hour.")
MESSAGES_PER_CONVERSATION = 10


def message_template() -> str:
    """The body with `%s` where the thread id and the message serial go, in that order."""
    body = {
        "event": "ADD_MESSAGE",
        "data": {
            "chatbotId": "bench_bot",
            "threadId": "%s",
            "gptModel": "gpt-4o-mini",
            "sources": ["https://example.com/docs/account/password-reset"],
            "question": f"{QUESTION} (#%s)",
            "answer": ANSWER,
            "messageType": "NORMAL_MESSAGE",
            "agentId": None,
            "iconUrl": None,
            "agentName": None,
            "systemMessageType": None,
        },
    }
    return json.dumps(body)


TEMPLATE = message_template()


def message_body(run: str, serial: int, thread: str | None = None) -> bytes:
    """Message `serial` of run `run`; every tenth message starts a new conversation."""
    thread = thread or f"{run}-{serial // MESSAGES_PER_CONVERSATION}"
    return (TEMPLATE % (thread, f"{run}-{serial}")).encode()
