"""Mattermost's WebSocket: what people reply in a conversation's thread, stored for the visitor.

The bot listens on Mattermost's WebSocket, not for an outgoing webhook: it hears private
channels too, each post names its thread (`root_id`), and Mattermost needs no way in to the
bridge. After every connection it reads back, through the REST API, what the threads' channels
got while it was not listening, from the cursor the store keeps (never from before its first
start). Each post is stored once however often it is heard, by however many replicas.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import CloseCode

from bridge.clock import Clock
from bridge.destinations import Takers
from bridge.destinations.mattermost_server import MattermostServer
from bridge.destinations.mattermost_settings import MattermostSettings, mattermost_replies_on
from bridge.destinations.plugin import Inbound
from bridge.errors import PermanentError, RetryableError, StoreError
from bridge.events import CHAT_REPLY, ChatReplyData, Conversation
from bridge.inbound import Refused, Storing, conversation_by_ref, thread_event
from bridge.settings import Settings
from bridge.store import ListenerCursors, ListenerIntake, NewEvent

log = logging.getLogger("bridge.mattermost_listener")
NAME = "mattermost"  # the tool replies come from, its links and its listener's cursor
SOURCE = "mattermost post"  # how the log names what was heard
DEDUP_WINDOW = 7 * 86400.0  # a post heard live, read back after a drop, or by each replica
SKEW_MARGIN = 60.0  # read back from this long before the cursor: clocks and late events
CURSOR_EVERY = 10.0  # seconds between cursor writes for posts that are not replies
FIRST_WAIT = 1.0  # before reconnecting, doubled at each failure up to LONGEST_WAIT
LONGEST_WAIT = 60.0
REFUSED_WAIT = 300.0  # a token Mattermost refuses waits for a person to fix it
CLOSE_TIMEOUT = 2.0  # seconds to wait for Mattermost to acknowledge a close
PAGE_SIZE = 200  # posts per page read back, the most Mattermost gives
DESTINATIONS = Takers(CHAT_REPLY)
OUTCOMES = ("accepted", "duplicate", "ignored")
LISTENING = "sitegpt_bridge_mattermost_listening"
WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}


class MattermostPost(BaseModel):
    """A post as Mattermost sends it: the bridge reads a few of its fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    channel_id: str
    create_at: int  # milliseconds since 1970, Mattermost's clock
    user_id: str = ""
    root_id: str = ""
    type: str = ""  # empty for a person's post; "system_join_channel" and the like otherwise
    message: str = ""
    delete_at: int = 0
    props: dict[str, Any] | None = None

    @property
    def made_at(self) -> float:
        return self.create_at / 1000

    def flagged(self, prop: str) -> bool:
        """Whether a props flag ("from_bot", "from_webhook") is set; Mattermost sends "true"."""
        return str((self.props or {}).get(prop, "")).lower() == "true"


@dataclass(frozen=True)
class Heard:
    """A post the listener heard of; `sender` names its author as the event did ("@jane")."""

    post: MattermostPost
    sender: str | None = None


