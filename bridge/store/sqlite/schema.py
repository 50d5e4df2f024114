"""The SQLite schema as numbered migrations, and the connection every part of the backend uses."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bridge.clock import Clock, SystemClock
from bridge.store.migrations import SCHEMA_VERSION, VERSIONS, Migration, steps_from
from bridge.store.sqlite import settings_in_use

log = logging.getLogger("bridge.store")
STATEMENT_CACHE = 1024
PAGE_SIZE = 2048
BUSY_TIMEOUT_MS = 2000

# Version 1: the schema of the first release, exactly as it created it.
FIRST_RELEASE = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup (
    dedup_key TEXT PRIMARY KEY,
    event_id INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries(destination, ordering_key, status, id);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(id) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS conversations (
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    slack_channel TEXT,
    slack_thread_ts TEXT,
    jira_key TEXT,
    jira_transcript_upto INTEGER,
    escalated_at REAL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (chatbot_id, thread_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    message_type TEXT,
    question TEXT,
    answer TEXT,
    agent_name TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conversation ON messages(chatbot_id, thread_id, id);
CREATE INDEX IF NOT EXISTS conversations_slack_thread
    ON conversations(slack_channel, slack_thread_ts);
CREATE TABLE IF NOT EXISTS slack_echoes (
    source TEXT PRIMARY KEY,
    chatbot_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    text TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS slack_echoes_conversation ON slack_echoes(chatbot_id, thread_id);
"""


def _first_release(conn: sqlite3.Connection) -> None:
    _script(conn, FIRST_RELEASE)


def _links(conn: sqlite3.Connection) -> None:
    """Each destination's state in one generic table; the Slack and Jira columns move into it."""
    _script(conn, """
    CREATE TABLE conversation_links (
        chatbot_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        ref TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (chatbot_id, thread_id, destination)
    );
    CREATE INDEX conversation_links_ref ON conversation_links(destination, ref)
        WHERE ref IS NOT NULL;
    """)
    rows = conn.execute(
        "SELECT chatbot_id, thread_id, slack_channel, slack_thread_ts, jira_key,"
        " jira_transcript_upto, escalated_at, last_seen FROM conversations"
        " WHERE slack_thread_ts IS NOT NULL OR jira_key IS NOT NULL").fetchall()
    links = [link for row in rows for link in _first_release_links(row)]
    conn.executemany(
        "INSERT INTO conversation_links (chatbot_id, thread_id, destination, state, ref,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?)", links)
    _script(conn, """
    DROP INDEX conversations_slack_thread;
    ALTER TABLE conversations DROP COLUMN slack_channel;
    ALTER TABLE conversations DROP COLUMN slack_thread_ts;
    ALTER TABLE conversations DROP COLUMN jira_key;
    ALTER TABLE conversations DROP COLUMN jira_transcript_upto;
    """)


def _first_release_links(row: sqlite3.Row) -> list[tuple[Any, ...]]:
    chatbot_id, thread_id, channel, thread_ts, key, upto, escalated_at, seen = row
    links: list[tuple[Any, ...]] = []
    if channel and thread_ts:
        slack: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts}
        if escalated_at is not None:
            slack["escalated_at"] = escalated_at
        if key:  # the parent showed it; its url comes from [jira] url, as it did
            slack["ticket"] = {"key": key}
        links.append((chatbot_id, thread_id, "slack", json.dumps(slack),
                      f"{channel}/{thread_ts}", seen))
    if key:
        jira = {"key": key, "transcript_upto": upto or 0}
        links.append((chatbot_id, thread_id, "jira", json.dumps(jira), key, seen))
    return links


