"""Shared fixtures: settings written to a temporary TOML file, sample payloads, a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.samples import load_sample
from bridge.settings import Settings
from tests.clock import FakeClock
from tests.postgres import (
    drop_databases_of_this_run,
    fresh_database,
    sweep_databases_of_dead_runs,
)
from tests.settings_files import TOKENS, deep_merge, write_toml


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings from a TOML file in tmp_path: a store there, the test tokens, plus overrides."""
    for name in list(__import__("os").environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)

    def make(extra: dict[str, Any] | None = None) -> Settings:
        data = {
            "store": {"url": f"sqlite:///{tmp_path}/data/bridge.db"},
            "webhooks": {name: {"tokens": [token]} for name, token in TOKENS.items()},
            "delivery": {"backoff_initial": "0.05s", "backoff_cap": "0.2s",
                         "poll_interval": "0.05s"},
        }
        path = write_toml(tmp_path / "settings.toml", deep_merge(data, extra or {}))
        return load_settings(str(path))

    return make


@pytest.fixture
def sample() -> Callable[[str], Any]:
    return load_sample


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new PostgreSQL database for this test alone (skipped without a server, unless CI)."""
    with fresh_database() as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first: spread over the workers (--dist loadgroup), none ends the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionstart(session: pytest.Session) -> None:
    sweep_databases_of_dead_runs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_databases_of_this_run()
