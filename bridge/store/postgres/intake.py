"""Accepting events into PostgreSQL: one statement per event, safe with replicas at once."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import psycopg

from bridge.store.postgres.wakeup import CHANNEL
from bridge.store.records import Accept, Acceptance, NewEvent

Connection = psycopg.AsyncConnection[Any]
CONVERSATION_NAMESPACE = 0x5174  # advisory locks keyed by lock_key(ordering key)

# One statement, one round trip, one transaction. The conversation's advisory lock is taken
# before the event gets its id, so ids follow commit order within a conversation: a claim that
# sees a conversation's newer event sees every older one too. The dedup row is claimed by
# INSERT ... ON CONFLICT: a concurrent copy of the body on another replica waits on the key,
# then finds it taken and is a duplicate. NOTIFY wakes every replica's worker at commit.
ACCEPT = f"""
WITH serial AS (
    SELECT pg_advisory_xact_lock(%(namespace)s, %(lock_key)s) AS locked
), claim AS (
    INSERT INTO dedup AS d (dedup_key, event_id, expires_at)
    SELECT %(dedup_key)s, nextval(pg_get_serial_sequence('events', 'id')), %(expires_at)s
    FROM serial
    ON CONFLICT (dedup_key) DO UPDATE
        SET event_id = excluded.event_id, expires_at = excluded.expires_at
        WHERE d.expires_at <= %(now)s
    RETURNING event_id
), event AS (
    INSERT INTO events (id, kind, ordering_key, dedup_key, body, received_at)
    SELECT event_id, %(kind)s, %(ordering_key)s, %(dedup_key)s, %(body)s, %(now)s FROM claim
    RETURNING id
), delivery AS (
    INSERT INTO deliveries (event_id, destination, ordering_key, next_attempt_at, created_at)
    SELECT event.id, name, %(ordering_key)s, %(now)s, %(now)s
    FROM event, unnest(%(destinations)s::text[]) WITH ORDINALITY AS d(name, n)
    ORDER BY n
), conversation AS (
    INSERT INTO conversations AS c (chatbot_id, thread_id, first_seen, last_seen, escalated_at)
    SELECT %(chatbot_id)s::text, %(thread_id)s::text, %(now)s, %(now)s,
           CASE WHEN %(escalation)s THEN %(now)s END
    FROM event WHERE %(chatbot_id)s::text IS NOT NULL
    ON CONFLICT (chatbot_id, thread_id) DO UPDATE SET last_seen = excluded.last_seen,
        escalated_at = COALESCE(excluded.escalated_at, c.escalated_at)
), message AS (
    INSERT INTO messages (event_id, chatbot_id, thread_id, message_type, question, answer,
                          agent_name, received_at)
    SELECT event.id, %(m_chatbot_id)s::text, %(m_thread_id)s::text, %(m_type)s::text,
           %(m_question)s::text, %(m_answer)s::text, %(m_agent)s::text, %(now)s
    FROM event WHERE %(m_chatbot_id)s::text IS NOT NULL
)
SELECT id, pg_notify('{CHANNEL}', '') FROM event
"""


def lock_key(name: str) -> int:
    """An advisory lock's key for `name` (a signed 32-bit number), the same in every replica."""
    return zlib.crc32(name.encode()) - 2**31


def accept_parameters(event: NewEvent, now: float, window: float) -> dict[str, Any]:
    message = event.message
    chatbot_id, thread_id = event.conversation or (None, None)
    return {
        "namespace": CONVERSATION_NAMESPACE, "lock_key": lock_key(event.ordering_key),
        "ordering_key": event.ordering_key,
        "dedup_key": event.dedup_key, "expires_at": now + window, "now": now,
        "kind": event.kind, "body": event.body, "destinations": list(event.destinations),
        "chatbot_id": chatbot_id, "thread_id": thread_id, "escalation": event.escalation,
        "m_chatbot_id": message.chatbot_id if message else None,
        "m_thread_id": message.thread_id if message else None,
        "m_type": message.message_type if message else None,
        "m_question": message.question if message else None,
        "m_answer": message.answer if message else None,
        "m_agent": message.agent_name if message else None,
    }


async def accept(conn: Connection, event: NewEvent, now: float, window: float) -> Acceptance:
    cursor = await conn.execute(ACCEPT, accept_parameters(event, now, window))
    if row := await cursor.fetchone():
        return Acceptance("accepted", int(row[0]))
    cursor = await conn.execute("SELECT event_id FROM dedup WHERE dedup_key = %s",
                                (event.dedup_key,))
    known = await cursor.fetchone()
    return Acceptance("duplicate", int(known[0]) if known else 0)


async def accept_group(conn: Connection, accepts: Sequence[Accept]) -> list[Acceptance]:
    """Store a group in one transaction: one commit, one flush, for every event in it.

    The conversations' locks are taken in ascending order, so that groups committing at once
    on other connections or replicas never wait on each other in a cycle; the sort is stable,
    so one conversation's events keep their order of arrival.
    """
    order = sorted(range(len(accepts)), key=lambda n: lock_key(accepts[n].event.ordering_key))
    outcomes: dict[int, Acceptance] = {}
    async with conn.transaction():
        for n in order:
            outcomes[n] = await accept(conn, accepts[n].event, accepts[n].now, accepts[n].window)
    return [outcomes[n] for n in range(len(accepts))]
