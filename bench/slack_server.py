"""The fake Slack in a process of its own, noting when each benchmark message arrives.

Run apart from the benchmark so that sending webhooks never slows its answers. Arrival times
are time.perf_counter() (CLOCK_MONOTONIC), comparable with the benchmark's own.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from tests.fake_slack import FakeSlack

MARKER = re.compile(r"\(#([\w-]+)\)")
ARRIVALS = "bench.arrivals"


class StampingSlack(FakeSlack):
    """The fake Slack, noting when each message (by the marker in its question) arrived."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.arrived: dict[str, float] = {}
        self.order: list[str] = []

    def _post(self, args: dict[str, Any], author: dict[str, str]) -> Response:
        arrived = time.perf_counter()
        response = super()._post(args, author)
        marker = MARKER.search(str(args.get("text", "")))
        if response.status_code == 200 and marker:
            self.arrived[marker[1]] = arrived
            self.order.append(marker[1])
        return response

    def _perform(self, method: str, args: dict[str, Any], author: dict[str, str]) -> Response:
        if method == ARRIVALS:
            return JSONResponse({"arrived": self.arrived, "order": self.order,
                                 "rate_limited": len(self.rate_limited)})
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
