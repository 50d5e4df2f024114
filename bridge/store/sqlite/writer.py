"""The one thread that owns the SQLite connection and commits queued writes in batches.

Every write runs on this thread, which batches whatever is waiting into one transaction
(group commit): each caller still waits for its own commit, but concurrent webhooks share one
fsync. A failing write rolls back to its own savepoint and fails only its caller. When the
disk itself fails (full, read-only, gone), the batch fails and the connection is reopened
before the next one, so the store recovers by itself once the disk does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from bridge.errors import StoreBusy, StoreError
from bridge.store.records import Accept
from bridge.store.sqlite.intake import accept_all
from bridge.store.url import SETTING

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], T]
Opener = Callable[[], sqlite3.Connection]
MAX_BATCH = 512
# SQLite's primary result codes for a disk or file that failed, as opposed to a busy lock or
# one caller's bad write: READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
STORAGE_FAILURES = frozenset({8, 10, 11, 13, 14, 26})
log = logging.getLogger("bridge.store")


@dataclass(eq=False)
class Job:
    """One write and who waits for it: an asyncio future on its own event loop."""

    work: Write[Any] | Accept
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


Outcome = tuple[Job, bool, Any]  # the job, whether it succeeded, its value or its exception


def storage_failure(exc: BaseException) -> bool:
    """Whether `exc` says the disk or the file failed, so the connection should be reopened."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in STORAGE_FAILURES


class Writer(threading.Thread):
    """Commits every write of the store, in batches, on one connection it reopens if it must."""

    def __init__(self, open_connection: Opener, where: str) -> None:
        super().__init__(name="store-writer", daemon=True)
        self._open = open_connection
        self._where = where
        self._queue: queue.Queue[list[Job] | None] = queue.Queue()
        self._gathering: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        super().start()
        self._ready.wait()
        if isinstance(self._error, StoreError):
            raise self._error
        if self._error is not None:
            raise StoreError(f"cannot open the store at {self._where}: {self._error}; "
                             f"check {SETTING}")

    def enqueue(self, job: Job) -> None:
        """Queue a job from its own event loop.

        Jobs queued during one turn of the loop go to the writer together at the next turn:
        one wake-up of the writer thread per turn, not one per webhook, each of which would
        also make it fight the loop for the GIL.
        """
        if not self.is_alive():
            job.future.set_exception(StoreError("the store is closed"))
            return
        gathering = self._gathering.get(job.loop)
        if gathering is None:
            gathering = self._gathering[job.loop] = []
            job.loop.call_soon(self._hand_over, job.loop)
        gathering.append(job)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.put(self._gathering.pop(loop))

    def stop(self) -> None:
        if self.is_alive():
            self._queue.put(None)
            self.join()

    def run(self) -> None:
        try:
            self._conn = self._open()
        except (sqlite3.Error, OSError, StoreError) as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (batch := self._next_batch()) is not None:
                _settle(self._commit(batch))
        finally:
            if self._conn is not None:
                self._conn.close()
            self._refuse_the_rest()

    def _commit(self, jobs: list[Job]) -> list[Outcome]:
        conn = self._connection()
        if isinstance(conn, StoreError):
            return [(job, False, conn) for job in jobs]
        try:
            committed, outcomes = _commit_batch(conn, jobs)
        except Exception as exc:  # a bug here must fail this batch, not end the thread
            log.exception("store writer: unexpected error")
            _roll_back(conn)
            return [(job, False, StoreError(f"unexpected store error: {exc}")) for job in jobs]
        if not committed and any(storage_failure(value.__cause__) for _, _, value in outcomes):
            self._drop_connection()
        return outcomes

    def _connection(self) -> sqlite3.Connection | StoreError:
        """The open connection, reopened after a storage failure; or why it cannot be."""
        if self._conn is None:
            try:
                self._conn = self._open()
            except (sqlite3.Error, OSError, StoreError) as exc:
                return StoreBusy(f"cannot reopen the store at {self._where}: {exc}")
            log.info("store at %s reopened", self._where)
        return self._conn

    def _drop_connection(self) -> None:
        assert self._conn is not None
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = None

    def _next_batch(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = first
        while len(batch) < MAX_BATCH:
            try:
                jobs = self._queue.get_nowait()
            except queue.Empty:
                break
            if jobs is None:
                self._queue.put(None)
                break
            batch += jobs
        return batch

    def _refuse_the_rest(self) -> None:
        refused: list[Outcome] = []
        with contextlib.suppress(queue.Empty):
            while True:
                jobs = self._queue.get_nowait()
                refused += [(job, False, StoreError("the store is closed")) for job in jobs or []]
        _settle(refused)


def _commit_batch(conn: sqlite3.Connection, jobs: list[Job]) -> tuple[bool, list[Outcome]]:
    """Run every job in one transaction; if the transaction itself fails, every job fails."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        outcomes = [outcome for group in _groups(jobs) for outcome in _run_group(conn, group)]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _roll_back(conn)
        failed = StoreBusy(f"commit failed: {exc}")
        failed.__cause__ = exc
        return False, [(job, False, failed) for job in jobs]
    return True, outcomes


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _settle(outcomes: list[Outcome]) -> None:
    """Hand each outcome to its caller: one wake-up per event loop and batch, not per caller.

    A write whose caller stopped waiting (deadline, shutdown) was still done, whole: an accept
    told "busy" is then a duplicate of itself on retry, and a worker's finish survives its task
    being cancelled.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(outcomes: list[Outcome]) -> None:
    for job, succeeded, value in outcomes:
        if job.future.done():  # past its deadline, or cancelled
            continue
        if succeeded:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


def _groups(jobs: list[Job]) -> Iterator[list[Job]]:
    """Consecutive accepts run as one group; every other write runs alone, in queue order."""
    for accepting, run in itertools.groupby(jobs, key=lambda job: isinstance(job.work, Accept)):
        if accepting:
            yield list(run)
        else:
            yield from ([job] for job in run)


def _run_group(conn: sqlite3.Connection, group: list[Job]) -> list[Outcome]:
    write = group[0].work
    if not isinstance(write, Accept):
        return _in_savepoint(conn, group, lambda: [write(conn)])
    accepts = [job.work for job in group if isinstance(job.work, Accept)]
    outcomes = _in_savepoint(conn, group, lambda: accept_all(conn, accepts))
    if len(group) > 1 and not outcomes[0][1]:  # run each alone so that only the culprit fails
        return [outcome for job in group for outcome in _run_group(conn, [job])]
    return outcomes


def _in_savepoint(conn: sqlite3.Connection, group: list[Job],
                  run: Callable[[], list[Any]]) -> list[Outcome]:
    conn.execute("SAVEPOINT one")
    try:
        values = run()
    except Exception as exc:  # one caller's failure must not sink the batch
        if storage_failure(exc):  # but a failing disk fails every caller: see _commit_batch
            raise
        conn.execute("ROLLBACK TO one")
        conn.execute("RELEASE one")
        error = exc if not isinstance(exc, sqlite3.Error) else StoreError(str(exc))
        return [(job, False, error) for job in group]
    conn.execute("RELEASE one")
    return [(job, True, value) for job, value in zip(group, values, strict=True)]
