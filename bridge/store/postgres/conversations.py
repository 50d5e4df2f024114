"""Conversations in PostgreSQL: each destination's link, transcripts, echoes of Slack replies."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from bridge.store.console_sql import NEWEST_FIRST
from bridge.store.records import ConversationLink, ConversationRecord, Echo, StoredMessage

Connection = psycopg.AsyncConnection[Any]


async def link_state(conn: Connection, chatbot_id: str, thread_id: str,
                     destination: str) -> dict[str, Any] | None:
    cursor = await conn.execute(
        "SELECT state FROM conversation_links WHERE chatbot_id = %s AND thread_id = %s"
        " AND destination = %s", (chatbot_id, thread_id, destination))
    row = await cursor.fetchone()
    return dict(row[0]) if row else None


async def save_link(conn: Connection, chatbot_id: str, thread_id: str, destination: str,
                    state: dict[str, Any], ref: str | None, now: float) -> None:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", (chatbot_id, thread_id, now, now))
        await conn.execute(
            "INSERT INTO conversation_links (chatbot_id, thread_id, destination, state, ref,"
            " updated_at) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (chatbot_id, thread_id, destination) DO UPDATE SET"
            " state = excluded.state, ref = excluded.ref, updated_at = excluded.updated_at",
            (chatbot_id, thread_id, destination, Jsonb(state), ref, now))


async def conversation_by_ref(conn: Connection, destination: str,
                              ref: str) -> tuple[str, str] | None:
    cursor = await conn.execute(
        "SELECT chatbot_id, thread_id FROM conversation_links WHERE destination = %s"
        " AND ref = %s ORDER BY updated_at DESC LIMIT 1", (destination, ref))
    row = await cursor.fetchone()
    return (row[0], row[1]) if row else None


async def conversations(conn: Connection, where: str, parameters: tuple[Any, ...],
                        limit: int) -> list[ConversationRecord]:
    """Conversations, most recently seen first, each with every destination's link."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT chatbot_id, thread_id, escalated_at, first_seen, last_seen"
            f" FROM conversations {where} {NEWEST_FIRST} LIMIT %s",
            (*parameters, limit))
        rows = await cursor.fetchall()
    links: dict[tuple[str, str], list[ConversationLink]] = {}
    if rows:
        link_rows = await conn.execute(
            "SELECT l.chatbot_id, l.thread_id, l.destination, l.state, l.ref"
            " FROM conversation_links l JOIN unnest(%s::text[], %s::text[]) AS k(c, t)"
            " ON l.chatbot_id = k.c AND l.thread_id = k.t ORDER BY l.destination",
            ([row["chatbot_id"] for row in rows], [row["thread_id"] for row in rows]))
        for chatbot_id, thread_id, destination, state, ref in await link_rows.fetchall():
            links.setdefault((chatbot_id, thread_id), []).append(
                ConversationLink(destination, dict(state), ref))
    return [ConversationRecord(**row, links=tuple(links.get(
        (row["chatbot_id"], row["thread_id"]), ()))) for row in rows]


async def transcript(conn: Connection, chatbot_id: str, thread_id: str,
                     after_id: int) -> list[StoredMessage]:
    async with conn.cursor(row_factory=class_row(StoredMessage)) as cursor:
        await cursor.execute(
            "SELECT id, chatbot_id, thread_id, message_type, question, answer, agent_name,"
            " received_at FROM messages WHERE chatbot_id = %s AND thread_id = %s AND id > %s"
            " ORDER BY id", (chatbot_id, thread_id, after_id))
        return await cursor.fetchall()


async def remember_echo(conn: Connection, echo: Echo, now: float, expires_at: float) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM reply_echoes WHERE expires_at <= %s", (now,))
        await conn.execute(
            "INSERT INTO reply_echoes (source, chatbot_id, thread_id, text, agent_name,"
            " expires_at, tool) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (source)"
            " DO UPDATE SET chatbot_id = excluded.chatbot_id, thread_id = excluded.thread_id,"
            " text = excluded.text, agent_name = excluded.agent_name,"
            " expires_at = excluded.expires_at, tool = excluded.tool",
            (echo.source, echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name,
             expires_at, echo.tool))


async def consume_echo(conn: Connection, echo: Echo, now: float) -> bool:
    """Whether `echo` was remembered; one replica uses it up, another then finds it gone."""
    async with conn.transaction():
        await conn.execute("DELETE FROM reply_echoes WHERE expires_at <= %s", (now,))
        cursor = await conn.execute(
            "DELETE FROM reply_echoes WHERE source = (SELECT source FROM reply_echoes"
            " WHERE chatbot_id = %s AND thread_id = %s AND text = %s AND agent_name = %s"
            " AND tool = %s ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING source",
            (echo.chatbot_id, echo.thread_id, echo.text.strip(), echo.agent_name, echo.tool))
        return await cursor.fetchone() is not None


async def listener_cursor(conn: Connection, name: str) -> float | None:
    cursor = await conn.execute("SELECT seen_up_to FROM listener_cursors WHERE name = %s",
                                (name,))
    row = await cursor.fetchone()
    return float(row[0]) if row else None


async def advance_listener_cursor(conn: Connection, name: str, seen_up_to: float) -> None:
    await conn.execute(
        "INSERT INTO listener_cursors (name, seen_up_to) VALUES (%s, %s) ON CONFLICT (name)"
        " DO UPDATE SET seen_up_to = GREATEST(listener_cursors.seen_up_to,"
        " excluded.seen_up_to)", (name, seen_up_to))
