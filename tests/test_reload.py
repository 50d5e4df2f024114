"""Settings and templates that apply while the bridge runs: real processes, a fake Slack."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from bridge.cli import main
from bridge.fingerprint import differing, section_hashes
from bridge.reload import keep_restart_only
from bridge.samples import load_sample
from tests.bridges import query
from tests.fake_slack import FakeSlack, fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)
from tests.servers import BridgeProcess, clean_environ
from tests.settings_files import TOKENS

T = TypeVar("T")
DEADLINE = 20.0
VISITOR = "default:slack/message_visitor.json.j2"
REFUSED_AT = "SELECT rejected_at FROM settings_in_use"
REFUSED_METRIC = "sitegpt_bridge_settings_last_reload_successful"


def slack(fake: FakeSlack, channel: str) -> dict[str, Any]:
    return {"slack": {"bot_token": "xoxb-test", "api_url": fake.api_url, "channel": channel,
                      "burst": 1000, "per_second": 1000.0}}


def post_message(bridge: BridgeProcess, thread: str, question: str = "hello") -> None:
    """A visitor's message in a conversation of its own: it starts a thread where Slack's goes."""
    body = load_sample("message-visitor")
    body["data"] |= {"threadId": thread, "question": question}
    answer = httpx.post(f"{bridge.url}/webhooks/messages", json=body, timeout=10,
                        headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
    assert answer.json()["status"] == "accepted"


def eventually(found: Callable[[], T], what: str) -> T:
    """Poll until `found()` is truthy; fail naming `what` after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {value!r}")
        time.sleep(0.02)
    return value


def channels(fake: FakeSlack) -> list[str]:
    return [post["channel"] for post in fake.parents()]


def texts(fake: FakeSlack) -> list[str]:
    """What was posted in threads: the messages, below each conversation's parent."""
    return [post["text"] for post in fake.posts if post.get("thread_ts")]


def visitor_template(folder: Path, prefix: str) -> None:
    """An override of the visitor's message that only changes its fallback text."""
    (folder / "slack").mkdir(parents=True, exist_ok=True)
    (folder / "slack" / "message_visitor.json.j2").write_text(
        f'{{% extends "{VISITOR}" %}}\n'
        f"{{% block fallback %}}{prefix}{{{{ message.question | mrkdwn }}}}{{% endblock %}}\n")


def test_a_new_channel_takes_the_next_message_without_a_restart(make_settings, tmp_path, fake):
    make_settings(slack(fake, "C_OLD"))
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as bridge:
        post_message(bridge, "t1")
        eventually(lambda: channels(fake) == ["C_OLD"], "the first message in C_OLD")

        make_settings(slack(fake, "C_NEW"))
        eventually(lambda: "settings reloaded" in bridge.log, "the reload")
        post_message(bridge, "t2")
        eventually(lambda: channels(fake) == ["C_OLD", "C_NEW"], "the next message in C_NEW")
        assert bridge.process is not None and bridge.process.poll() is None
        assert f"settings reloaded from {tmp_path / 'settings.toml'}: slack changed" in bridge.log
        assert f"{REFUSED_METRIC} 1.0" in httpx.get(f"{bridge.url}/metrics").text


def test_an_edited_template_shapes_the_next_message(make_settings, tmp_path, fake):
    folder = tmp_path / "my-templates"
    visitor_template(folder, "First: ")
    make_settings({**slack(fake, "C1"), "templates": {"dir": str(folder)}})
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as bridge:
        post_message(bridge, "t1", "one")
        eventually(lambda: texts(fake) == ["First: one"], "the first template's text")

        visitor_template(folder, "Second: ")
        eventually(lambda: "template files changed" in bridge.log, "the reload")
        post_message(bridge, "t2", "two")
        eventually(lambda: texts(fake) == ["First: one", "Second: two"], "the edited text")


