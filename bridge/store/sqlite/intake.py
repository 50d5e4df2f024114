"""Accepting events into SQLite: dedup by the database, one INSERT per table for a whole group."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.store.records import Accept, Acceptance, NewEvent

MAX_VARIABLES = 999  # SQLite's smallest limit on ? per statement (older builds)


def accept_all(conn: sqlite3.Connection, accepts: list[Accept]) -> list[Acceptance]:
    """Store each event unless the same body was accepted within its window, here or before."""
    seen = _remembered(conn, [accept.event.dedup_key for accept in accepts])
    rows = NewRows(next_event_id(conn))
    remember: list[tuple[str, int, float]] = []
    outcomes: list[Acceptance] = []
    for accept in accepts:
        key = accept.event.dedup_key
        known = seen.get(key)
        if known and known[1] > accept.now:
            outcomes.append(Acceptance("duplicate", known[0]))
            continue
        event_id = rows.add(accept.event, accept.now)
        seen[key] = (event_id, accept.now + accept.window)
        remember.append((key, event_id, accept.now + accept.window))
        outcomes.append(Acceptance("accepted", event_id))
    rows.write(conn)
    insert_rows(  # an expired entry for the same body is replaced
        conn, "INSERT INTO dedup (dedup_key, event_id, expires_at)", remember,
        " ON CONFLICT DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at")
    return outcomes


def _remembered(conn: sqlite3.Connection, keys: list[str]) -> dict[str, tuple[int, float]]:
    """Dedup entries for these keys: event id and expiry. One lookup for the whole group."""
    rows = conn.execute(
        "SELECT d.dedup_key, d.event_id, d.expires_at FROM json_each(?) AS k"
        " CROSS JOIN dedup AS d ON d.dedup_key = k.value", (json.dumps(keys),))
    return {key: (event_id, expires_at) for key, event_id, expires_at in rows}


def next_event_id(conn: sqlite3.Connection) -> int:
    """The id AUTOINCREMENT would give the next event: never one a pruned event had.

    Ids are chosen here rather than by each INSERT so that a group is one INSERT per table;
    the write lock (BEGIN IMMEDIATE) makes this as safe as SQLite's own choice, and an explicit
    id still moves sqlite_sequence on.
    """
    return int(conn.execute(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
        " COALESCE((SELECT MAX(id) FROM events), 0)) + 1").fetchone()[0])


@dataclass
class NewRows:
    """The rows a group of new events adds, written with one INSERT per table."""

    next_id: int
    events: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    conversations: dict[tuple[str, str], tuple[float, float, float | None]] = field(
        default_factory=dict)
    messages: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, event: NewEvent, now: float) -> int:
        event_id, self.next_id = self.next_id, self.next_id + 1
        self.events.append(
            (event_id, event.kind, event.ordering_key, event.dedup_key, event.body, now))
        self.deliveries += [(event_id, name, event.ordering_key, now, now)
                            for name in event.destinations]
        if event.conversation:
            first_seen, _, escalated = self.conversations.get(event.conversation, (now, now, None))
            self.conversations[event.conversation] = (
                first_seen, now, now if event.escalation else escalated)
        if message := event.message:
            self.messages.append((event_id, message.chatbot_id, message.thread_id,
                                  message.message_type, message.question, message.answer,
                                  message.agent_name, now))
        return event_id

    def write(self, conn: sqlite3.Connection) -> None:
        insert_rows(conn, "INSERT INTO events (id, kind, ordering_key, dedup_key, body,"
                    " received_at)", self.events)
        insert_rows(conn, "INSERT INTO deliveries (event_id, destination, ordering_key,"
                    " next_attempt_at, created_at)", self.deliveries)
        insert_rows(conn, "INSERT INTO conversations (chatbot_id, thread_id, first_seen,"
                    " last_seen, escalated_at)",
                    [(*conversation, *seen) for conversation, seen in self.conversations.items()],
                    " ON CONFLICT DO UPDATE SET last_seen = excluded.last_seen,"
                    " escalated_at = COALESCE(excluded.escalated_at, escalated_at)")
        insert_rows(conn, "INSERT INTO messages (event_id, chatbot_id, thread_id, message_type,"
                    " question, answer, agent_name, received_at)", self.messages)


def insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]],
                upsert: str = "") -> None:
    """`insert` VALUES (...), (...), ...: many rows in one statement.

    Unlike executemany, which steps once per row and gives up the GIL at each step, this
    steps once per statement: the writer thread then waits for the event loop to hand the
    GIL back a few times per batch, not a few times per event (bench/).
    """
    if not rows:
        return
    width = len(rows[0])
    per_statement = MAX_VARIABLES // width
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
        conn.execute(f"{insert} VALUES {values}{upsert}",
                     [value for row in chunk for value in row])


def insert_event(conn: sqlite3.Connection, event: NewEvent, now: float) -> int:
    rows = NewRows(next_event_id(conn))
    event_id = rows.add(event, now)
    rows.write(conn)
    return event_id
