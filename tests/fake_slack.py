"""A fake Slack Web API on 127.0.0.1: records every call and fails when told to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest
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


USERS = {
    "U_ANA": {"id": "U_ANA", "name": "ana", "real_name": "Ana Pérez",
              "profile": {"display_name": "Ana", "real_name": "Ana Pérez",
                          "image_72": "https://avatars.example/ana-72.png",
                          "image_192": "https://avatars.example/ana-192.png"}},
    "U_BEN": {"id": "U_BEN", "name": "ben", "real_name": "Ben Okafor",
              "profile": {"display_name": "", "real_name": "Ben Okafor"}},
}
BOT_ID = "B1"
# Slack refuses a message beyond these (https://api.slack.com/reference/block-kit/blocks).
MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_FIELD_TEXT = 2_000
MAX_HEADER_TEXT = 150
MAX_ELEMENTS = 10


class FakeSlack:
    """Enough of chat.*, conversations.history and .replies, reactions.add, auth.test and
    users.info for the bridge.

    A bot token (xoxb-...) posts as the bridge; a user token `xoxp-<user id>` posts as that
    person, so a test can write in a thread the way a person would and get the Events API
    message Slack would send for it (`message_event`).
    """

    def __init__(self, channel_rate: float | None = None, channel_burst: int = 3,
                 post_delay: float = 0.0, answer_delay: float = 0.0) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.posts: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.users: dict[str, dict[str, Any]] = {key: dict(user) for key, user in USERS.items()}
        self.rate_limited: list[str] = []
        self.refused: list[tuple[str, dict[str, Any]]] = []  # (Slack's error, the arguments)
        self.script: deque[Scripted] = deque()
        self.outage_status: int | None = None
        self.post_delay = post_delay  # before the post is made
        self.answer_delay = answer_delay  # after it is made, before Slack answers
        self.late_posts: deque[float] = deque()
        self.late_lookups: deque[float] = deque()
        self.page_size = 200
        self.channel_rate = channel_rate
        self.channel_burst = channel_burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._serial = 0
        self._unanswered = 0  # posts made whose answer is still on its way
        self._closing: asyncio.Event | None = None  # made on the server's loop, by its first wait
        self._loop: asyncio.AbstractEventLoop | None = None
        app = Starlette(routes=[Route("/api/{method}", self._handle, methods=["POST", "GET"])])
        self.server = LoopbackServer(app)

    @property
    def api_url(self) -> str:
        return f"{self.server.url}/api/"

    def __enter__(self) -> FakeSlack:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # A late answer no client waits for any more is cut short, or stopping would wait it out.
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        self.server.stop()

    def reset(self) -> None:
        """Forget every call and instruction, for a server shared by several tests."""
        with self._lock:
            for record in (self.calls, self.posts, self.updates, self.reactions,
                           self.rate_limited, self.refused):
                record.clear()
            self.script.clear()
            self.late_posts.clear()
            self.late_lookups.clear()
            self._buckets.clear()
            self.users = {key: dict(user) for key, user in USERS.items()}
        self.outage_status = None

    def fail_next(self, method: str, times: int = 1, **answer: Any) -> None:
        for _ in range(times):
            self.script.append(Scripted(method, **answer))

    def answer_late(self, seconds: float, method: str = "chat.postMessage") -> None:
        """The next chat.postMessage is posted, but its answer comes `seconds` late; or the next
        lookup (conversations.replies or .history) answers that late."""
        (self.late_posts if method == "chat.postMessage" else self.late_lookups).append(seconds)

    def unanswered(self) -> int:
        """Posts Slack made whose answer is still on its way (see answer_delay)."""
        with self._lock:
            return self._unanswered

    def lookups(self) -> list[dict[str, Any]]:
        """The arguments of every conversations.replies call, in order."""
        return [args for method, args, _ in list(self.calls) if method == "conversations.replies"]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        return [post for post in self.posts
                if post.get("channel") == channel and post.get("thread_ts") == thread_ts]

    def parents(self) -> list[dict[str, Any]]:
        return [post for post in self.posts if not post.get("thread_ts")]

    def message_event(self, ts: str, **changes: Any) -> dict[str, Any]:
        """The Events API `message` event Slack sends for the post `ts` (plus `changes`)."""
        post = next(post for post in self.posts if post["ts"] == ts)
        event = {"type": "message", "channel": post["channel"], "text": post.get("text", ""),
                 "ts": ts, "event_ts": ts, "channel_type": "channel"}
        for key in ("user", "bot_id", "thread_ts"):
            if post.get(key):
                event[key] = post[key]
        return {**event, **changes}

    async def _handle(self, request: Request) -> Response:
        method = request.path_params["method"]
        args = await _arguments(request)
        with self._lock:
            self.calls.append((method, args, dict(request.headers)))
            scripted = self._scripted(method)
        if scripted is not None:
            await self._pause(scripted.delay)
            return _answer(scripted.status, scripted.error, scripted.headers)
        if self.outage_status is not None:
            return PlainTextResponse("upstream unavailable", self.outage_status)
        author = _author(request.headers.get("authorization", ""))
        if author is None:
            return JSONResponse({"ok": False, "error": "not_authed"})
        if method == "chat.postMessage" and self.post_delay:
            await self._pause(self.post_delay)
        answer = self._perform(method, args, author)
        landed = method == "chat.postMessage" and b'"ok":true' in answer.body
        self._landing(+landed)
        try:
            await self._pause(self._answer_delay(method))
        finally:
            self._landing(-landed)
        return answer

    def _landing(self, change: int) -> None:
        with self._lock:
            self._unanswered += change

    def _answer_delay(self, method: str) -> float:
        if method == "chat.postMessage":
            return self.late_posts.popleft() if self.late_posts else self.answer_delay
        if method in ("conversations.replies", "conversations.history") and self.late_lookups:
            return self.late_lookups.popleft()
        return 0.0


    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` before answering, unless the server is closing first."""
        if self._closing is None:
            self._closing = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _scripted(self, method: str) -> Scripted | None:
        if self.script and self.script[0].method in (method, "*"):
            return self.script.popleft()
        return None

    def _perform(self, method: str, args: dict[str, Any], author: dict[str, str]) -> Response:
        if method == "auth.test":
            return JSONResponse({"ok": True, "team": "Acme", "team_id": "T1", "user": "bridge",
                                 "user_id": "U0BRIDGE", "bot_id": "B1"})
        if method in ("chat.postMessage", "chat.update") and (error := over_limits(args)):
            with self._lock:
                self.refused.append((error, args))
            return JSONResponse({"ok": False, "error": error})
        if method == "chat.postMessage":
            return self._post(args, author)
        if method == "chat.update":
            with self._lock:
                self.updates.append(args)
            return JSONResponse({"ok": True, "channel": args.get("channel"), "ts": args.get("ts")})
        if method == "reactions.add":
            return self._react(args)
        if method == "conversations.history":
            return self._history(args)
        if method == "conversations.replies":
            return self._replies(args)
        if method == "users.info":
            user = self.users.get(str(args.get("user")))
            if user is None:
                return JSONResponse({"ok": False, "error": "user_not_found"})
            return JSONResponse({"ok": True, "user": user})
        return JSONResponse({"ok": False, "error": "unknown_method"})

    def _history(self, args: dict[str, Any]) -> Response:
        """A channel's top-level messages after `oldest`, newest first, a page at a time."""
        if str(args.get("channel")) in ("C_MISSING", "C0MISSING"):
            return JSONResponse({"ok": False, "error": "channel_not_found"})
        oldest = float(args.get("oldest") or 0)
        with self._lock:
            found = [post for post in reversed(self.posts)
                     if post.get("channel") == args.get("channel") and not post.get("thread_ts")
                     and float(post["ts"]) > oldest]
        return self._page(found, args)

    def _replies(self, args: dict[str, Any]) -> Response:
        """A thread's parent, then its replies after `oldest`, oldest first, a page at a time.

        As Slack does: the parent comes first whatever `oldest` says, and metadata only with
        include_all_metadata.
        """
        channel, ts = args.get("channel"), str(args.get("ts") or "")
        oldest = float(args.get("oldest") or 0)
        with self._lock:
            parent = [post for post in self.posts
                      if post.get("channel") == channel and post["ts"] == ts]
            replies = [post for post in self.posts
                       if post.get("channel") == channel and post.get("thread_ts") == ts
                       and float(post["ts"]) > oldest]
        if not parent:
            return JSONResponse({"ok": False, "error": "thread_not_found"})
        return self._page(parent + replies, args)

    def _page(self, found: list[dict[str, Any]], args: dict[str, Any]) -> Response:
        with_metadata = str(args.get("include_all_metadata")).lower() in ("1", "true")
        start = int(args.get("cursor") or 0)
        page = found[start:start + self.page_size]
        more = start + self.page_size < len(found)
        messages = [{"type": "message", "ts": post["ts"], "text": post.get("text", ""),
                     **{key: post[key] for key in ("thread_ts", "bot_id", "user") if key in post},
                     **({"metadata": post["metadata"]} if with_metadata and "metadata" in post
                        else {})} for post in page]
        return JSONResponse({"ok": True, "messages": messages, "has_more": more,
                             "response_metadata": {
                                 "next_cursor": str(start + self.page_size) if more else ""}})

    def _react(self, args: dict[str, Any]) -> Response:
        reaction = {key: args.get(key) for key in ("channel", "timestamp", "name")}
        with self._lock:
            if reaction in self.reactions:
                return JSONResponse({"ok": False, "error": "already_reacted"})
            self.reactions.append(reaction)
        return JSONResponse({"ok": True})

    def _post(self, args: dict[str, Any], author: dict[str, str]) -> Response:
        channel = str(args.get("channel"))
        if channel == "C_MISSING":
            return JSONResponse({"ok": False, "error": "channel_not_found"})
        with self._lock:
            if not self._allow(channel):
                self.rate_limited.append(channel)
                return _answer(429, "ratelimited", {"Retry-After": "1"})
            # Slack's ts is the time of the post, unique in its channel: a lookup by `oldest`
            # in real time (a process's own clock) must find it.
            self._serial = max(self._serial + 1, int(time.time() * 1_000_000))
            ts = f"{self._serial // 1_000_000}.{self._serial % 1_000_000:06d}"
            self.posts.append({**args, **author, "ts": ts})
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


