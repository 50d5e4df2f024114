"""The fake Mattermost in a process of its own, noting when each benchmark message arrives.

As bench/slack_server.py: arrival times are time.perf_counter(), comparable with the
benchmark's own; a reply carrying a backlog notes each message in it.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.slack_server import MARKER
from tests.fake_mattermost import FakeMattermost

ARRIVALS = "/bench/arrivals"
ESCAPE = re.compile(r"\\(.)")  # Mattermost's markdown escapes, undone to read the marker


class StampingMattermost(FakeMattermost):
    """The fake Mattermost, noting when each message (by the marker in its question) arrived."""

    def __init__(self) -> None:
        super().__init__(channels=("mm_bench",))
        self.arrived: dict[str, float] = {}
        self.app.router.routes.append(Route(ARRIVALS, self._arrivals, methods=["GET"]))

    async def _post(self, request: Request) -> Response:
        arrived = time.perf_counter()
        response = await super()._post(request)
        if response.status_code == 201:
            # The post from the answer, not the last kept: the fake yields before it answers,
            # and a post made meanwhile would be last.
            post = json.loads(bytes(response.body))
            for marker in MARKER.findall(ESCAPE.sub(r"\1", str(post["message"]))):
                self.arrived.setdefault(marker, arrived)
        return response

    async def _arrivals(self, request: Request) -> Response:
        return JSONResponse({"arrived": self.arrived, "posts": len(self.posts)})


def main() -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with StampingMattermost() as fake:
        print(fake.url, flush=True)
        stopped.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
