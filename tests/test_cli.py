"""The `sitegpt-bridge` command: `check` explains bad settings and hides secrets; `serve` starts."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bridge.app import announce, open_bridge
from bridge.cli import main
from bridge.store.migrations import SCHEMA_VERSION
from tests.bridges import SECRET_VALUES, SECRETS, counts, readme_example
from tests.fake_slack import fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)
from tests.servers import BridgeProcess, clean_environ, free_port
from tests.settings_files import deep_merge, write_toml

EXAMPLE = Path(__file__).parent.parent / "settings.example.toml"
BAD = {"server": {"prot": 8080}, "slack": {"chanel": "C1"}, "store": {"synchronous": "SOMETIMES"}}


@pytest.fixture(autouse=True)
def no_bridge_variables(make_settings):
    """make_settings clears every BRIDGE_* variable of the environment the tests run in."""


def test_check_lists_every_problem_on_its_own_line_and_fails(tmp_path, capsys):
    bad = write_toml(tmp_path / "bad.toml", BAD)
    assert main(["check", "--config", str(bad)]) != 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"sitegpt-bridge: invalid settings in {bad}",
        "  - server.prot: unknown key; did you mean port?",
        "  - store.synchronous: Input should be 'FULL' or 'NORMAL'",
        "  - slack.chanel: unknown key; did you mean channel?",
    ]


def test_check_of_a_named_file_that_does_not_exist_fails_in_one_line(tmp_path, capsys):
    assert main(["check", "--config", str(tmp_path / "nowhere.toml")]) != 0
    assert capsys.readouterr().err.splitlines() == [
        f"sitegpt-bridge: config file not found: {tmp_path / 'nowhere.toml'}"]


def test_check_reads_the_file_named_by_bridge_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BRIDGE_CONFIG", str(tmp_path / "nowhere.toml"))
    assert main(["check"]) != 0
    assert "config file not found" in capsys.readouterr().err
    monkeypatch.setenv("BRIDGE_CONFIG", str(write_toml(tmp_path / "bad.toml", BAD)))
    assert main(["check"]) != 0
    assert "server.prot: unknown key" in capsys.readouterr().err


def test_check_blames_a_bad_variable_not_the_file(capsys, monkeypatch):
    monkeypatch.setenv("BRIDGE_SLACK__BOTTOKEN", "x")
    monkeypatch.setenv("BRIDGE_STORE__SYNCHRONOUS", "SOMETIMES")
    assert main(["check", "--config", str(EXAMPLE)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sitegpt-bridge: invalid settings in BRIDGE_STORE__SYNCHRONOUS and BRIDGE_SLACK__BOTTOKEN",
        "  - store.synchronous: Input should be 'FULL' or 'NORMAL' "
        "(from BRIDGE_STORE__SYNCHRONOUS)",
        "  - slack.bottoken: unknown key; did you mean bot_token? (from BRIDGE_SLACK__BOTTOKEN)",
    ]


def test_check_blames_the_file_and_the_variable_each_for_its_own(tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("BRIDGE_WEBHOOKS__LEADS__TOKENS", '["ok", ""]')
    bad = write_toml(tmp_path / "bad.toml", {"server": {"prot": 8080}})
    assert main(["check", "--config", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sitegpt-bridge: invalid settings in {bad} and BRIDGE_WEBHOOKS__LEADS__TOKENS",
        "  - server.prot: unknown key; did you mean port?",
        "  - webhooks.leads.tokens.1: a token must not be empty: it would accept an empty "
        "X-WEBHOOK-TOKEN (from BRIDGE_WEBHOOKS__LEADS__TOKENS)",
    ]


def test_a_table_half_set_by_a_variable_names_the_variable_and_the_file(capsys, monkeypatch):
    monkeypatch.setenv("BRIDGE_JIRA__URL", "https://acme.atlassian.net")
    assert main(["check", "--config", str(EXAMPLE)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sitegpt-bridge: invalid settings in {EXAMPLE} and BRIDGE_JIRA__URL",
        "  - jira.url is set but no credentials: set email + api_token (Cloud) or "
        "personal_access_token (Server/Data Center) (with BRIDGE_JIRA__URL from the environment)",
    ]


def test_check_explains_a_variable_that_is_not_json_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("BRIDGE_CHATBOTS", "sec-plain-token")
    assert main(["check", "--config", str(EXAMPLE)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        """sitegpt-bridge: BRIDGE_CHATBOTS: not JSON: write JSON, e.g. '[{"id": "bot1"}]'"""]


@pytest.mark.parametrize("flag", ["--verbose", "--json"])
def test_check_prints_the_settings_with_every_secret_masked(tmp_path, capsys, flag):
    store = {"store": {"url": f"sqlite:///{tmp_path}/data/bridge.db"}}  # not the checkout's
    config = write_toml(tmp_path / "settings.toml", deep_merge(SECRETS, store))
    assert main(["check", flag, "--config", str(config)]) == 1  # every secret, not a working setup
    out, err = capsys.readouterr()
    assert '"metrics_token": "**********"' in out
    assert '"Authorization": "**********"' in out
    assert '"url": "https://hooks.example.com/**********"' in out  # a hook's path holds its key
    for secret in SECRET_VALUES:
        assert secret not in out + err


def test_check_puts_one_verdict_per_check_first_and_the_settings_only_when_asked(
        make_settings, tmp_path, capsys):
    make_settings()
    config = tmp_path / "settings.toml"
    assert main(["check", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "settings", "templates", "slack", "mattermost", "jira", "crm", "sitegpt",
        "jira back-channel", "store"]
    assert lines[0] == f"settings: ok: read from {config}"
    assert main(["check", "--verbose", "--config", str(config)]) == 0
    verbose = capsys.readouterr().out.splitlines()
    assert verbose[:len(lines)] == lines
    assert verbose[len(lines):len(lines) + 2] == [
        "", "effective settings (defaults filled in, secrets masked):"]
    assert json.loads("\n".join(verbose[len(lines) + 2:]))["server"]["port"] == 8080


def test_check_json_holds_each_verdict_and_the_settings(make_settings, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.setenv("BRIDGE_WEBHOOKS__LEADS__TOKENS", "[]")
    make_settings()
    assert main(["check", "--json", "--config", str(tmp_path / "settings.toml")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    [leads] = [item for item in report["checks"] if item["name"] == "webhooks.leads"]
    assert leads == {"name": "webhooks.leads", "ok": False,
                     "message": "FAILED: no token, so it answers 503",
                     "fix": "set [webhooks.leads] tokens or BRIDGE_WEBHOOKS__LEADS__TOKENS",
                     "warning": False}
    assert report["settings"]["webhooks"]["messages"]["tokens"] == ["**********"]


def test_check_shows_the_store_and_its_schema_version(make_settings, tmp_path, capsys):
    settings = make_settings()
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"store: ok: sqlite at {settings.store.sqlite_path}, schema version {SCHEMA_VERSION}" \
        in lines


def test_check_warns_about_the_example_tokens(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the example's store is data/bridge.db: not the checkout's
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    for name in ("messages", "escalations", "leads"):
        assert f"webhooks.{name}: WARNING: still the example token" in out
    assert "abc-messages-xyz" not in out


@pytest.mark.parametrize(("lease", "warned"), [("120s", True), ("30s", False), (None, False)])
def test_check_warns_that_the_first_release_lease_slows_recovery(
        lease, warned, make_settings, tmp_path, capsys, caplog):
    """The first release's example set lease = "120s"; kept, a hung worker costs two minutes."""
    settings = make_settings({"delivery": {"lease": lease}} if lease else None)
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    out = capsys.readouterr().out
    assert ("delivery.lease: WARNING: 120s: a worker that hangs (its process alive but stuck)"
            in out) is warned
    assert ("remove `lease` from [delivery]" in out) is warned
    caplog.set_level("WARNING", "bridge")
    bridge = open_bridge(settings)
    try:
        announce(bridge)
    finally:
        asyncio.run(bridge.close())
    assert ("delivery.lease is 120s" in caplog.text) is warned


