"""Without a PostgreSQL server its tests are skipped, saying why; with CI=true they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