def test_a_templates_folder_set_while_running_is_used_and_watched(make_settings, tmp_path, fake):
    folder = tmp_path / "my-templates"
    visitor_template(folder, "First: ")
    make_settings(slack(fake, "C1"))
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as bridge:
        make_settings({**slack(fake, "C1"), "templates": {"dir": str(folder)}})
        eventually(lambda: "templates, template files changed" in bridge.log, "the reload")
        visitor_template(folder, "Second: ")
        eventually(lambda: bridge.log.count("template files changed") == 2,
                   "the reload from the newly watched folder")
        post_message(bridge, "t1", "one")
        eventually(lambda: texts(fake) == ["Second: one"], "the edited text")


def test_an_invalid_edit_keeps_the_old_settings_and_logs_one_error(make_settings, tmp_path, fake):
    config = tmp_path / "settings.toml"
    db = make_settings(slack(fake, "C_OLD")).store.sqlite_path
    with BridgeProcess(config, cwd=tmp_path) as bridge:
        config.write_text(config.read_text().replace('"channel" = "C_OLD"', '"chanel" = "C_NEW"'))
        eventually(lambda: "settings not applied" in bridge.log, "the refusal")
        post_message(bridge, "t1")
        eventually(lambda: channels(fake) == ["C_OLD"], "the message in the old channel")
        assert httpx.get(f"{bridge.url}/readyz").json() == {"status": "ready"}
        assert f"{REFUSED_METRIC} 0.0" in httpx.get(f"{bridge.url}/metrics").text
        [(first,)] = query(db, REFUSED_AT)
        config.write_text(config.read_text() + "\n")  # read again, still as wrong
        eventually(lambda: query(db, REFUSED_AT)[0][0] > first, "the second refusal")
        [error] = [line for line in bridge.log.splitlines() if "settings not applied" in line]
    assert f"invalid settings in {config}" in error
    assert "slack.chanel: unknown key" in error


def test_an_invalid_toml_edit_names_the_file_and_line(make_settings, tmp_path, fake):
    config = tmp_path / "settings.toml"
    make_settings(slack(fake, "C_OLD"))
    with BridgeProcess(config, cwd=tmp_path) as bridge:
        config.write_text(config.read_text() + "[slack\n")
        error = eventually(lambda: [line for line in bridge.log.splitlines()
                                    if "settings not applied" in line], "the refusal")
        post_message(bridge, "t1")
        eventually(lambda: channels(fake) == ["C_OLD"], "the message in the old channel")
    assert f"{config}: not valid TOML" in error[0]
    assert "line" in error[0]


def test_check_says_the_settings_on_disk_are_not_in_use_when_the_bridge_refused_them(
        make_settings, tmp_path, fake, capsys):
    folder = tmp_path / "my-templates"
    folder.mkdir()
    config = tmp_path / "settings.toml"
    make_settings({**slack(fake, "C1"), "templates": {"dir": str(folder)}})
    with BridgeProcess(config, cwd=tmp_path) as bridge:
        visitor_template(folder, "{{ message.nothing_of_the_kind }}")
        eventually(lambda: "settings not applied" in bridge.log, "the refusal")
        post_message(bridge, "t1", "still here")
        eventually(lambda: texts(fake) == ["Visitor: still here"], "the built-in text")
        assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "the settings on disk are not in use: templates failed their check" in out
    assert f"serve, pid {bridge.process.pid}" in out  # type: ignore[union-attr]


def test_sighup_reloads_the_settings(make_settings, tmp_path, fake):
    make_settings(slack(fake, "C_OLD"))
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as bridge:
        make_settings(slack(fake, "C_NEW"))
        assert bridge.process is not None
        bridge.process.send_signal(signal.SIGHUP)
        eventually(lambda: "settings reloaded" in bridge.log, "the reload")
        post_message(bridge, "t1")
        eventually(lambda: channels(fake) == ["C_NEW"], "the message in C_NEW")
        assert bridge.process.poll() is None  # SIGHUP's default would have ended it
    assert "SIGHUP: reading" in bridge.log


