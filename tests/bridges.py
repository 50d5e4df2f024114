"""A bridge built for a test: explicit destinations, an injected clock, a look into its store."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bridge.app import Bridge
from bridge.clock import Clock, SystemClock
from bridge.destinations.base import Delivered, Delivery, Destination, Outcome
from bridge.settings import Settings
from bridge.store import open_store
from bridge.templating import Templates
from bridge.worker import Worker

TABLES = ("events", "dedup", "deliveries", "conversations", "messages")
# A value for every secret setting while every destination stays off, so `check` calls nothing.
SECRETS: dict[str, Any] = {
    "webhooks": {"messages": {"tokens": ["sec-token-1", "sec-token-2"]}},
    "server": {"metrics_token": "sec-metrics"},
    "slack": {"signing_secret": "sec-slack-signing"},
    "jira": {"api_token": "sec-jira", "personal_access_token": "sec-jira-pat"},
    "crm": {"kind": "none", "hubspot": {"access_token": "sec-hubspot"},
            "webhook": {"url": "https://hooks.example.com/hooks/catch/12/sec-crm-path?k=sec-crm-query",
                        "signing_secret": "sec-crm-signing",
                        "headers": {"Authorization": "sec-crm-header"}}},
    "sitegpt": {"api_key": "sec-sitegpt"},
    "chatbots": [{"id": "bot", "sitegpt_api_key": "sec-chatbot"}],
}
SECRET_VALUES = ["sec-token-1", "sec-token-2", "sec-metrics", "sec-slack-signing", "sec-jira",
                 "sec-jira-pat", "sec-hubspot", "sec-crm-signing", "sec-crm-header", "sec-sitegpt",
                 "sec-chatbot", "sec-crm-path", "sec-crm-query"]


@dataclass
class FakeDestination:
    """A destination that takes the given event kinds and delivers nothing anywhere."""

    kinds: frozenset[str]
    name: ClassVar[str] = "fake"
    delivered: list[int] = field(default_factory=list)

    def accepts(self, kind: str) -> bool:
        return kind in self.kinds

    async def deliver(self, delivery: Delivery) -> Outcome:
        self.delivered.append(delivery.claimed.id)
        return Delivered()

    async def verify(self) -> str:
        return "fake"

    async def aclose(self) -> None:
        return None

    def render_samples(self, samples: Any) -> None:
        return None  # it cannot show what it would send


def fake(*kinds: str) -> FakeDestination:
    return FakeDestination(frozenset(kinds))


def build_bridge(settings: Settings, destinations: Mapping[str, Destination] | None = None,
                 clock: Clock | None = None) -> Bridge:
    """A Bridge whose destinations are exactly `destinations` (none by default), not REGISTRY's."""
    clock = clock or SystemClock()
    store = open_store(settings.store.url, settings.store.synchronous,
                       settings.store.commit_timeout_seconds,
                       pool_size=settings.store.pool_size)
    chosen = dict(destinations or {})
    worker = Worker(store, chosen, settings.delivery, clock)
    return Bridge(settings, store, Templates(settings.templates.dir), chosen, clock, worker)


def query(db: Path, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    """Read the store's file through a connection of our own, as another process would."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def counts(db: Path) -> dict[str, int]:
    """Rows in every table that accepting a webhook writes to."""
    return {table: query(db, f"SELECT COUNT(*) FROM {table}")[0][0] for table in TABLES}


@dataclass
class WriteLock:
    """Holds SQLite's write lock from another connection, as a stuck process or backup would."""

    db: Path
    conn: sqlite3.Connection | None = None

    def __enter__(self) -> WriteLock:
        self.conn = sqlite3.connect(self.db, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


def readme_example() -> tuple[dict[str, Any], str]:
    """The body and token of the README's curl command (SiteGPT's own test message)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    body = re.search(r"-d '(.+?)'", readme, re.DOTALL)
    token = re.search(r"X-WEBHOOK-TOKEN: ([^\"\s]+)", readme)
    assert body and token, "README.md no longer shows the curl example"
    return json.loads(body[1]), token[1]
