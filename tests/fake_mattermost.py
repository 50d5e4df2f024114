"""A fake Mattermost REST API v4 on 127.0.0.1: posts, patches, users/me, channels; fails on cue.

Its WebSocket (/api/v4/websocket) sends `posted` events for the posts a test publishes as a
person would write them, and drops or refuses connections on cue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.loopback import LoopbackServer

TOKEN = "mm-bot-token"
BOT = {"id": "bot_user_id", "username": "sitegpt"}
MESSAGE_LIMIT = 16_383  # Mattermost refuses a longer message (400)
HELLO = {"event": "hello", "data": {"server_version": "10.5.0", "connection_id": "conn"},
         "broadcast": {"user_id": BOT["id"]}, "seq": 0}
SOCKET_WAIT = 10.0  # seconds a test waits for the fake's loop to reach the sockets
TEAM = "team_id_0000000000000000000"
# Mattermost finds a pressed button through the route /posts/{post_id}/actions/{action_id},
# whose action id takes letters and digits only: a button with another id cannot be pressed.
ACTION_ID = re.compile(r"[A-Za-z0-9]+")


@dataclass
class Scripted:
    """A canned answer for the next request to a route ("*" for any)."""

    route: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeMattermost:
    """Enough of Mattermost for the bridge: the bot token, its channels and the posts made."""

    def __init__(self, channels: tuple[str, ...] = ("mm_conv", "mm_leads"),
                 post_delay: float = 0.0) -> None:
        self.channels = set(channels)
        self.post_delay = post_delay  # how late every post is answered, once made
        self.posts: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.lookups: list[str] = []
        self.late: deque[float] = deque()  # delays of answers due after the work is done
        self.script: deque[Scripted] = deque()
        self.users: dict[str, dict[str, Any]] = {}  # members by id, as GET /users/{id} gives
        self.reactions: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self.sockets: set[WebSocket] = set()  # open now
        self.connections = 0  # sockets ever opened
        self.socket_refusals: deque[int] = deque()  # statuses for the next upgrades
        self.refusing: int | None = None  # the status every upgrade gets, until accept_sockets()
        self.socket_headers: list[dict[str, str]] = []  # of every upgrade asked for
        self.live: dict[str, int] = {}  # published post id -> how many open sockets it reached
        self._socket_loop: asyncio.AbstractEventLoop | None = None
        self._seq = itertools.count(1)
        self.app = Starlette(routes=[
            WebSocketRoute("/api/v4/websocket", self._websocket),
            Route("/api/v4/posts", self._post, methods=["POST"]),
            Route("/api/v4/posts/{post_id}/patch", self._patch, methods=["PUT"]),
            Route("/api/v4/posts/{post_id}/thread", self._thread, methods=["GET"]),
            Route("/api/v4/channels/{channel_id}/posts", self._channel_posts, methods=["GET"]),
            Route("/api/v4/users/me", self._me, methods=["GET"]),
            Route("/api/v4/users/{user_id}", self._user, methods=["GET"]),
            Route("/api/v4/reactions", self._react, methods=["POST"]),
            Route("/api/v4/channels/{channel_id}", self._channel, methods=["GET"]),
        ])
        self.server = LoopbackServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> FakeMattermost:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def fail_next(self, route: str, status: int, times: int = 1, delay: float = 0.0,
                  **headers: str) -> None:
        """Answer the next `times` requests to `route` ("posts", "patch", "me", "channel",
        "lookup", "user", "reaction"): with `status`; for 200, a post is made at once and
        answered `delay` late."""
        self.script.extend(Scripted(route, status, headers, delay) for _ in range(times))

    def roots(self) -> list[dict[str, Any]]:
        return [post for post in self.posts if not post.get("root_id")]

    def thread(self, root_id: str) -> list[dict[str, Any]]:
        return [post for post in self.posts if post.get("root_id") == root_id]

    def root(self, root_id: str) -> dict[str, Any]:
        return next(post for post in self.posts if post["id"] == root_id)

    def publish(self, post: dict[str, Any], sender: str = "alice") -> dict[str, Any]:
        """A post written by a person (`sender`): kept, so the channel's posts include it, and
        sent as a `posted` event on every open socket. The post as kept, its gaps filled."""
        made = self._kept(post, sender)
        self.live[made["id"]] = self._on_socket_loop(self._send_all(_posted(made, sender)))
        return made

    async def publish_here(self, post: dict[str, Any], sender: str = "alice") -> dict[str, Any]:
        """As publish(), from a coroutine already on the fake's own loop (one of its routes)."""
        made = self._kept(post, sender)
        self.live[made["id"]] = await self._send_all(_posted(made, sender))
        return made

    def _kept(self, post: dict[str, Any], sender: str) -> dict[str, Any]:
        made = {"id": f"post{next(self._ids):022d}", "create_at": int(time.time() * 1000),
                "update_at": 0, "delete_at": 0, "user_id": f"{sender}_id", "root_id": "",
                "type": "", "message": "", "props": {}, **post}
        made["update_at"] = made["update_at"] or made["create_at"]
        self.posts.append(made)
        return made

    def drop_sockets(self) -> None:
        """Close every open socket, as a restarting Mattermost or a proxy does."""
        self._on_socket_loop(self._close_all())

    def refuse_sockets(self, status: int, times: int | None = None) -> None:
        """Answer the next `times` upgrades with `status`; every one until accept_sockets()
        when `times` is None."""
        if times is None:
            self.refusing = status
        else:
            self.socket_refusals.extend([status] * times)

    def accept_sockets(self) -> None:
        self.refusing = None
        self.socket_refusals.clear()

    def _on_socket_loop(self, work: Any) -> int:
        """Run `work` on the server's loop, where the sockets live; 0 when none ever opened."""
        if self._socket_loop is None:
            work.close()
            return 0
        return int(asyncio.run_coroutine_threadsafe(work, self._socket_loop).result(SOCKET_WAIT))

    async def _send_all(self, event: dict[str, Any]) -> int:
        """`event` on every open socket; how many it reached (one closing now is not)."""
        reached = 0
        for socket in list(self.sockets):
            try:
                await socket.send_json({**event, "seq": next(self._seq)})
            except (OSError, RuntimeError, WebSocketDisconnect):
                continue
            reached += 1
        return reached

    async def _close_all(self) -> int:
        sockets = list(self.sockets)
        self.sockets.clear()
        for socket in sockets:
            await socket.close(1001)
        return len(sockets)

    async def _websocket(self, websocket: WebSocket) -> None:
        self._socket_loop = asyncio.get_running_loop()
        self.socket_headers.append(dict(websocket.headers))
        if refusal := self._socket_refusal(websocket):
            await websocket.send_denial_response(refusal)
            return
        await websocket.accept()
        self.sockets.add(websocket)
        self.connections += 1
        try:
            await websocket.send_json(HELLO)
            while True:  # until the client leaves: what it sends is not read
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            self.sockets.discard(websocket)

    def _socket_refusal(self, websocket: WebSocket) -> Response | None:
        if websocket.headers.get("authorization") != f"Bearer {TOKEN}":
            return _error(401, "api.context.session_expired.app_error",
                          "Invalid or expired session")
        status = self.socket_refusals.popleft() if self.socket_refusals else self.refusing
        if status is None:
            return None
        return _error(status, "api.web_socket.connect.upgrade.app_error", "scripted refusal")

    def reply_by(self, user_id: str, root_id: str, message: str) -> dict[str, Any]:
        """A member's reply in a thread, as a person writes it in Mattermost."""
        root = self.root(root_id)
        post = {"id": f"post{next(self._ids):022d}", "user_id": user_id, "message": message,
                "channel_id": root["channel_id"], "root_id": root_id, "type": "", "props": {},
                "create_at": int(time.time() * 1000)}
        self.posts.append(post)
        return post

    def buttons(self, post_id: str) -> list[dict[str, Any]]:
        """The buttons a post shows now (its attachments' actions), in order."""
        attachments = (self.root(post_id).get("props") or {}).get("attachments") or []
        return [action for attachment in attachments for action in attachment.get("actions", [])]

    def press(self, post_id: str, action_id: str, user_id: str = "u_ben",
              user_name: str = "ben") -> tuple[str, dict[str, Any]]:
        """A member presses a button: where Mattermost's server then posts, and what.

        As Mattermost does, the server adds the button's integration context, which no
        client ever sees, and a new trigger id for every press.
        """
        if not ACTION_ID.fullmatch(action_id):
            raise ValueError(f"Mattermost cannot route a press of action {action_id!r}")
        post = self.root(post_id)
        action = next(action for action in self.buttons(post_id) if action["id"] == action_id)
        integration = action["integration"]
        return integration["url"], {
            "user_id": user_id, "user_name": user_name, "channel_id": post["channel_id"],
            "team_id": TEAM, "post_id": post_id, "trigger_id": f"trigger{next(self._ids)}",
            "type": "", "context": integration.get("context") or {}}

    async def _scripted(self, route: str) -> Response | None:
        if self.script and self.script[0].route in (route, "*"):
            answer = self.script.popleft()
            if answer.status == 200:  # done at once, answered late
                self.late.append(answer.delay)
                return None
            await asyncio.sleep(answer.delay)
            return JSONResponse({"id": "api.scripted", "message": "scripted failure",
                                 "status_code": answer.status}, answer.status, answer.headers)
        return None

    def _unauthorized(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return _error(401, "api.context.session_expired.app_error",
                          "Invalid or expired session")
        return None

    async def _post(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("posts"):
            return refused
        body = await request.json()
        if body.get("channel_id") not in self.channels:
            return _error(403, "api.context.permissions.app_error", "You do not have permission")
        if len(body.get("message", "")) > MESSAGE_LIMIT:
            self.refused.append(body)
            return _error(400, "model.post.is_valid.msg.app_error", "Invalid Message")
        root_id = body.get("root_id") or ""
        if root_id and not any(post["id"] == root_id for post in self.posts):
            return _error(400, "api.post.create_post.root_id.app_error", "Invalid RootId")
        post = {"id": f"post{next(self._ids):022d}", "user_id": BOT["id"], **body,
                "root_id": root_id, "create_at": int(time.time() * 1000)}
        self.posts.append(post)
        await self._send_all(_posted(post, BOT["username"]))  # the bot hears its own posts too
        await self._answer_late()
        await asyncio.sleep(self.post_delay)
        return JSONResponse(post, 201)

    async def _answer_late(self) -> None:
        if self.late:
            await asyncio.sleep(self.late.popleft())

    async def _patch(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("patch"):
            return refused
        post_id = request.path_params["post_id"]
        post = next((post for post in self.posts if post["id"] == post_id), None)
        if post is None:
            return _error(404, "app.post.get.app_error", "Unable to get the post")
        change = await request.json()
        self.patches.append({"id": post_id, **change})
        post.update({key: value for key, value in change.items() if key in ("message", "props")})
        return JSONResponse(post)

    async def _thread(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("lookup"):
            return refused
        self.lookups.append(request.url.path)
        root_id = request.path_params["post_id"]
        return _post_list([post for post in self.posts
                           if root_id in (post["id"], post["root_id"])])

    async def _channel_posts(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("lookup"):
            return refused
        self.lookups.append(request.url.path)
        channel = request.path_params["channel_id"]
        if "since" not in request.query_params:
            return _post_list(self._page(channel, request))
        since = int(request.query_params.get("since") or 0)
        return _post_list([post for post in self.posts if post["channel_id"] == channel
                           and post["create_at"] >= since])

    def _page(self, channel: str, request: Request) -> list[dict[str, Any]]:
        """A page of the channel's posts (`page`, `per_page`, newest first), oldest first."""
        page = int(request.query_params.get("page") or 0)
        per_page = min(int(request.query_params.get("per_page") or 60), 200)
        newest_first = sorted((post for post in self.posts if post["channel_id"] == channel
                               and not post.get("delete_at")),
                              key=lambda post: post["create_at"], reverse=True)
        return newest_first[page * per_page:(page + 1) * per_page][::-1]

    async def _me(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("me"):
            return refused
        return JSONResponse(BOT)

    async def _user(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("user"):
            return refused
        user = self.users.get(request.path_params["user_id"])
        if user is None:
            return _error(404, "app.user.missing_account.const", "Unable to find the user")
        return JSONResponse(user)

    async def _react(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("reaction"):
            return refused
        reaction = await request.json()
        if not any(post["id"] == reaction.get("post_id") for post in self.posts):
            return _error(400, "api.reaction.save_reaction.invalid_post", "Invalid post")
        self.reactions.append(reaction)
        return JSONResponse(reaction, 201)

    async def _channel(self, request: Request) -> Response:
        if refused := self._unauthorized(request) or await self._scripted("channel"):
            return refused
        channel = request.path_params["channel_id"]
        if channel not in self.channels:
            return _error(403, "api.context.permissions.app_error", "You do not have permission")
        return JSONResponse({"id": channel, "name": f"name-of-{channel}", "team_id": "team"})


def _error(status: int, error_id: str, message: str) -> Response:
    return JSONResponse({"id": error_id, "message": message, "status_code": status}, status)


def _posted(post: dict[str, Any], sender: str) -> dict[str, Any]:
    """The WebSocket event of a new post: the post itself as a JSON string, as Mattermost does."""
    return {"event": "posted", "data": {"channel_type": "O", "post": json.dumps(post),
                                        "sender_name": f"@{sender}", "team_id": "team"},
            "broadcast": {"channel_id": post["channel_id"]}}


def _post_list(posts: list[dict[str, Any]]) -> Response:
    """Mattermost's PostList: the ids newest first, and the posts by id."""
    return JSONResponse({"order": [post["id"] for post in reversed(posts)],
                         "posts": {post["id"]: post for post in posts}})