def _autoincrement(conn: sqlite3.Connection) -> None:
    """Events, deliveries and messages get ids SQLite never hands out twice, even after pruning.

    SQLite cannot add AUTOINCREMENT to a table: each is rebuilt and its rows copied, ids kept.
    """
    _script(conn, """
    CREATE TABLE events_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE TABLE deliveries_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        destination TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE messages_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id INTEGER NOT NULL,
        chatbot_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        message_type TEXT,
        question TEXT,
        answer TEXT,
        agent_name TEXT,
        received_at REAL NOT NULL
    );
    INSERT INTO events_new SELECT * FROM events;
    INSERT INTO deliveries_new SELECT * FROM deliveries;
    INSERT INTO messages_new SELECT * FROM messages;
    DROP TABLE deliveries;
    DROP TABLE messages;
    DROP TABLE events;
    ALTER TABLE events_new RENAME TO events;
    ALTER TABLE deliveries_new RENAME TO deliveries;
    ALTER TABLE messages_new RENAME TO messages;
    CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
    CREATE INDEX deliveries_order ON deliveries(destination, ordering_key, status, id);
    CREATE INDEX deliveries_event ON deliveries(event_id);
    CREATE INDEX deliveries_pending ON deliveries(id) WHERE status = 'pending';
    CREATE INDEX messages_conversation ON messages(chatbot_id, thread_id, id);
    """)


def _attempts(conn: sqlite3.Connection) -> None:
    """Each attempt's outcome in its own row; a finished delivery's note apart from its error."""
    _script(conn, """
    ALTER TABLE deliveries ADD COLUMN note TEXT;
    UPDATE deliveries SET note = last_error, last_error = NULL
        WHERE status IN ('delivered', 'skipped');
    CREATE TABLE delivery_attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        worker TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX delivery_attempts_delivery ON delivery_attempts(delivery_id, id);
    INSERT INTO delivery_attempts (delivery_id, attempt, outcome, error, worker, at)
        SELECT id, attempts, CASE status WHEN 'failed' THEN 'failed' ELSE 'retry' END,
               last_error, 'first release', COALESCE(finished_at, created_at)
        FROM deliveries WHERE last_error IS NOT NULL;
    """)


def _lease_tokens(conn: sqlite3.Connection) -> None:
    """Leases carry a token; a first-release lease cannot be renewed, so it is given up now."""
    _script(conn, """
    ALTER TABLE deliveries ADD COLUMN lease_token TEXT;
    UPDATE deliveries SET lease_owner = NULL, lease_until = NULL
        WHERE lease_owner IS NOT NULL;
    """)


def _readiness_probe(conn: sqlite3.Connection) -> None:
    _script(conn, """
    CREATE TABLE readiness_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        checked_at REAL NOT NULL,
        payload BLOB
    );
    INSERT INTO readiness_probe (id, checked_at) VALUES (1, 0);
    """)


def _retry_kinds(conn: sqlite3.Connection) -> None:
    """Why a delivery waits for its retry, so those waiting for a destination to answer again
    can be brought forward when it does; deliveries waiting from before say nothing."""
    conn.execute("ALTER TABLE deliveries ADD COLUMN retry_kind TEXT")


def _settings_in_use(conn: sqlite3.Connection) -> None:
    """Which settings each running process uses, so the commands can tell a stale file."""
    settings_in_use.create_table(conn)


def _console_keys_and_pauses(conn: sqlite3.Connection) -> None:
    """The console's signing key, kept so that sessions outlive a restart; the destinations
    an operator paused, whose deliveries wait until resumed; and an index for the console's
    overview (each destination's failures and last outcomes), a seek at any size."""
    _script(conn, """
    CREATE TABLE console_keys (
        name TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE paused_destinations (
        destination TEXT PRIMARY KEY,
        paused_at REAL NOT NULL
    );
    CREATE INDEX deliveries_finished ON deliveries (destination, status, finished_at);
    """)


def _recent_conversations(conn: sqlite3.Connection) -> None:
    """The console pages through conversations newest first: a seek at any size."""
    _script(conn, "CREATE INDEX conversations_recent ON conversations"
                  " (last_seen, chatbot_id, thread_id)")


