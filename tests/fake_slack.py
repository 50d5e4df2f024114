"""A fake Slack Web API on 127.0.0.1: records every call and fails when told to."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.loopback import LoopbackServer


@dataclass
class Scripted:
    """A canned answer for the next call of a method ("*" for any)."""

    method: str
    status: int = 200
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeSlack:
    """Enough of chat.postMessage, chat.update, auth.test and users.info for the bridge."""

    def __init__(self, channel_rate: float | None = None, channel_burst: int = 3,
                 post_delay: float = 0.0) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.posts: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.rate_limited: list[str] = []
        self.script: deque[Scripted] = deque()
        self.outage_status: int | None = None
        self.post_delay = post_delay
        self.channel_rate = channel_rate
        self.channel_burst = channel_burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._serial = 0
        app = Starlette(routes=[Route("/api/{method}", self._handle, methods=["POST", "GET"])])
        self.server = LoopbackServer(app)

    @property
    def api_url(self) -> str:
        return f"{self.server.url}/api/"

    def __enter__(self) -> FakeSlack:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def fail_next(self, method: str, times: int = 1, **answer: Any) -> None:
        for _ in range(times):
            self.script.append(Scripted(method, **answer))

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        return [post for post in self.posts
                if post.get("channel") == channel and post.get("thread_ts") == thread_ts]

    def parents(self) -> list[dict[str, Any]]:
        return [post for post in self.posts if not post.get("thread_ts")]

    async def _handle(self, request: Request) -> Response:
        method = request.path_params["method"]
        args = await _arguments(request)
        with self._lock:
            self.calls.append((method, args, dict(request.headers)))
            scripted = self._scripted(method)
        if scripted is not None:
            await asyncio.sleep(scripted.delay)
            return _answer(scripted.status, scripted.error, scripted.headers)
        if self.outage_status is not None:
            return PlainTextResponse("upstream unavailable", self.outage_status)
        if not request.headers.get("authorization", "").startswith("Bearer xoxb-"):
            return JSONResponse({"ok": False, "error": "not_authed"})
        if method == "chat.postMessage" and self.post_delay:
            await asyncio.sleep(self.post_delay)
        return self._perform(method, args)

    def _scripted(self, method: str) -> Scripted | None:
        if self.script and self.script[0].method in (method, "*"):
            return self.script.popleft()
        return None

    def _perform(self, method: str, args: dict[str, Any]) -> Response:
        if method == "auth.test":
            return JSONResponse({"ok": True, "team": "Acme", "team_id": "T1", "user": "bridge",
                                 "user_id": "U0BRIDGE", "bot_id": "B1"})
        if method == "chat.postMessage":
            return self._post(args)
        if method == "chat.update":
            with self._lock:
                self.updates.append(args)
            return JSONResponse({"ok": True, "channel": args.get("channel"), "ts": args.get("ts")})
        return JSONResponse({"ok": False, "error": "unknown_method"})

    def _post(self, args: dict[str, Any]) -> Response:
        channel = str(args.get("channel"))
        if channel == "C_MISSING":
            return JSONResponse({"ok": False, "error": "channel_not_found"})
        with self._lock:
            if not self._allow(channel):
                self.rate_limited.append(channel)
                return _answer(429, "ratelimited", {"Retry-After": "1"})
            self._serial += 1
            ts = f"{1_700_000_000 + self._serial}.{self._serial:06d}"
            self.posts.append({**args, "ts": ts})
        return JSONResponse({"ok": True, "channel": channel, "ts": ts})

    def _allow(self, channel: str) -> bool:
        if self.channel_rate is None:
            return True
        now = time.monotonic()
        tokens, stamp = self._buckets.get(channel, (float(self.channel_burst), now))
        tokens = min(self.channel_burst, tokens + (now - stamp) * self.channel_rate)
        if tokens < 1:
            self._buckets[channel] = (tokens, now)
            return False
        self._buckets[channel] = (tokens - 1, now)
        return True


async def _arguments(request: Request) -> dict[str, Any]:
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        return json.loads(body or b"{}")
    return dict(parse_qsl(body.decode()))


def _answer(status: int, error: str | None, headers: dict[str, str]) -> Response:
    if error is None:
        return PlainTextResponse("error", status, headers=headers)
    return JSONResponse({"ok": False, "error": error}, status, headers=headers)