def test_check_fails_naming_every_webhook_without_a_token(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the example's store is data/bridge.db: not the checkout's
    for name in ("MESSAGES", "LEADS"):  # as a copy of .env.example leaves them
        monkeypatch.setenv(f"BRIDGE_WEBHOOKS__{name}__TOKENS", "[]")
    assert main(["check", "--config", str(EXAMPLE)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "FAILED" in line] == [
        f"settings: FAILED: 2 problems in {EXAMPLE} and the BRIDGE_* variables, below",
        "webhooks.messages: FAILED: no token, so it answers 503",
        "webhooks.leads: FAILED: no token, so it answers 503"]
    fixes = lines[lines.index("to fix:") + 1:]
    assert fixes[:2] == [
        "  webhooks.messages: set [webhooks.messages] tokens or BRIDGE_WEBHOOKS__MESSAGES__TOKENS",
        "  webhooks.leads: set [webhooks.leads] tokens or BRIDGE_WEBHOOKS__LEADS__TOKENS"]


@pytest.mark.parametrize(("extra", "expected"), [
    ({"slack": {"channel": "C1", "leads_channel": "C2"}},
     "slack: FAILED: slack.channel, slack.leads_channel set but not slack.bot_token: "
     "Slack runs dry: nothing is posted"),
    ({"jira": {"project": "SUP", "api_token": "sec-jira"}},
     "jira: FAILED: jira.api_token, jira.project set but not jira.url: no tickets are made"),
    ({"crm": {"hubspot": {"access_token": "sec-hub"}}},
     "crm: FAILED: crm.hubspot.access_token set but not crm.kind: leads go to no CRM"),
    ({"slack": {"signing_secret": "sec-sign"}},
     "replies from Slack: FAILED: slack.bot_token, sitegpt.api_key not set: replies stay off"),
    ({"sitegpt": {"api_key": "sec-key"}},
     "replies from Slack: FAILED: slack.signing_secret, slack.bot_token not set: "
     "replies stay off"),
])
def test_check_fails_naming_what_is_half_configured(make_settings, tmp_path, capsys, extra,
                                                    expected):
    make_settings(extra)
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 1
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "FAILED" in line] == [
        f"settings: FAILED: 1 problem in {tmp_path / 'settings.toml'} and the BRIDGE_* "
        "variables, below", expected]
    assert f"  {expected.split(': ')[0]}: set what the line says is missing, or unset the rest " \
        "to switch it off" in out.splitlines()
    assert "sec-" not in out


def test_check_passes_with_every_webhook_set_and_nothing_half_done(make_settings, tmp_path,
                                                                   capsys):
    make_settings()
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    assert "FAILED" not in capsys.readouterr().out


def test_check_verifies_replies_from_slack_when_they_are_on(make_settings, tmp_path, capsys,
                                                           fake):
    make_settings({"slack": {"bot_token": "xoxb-test", "api_url": fake.api_url,
                             "channel": "C_CONV", "signing_secret": "shh"},
                   "sitegpt": {"api_url": "https://sitegpt.test/api/v0", "api_key": "sk-k"}})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    [sitegpt] = [line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("sitegpt: ")]
    assert sitegpt == ("sitegpt: on: replies from Slack go to https://sitegpt.test/api/v0 as"
                       " agent messages (the API key is checked by the first reply)")


def test_check_passes_claim_and_resolve_without_a_sitegpt_key(make_settings, tmp_path, capsys,
                                                              fake):
    make_settings({"slack": {"bot_token": "xoxb-test", "api_url": fake.api_url,
                             "channel": "C_CONV", "signing_secret": "shh"}})
    assert main(["check", "--config", str(tmp_path / "settings.toml")]) == 0
    assert "FAILED" not in capsys.readouterr().out  # docs/slack.md: no SiteGPT key needed


def test_the_installed_command_exits_non_zero_with_the_problems_on_stderr(tmp_path):
    bad = write_toml(tmp_path / "bad.toml", BAD)
    script = Path(sys.executable).with_name("sitegpt-bridge")
    done = subprocess.run([str(script), "check", "--config", str(bad)], capture_output=True,
                          text=True, env=clean_environ(), timeout=60, check=False)
    assert done.returncode == 2
    assert "  - server.prot: unknown key; did you mean port?" in done.stderr.splitlines()
    assert "Traceback" not in done.stderr


def test_serve_with_the_example_settings_accepts_the_readme_example(tmp_path):
    body, token = readme_example()
    with BridgeProcess(EXAMPLE, cwd=tmp_path) as bridge:  # as `make run` does
        answer = httpx.post(f"{bridge.url}/webhooks/messages", json=body,
                            headers={"X-WEBHOOK-TOKEN": token}, timeout=10)
        for _ in range(100):  # serve writes its log lines from a thread of their own
            if "webhook messages: accepted event 1" in (log := bridge.log):
                break
            time.sleep(0.02)
    assert answer.json() == {"status": "accepted", "id": 1}
    assert "webhook messages: accepted event 1" in log
    assert counts(tmp_path / "data" / "bridge.db")["events"] == 1
    for name in ("messages", "escalations", "leads"):
        assert f"UNSAFE: webhooks.{name} still uses the example token" in log
    assert token not in log


def run_command(command: str, config: Path, cwd: Path,
                **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", command, "--config", str(config)],
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
                          env=clean_environ(**environ))


def test_serve_on_a_port_in_use_says_which_setting_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_command("serve", EXAMPLE, tmp_path, BRIDGE_SERVER__PORT=str(port))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"sitegpt-bridge: port {port} on 127.0.0.1 is in use by another program: stop it, or "
        "set [server] port (or BRIDGE_SERVER__PORT) to a free port"]
    assert not (tmp_path / "data").exists()  # no store opened, no worker started