class ListenerMetrics:
    """Whether the bridge listens to Mattermost, and what it made of the posts it heard."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.listening = Gauge(
            LISTENING,
            "1 while the bridge listens on Mattermost's WebSocket for replies, caught up.",
            registry=registry)
        self.reconnects = Counter(
            "sitegpt_bridge_mattermost_reconnects",
            "Times Mattermost's WebSocket was lost or could not be opened.", registry=registry)
        self.posts = Counter(
            "sitegpt_bridge_mattermost_posts",
            "Posts heard by outcome: accepted (a reply stored), duplicate (stored already),"
            " ignored (not a reply for the visitor).", ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.posts.labels(outcome)

    def post(self, outcome: str) -> None:
        self.posts.labels(outcome).inc()


@dataclass(frozen=True)
class Drop:
    """Why the listener is not listening: logged when it changes, retried after a wait."""

    reason: str
    level: int = logging.WARNING
    refused: bool = False  # Mattermost refused the bot's token: retried slowly
    unexpected: bool = False  # a fault of the bridge's own: logged with its traceback


def drop_of(exc: Exception, url: str) -> Drop:
    """What an error that ended a connection (or its start) means for the listener."""
    if isinstance(exc, InvalidStatus):
        return _upgrade_refused(exc.response.status_code)
    if isinstance(exc, PermanentError):  # only users/me ends a connection so
        return Drop(str(exc), logging.ERROR, refused=True)
    if isinstance(exc, Refused):
        return Drop(exc.detail, logging.ERROR)
    if isinstance(exc, StoreError):
        return Drop(f"store unavailable: {exc}", logging.ERROR)
    if isinstance(exc, RetryableError):
        return Drop(str(exc))
    if isinstance(exc, ConnectionClosed):
        return Drop(f"mattermost: the WebSocket closed: {exc}")
    if isinstance(exc, OSError | WebSocketException):
        return Drop(f"mattermost: cannot open {url}: {type(exc).__name__}: {exc}")
    return Drop(f"unexpected error: {type(exc).__name__}: {exc}", logging.ERROR,
                unexpected=True)


def _upgrade_refused(status: int) -> Drop:
    what = f"mattermost: GET /api/v4/websocket: HTTP {status}"
    if status in (401, 403):
        return Drop(f"{what}: mattermost.bot_token is not accepted", logging.ERROR, refused=True)
    return Drop(what)


def websocket_url(url: str) -> str:
    """Mattermost's WebSocket on the server at `url` (ws:// for http://, wss:// for https://)."""
    parts = urlsplit(url.rstrip("/"))
    scheme = WEBSOCKET_SCHEMES.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, f"{parts.path}/api/v4/websocket", "", ""))


def heard(message: str | bytes) -> Heard | str | None:
    """The post a `posted` event carries, why it carries none that can be read, or None for
    every other event (hello, typing, status changes)."""
    try:
        event = json.loads(message)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") != "posted":
        return None
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    try:
        post = MattermostPost.model_validate_json(str(data.get("post") or ""))
    except ValidationError:
        return "an unreadable post"
    sender = data.get("sender_name")
    return Heard(post, sender if isinstance(sender, str) and sender else None)


@dataclass
class Cursor:
    """How far the listener has heard, in the store: moved at once past a stored reply, at
    most every CURSOR_EVERY seconds past other posts (each bot post would cost a write)."""

    store: ListenerCursors
    clock: Clock
    written_at: float | None = None

    async def passed(self, made_at: float, stored: bool) -> None:
        now = self.clock.now()
        if stored or self.written_at is None or now - self.written_at >= CURSOR_EVERY:
            await self.store.advance_listener_cursor(NAME, made_at)
            self.written_at = now


@dataclass
class Replies:
    """Stores the posts that are a person's reply for the visitor, once each."""

    store: ListenerIntake
    storing: Storing
    cursor: Cursor
    private_note_prefix: str

    async def take(self, heard: Heard, bot_id: str) -> None:
        """Store the post if it is a reply; raises Refused or StoreError while the store cannot
        answer, the cursor left before the post."""
        event = await self._reply_event(heard, bot_id)
        if isinstance(event, str):
            self.storing.ignored(SOURCE, event)
        else:
            await self.storing.accept(SOURCE, event)
        await self.cursor.passed(heard.post.made_at, stored=not isinstance(event, str))

    async def _reply_event(self, heard: Heard, bot_id: str) -> NewEvent | str:
        """The reply to deliver, or why this post is none."""
        post = heard.post
        why_not = self.not_a_reply(post, bot_id)
        if why_not:
            return why_not
        record = await conversation_by_ref(self.store, NAME, f"{post.channel_id}/{post.root_id}")
        if record is None:
            return "not in a conversation's thread"
        return _reply(record, post, heard.sender)

    def not_a_reply(self, post: MattermostPost, bot_id: str) -> str | None:
        """Why a post is not a person's reply for the visitor, or None when it is one."""
        if post.user_id == bot_id or post.flagged("from_bot") or post.flagged("from_webhook"):
            return "a bot's post"
        if post.type:
            return f"a {post.type} post"
        if post.delete_at:
            return "a deleted post"
        if not post.root_id:
            return "not in a thread"
        prefix = self.private_note_prefix
        if prefix and post.message.lstrip().startswith(prefix):
            return "a private note"
        return None


