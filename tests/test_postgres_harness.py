"""The PostgreSQL harness: skipped (or failed in CI) without a server, and no database left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.postgres import (
    HOST,
    PREFIX,
    SERVER,
    created_database,
    drop_databases,
    query,
    require_server,
    sweep_databases_of_dead_runs,
)

ROOT = Path(__file__).resolve().parent.parent
NOWHERE = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2"
ONE_TEST = "tests/test_postgres_store.py::test_open_store_picks_postgresql_by_its_scheme"


def run_without_a_server(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["TEST_POSTGRES_URL"] = NOWHERE
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           ONE_TEST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_a_server_the_postgresql_tests_are_skipped_saying_why():
    result = run_without_a_server(ci=None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "PostgreSQL is not reachable at postgresql://postgres@127.0.0.1:1/postgres" in (
        result.stdout)


def test_in_ci_a_missing_server_fails_the_run():
    result = run_without_a_server(ci="true")
    assert result.returncode == 1, result.stdout
    assert "CI=true: a missing server is a failure, not a skip" in result.stdout
    assert "skipped" not in result.stdout


FAILING = '''
from tests.postgres import database_for_this_run


def test_one(postgres_url):
    assert False, (postgres_url, database_for_this_run())


def test_two(postgres_url):
    assert False, (postgres_url, database_for_this_run())
'''


def databases() -> set[str]:
    return {name for (name,) in query(SERVER, "SELECT datname FROM pg_database")}


def test_a_run_drops_every_database_it_made_even_when_its_tests_fail(tmp_path):
    """Two workers, as `make test` runs: each drops what it made (alone, a run is one worker)."""
    require_server()
    (tmp_path / "test_failing.py").write_text(FAILING)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p",
                             "no:cacheprovider", "-n", "2", str(tmp_path / "test_failing.py")],
                            cwd=ROOT, env=os.environ | {"COLUMNS": "400"}, capture_output=True,
                            text=True, timeout=120)
    assert "2 failed" in result.stdout, result.stdout
    made = set(re.findall(rf"/({PREFIX}\w+)", result.stdout))
    assert len(made) == 4, result.stdout
    assert made & databases() == set()


def test_the_databases_of_a_dead_run_are_swept_and_those_of_a_live_one_kept():
    require_server()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = f"{PREFIX}{HOST}_{int(ended.stdout)}_0123456789ab"
    elsewhere = f"{PREFIX}000000_{int(ended.stdout)}_0123456789ab"  # another host's: unknowable
    with psycopg.connect(SERVER, autocommit=True) as conn:
        for name in (dead, elsewhere):
            conn.execute(f'CREATE DATABASE "{name}"')
    with created_database(SERVER) as live:
        try:
            swept = sweep_databases_of_dead_runs()
            assert dead in swept and dead not in databases()
            assert {live.rsplit("/", 1)[1], elsewhere} <= databases()
        finally:
            drop_databases(SERVER, [dead, elsewhere])
