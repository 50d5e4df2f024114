"""Sample SiteGPT payloads, bundled for `render --sample`, start-up template checks and tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def sample_names() -> list[str]:
    return sorted(path.stem for path in HERE.glob("*.json"))


def load_sample(name: str) -> Any:
    """The decoded body of the sample `name` (e.g. "lead", "message-visitor")."""
    path = HERE / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no sample named {name!r}; known: {', '.join(sample_names())}")
    return json.loads(path.read_text(encoding="utf-8"))


def webhook_sample_names() -> list[str]:
    """The samples SiteGPT itself could send (not the bridge's own follow-up events)."""
    sitegpt = {"ADD_MESSAGE", "CONVERSATION_ESCALATED", "NEW_LEAD_CAPTURE"}
    return [name for name in sample_names() if load_sample(name)["event"] in sitegpt]
