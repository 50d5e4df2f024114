"""Conversations in SQLite: each destination's link, transcripts, and echoes of Slack replies."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from bridge.store.console_sql import NEWEST_FIRST
from bridge.store.records import ConversationLink, ConversationRecord, Echo, StoredMessage


def link_state(conn: sqlite3.Connection, chatbot_id: str, thread_id: str,
               destination: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT state FROM conversation_links WHERE chatbot_id = ? AND thread_id = ?"
        " AND destination = ?", (chatbot_id, thread_id, destination)).fetchone()
    return json.loads(row[0]) if row else None


def save_link(conn: sqlite3.Connection, chatbot_id: str, thread_id: str, destination: str,
              state: dict[str, Any], ref: str | None, now: float) -> None:
    conn.execute(
        "INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (chatbot_id, thread_id, now, now))
    conn.execute(
        "INSERT INTO conversation_links (chatbot_id, thread_id, destination, state, ref,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
        " state = excluded.state, ref = excluded.ref, updated_at = excluded.updated_at",
        (chatbot_id, thread_id, destination, json.dumps(state, ensure_ascii=False), ref, now))


def conversation_by_ref(conn: sqlite3.Connection, destination: str,
                        ref: str) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT chatbot_id, thread_id FROM conversation_links WHERE destination = ? AND ref = ?"
        " ORDER BY updated_at DESC LIMIT 1", (destination, ref)).fetchone()
    return (row[0], row[1]) if row else None


def conversations(conn: sqlite3.Connection, where: str, parameters: tuple[Any, ...],
                  limit: int) -> list[ConversationRecord]:
    """Conversations, most recently seen first, each with every destination's link."""
    rows = conn.execute(
        "SELECT chatbot_id, thread_id, escalated_at, first_seen, last_seen FROM conversations"
        f" {where} {NEWEST_FIRST} LIMIT ?", (*parameters, limit)).fetchall()
    links: dict[tuple[str, str], list[ConversationLink]] = {}
    keys = json.dumps([[row["chatbot_id"], row["thread_id"]] for row in rows])
    for link in conn.execute(
            "SELECT l.chatbot_id, l.thread_id, l.destination, l.state, l.ref FROM json_each(?) k"
            " JOIN conversation_links l ON l.chatbot_id = json_extract(k.value, '$[0]')"
            " AND l.thread_id = json_extract(k.value, '$[1]') ORDER BY l.destination", (keys,)):
        links.setdefault((link[0], link[1]), []).append(
            ConversationLink(link[2], json.loads(link[3]), link[4]))
    return [ConversationRecord(**row, links=tuple(links.get((row[0], row[1]), ())))
            for row in rows]


def transcript(conn: sqlite3.Connection, chatbot_id: str, thread_id: str,
               after_id: int) -> list[StoredMessage]:
    rows = conn.execute(
        "SELECT id, chatbot_id, thread_id, message_type, question, answer, agent_name,"
        " received_at FROM messages WHERE chatbot_id = ? AND thread_id = ? AND id > ?"
        " ORDER BY id", (chatbot_id, thread_id, after_id)).fetchall()
    return [StoredMessage(**row) for row in rows]


def remember_echo(conn: sqlite3.Connection, echo: Echo, now: float, expires_at: float) -> None:
    conn.execute("DELETE FROM reply_echoes WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT OR REPLACE INTO reply_echoes (source, chatbot_id, thread_id, text, agent_name,"
        " expires_at, tool) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (echo.source, echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name,
         expires_at, echo.tool))


def consume_echo(conn: sqlite3.Connection, echo: Echo, now: float) -> bool:
    conn.execute("DELETE FROM reply_echoes WHERE expires_at <= ?", (now,))
    row = conn.execute(
        "SELECT source FROM reply_echoes WHERE chatbot_id = ? AND thread_id = ? AND text = ?"
        " AND agent_name = ? AND tool = ? ORDER BY expires_at LIMIT 1",
        (echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name,
         echo.tool)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM reply_echoes WHERE source = ?", (row[0],))
    return True


def listener_cursor(conn: sqlite3.Connection, name: str) -> float | None:
    row = conn.execute("SELECT seen_up_to FROM listener_cursors WHERE name = ?",
                       (name,)).fetchone()
    return float(row[0]) if row else None


def advance_listener_cursor(conn: sqlite3.Connection, name: str, seen_up_to: float) -> None:
    conn.execute(
        "INSERT INTO listener_cursors (name, seen_up_to) VALUES (?, ?) ON CONFLICT (name)"
        " DO UPDATE SET seen_up_to = max(seen_up_to, excluded.seen_up_to)", (name, seen_up_to))
