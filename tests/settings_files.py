"""Test settings as TOML files: the webhook tokens, a small writer, a deep merge."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

TOKENS = {"messages": "tok-messages", "escalations": "tok-escalations", "leads": "tok-leads"}


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
