"""Sample SiteGPT payloads, bundled for `render --sample`, start-up template checks and tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge.destinations import sample_folders

HERE = Path(__file__).parent


def _sample_files() -> dict[str, Path]:
    """SiteGPT's samples here, then those each registered destination brings, by name."""
    files: dict[str, Path] = {}
    for folder in [HERE, *sample_folders()]:
        files |= {path.stem: path for path in sorted(folder.glob("*.json"))}
    return files


def sample_names() -> list[str]:
    return sorted(_sample_files())


def load_sample(name: str) -> Any:
    """The decoded body of the sample `name` (e.g. "lead", "message-visitor")."""
    path = _sample_files().get(name)
    if path is None:
        raise KeyError(f"no sample named {name!r}; known: {', '.join(sample_names())}")
    return json.loads(path.read_text(encoding="utf-8"))


def webhook_sample_names() -> list[str]:
    """The samples SiteGPT itself could send (not the bridge's own follow-up events)."""
    sitegpt = {"ADD_MESSAGE", "CONVERSATION_ESCALATED", "NEW_LEAD_CAPTURE"}
    return [name for name in sample_names() if load_sample(name)["event"] in sitegpt]
