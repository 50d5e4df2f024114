"""The fake Mattermost in a process of its own, noting when each benchmark message arrives.

As bench/slack_server.py: arrival times are time.perf_counter(), comparable with the
benchmark's own; a reply carrying a backlog notes each message in it. A bench-only route writes
a member's reply in a thread, as a person would, and says when it went out on the WebSocket;
the ✅ the bridge then puts on it is noted too.
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
PUBLISH = "/bench/publish"  # JSON {"root_id", "message", "sender"}: a member's reply, sent now
ESCAPE = re.compile(r"\\(.)")  # Mattermost's markdown escapes, undone to read the marker


class StampingMattermost(FakeMattermost):
    """The fake Mattermost, noting when each message (by the marker in its question) arrived."""

    def __init__(self) -> None:
        super().__init__(channels=("mm_bench",))
        self.arrived: dict[str, float] = {}
        self.threads: dict[str, str] = {}  # marker -> the root post of the thread it is in
        self.marked: dict[str, float] = {}  # post id -> when the bridge's ✅ on it arrived
        self.app.router.routes += [Route(ARRIVALS, self._arrivals, methods=["GET"]),
                                   Route(PUBLISH, self._publish, methods=["POST"])]

    async def _post(self, request: Request) -> Response:
        arrived = time.perf_counter()
        response = await super()._post(request)
        if response.status_code == 201:
            # The post from the answer, not the last kept: the fake yields before it answers,
            # and a post made meanwhile would be last.
            post = json.loads(bytes(response.body))
            for marker in MARKER.findall(ESCAPE.sub(r"\1", str(post["message"]))):
                self.arrived.setdefault(marker, arrived)
                self.threads.setdefault(marker, post["root_id"] or post["id"])
        return response

    async def _react(self, request: Request) -> Response:
        arrived = time.perf_counter()
        response = await super()._react(request)
        if response.status_code == 201:
            self.marked.setdefault(json.loads(bytes(response.body))["post_id"], arrived)
        return response

    async def _publish(self, request: Request) -> Response:
        """A member's reply in a thread, sent on the open sockets from this loop: its id, how
        many sockets it reached and when it was sent."""
        reply = await request.json()
        sender = reply["sender"]
        self.users.setdefault(f"{sender}_id", {"id": f"{sender}_id", "username": sender,
                                               "first_name": sender.capitalize()})
        root = self.root(reply["root_id"])
        sent = time.perf_counter()
        post = await self.publish_here({"channel_id": root["channel_id"],
                                        "root_id": root["id"], "message": reply["message"]},
                                       sender)
        return JSONResponse({"id": post["id"], "reached": self.live[post["id"]], "sent": sent})

    async def _arrivals(self, request: Request) -> Response:
        return JSONResponse({"arrived": self.arrived, "posts": len(self.posts),
                             "threads": self.threads, "marked": self.marked,
                             "sockets": len(self.sockets)})


def main() -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with StampingMattermost() as fake:
        print(fake.url, flush=True)
        stopped.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