def _reply(conversation: Conversation, post: MattermostPost, sender: str | None) -> NewEvent:
    data = ChatReplyData(
        chatbot_id=conversation.chatbot_id, thread_id=conversation.thread_id, tool=NAME,
        channel=post.channel_id, root=post.root_id, post=post.id, user=post.user_id,
        user_name=sender, text=post.message)
    return thread_event(CHAT_REPLY, conversation, f"mattermost-post:{post.id}", data,
                        DESTINATIONS)


@dataclass
class Backoff:
    """Waits before reconnecting: doubled at each failure, back to the first after a good
    connection."""

    first: float = FIRST_WAIT
    longest: float = LONGEST_WAIT
    current: float = FIRST_WAIT

    def next(self) -> float:
        wait, self.current = self.current, min(self.current * 2, self.longest)
        return wait

    def reset(self) -> None:
        self.current = self.first


@dataclass
class Listener:
    """Listens on Mattermost's WebSocket for as long as it runs: reads back what it missed
    after each connection, reconnects after each drop."""

    settings: Settings
    store: ListenerIntake
    clock: Clock
    on_accept: Callable[[], None]
    metrics: ListenerMetrics
    server: MattermostServer
    replies: Replies = field(init=False)
    backoff: Backoff = field(default_factory=Backoff)
    trouble: Drop | None = None  # why the last connection failed, until one succeeds
    listened: bool = False  # whether it has listened since it started

    def __post_init__(self) -> None:
        self.mattermost: MattermostSettings = self.settings.mattermost
        self.url = websocket_url(self.mattermost.url or "")
        storing = Storing(self.store, self.clock, DEDUP_WINDOW, self.on_accept, log,
                          self.metrics.post)
        self.replies = Replies(self.store, storing, Cursor(self.store, self.clock),
                               self.mattermost.private_note_prefix)

    async def run(self) -> None:
        """Until cancelled; the socket is closed on the way out."""
        try:
            while True:
                await self.clock.sleep(await self._connection())
        finally:
            self.metrics.listening.set(0)
            await self.server.aclose()

    async def _connection(self) -> float:
        """One connection, from its opening to its end; how long to wait before the next."""
        try:
            async with connect(self.url, additional_headers=self._authorization(),
                               open_timeout=self.mattermost.timeout_seconds,
                               close_timeout=CLOSE_TIMEOUT) as socket:
                try:
                    await self._listen(socket)
                finally:  # 1001, not the 1011 of an error: leaving is no fault of Mattermost's
                    await socket.close(CloseCode.GOING_AWAY)
        except Exception as exc:  # CancelledError is no Exception: it ends the listener
            return self._dropped(drop_of(exc, self.url), exc)
        return self._dropped(Drop("mattermost: the WebSocket closed"), None)

    def _authorization(self) -> dict[str, str]:
        assert self.mattermost.bot_token is not None  # replies are on only with a token
        return {"Authorization": f"Bearer {self.mattermost.bot_token.get_secret_value()}"}

    async def _listen(self, socket: ClientConnection) -> None:
        """Read back what was missed, then take each post as it comes, until the socket ends."""
        bot_id = str((await self.server.me())["id"])  # its own posts are not replies
        await self._catch_up(bot_id)
        self._listening()
        async for message in socket:
            found = heard(message)
            if isinstance(found, str):
                self.replies.storing.ignored(SOURCE, found)
            elif found is not None:
                await self.replies.take(found, bot_id)

    def _listening(self) -> None:
        """One line when it starts listening, and when it does again after trouble."""
        if self.trouble is not None or not self.listened:
            log.info("mattermost: listening for replies on %s%s", self.url,
                     " again" if self.listened else "")
        self.trouble, self.listened = None, True
        self.backoff.reset()
        self.metrics.listening.set(1)

    def _dropped(self, drop: Drop, exc: Exception | None) -> float:
        """Log the drop when its reason changed; the wait before the next connection."""
        self.metrics.listening.set(0)
        self.metrics.reconnects.inc()
        level = drop.level if drop != self.trouble else logging.DEBUG
        log.log(level, "mattermost: not listening for replies: %s", drop.reason,
                exc_info=exc if drop.unexpected and level != logging.DEBUG else None)
        self.trouble = drop
        return REFUSED_WAIT if drop.refused else self.backoff.next()

    async def _catch_up(self, bot_id: str) -> None:
        """Take what the threads' channels got since the cursor; on the very first start, only
        note the time, so nothing written before the listener ever ran is sent."""
        started = self.clock.now()
        cursor = await self.store.listener_cursor(NAME)
        if cursor is not None:
            since = max(cursor - SKEW_MARGIN, started - DEDUP_WINDOW)
            for missed in await self._posts_since(since):
                await self.replies.take(missed, bot_id)
        await self.store.advance_listener_cursor(NAME, started)

    async def _posts_since(self, since: float) -> list[Heard]:
        """The posts made since `since` in every channel threads go to, oldest first."""
        posts = [post for channel, setting in self._thread_channels().items()
                 for post in await self._channel_posts(channel, setting, since)]
        return [Heard(post) for post in sorted(posts, key=lambda post: post.create_at)]

    def _thread_channels(self) -> dict[str, str]:
        """Each channel conversations' threads go to, with the setting that names it."""
        routed = dict.fromkeys(self.settings.routed_values("mattermost_channel"),
                               "routes.mattermost_channel")
        return {**routed, **({self.mattermost.channel: "mattermost.channel"}
                             if self.mattermost.channel else {})}

    async def _channel_posts(self, channel: str, setting: str,
                             since: float) -> list[MattermostPost]:
        """A channel's posts since `since`; none, logged, from a channel the bot cannot read."""
        try:
            return await self._pages_back(channel, setting, since)
        except PermanentError as exc:
            log.warning("mattermost: replies written in %s while not listening are not sent:"
                        " %s", channel, exc)
            return []

    async def _pages_back(self, channel: str, setting: str,
                          since: float) -> list[MattermostPost]:
        """A channel's posts made since `since`, read a page at a time back to then.

        Pages, not Mattermost's `since` query: that one answers any 1000 of the posts changed
        since, in no order. A post made while the pages are read pushes the others one place
        down: it shows one twice, never skips one.
        """
        found: dict[str, MattermostPost] = {}
        for page in itertools.count():
            listed = await self.server.channel_page(channel, page, PAGE_SIZE, setting)
            posts = [post for post in map(_readable, listed) if post is not None]
            fresh = [post for post in posts if post.id not in found]
            found.update((post.id, post) for post in fresh if post.made_at >= since)
            if len(listed) < PAGE_SIZE or not fresh or min(p.made_at for p in posts) < since:
                break
        return list(found.values())