def test_a_store_folder_that_cannot_be_made_is_one_line_naming_the_setting(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    folder = tmp_path / "a-file" / "data"
    config = write_toml(tmp_path / "settings.toml",  # serve binds its port first
                        {"store": {"url": f"sqlite:///{folder}/bridge.db"},
                         "server": {"port": free_port()}})
    expected = [f"sitegpt-bridge: cannot create the store's folder {folder}: Not a directory; "
                "check [store] url (or BRIDGE_STORE__URL)"]
    assert main(["check", "--config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == expected
    for command in ("serve", "worker"):  # each in a process: they set up logging for good
        done = run_command(command, config, tmp_path)
        assert (done.returncode, done.stderr.splitlines()) == (1, expected)


def test_a_store_that_cannot_be_opened_is_one_line_naming_the_setting(tmp_path, capsys):
    (tmp_path / "bridge.db").mkdir()  # a folder where the file should be
    config = write_toml(tmp_path / "settings.toml",
                        {"store": {"url": f"sqlite:///{tmp_path}/bridge.db"}})
    assert main(["check", "--config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"sitegpt-bridge: cannot open the store at {tmp_path}/bridge.db: unable to open "
        "database file; check [store] url (or BRIDGE_STORE__URL)"]


def test_an_older_release_refuses_a_newer_store_naming_both_versions(make_settings, tmp_path,
                                                                     capsys):
    """The way back from an update is the backup: an older bridge never opens a newer store."""
    settings = make_settings({"server": {"port": free_port()}})
    db = settings.store.sqlite_path
    asyncio.run(open_bridge(settings).close())
    with sqlite3.connect(db) as conn:  # as the next release's migration would leave it
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'next release', 0)",
                     (SCHEMA_VERSION + 1,))
    expected = [
        f"sitegpt-bridge: the store at {db} has schema version {SCHEMA_VERSION + 1}, but "
        f"this sitegpt-bridge knows versions up to {SCHEMA_VERSION}: run the newer bridge "
        "that wrote it, or restore a backup taken before that upgrade"]
    for command in ("check", "deliveries"):
        assert main([command, "--config", str(tmp_path / "settings.toml")]) == 1
        assert capsys.readouterr().err.splitlines() == expected
    done = run_command("serve", tmp_path / "settings.toml", tmp_path)
    assert (done.returncode, done.stderr.splitlines()) == (1, expected)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (
            SCHEMA_VERSION + 1,)
