"""A fake SiteGPT API in a process of its own, noting when each agent message arrives.

As bench/slack_server.py: arrival times are time.perf_counter() (CLOCK_MONOTONIC), comparable
with the benchmark's own, and each message is known by the marker in its text. It takes every
message with the right key (200) and refuses the rest (401), so a bench set up wrong says so.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.slack_server import MARKER
from tests.loopback import LoopbackServer

API_KEY = "sk-bench"
API_PATH = "/api/v0"
ARRIVALS = "/bench/arrivals"


class StampingSiteGPT:
    """SiteGPT's message endpoint, noting when each marked message arrived and as whom."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.agents: dict[str, str] = {}  # marker -> the agentName it came with
        self.refused = 0
        self.app = Starlette(routes=[
            Route(f"{API_PATH}/chatbots/{{chatbot_id}}/message", self._message,
                  methods=["POST"]),
            Route(ARRIVALS, self._arrivals, methods=["GET"]),
        ])
        self.server = LoopbackServer(self.app)

    @property
    def api_url(self) -> str:
        return f"{self.server.url}{API_PATH}"

    async def _message(self, request: Request) -> Response:
        arrived = time.perf_counter()
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            self.refused += 1
            return JSONResponse({"message": "Invalid API key"}, 401)
        message = await request.json()
        for marker in MARKER.findall(str(message.get("message", ""))):
            self.arrived.setdefault(marker, arrived)
            self.agents.setdefault(marker, str(message.get("agentName")))
        return JSONResponse({"messageType": "AGENT_MESSAGE", "answer": message.get("message")})

    async def _arrivals(self, request: Request) -> Response:
        return JSONResponse({"arrived": self.arrived, "agents": self.agents,
                             "refused": self.refused})


def main() -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    fake = StampingSiteGPT()
    fake.server.start()
    try:
        print(fake.server.url, flush=True)
        stopped.wait()
    finally:
        fake.server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
