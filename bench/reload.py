"""`python -m bench.reload`: how soon a saved settings file takes the next message.

A bridge runs against the fake Slack; each round saves its settings file with a new channel and
sends a message every 20 ms until one is posted in that channel. It reports the time from the
save to the `settings reloaded` log line, the bridge's own time to check and apply the change
(from that line), and the time from the save to the first message posted in the new channel.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from bench.servers import (
    TOKEN,
    Server,
    bridge_env,
    bridge_settings,
    free_port,
    python_command,
    start,
)
from tests.fake_slack import FakeSlack

APPLIED = re.compile(r"checked and applied in ([\d.]+) s")
SEND_EVERY = 0.02


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__)
    parser.add_argument("--edits", type=int, default=20, help="settings saves (default 20)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    edits = parse_arguments(argv).edits
    with tempfile.TemporaryDirectory() as folder, FakeSlack() as slack:
        port = free_port()
        config = bridge_settings(Path(folder), port, slack.api_url, (1000, 1000.0))
        server = start("bridge", python_command("-m", "bridge", "serve", "--config",
                                                str(config)), port, Path(folder) / "bridge.log",
                       "/readyz", bridge_env(), 200)
        try:
            rounds = [edit_once(server, config, slack, round_) for round_ in range(1, edits + 1)]
        finally:
            server.stop()
    report(rounds)


def edit_once(server: Server, config: Path, slack: FakeSlack,
              round_: int) -> tuple[float, float, float]:
    """Save a new channel; (to the log line, the bridge's own apply time, to the first post)."""
    channel = f"C_ROUND_{round_}"
    reloads = server.log.read_text().count("settings reloaded")
    text = re.sub(r'channel = "[^"]*"', f'channel = "{channel}"', config.read_text())
    saved = time.perf_counter()
    config.write_text(text)
    logged = posted = 0.0
    sent = 0
    while not (logged and posted):
        sent += 1
        send(server, f"{round_}-{sent}")
        time.sleep(SEND_EVERY)
        logged = logged or _when(lambda: server.log.read_text().count("settings reloaded")
                                 > reloads)
        posted = posted or _when(lambda: any(post["channel"] == channel
                                             for post in slack.parents()))
    applied = float(APPLIED.findall(server.log.read_text())[-1])
    return logged - saved, applied, posted - saved


def send(server: Server, thread: str) -> None:
    body = {"event": "ADD_MESSAGE", "data": {
        "chatbotId": "bench", "threadId": thread, "question": "hello",
        "messageType": "USER_MESSAGE", "answer": None, "agentName": None}}
    httpx.post(f"{server.url}/webhooks/messages", json=body, timeout=10,
               headers={"X-WEBHOOK-TOKEN": TOKEN})


def _when(seen: Callable[[], bool]) -> float:
    return time.perf_counter() if seen() else 0.0


def report(rounds: list[tuple[float, float, float]]) -> None:
    print(f"Reload: {len(rounds)} saves of the settings file, a new [slack] channel each")
    print(f"{'':<40}{'median ms':>10}{'max ms':>10}")
    for label, values in zip(("save to `settings reloaded` logged", "check and apply (bridge)",
                              "save to a message in the new channel"), zip(*rounds, strict=True),
                             strict=True):
        print(f"{label:<40}{statistics.median(values) * 1000:>10.0f}"
              f"{max(values) * 1000:>10.0f}")


if __name__ == "__main__":
    main()
