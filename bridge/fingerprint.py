"""A fingerprint of the settings a process runs with: one hash per section, secrets included.

Stored so the operator commands can tell the file on disk from what the bridge uses; only
hashes are kept, never a value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bridge.settings import Settings

TEMPLATE_FILES = "template files"  # the user's templates, beside the settings sections


def section_hashes(settings: Settings) -> dict[str, str]:
    """Each section's hash, and one of the files in the user's templates folder."""
    hashes = {name: _digest(value) for name, value in settings.model_dump().items()}
    hashes[TEMPLATE_FILES] = _digest(template_files(settings.templates.dir))
    return hashes


def fingerprint(hashes: dict[str, str]) -> str:
    return _digest(hashes)


def differing(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The sections whose hashes differ, in our order, then those only they have."""
    return [name for name in {**ours, **theirs} if ours.get(name) != theirs.get(name)]


def template_files(folder: Path | None) -> dict[str, str]:
    """Each file under `folder` by its relative path, with the hash of its content."""
    if folder is None or not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: Any) -> str:
    # A secret counts by its value, so that changing a token is a change; only a hash is kept.
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)