def over_limits(args: dict[str, Any]) -> str | None:
    """The error Slack answers a message beyond its limits with, or None when it takes it."""
    if len(str(args.get("text") or "")) > MAX_TEXT:
        return "msg_too_long"
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    if len(blocks) > MAX_BLOCKS or not all(_block_fits(block) for block in blocks):
        return "invalid_blocks"
    return None


def _block_fits(block: dict[str, Any]) -> bool:
    limit = MAX_HEADER_TEXT if block.get("type") == "header" else MAX_SECTION_TEXT
    fields = block.get("fields") or []
    elements = (block.get("elements") or []) if block.get("type") == "context" else []
    return (_text_fits(block.get("text"), limit)
            and len(fields) <= MAX_ELEMENTS and len(elements) <= MAX_ELEMENTS
            and all(_text_fits(item, MAX_FIELD_TEXT) for item in fields)
            and all(_text_fits(item, MAX_SECTION_TEXT) for item in elements))


def _text_fits(item: Any, limit: int) -> bool:
    return not isinstance(item, dict) or len(str(item.get("text", ""))) <= limit


@pytest.fixture(scope="module", name="slack_server")
def slack_server_fixture() -> Iterator[FakeSlack]:
    """One fake Slack for a test module: starting a server per test costs more than the test."""
    with FakeSlack() as server:
        yield server


@pytest.fixture(name="fake")
def fake_fixture(slack_server: FakeSlack) -> FakeSlack:
    """The module's fake Slack, with the previous test's calls forgotten."""
    slack_server.reset()
    return slack_server


async def _arguments(request: Request) -> dict[str, Any]:
    body = await request.body()
    query = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("application/json"):
        return {**query, **json.loads(body or b"{}")}
    return {**query, **dict(parse_qsl(body.decode()))}


def _author(authorization: str) -> dict[str, str] | None:
    """Who a token speaks for: the bridge's bot, or the person named in `xoxp-<user id>`."""
    if authorization.startswith("Bearer xoxb-"):
        return {"bot_id": BOT_ID}
    if authorization.startswith("Bearer xoxp-"):
        return {"user": authorization.removeprefix("Bearer xoxp-")}
    return None


def _answer(status: int, error: str | None, headers: dict[str, str]) -> Response:
    if error is None:
        return PlainTextResponse("error", status, headers=headers)
    return JSONResponse({"ok": False, "error": error}, status, headers=headers)
