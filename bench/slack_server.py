"""The fake Slack in a process of its own, noting when each benchmark message arrives.

Run apart from the benchmark so that sending webhooks never slows its answers. Arrival times
are time.perf_counter() (CLOCK_MONOTONIC), comparable with the benchmark's own. A post that
carries several messages (a conversation's backlog in one reply) notes each of them.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fake_slack import FakeSlack

MARKER = re.compile(r"\(#([\w-]+)\)")
ARRIVALS = "bench.arrivals"
OUTAGE = "bench.outage"  # status=503 starts an outage, status=0 ends it


class StampingSlack(FakeSlack):
    """The fake Slack, noting when each message (by the marker in its question) arrived."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.arrived: dict[str, float] = {}
        self.order: list[str] = []
        self.posted = 0

    async def _handle(self, request: Request) -> Response:
        if request.path_params["method"] == OUTAGE:  # answered even while Slack is "down"
            status = int(request.query_params.get("status") or 0)
            self.outage_status = status or None
            return JSONResponse({"ok": True, "status": status})
        return await super()._handle(request)

    def _post(self, args: dict[str, Any], author: dict[str, str]) -> Response:
        arrived = time.perf_counter()
        response = super()._post(args, author)
        if response.status_code != 200:
            return response
        self.posted += 1
        for marker in MARKER.findall(str(args.get("text", ""))):
            self.arrived.setdefault(marker, arrived)
            self.order.append(marker)
        return response

    def _perform(self, method: str, args: dict[str, Any], author: dict[str, str]) -> Response:
        if method == ARRIVALS:
            return JSONResponse({"arrived": self.arrived, "order": self.order,
                                 "rate_limited": len(self.rate_limited), "posts": self.posted,
                                 "lookups": len(self.lookups())})
        return super()._perform(method, args, author)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channel-rate", type=float)
    parser.add_argument("--channel-burst", type=int, default=3)
    args = parser.parse_args()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with StampingSlack(channel_rate=args.channel_rate, channel_burst=args.channel_burst) as fake:
        print(fake.api_url, flush=True)
        stopped.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
