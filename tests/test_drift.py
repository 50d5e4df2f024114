"""What the commands say when the running bridge does not use the settings file on disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from bridge.drift import settings_drift
from bridge.fingerprint import fingerprint, section_hashes
from bridge.store import SettingsInUse, open_store

LOADED_AT = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture
async def store(make_settings):
    opened = open_store(make_settings().store.url)
    yield opened
    await opened.close()


def in_use(settings, pid: int = os.getpid(), host: str = socket.gethostname()) -> SettingsInUse:
    hashes = section_hashes(settings)
    return SettingsInUse(f"{host}:{pid}", "serve", fingerprint(hashes), LOADED_AT, hashes)


async def test_nothing_is_said_when_the_running_bridge_uses_the_file_on_disk(
        make_settings, store):
    settings = make_settings({"slack": {"channel": "C1", "bot_token": "xoxb-1"}})
    await store.record_settings(in_use(settings))
    assert await settings_drift(settings, store) == []


async def test_a_file_the_bridge_has_not_loaded_is_named_with_the_sections_that_differ(
        make_settings, store, tmp_path):
    running = make_settings({"slack": {"channel": "C_OLD", "bot_token": "xoxb-1"}})
    await store.record_settings(in_use(running))
    on_disk = make_settings({"slack": {"channel": "C_NEW", "bot_token": "xoxb-1"}})
    assert await settings_drift(on_disk, store, str(tmp_path / "settings.toml")) == [
        f"the running bridge (serve, pid {os.getpid()}, loaded at 2023-11-14 22:13:20 UTC)"
        f" uses other settings than {tmp_path / 'settings.toml'} on disk: slack"]


async def test_a_refused_file_is_said_to_be_not_in_use_with_the_reason(make_settings, store):
    settings = make_settings()
    await store.record_settings(replace(in_use(settings), rejected="templates failed",
                                        rejected_at=LOADED_AT + 60))
    [line] = await settings_drift(settings, store)
    assert line.startswith("the settings on disk are not in use: templates failed (the running"
                           f" bridge, serve, pid {os.getpid()}, refused them at 2023-11-14"
                           " 22:14:20 UTC")


async def test_a_process_of_another_host_is_named_with_its_host(make_settings, store):
    running = make_settings({"delivery": {"lease": "20s"}})
    await store.record_settings(in_use(running, pid=7, host="replica-b"))
    [line] = await settings_drift(make_settings(), store)
    assert "(serve, pid 7 on replica-b, loaded at" in line
    assert line.endswith("on disk: delivery")


async def test_the_record_of_a_process_that_died_here_is_not_a_running_bridge(
        make_settings, store):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    running = make_settings({"delivery": {"lease": "20s"}})
    await store.record_settings(in_use(running, pid=int(ended.stdout)))
    assert await settings_drift(make_settings(), store) == []
