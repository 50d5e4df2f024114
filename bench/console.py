"""The console's pages over a store of 100,000 deliveries: each answer's time, per backend."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from starlette.testclient import TestClient

from bridge.app import create_app
from bridge.config import load_settings
from bridge.settings import Settings
from bridge.store import open_store
from tests.console_support import PASSWORD_HASH, console_bridge, csrf_of, log_in
from tests.postgres import created_database
from tests.settings_files import TOKENS, write_toml

CONVERSATIONS = 5_000
RUNS = 20
BODY = '{"event":"ADD_MESSAGE","data":{"chatbotId":"bot","threadId":"t","question":"hello"}}'
# One event and one delivery per row of the series: 5% failed, 5% pending, the rest delivered,
# over three destinations and 5,000 conversations, a second apart.
FILL = {
    "sqlite": ["""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO events (id, kind, ordering_key, dedup_key, body, received_at)
SELECT i, 'ADD_MESSAGE', 'bot/t' || (i % {conversations}), 'k' || i, '{body}', {start} + i FROM n
""", """
INSERT INTO deliveries (id, event_id, destination, ordering_key, status, attempts,
                        next_attempt_at, last_error, created_at, finished_at)
SELECT id, id, CASE id % 3 WHEN 0 THEN 'slack' WHEN 1 THEN 'jira' ELSE 'crm' END, ordering_key,
       CASE id % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'pending' ELSE 'delivered' END,
       1, received_at + 3600, CASE id % 20 WHEN 0 THEN 'slack: HTTP 500 number ' || id END,
       received_at, CASE WHEN id % 20 != 1 THEN received_at + 1 END
FROM events
""", """
INSERT INTO conversations (chatbot_id, thread_id, first_seen, last_seen)
SELECT 'bot', 't' || (id % {conversations}), MIN(received_at), MAX(received_at) FROM events
GROUP BY id % {conversations}
"""],
}
FILL["postgresql"] = [
    FILL["sqlite"][0].replace("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                              " WHERE i < {count})\n", "")
    .replace("FROM n", "FROM generate_series(1, {count}) AS n(i)"),
    FILL["sqlite"][1], FILL["sqlite"][2]]
PAGES = {
    "overview": "/console/",
    "deliveries, newest": "/console/deliveries",
    "deliveries, page 1,000": "/console/deliveries?before=50000",
    "deliveries, failed": "/console/deliveries?status=failed",
    "deliveries, failed to jira, error text": "/console/deliveries?status=failed"
                                              "&destination=jira&error=number+99",
    "deliveries, one conversation": "/console/deliveries?conversation=t42",
    "one delivery": "/console/deliveries/99980",
    "conversations": "/console/conversations",
    "one conversation": "/console/conversations/bot/t42",
}


@dataclass(frozen=True)
class PageTime:
    backend: str
    page: str
    median_ms: float
    max_ms: float


def run_console(deliveries: int = 100_000, postgres: str = "") -> list[PageTime]:
    found = []
    backends = [("sqlite", "")] + ([("postgresql", postgres)] if postgres else [])
    for backend, server in backends:
        with _store_url(backend, server) as url:
            found += _time_pages(backend, url, deliveries)
    return found


@contextmanager
def _store_url(backend: str, server: str) -> Iterator[str]:
    if backend == "postgresql":
        with created_database(server) as url:
            yield url
    else:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bridge.db"


def _time_pages(backend: str, url: str, deliveries: int) -> list[PageTime]:
    settings = _settings(url)
    asyncio.run(_fill(settings, backend, deliveries))
    found = []
    with TestClient(create_app(console_bridge(settings), run_worker=False)) as client:
        log_in(client)
        pages = dict(PAGES)
        token = csrf_of(client.get("/console/").text)
        for name, path in pages.items():
            found.append(_time(client, backend, name, lambda path=path: client.get(path)))
        found.append(_time(client, backend, "bulk retry, its confirmation (count)",
                           lambda: client.post("/console/deliveries/retry",
                                               data={"csrf": token, "status": "failed"})))
    return found


def _time(client: TestClient, backend: str, name: str, request: object) -> PageTime:
    took = []
    for _ in range(RUNS):
        started = time.perf_counter()
        answer = request()  # type: ignore[operator]
        took.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (name, answer.status_code)
    return PageTime(backend, name, statistics.median(took), max(took))


def _settings(url: str) -> Settings:
    folder = Path(tempfile.mkdtemp())
    return load_settings(str(write_toml(folder / "settings.toml", {
        "store": {"url": url},
        "webhooks": {name: {"tokens": [token]} for name, token in TOKENS.items()},
        "console": {"password_hash": PASSWORD_HASH},
    })))


async def _fill(settings: Settings, backend: str, count: int) -> None:
    store = open_store(settings.store.url)
    await store.open()  # made and migrated
    await store.close()
    values = {"count": count, "conversations": CONVERSATIONS, "body": BODY,
              "start": time.time() - count}
    statements = [statement.format(**values) for statement in FILL[backend]]
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(settings.store.sqlite_path) as conn:
            for statement in statements:
                conn.execute(statement)
        return
    with psycopg.connect(settings.store.url) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.execute("ANALYZE")


def print_console(times: list[PageTime], deliveries: int) -> None:
    print(f"\nConsole: each page {RUNS} times, logged in, over {deliveries:,} deliveries "
          f"({CONVERSATIONS:,} conversations); goal: every page < 100 ms")
    print(f"{'backend':<12}{'page':<42}{'median ms':>10}{'max ms':>9}")
    for row in times:
        print(f"{row.backend:<12}{row.page:<42}{row.median_ms:>10.1f}{row.max_ms:>9.1f}")
