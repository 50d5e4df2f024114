"""Shared fixtures: settings written to a temporary TOML file, sample payloads, a fake clock."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres import fresh_database

from bridge.config import load_settings
from bridge.samples import load_sample
from bridge.settings import Settings
from tests.postgres import drop_databases_of_this_run

TOKENS = {"messages": "tok-messages", "escalations": "tok-escalations", "leads": "tok-leads"}


class FakeClock:
    """A clock that moves only when told to; sleep() advances it instantly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.current = start

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += seconds

    def advance(self, seconds: float) -> None:
        self.current += seconds


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A minimal TOML writer for test settings (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict | list)
                   or (isinstance(v, list) and not (v and isinstance(v[0], dict)))}
        if prefix:
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{json.dumps(key)} = {json.dumps(value)}")
        for key, value in table.items():
            name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
            if isinstance(value, dict):
                emit(name, value)
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    lines.append(f"[[{name}]]")
                    lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in item.items())

    emit("", data)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tomllib.loads(path.read_text())  # the file must be valid TOML
    return path


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_databases_of_this_run()
