"""A store as the first release left it: its schema and a few rows of every kind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.events import ESCALATION, MESSAGE, canonical_json, dedup_key

FIRST_RELEASE = Path(__file__).parent / "fixtures" / "first_release_schema.sql"
NOW = 1_700_000_000.0
THREAD_TS = "1699990000.000100"
BOT = "chatbot_123"


def message_body(thread: str, text: str) -> str:
    return canonical_json({"event": MESSAGE, "data": {
        "chatbotId": BOT, "threadId": thread, "messageType": "USER_MESSAGE", "question": text}})


ESCALATION_BODY = canonical_json({"event": ESCALATION, "data": {
    "chatbotId": BOT, "threadId": "thread_A", "user": {"name": "Ada"}}})
ROWS = {
    "events": [
        (1, MESSAGE, f"{BOT}/thread_A", dedup_key(message_body("thread_A", "first")),
         message_body("thread_A", "first"), NOW - 600),
        (2, MESSAGE, f"{BOT}/thread_A", dedup_key(message_body("thread_A", "still there?")),
         message_body("thread_A", "still there?"), NOW - 60),
        (3, ESCALATION, f"{BOT}/thread_A", dedup_key(ESCALATION_BODY), ESCALATION_BODY, NOW - 50),
        (4, MESSAGE, f"{BOT}/thread_B", dedup_key(message_body("thread_B", "hi")),
         message_body("thread_B", "hi"), NOW - 40),
    ],
    # id, event, destination, key, status, attempts, next, lease owner, lease until, error,
    # created, finished. The first release kept a note in last_error.
    "deliveries": [
        (1, 1, "slack", f"{BOT}/thread_A", "delivered", 1, NOW - 600, None, None,
         f"C_CONV/{THREAD_TS}", NOW - 600, NOW - 599),
        # In flight when that bridge was killed: its lease would have held for 120 s.
        (2, 2, "slack", f"{BOT}/thread_A", "pending", 1, NOW - 60, "worker-0ld", NOW + 60,
         None, NOW - 60, None),
        (3, 3, "slack", f"{BOT}/thread_A", "pending", 0, NOW - 50, None, None, None, NOW - 50,
         None),
        (4, 3, "jira", f"{BOT}/thread_A", "delivered", 1, NOW - 50, None, None, "SUP-7",
         NOW - 50, NOW - 49),
        (5, 4, "crm", f"{BOT}/thread_B", "failed", 3, NOW - 40, None, None,
         "gave up after 3 attempts: crm: HTTP 500", NOW - 40, NOW - 30),
    ],
    "dedup": [(row[3], row[0], NOW + 3600) for row in [
        (1, MESSAGE, "", dedup_key(message_body("thread_A", "first"))),
        (2, MESSAGE, "", dedup_key(message_body("thread_A", "still there?"))),
        (3, ESCALATION, "", dedup_key(ESCALATION_BODY)),
        (4, MESSAGE, "", dedup_key(message_body("thread_B", "hi")))]],
    "conversations": [
        (BOT, "thread_A", "C_CONV", THREAD_TS, "SUP-7", 1, NOW - 49, NOW - 600, NOW - 50),
        (BOT, "thread_B", None, None, None, None, None, NOW - 40, NOW - 40),
    ],
    "messages": [
        (1, 1, BOT, "thread_A", "USER_MESSAGE", "first", None, None, NOW - 600),
        (2, 2, BOT, "thread_A", "USER_MESSAGE", "still there?", None, None, NOW - 60),
        (3, 4, BOT, "thread_B", "USER_MESSAGE", "hi", None, None, NOW - 40),
    ],
    "slack_echoes": [("Ev1", BOT, "thread_A", "On it", "Ana", NOW + 3600)],
}


def first_release_store(path: Path) -> Path:
    """A store as the first release left it, built from its own DDL (a copy kept in fixtures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA page_size=2048")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(FIRST_RELEASE.read_text(encoding="utf-8"))
        with conn:
            for table, rows in ROWS.items():
                marks = ", ".join("?" * len(rows[0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    finally:
        conn.close()
    return path
