"""What the SiteGPT destination needs of a chat tool that people answer visitors from.

Each such tool (Slack, Mattermost) is a plugin declaring `replies` and `reply_tool`; the
SiteGPT destination sends a reply from any of them the same way, and tells the thread it came
from, and only that one, how it went.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bridge.events import ChatReplyData, SlackReplyData

SLACK = "slack"


@dataclass(frozen=True)
class Author:
    """The member who wrote a reply, as the visitor sees them named."""

    name: str
    icon_url: str | None = None


@dataclass(frozen=True)
class Reply:
    """A person's answer in a conversation's thread, whichever chat tool it was written in.

    `source` names it among the echoes the bridge waits for (Slack's event id, Mattermost's
    post id); `thread` and `post` are the tool's own ids of the thread and of the reply.
    """

    tool: str
    chatbot_id: str
    thread_id: str
    source: str
    channel: str
    thread: str
    post: str
    user: str
    user_name: str | None
    text: str


def reply_of(data: SlackReplyData | ChatReplyData) -> Reply:
    """The reply an event stands for."""
    if isinstance(data, SlackReplyData):
        return Reply(SLACK, data.chatbot_id, data.thread_id, data.slack_event_id, data.channel,
                     data.thread_ts, data.ts, data.user, None, data.text)
    return Reply(data.tool, data.chatbot_id, data.thread_id, f"{data.tool}:{data.post}",
                 data.channel, data.root, data.post, data.user, data.user_name, data.text)


class ReplyTool(Protocol):
    """A chat tool, as the SiteGPT destination sees it when one of its members replies."""

    async def author(self, reply: Reply) -> Author:
        """Who wrote the reply, named as the visitor should see them."""
        ...

    async def readable(self, reply: Reply) -> str:
        """The reply's text as a visitor should read it: the tool's own markup resolved."""
        ...

    async def mark_sent(self, reply: Reply) -> None:
        """Show in the tool that SiteGPT took the reply (a ✅ on it); raises DeliveryError."""
        ...

    async def aclose(self) -> None: ...