def test_a_new_host_waits_for_a_restart_while_the_rest_applies(
        make_settings, tmp_path, fake, monkeypatch, capsys):
    config = tmp_path / "settings.toml"
    make_settings(slack(fake, "C_OLD"))
    with BridgeProcess(config, cwd=tmp_path) as bridge:
        monkeypatch.setenv("BRIDGE_SERVER__PORT", str(bridge.port))  # as the bridge's own
        assert main(["retry", "--failed", "--config", str(config)]) == 0
        assert "uses other settings" not in capsys.readouterr().err

        make_settings({**slack(fake, "C_NEW"), "server": {"host": "127.0.0.2"}})
        eventually(lambda: "settings reloaded" in bridge.log, "the reload")
        post_message(bridge, "t1")  # still on the address it bound at start
        eventually(lambda: channels(fake) == ["C_NEW"], "the message in C_NEW")
        assert "restart to apply: server.host" in bridge.log

        assert main(["retry", "--failed", "--config", str(config)]) == 0
        assert main(["send-test", "messages", "--url", f"{bridge.url}/webhooks/messages",
                     "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert err.count("uses other settings") == 2  # retry's line, then send-test's
    assert f"the running bridge (serve, pid {bridge.process.pid}, loaded at " in err  # type: ignore[union-attr]
    assert f"uses other settings than {config} on disk: server" in err



def test_a_call_in_flight_finishes_on_the_settings_it_started_with(make_settings, tmp_path, fake):
    make_settings(slack(fake, "C_OLD"))
    with BridgeProcess(tmp_path / "settings.toml", cwd=tmp_path) as bridge:
        fake.answer_late(2.0)  # the thread's parent is posted, its answer kept back meanwhile
        post_message(bridge, "t1", "slow")
        eventually(lambda: channels(fake) == ["C_OLD"], "the call in flight")

        make_settings(slack(fake, "C_NEW"))
        eventually(lambda: "settings reloaded" in bridge.log, "the reload")
        assert texts(fake) == []  # the reload did not wait for the call, nor cut it short
        eventually(lambda: texts(fake) == ["Visitor: slow"], "the rest of the delivery")
        assert channels(fake) == ["C_OLD"]
        assert '"outcome": "retry"' not in bridge.log


def test_a_separate_worker_reloads_its_own_settings(make_settings, tmp_path, fake):
    config = tmp_path / "settings.toml"
    make_settings(slack(fake, "C_OLD"))
    with BridgeProcess(config, cwd=tmp_path, args=["--no-worker"]) as web, \
            WorkerProcess(config, tmp_path) as worker:
        post_message(web, "t1")
        eventually(lambda: channels(fake) == ["C_OLD"], "the first message in C_OLD")
        make_settings(slack(fake, "C_NEW"))
        eventually(lambda: "settings reloaded" in worker.log, "the worker's reload")
        post_message(web, "t2")
        eventually(lambda: channels(fake) == ["C_OLD", "C_NEW"], "the next message in C_NEW")
        assert "settings reloaded" in web.log  # each process reloads on its own


class WorkerProcess:
    """`python -m bridge worker` as a child process, its log kept in a file."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.log_path = cwd / "worker.log"
        self.command = [sys.executable, "-m", "bridge", "worker", "--config", str(config)]
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=clean_environ(),
                                            stdout=log, stderr=subprocess.STDOUT)
        eventually(lambda: "worker started" in self.log, "the worker to start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(DEADLINE)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize(("change", "pending"), [
    ({"server": {"port": 9999}}, ["server.port"]),
    ({"server": {"host": "0.0.0.0", "max_body_bytes": 4096}}, ["server.host"]),
    ({"store": {"pool_size": 3, "retention_days": 7}}, ["store.pool_size"]),
    ({"log": {"format": "text", "level": "DEBUG"}}, ["log.format"]),
    ({"delivery": {"concurrency": 2}}, []),
])
def test_what_cannot_change_live_is_kept_and_named(make_settings, change, pending):
    running = make_settings()
    wanted = make_settings(change)
    kept, named = keep_restart_only(running, wanted)
    assert named == pending
    assert differing(section_hashes(kept), section_hashes(running)) == [
        section for section in change
        if any(f"{section}.{key}" not in pending for key in change[section])]
