"""A second reference point: bare Starlette plus a durable SQLite insert with group commit.

No token check, validation, dedup or transcript: what durability alone costs on this machine
(WAL, synchronous=FULL, each request answered after its own batch's fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bench.baseline import serve

Waiting = tuple[bytes, asyncio.Future[None], asyncio.AbstractEventLoop]


class GroupCommit(threading.Thread):
    """One writer thread: whatever is queued is inserted and committed together."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.waiting: queue.SimpleQueue[Waiting] = queue.SimpleQueue()

    async def insert(self, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.waiting.put((body, future, loop))
        await future

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB)")
        while True:
            batch = list(self._batch())
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO bodies (body) VALUES (?)", [(b,) for b, _, _ in batch])
            conn.execute("COMMIT")
            loop = batch[0][2]
            loop.call_soon_threadsafe(_release, [future for _, future, _ in batch])

    def _batch(self) -> Iterator[Waiting]:
        yield self.waiting.get()
        while True:
            try:
                yield self.waiting.get_nowait()
            except queue.Empty:
                return


def _release(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def build_app(path: Path) -> Starlette:
    writer = GroupCommit(path)
    writer.start()

    async def messages(request: Request) -> PlainTextResponse:
        await writer.insert(await request.body())
        return PlainTextResponse("OK")

    return Starlette(routes=[Route("/webhooks/messages", messages, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    serve(build_app(args.db), args.port)


if __name__ == "__main__":
    main()
