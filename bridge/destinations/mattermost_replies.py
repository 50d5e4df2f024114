"""Mattermost as a chat tool replies come from: who wrote one, and the ✅ once SiteGPT took it."""

from __future__ import annotations

import logging
from typing import Any

from bridge.clock import Clock
from bridge.destinations.base import path_segment
from bridge.destinations.mattermost_server import MattermostServer
from bridge.destinations.replies import Author, Reply
from bridge.errors import PermanentError

log = logging.getLogger("bridge.sitegpt")
SENT_EMOJI = "white_check_mark"
USER_CACHE_SECONDS = 3600.0  # a member's name rarely changes; one lookup an hour per member


class MattermostReplies:
    """What the SiteGPT destination asks of Mattermost for a reply, through the bridge's one
    Mattermost client."""

    def __init__(self, server: MattermostServer, clock: Clock) -> None:
        self.server = server
        self.clock = clock
        self._users: dict[str, tuple[float, Author]] = {}
        self._bot_id: str | None = None

    async def author(self, reply: Reply) -> Author:
        """The member's full name, else nickname, else username (`GET /users/{id}`)."""
        cached = self._users.get(reply.user)
        if cached and cached[0] > self.clock.now():
            return cached[1]
        try:
            member = await self.server.call("GET", f"users/{path_segment(reply.user)}")
        except PermanentError as exc:  # a member deleted since: the reply still goes
            log.info("cannot name the author of reply %s: %s", reply.post, exc)
            member = {}
        author = Author(display_name(member) or (reply.user_name or "").lstrip("@") or reply.user)
        self._users[reply.user] = (self.clock.now() + USER_CACHE_SECONDS, author)
        return author

    async def readable(self, reply: Reply) -> str:
        """Mattermost's markdown reads as plain text already; mentions are plain @names."""
        return reply.text

    async def mark_sent(self, reply: Reply) -> None:
        """A ✅ by the bot on the reply; putting it again is harmless."""
        if self._bot_id is None:
            self._bot_id = str((await self.server.me())["id"])
        await self.server.call("POST", "reactions", {
            "user_id": self._bot_id, "post_id": reply.post, "emoji_name": SENT_EMOJI})

    async def aclose(self) -> None:
        await self.server.aclose()  # the shared client: closing it twice is harmless


def display_name(member: dict[str, Any]) -> str:
    """How Mattermost shows a member by default: full name, else nickname, else username."""
    full = " ".join(str(member.get(part) or "").strip() for part in ("first_name", "last_name"))
    for name in (full.strip(), member.get("nickname"), member.get("username")):
        if isinstance(name, str) and name.strip():
            return name.strip()
    return ""
