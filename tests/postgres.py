"""A database of its own for each PostgreSQL test, made on the server at $TEST_POSTGRES_URL.

Without a server the PostgreSQL tests are skipped, saying why; with CI=true they fail instead,
so CI never passes on tests it did not run. A database's name says which process made it, so one
left behind by a run that was killed can be told from one a live run (or worker) still uses.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from bridge.store.url import masked_store_url as masked_url

SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "bridge_test_"
# Several machines may share one server: a process id means something only on the host it names.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


@functools.cache
def unreachable_because() -> str | None:
    """Why the test server cannot be reached, or None when it can (asked once per run)."""
    try:
        psycopg.connect(SERVER, connect_timeout=3).close()
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return None


def require_server() -> None:
    reason = unreachable_because()
    if reason is None:
        return
    message = (f"PostgreSQL is not reachable at {masked_url(SERVER)} ({reason}); start it "
               "or point TEST_POSTGRES_URL at one to run the PostgreSQL tests")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}. CI=true: a missing server is a failure, not a skip",
                    pytrace=False)
    pytest.skip(message)


def database_url(name: str, server: str = SERVER) -> str:
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped (connections and all) afterwards."""
    require_server()
    with created_database(SERVER) as url:
        yield url


@contextmanager
def created_database(server: str, prefix: str = PREFIX) -> Iterator[str]:
    """A new database on `server` (also for bench/), dropped with its connections afterwards."""
    name = create_database(server, prefix)
    try:
        yield database_url(name, server)
    finally:
        drop_databases(server, [name])


def create_database(server: str, prefix: str) -> str:
    """A new database named `<prefix><host>_<pid>_<random>`, after the process that owns it."""
    name = f"{prefix}{HOST}_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_databases(server: str, names: list[str]) -> None:
    """Drop each database, ending whatever connections a killed bridge left on it."""
    if not names:
        return
    with psycopg.connect(server, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


_KEPT: list[str] = []  # databases made for tests that cannot drop them themselves


def database_for_this_run() -> str:
    """A new database that lasts until the test run ends (see drop_databases_of_this_run)."""
    require_server()
    name = create_database(SERVER, PREFIX)
    _KEPT.append(name)
    return database_url(name)


def drop_databases_of_this_run() -> None:
    """Drop what database_for_this_run made in this process (each worker drops its own)."""
    drop_databases(SERVER, _KEPT)
    _KEPT.clear()


def sweep_databases_of_dead_runs() -> list[str]:
    """Drop the test databases made on this host by processes that no longer run; name them."""
    if unreachable_because() is not None:
        return []
    with psycopg.connect(SERVER, autocommit=True) as conn:
        names = [name for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (PREFIX,))]
    dead = [name for name in names if owner_has_exited(name)]
    drop_databases(SERVER, dead)
    return dead


def owner_has_exited(name: str, host: str = HOST) -> bool:
    """Whether the process named in a test database's name has exited (False if not ours)."""
    owner = re.fullmatch(rf"{PREFIX}{host}_(\d+)_[0-9a-f]+", name)
    if owner is None:
        return False
    try:
        os.kill(int(owner.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def query(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the database on a connection of our own, as another replica would."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()
