"""Slack as a chat tool replies come from: who wrote one, its mrkdwn made plain, the ✅ on it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from bridge.destinations.replies import Author, Reply
from bridge.destinations.slack_workspace import SlackWorkspace
from bridge.errors import PermanentError

log = logging.getLogger("bridge.sitegpt")
SENT_REACTION = "white_check_mark"
_ANGLED = re.compile(r"<([^<>\n]*)>")
_MENTION = re.compile(r"<@([^|<>\s]+)(?:\|[^<>]*)?>")
_UNESCAPES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


class SlackReplies:
    """What the SiteGPT destination asks of Slack for a reply, through the bridge's workspace
    (so the lookups and the reaction share each channel's budget with the threads' posts)."""

    def __init__(self, workspace: SlackWorkspace) -> None:
        self.workspace = workspace

    async def author(self, reply: Reply) -> Author:
        member = await self.workspace.user(reply.user)
        return Author(member.name, member.icon_url)

    async def readable(self, reply: Reply) -> str:
        return plain_text(reply.text, await self._names(_MENTION.findall(reply.text)))

    async def mark_sent(self, reply: Reply) -> None:
        await self.workspace.react(reply.channel, reply.post, SENT_REACTION)

    async def aclose(self) -> None:
        await self.workspace.aclose()  # the shared workspace: closing it twice is harmless

    async def _names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Display names of mentioned members; one Slack cannot name stays as its id."""
        names: dict[str, str] = {}
        for user_id in set(user_ids):
            try:
                names[user_id] = (await self.workspace.user(user_id)).name
            except PermanentError as exc:
                log.info("cannot name mentioned member %s: %s", user_id, exc)
        return names


def plain_text(mrkdwn: str, names: Mapping[str, str]) -> str:
    """Slack's message text as a visitor should read it: links, mentions, escapes resolved."""
    readable = _ANGLED.sub(lambda match: _readable(match[1], names), mrkdwn)
    for escaped, char in _UNESCAPES:
        readable = readable.replace(escaped, char)
    return readable


def _readable(inner: str, names: Mapping[str, str]) -> str:
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (names.get(target[1:]) or label or target[1:])
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!"):
        return label or "@" + target[1:].split("^", 1)[0]
    if not label or label == target or target == f"mailto:{label}":
        return label or target
    return f"{label} ({target})"
