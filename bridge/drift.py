"""Whether the running bridge uses the settings on disk: what retry, send-test and check say."""

from __future__ import annotations

import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from bridge.config import resolve_config_path
from bridge.errors import StoreError
from bridge.fingerprint import differing, fingerprint, section_hashes
from bridge.settings import Settings
from bridge.store import SettingsInUse, SettingsRecords, open_store


async def settings_drift(settings: Settings, store: SettingsRecords,
                         config: str | None = None) -> list[str]:
    """One line per running process whose settings are not these (read from `config`)."""
    path, _ = resolve_config_path(config)
    hashes = section_hashes(settings)
    try:
        running = [found for found in await store.settings_in_use() if _alive(found)]
    except StoreError:
        return []  # the command says what is wrong with the store itself
    lines = [_refused(found) if found.rejected else _differs(found, path, hashes)
             for found in running
             if found.rejected or found.fingerprint != fingerprint(hashes)]
    return lines


async def say_drift(settings: Settings, config: str | None,
                    store: SettingsRecords | None = None) -> None:
    """Print the drift to stderr, from the bridge's store (opened here unless given)."""
    if store is not None:
        lines = await settings_drift(settings, store, config)
    else:
        lines = await _drift_from_store(settings, config)
    for line in lines:
        print(f"sitegpt-bridge: {line}", file=sys.stderr)


async def _drift_from_store(settings: Settings, config: str | None) -> list[str]:
    if settings.store.backend == "sqlite" and not settings.store.sqlite_path.exists():
        return []
    try:
        store = open_store(settings.store.url, settings.store.synchronous, pool_size=2,
                           upgrade=False)
    except StoreError:
        return []
    try:
        return await settings_drift(settings, store, config)
    finally:
        await store.close()


def _differs(found: SettingsInUse, path: Path, hashes: dict[str, str]) -> str:
    sections = ", ".join(differing(hashes, found.sections))
    return (f"the running bridge ({_who(found)}, loaded at {_when(found.loaded_at)}) uses other"
            f" settings than {path} on disk: {sections}")


def _refused(found: SettingsInUse) -> str:
    return (f"the settings on disk are not in use: {found.rejected} (the running bridge, "
            f"{_who(found)}, refused them at {_when(found.rejected_at or found.loaded_at)} and "
            f"keeps the settings it loaded at {_when(found.loaded_at)})")


def _who(found: SettingsInUse) -> str:
    where = "" if found.host == socket.gethostname() else f" on {found.host}"
    return f"{found.role}, pid {found.pid}{where}"


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _alive(found: SettingsInUse) -> bool:
    """A record left by a process of this host that died (kill -9) is not a running bridge."""
    if found.host != socket.gethostname():
        return True
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