def _echoes_per_tool_and_cursors(conn: sqlite3.Connection) -> None:
    """A second chat tool: each echo says which tool its reply came from (every one stored so
    far came from Slack), and a listener (Mattermost's WebSocket) keeps how far it has read."""
    _script(conn, ECHOES_PER_TOOL_AND_CURSORS)


ECHOES_PER_TOOL_AND_CURSORS = """
ALTER TABLE slack_echoes RENAME TO reply_echoes;
ALTER TABLE reply_echoes ADD COLUMN tool TEXT NOT NULL DEFAULT 'slack';
DROP INDEX IF EXISTS slack_echoes_conversation;
CREATE INDEX reply_echoes_conversation ON reply_echoes (chatbot_id, thread_id, tool);
CREATE TABLE listener_cursors (
    name TEXT PRIMARY KEY,
    seen_up_to REAL NOT NULL
)
"""


MIGRATIONS: list[Migration[sqlite3.Connection]] = [
    Migration(1, _first_release),
    Migration(2, _links),
    Migration(3, _autoincrement),
    Migration(4, _attempts),
    Migration(5, _lease_tokens),
    Migration(6, _readiness_probe),
    Migration(7, _retry_kinds),
    Migration(8, _settings_in_use),
    Migration(9, _console_keys_and_pauses),
    Migration(10, _recent_conversations),
    Migration(11, _echoes_per_tool_and_cursors),
]


def _script(conn: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT first: each statement runs inside the migrating transaction.
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def connect(path: Path, synchronous: str, clock: Clock | None = None,
            upgrade: bool = True) -> sqlite3.Connection:
    """A connection to the store at `path`, migrated to SCHEMA_VERSION first if it is older.

    Without `upgrade`, an older store is refused instead (StoreNeedsUpgrade).
    """
    # Batches of every size have their own INSERT text (insert_rows): keep them all prepared.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=STATEMENT_CACHE)
    try:
        # Only a new, empty database takes this. Each stored event lands on a few pages picked
        # by hash or conversation (dedup key, per-conversation indexes) and every page touched
        # is written whole to the WAL at commit: with 2 KiB pages a burst writes ~40% less per
        # event than with the default 4 KiB, for ~20% less writer CPU (bench/, 50k events).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        migrate(conn, path, clock or SystemClock(), upgrade)
        conn.execute("PRAGMA foreign_keys=ON")  # off while migrating: tables are rebuilt
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection, path: Path, clock: Clock, upgrade: bool = True) -> None:
    """Bring the store to SCHEMA_VERSION in one transaction; a newer store is refused."""
    if schema_version(conn) == SCHEMA_VERSION:  # the usual case: no write lock taken
        return
    started = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")  # two processes starting at once: the second waits here
    try:
        found = schema_version(conn)
        steps = steps_from(found, MIGRATIONS, str(path), upgrade)
        _record(conn, range(1, found + 1) if steps else (), clock.now())
        for step in steps:
            step.apply(conn)
            _record(conn, [step.version], clock.now())
        _require_consistent(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if steps and found:
        log.info("store at %s migrated from schema version %d to %d in %.2f s", path, found,
                 SCHEMA_VERSION, time.monotonic() - started,
                 extra={"outcome": "migrated", "from_version": found, "to_version": SCHEMA_VERSION})
    elif steps:
        log.info("store at %s created at schema version %d", path, SCHEMA_VERSION)


def schema_version(conn: sqlite3.Connection) -> int:
    """The recorded version; a first-release store recorded none, but has its tables."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_migrations" not in tables:
        return 1 if "events" in tables else 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
               .fetchone()[0])


def _record(conn: sqlite3.Connection, versions: Iterable[int], now: float) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                 " name TEXT NOT NULL, applied_at REAL NOT NULL)")
    conn.executemany("INSERT OR IGNORE INTO schema_migrations VALUES (?, ?, ?)",
                     [(version, VERSIONS[version], now) for version in versions])


def _require_consistent(conn: sqlite3.Connection) -> None:
    problems = conn.execute("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise sqlite3.IntegrityError(f"the migrated store has dangling rows: {problems[:3]}")
