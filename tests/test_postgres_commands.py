"""check, backup, deliveries, retry and conversations against a PostgreSQL store."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.samples import load_sample
from bridge.store import open_store
from bridge.store.migrations import SCHEMA_VERSION
from tests.command_line import run
from tests.postgres import SERVER, created_database, query
from tests.servers import clean_environ

NOW = 1_700_000_000.0
PASSWORD = "sec-pg-password"


@pytest.fixture
def url(postgres_url: str) -> str:
    """The test database's URL with a password in it (trust auth ignores it), to be masked."""
    return postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.fixture
def config(make_settings, tmp_path, url) -> str:
    make_settings({"store": {"url": url}})
    return str(tmp_path / "settings.toml")


async def seed(url: str) -> list[int]:
    """A delivered Slack message and a failed Jira escalation, in one conversation."""
    store = open_store(url)
    try:
        for name, destination, status in [("message-visitor", "slack", "delivered"),
                                          ("escalation", "jira", "failed")]:
            body: dict[str, Any] = load_sample(name)
            event = parse_event(body["event"], body)
            await store.accept(new_event(event, body, [destination]), NOW, 600)
            [claimed] = await store.claim("seed", NOW, 1, 60)
            await store.finish(claimed.lease, status, NOW, f"{destination}: {status}")  # type: ignore[arg-type]
        return [row.id for row in await store.deliveries()]
    finally:
        await store.close()


def test_check_names_the_backend_server_and_schema_and_masks_the_password(config, url, capsys):
    code, out, err = run(capsys, "check", "--json", "--config", config)
    assert code == 0, err
    assert PASSWORD not in out + err
    report = json.loads(out)
    [line] = [check["message"] for check in report["checks"] if check["name"] == "store"]
    database = url.rsplit("/", 1)[1]
    assert line.startswith("ok: PostgreSQL 1")
    assert line.endswith(f"at 127.0.0.1:5432/{database}, schema version {SCHEMA_VERSION}")
    assert report["settings"]["store"]["url"] == (
        f"postgresql://postgres:**********@127.0.0.1:5432/{database}")


def test_backup_says_to_use_pg_dump_with_the_exact_command(config, url, capsys, tmp_path):
    code, out, err = run(capsys, "backup", "--config", config, str(tmp_path / "bridge.dump"))
    assert code == 1 and out == ""
    database = url.rsplit("/", 1)[1]
    assert (f"pg_dump --format=custom --file={tmp_path / 'bridge.dump'} "
            f"'postgresql://postgres@127.0.0.1:5432/{database}'") in err
    assert PASSWORD not in err
    assert not (tmp_path / "bridge.dump").exists()


@pytest.mark.skipif(not (shutil.which("pg_dump") and shutil.which("pg_restore")),
                    reason="pg_dump and pg_restore are not installed")
def test_the_advised_pg_dump_and_pg_restore_commands_work_as_printed(config, url, capsys,
                                                                      tmp_path):
    ids = asyncio.run(seed(url))
    _, _, advice = run(capsys, "backup", "--config", config, str(tmp_path / "bridge.dump"))
    dump, restore = [line.strip().removeprefix("PGPASSWORD=... ")
                     for line in advice.splitlines() if "PGPASSWORD=..." in line]
    database = url.rsplit("/", 1)[1]
    with created_database(SERVER) as copy:
        restore = restore.replace(f"/{database}'", f"/{copy.rsplit('/', 1)[1]}'")
        for command in (dump, restore):
            done = subprocess.run(command, shell=True, capture_output=True, text=True)
            assert done.returncode == 0 and done.stderr == "", (command, done.stderr)
        assert [row[0] for row in query(copy, "SELECT id FROM deliveries ORDER BY id DESC")] == ids


def test_deliveries_retry_and_conversations_work_on_postgresql(config, url, capsys):
    ids = asyncio.run(seed(url))
    code, out, _ = run(capsys, "deliveries", "--config", config, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(row["destination"], row["status"]) for row in rows] == [
        ("jira", "failed"), ("slack", "delivered")]

    code, out, _ = run(capsys, "retry", "--config", config, "--failed")
    assert (code, out.split(";")[0]) == (0, "requeued 1 delivery")
    code, out, _ = run(capsys, "deliveries", "--config", config, "--status", "pending", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [max(ids)]

    code, out, _ = run(capsys, "conversations", "--config", config, "--json")
    [conversation] = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and conversation["thread_id"] == load_sample("escalation")["data"]["threadId"]


@pytest.mark.parametrize("command", ["deliveries", "serve", "worker"])
def test_a_server_that_cannot_be_reached_is_one_line_with_the_password_masked(
        make_settings, tmp_path, command):
    make_settings({"store": {"url": f"postgresql://bridge:{PASSWORD}@127.0.0.1:1/bridge"
                                    "?connect_timeout=2"}, "log": {"format": "json"}})
    # A process of its own: serve and worker set up the process's logging for good.
    result = subprocess.run(
        [sys.executable, "-m", "bridge", command, "--config", str(tmp_path / "settings.toml")],
        env=clean_environ(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("sitegpt-bridge: cannot open the store at "
                           "postgresql://bridge:**********@127.0.0.1:1/bridge")
    assert PASSWORD not in result.stderr


ODD_URLS = [  # each password's pieces: "Sec" and "retPW99"
    "postgresql://bridge:Sec@retPW99@127.0.0.1:1/bridge?connect_timeout=2",
    "postgresql://bridge:Sec/retPW99@127.0.0.1:1/bridge?connect_timeout=2",
    "postgresql://bridge:Sec#retPW99@127.0.0.1:1/bridge?connect_timeout=2",
    "postgresql://bridge:Sec%ZZretPW99@127.0.0.1:1/bridge?connect_timeout=2",
    "postgresql://127.0.0.1:1/bridge?connect_timeout=2&password=Sec&retPW99",
    "postgres+psycopg://bridge:Sec:retPW99@127.0.0.1:1/bridge",
]


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("odd_url", ODD_URLS)
def test_no_piece_of_an_odd_password_is_printed_by_check_or_serve(make_settings, tmp_path,
                                                                   command, odd_url):
    make_settings({"log": {"format": "json"}})
    settings = tmp_path / "settings.toml"  # the url put in by hand: it may not validate
    settings.write_text(settings.read_text().replace(f"sqlite:///{tmp_path}/data/bridge.db",
                                                     odd_url))
    result = subprocess.run(
        [sys.executable, "-m", "bridge", command, "--config", str(settings)],
        env=clean_environ(), capture_output=True, text=True, timeout=60)
    shown = result.stdout + result.stderr
    assert result.returncode != 0 and "**********" in shown
    assert "retPW99" not in shown and "Sec" not in shown.replace("Security", "")
