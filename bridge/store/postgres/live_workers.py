"""Which workers are alive, for every replica to see: each holds an advisory lock while it lives.

A replica's claims run on one connection of their own, which holds a session advisory lock
per worker of the replica (WORKER_NAMESPACE, hashtext(owner)). The server drops the
connection, and the locks with it, the moment the replica dies, so another replica's claim
finds the lock gone in pg_locks and takes the dead worker's leases at once. A replica that
lost the connection claims nothing until a new one holds its locks again: its claims run
only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from bridge.errors import StoreBusy

Connection = psycopg.AsyncConnection[Any]
log = logging.getLogger("bridge.store")
# The bridge's advisory namespaces: 0x5173 its own keys (migrating, pruning; see migrate.py),
# 0x5174 conversations at accept, 0x5175 serialised work, 0x5176 live workers.
WORKER_NAMESPACE = 0x5176
TAKE = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
# The live workers' keys, as pg_locks shows a two-key advisory lock (objsubid 2), in this
# database: a claim may take at once the leases of a worker that is not among them.
LIVE = f"""live AS (
    SELECT objid FROM pg_locks
    WHERE locktype = 'advisory' AND classid = {WORKER_NAMESPACE} AND objsubid = 2 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)"""
# A lease token says its worker held its lock when it claimed; leases of a bridge without
# these locks (an older version, during a rolling upgrade) are left to run out.
LIVE_TOKEN = "live:"
GONE = (f"d.lease_token LIKE '{LIVE_TOKEN}%%' AND NOT EXISTS ("
        "SELECT 1 FROM live WHERE live.objid = hashtext(d.lease_owner)::oid)")


class LiveWorkers:
    """The connection that holds this replica's workers' locks, and on which they claim."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Connection | None = None
        self._owners: set[str] = set()
        self._using = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def connection(self, owner: str) -> AsyncIterator[Connection]:
        """The connection holding `owner`'s lock, for one claim at a time."""
        async with self._using:
            conn = await self._holding(owner)
            try:
                yield conn
            except BaseException:
                await _settle(conn)
                raise

    async def _holding(self, owner: str) -> Connection:
        if self._conn is None or self._conn.closed:
            if self._conn is not None:
                log.warning("store: the connection holding this replica's worker locks was"
                            " lost; claiming again once a new one holds them")
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            self._owners = set()
        if owner not in self._owners:
            cursor = await self._conn.execute(TAKE, (WORKER_NAMESPACE, owner))
            row = await cursor.fetchone()
            if not (row and row[0]):
                raise StoreBusy(f"the lock of worker {owner} is still held by its previous "
                                "connection: it claims again once the server lets that go")
            self._owners.add(owner)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def _settle(conn: Connection) -> None:
    """After a failed claim: ready for the next one, or closed (and then made again)."""
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:  # a claim cut short by its timeout: its transaction, or the query itself, still open
        await conn.rollback()
    except psycopg.Error:
        await conn.close()  # its locks go with it: this replica's leases may be taken over
