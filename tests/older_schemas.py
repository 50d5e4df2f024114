"""Undo the newest schema versions in a store, to test that an older store upgrades in place."""

from __future__ import annotations

# What version 10 had where version 11 has reply_echoes (with a tool) and listener_cursors;
# the same SQL on SQLite and PostgreSQL.
BEFORE_ECHOES_PER_TOOL = (
    "DROP TABLE listener_cursors",
    "DROP INDEX reply_echoes_conversation",
    "ALTER TABLE reply_echoes DROP COLUMN tool",
    "ALTER TABLE reply_echoes RENAME TO slack_echoes",
    "CREATE INDEX slack_echoes_conversation ON slack_echoes (chatbot_id, thread_id)",
)