def _readable(post: dict[str, Any]) -> MattermostPost | None:
    try:
        return MattermostPost.model_validate(post)
    except ValidationError:
        return None


async def listen(inbound: Inbound) -> None:
    """Mattermost's WebSocket, for as long as `serve` runs with these settings."""
    mattermost: MattermostSettings = inbound.settings.mattermost
    server = MattermostServer(mattermost, inbound.clock)
    metrics = inbound.metrics.own(NAME, ListenerMetrics)
    await Listener(inbound.settings, inbound.store, inbound.clock, inbound.on_accept, metrics,
                   server).run()


async def replies_off(inbound: Inbound) -> None:
    """While Mattermost is on but its replies are off, the cursor follows the clock: turned on
    again, the listener reads back from when they were turned off (or the bridge stopped), and
    never sends a visitor what the team wrote while replies were off."""
    def ahead() -> float:  # the read-back starts SKEW_MARGIN before the cursor: from now
        return inbound.clock.now() + SKEW_MARGIN

    try:
        await inbound.store.advance_listener_cursor(NAME, ahead())
        while True:
            await inbound.clock.sleep(CURSOR_EVERY)
            await inbound.store.advance_listener_cursor(NAME, ahead())
    finally:  # a settings change turning replies on, or the bridge stopping
        await inbound.store.advance_listener_cursor(NAME, ahead())


def replies_listener(inbound: Inbound) -> Awaitable[None] | None:
    """The plugin's background job: listening when replies from Mattermost are on; holding the
    cursor at the present while Mattermost is on and its replies are off."""
    if mattermost_replies_on(inbound.settings):
        return listen(inbound)
    return replies_off(inbound) if inbound.settings.mattermost.on else None
