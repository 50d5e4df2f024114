"""The servers under test, each in its own process: start, wait until ready, read RSS, stop."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
READY_TIMEOUT = 30.0


@dataclass
class Server:
    """A server process and what was seen of it."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_seconds: float = 0.0
    native: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Resident memory from /proc, in MB (10^6 bytes)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kilobytes = next(line.split()[1] for line in status.splitlines()
                         if line.startswith("VmRSS:"))
        return int(kilobytes) * 1024 / 1e6

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(name: str, command: list[str], port: int, log: Path, ready_path: str,
          env: dict[str, str] | None = None, ready_status: int | None = None) -> Server:
    """Start `command` and wait until GET `ready_path` answers (`ready_status` if given)."""
    with log.open("wb") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=env or os.environ.copy())
    server = Server(name, process, port, log)
    try:
        _wait_ready(server, ready_path, ready_status)
    except BaseException:
        server.stop()
        raise
    server.ready_seconds = time.perf_counter() - started
    server.native = _native_modules(process.pid)
    return server


def _wait_ready(server: Server, path: str, status: int | None) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        answered = _get_status(server.port, path)
        if answered is not None and (status is None or answered == status):
            return
        time.sleep(0.005)
    raise RuntimeError(f"{server.name} was not ready within {READY_TIMEOUT:g} s")


def _get_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _native_modules(pid: int) -> list[str]:
    """Which fast event loop and HTTP parser the process really loaded."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in ("uvloop", "httptools") if f"/{name}/" in maps]


def python_command(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


@contextlib.contextmanager
def fake_service(module: str, *arguments: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A fake remote service in a process of its own (`python -m module`), so that the
    benchmark's load never slows its answers: the process, and the address it printed."""
    process = subprocess.Popen(python_command("-m", module, *arguments),
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        yield process, process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


def bridge_settings(folder: Path, port: int, slack_url: str | None,
                    slack_pacing: tuple[int, float] = (3, 1.0),
                    store_url: str | None = None) -> Path:
    """A settings file for a fresh bridge: its store in `folder` (or at `store_url`)."""
    burst, per_second = slack_pacing
    slack = [f"burst = {burst}", f"per_second = {per_second}"]
    if slack_url:  # else the Slack destination runs dry, logging what it would post
        slack += ['bot_token = "xoxb-bench"', f"api_url = {json.dumps(slack_url)}",
                  'channel = "C_BENCH"']
    lines = [
        "[server]", 'host = "127.0.0.1"', f"port = {port}",
        "[store]", f"url = {json.dumps(store_url or f'sqlite:///{folder}/bridge.db')}",
        *(f"[webhooks.{name}]\ntokens = [{json.dumps(TOKEN)}]"
          for name in ("messages", "escalations", "leads")),
        "[slack]", *slack,
        "[log]", 'format = "json"',
    ]
    path = folder / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def bridge_env() -> dict[str, str]:
    """The environment without BRIDGE_* overrides, so only the bench's settings file counts."""
    return {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
