"""One Slack workspace: its Web API client, its per-channel pacer and its member cache.

Every destination that posts to Slack (the threads, the notices about replies from Slack)
goes through the same workspace, so all posts to a channel share that channel's budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import parse_retry_after
from bridge.destinations.slack_render import fit_message
from bridge.destinations.slack_settings import SlackSettings
from bridge.errors import PermanentError, RetryableError, StoreError

PERMANENT_ERRORS = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
    "no_permission", "missing_scope", "channel_not_found", "not_in_channel", "is_archived",
    "restricted_action", "invalid_blocks", "invalid_blocks_format", "msg_too_long",
    "too_many_attachments", "invalid_arguments", "thread_not_found", "team_access_not_granted",
})
RETRYABLE_ERRORS = frozenset({
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout", "team_added_to_org",
})
MAX_PACING_WAIT = 3.0
PAGE_SIZE = 200  # messages per page of conversations.history and .replies
LOOKUP_PAGES = 5  # how far back a lookup reads: a thousand messages
PACING_HEADROOM = 0.9
USER_CACHE_SECONDS = 3600.0  # a renamed agent shows under the new name within the hour
_QUIET_SDK_LOG = logging.getLogger("bridge.slack.sdk")  # failures are logged by the worker
_QUIET_SDK_LOG.setLevel(logging.CRITICAL)
PacingWait = Callable[[float], None]


log = logging.getLogger("bridge.slack")


class ChannelBudget(Protocol):
    """Where every replica's posts into a channel are counted (the store they share)."""

    async def take_token(self, channel: str, now: float, capacity: float,
                         rate: float) -> tuple[float, float]:
        """Take a post from the bucket: (tokens left, below 0 when in debt; held until)."""
        ...

    async def hold_channel(self, channel: str, now: float, until: float) -> None: ...


@dataclass
class ChannelPacer:
    """Per channel: a small burst, then about one post a second; held entirely after a 429.

    Slack's limit is the workspace's, whatever the number of replicas: with a `shared`
    budget the bucket lives in the store they share, and each post waits out its own debt.
    """

    burst: int
    per_second: float
    clock: Clock
    on_wait: PacingWait | None = None  # told how long each post waited for its slot
    shared: ChannelBudget | None = None
    _tokens: dict[str, float] = field(default_factory=dict)
    _stamp: dict[str, float] = field(default_factory=dict)
    _held_until: dict[str, float] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def hold(self, channel: str, seconds: float) -> None:
        self._held_until[channel] = max(self._held_until.get(channel, 0.0),
                                        self.clock.now() + seconds)

    def held_for(self, channel: str) -> float:
        return max(self._held_until.get(channel, 0.0) - self.clock.now(), 0.0)

    def behind(self) -> float:
        """How long a post asking now would wait for its slot, on the busiest channel."""
        return max((self._wait(channel, self.clock.now()) + self.held_for(channel)
                    for channel in self._stamp), default=0.0)

    async def share_hold(self, channel: str) -> None:
        """Tell the other replicas that this channel is held (after a 429 here)."""
        until = self._held_until.get(channel, 0.0)
        if self.shared is None or until <= self.clock.now():
            return
        try:
            await self.shared.hold_channel(channel, self.clock.now(), until)
        except StoreError as exc:  # the 429 itself is what the worker must hear of
            log.warning("slack: could not tell the other replicas %s is held: %s", channel, exc)

    async def acquire(self, channel: str) -> None:
        """Wait for this channel's next slot, or raise RetryableError if it is held for long."""
        if self.shared is not None:
            try:
                await self._acquire_shared(self.shared, channel)
                return
            except StoreError as exc:  # the pace is kept here until the store answers again
                log.warning("slack: pacing %s on this replica alone: %s", channel, exc)
        _refuse_long_hold(channel, self.held_for(channel))
        asked = self.clock.now()
        async with self._locks.setdefault(channel, asyncio.Lock()):
            if held := self.held_for(channel):
                await self.clock.sleep(held)
            wait = self._take(channel)
            if wait > 0:
                await self.clock.sleep(wait)
        self._waited_since(asked)

    async def _acquire_shared(self, budget: ChannelBudget, channel: str) -> None:
        asked = self.clock.now()
        tokens, held_until = await budget.take_token(channel, asked,
                                                     max(self.burst - 1, 1), self._rate)
        self._stamp[channel], self._tokens[channel] = asked, tokens  # for behind(), as seen
        held = max(held_until, self._held_until.get(channel, 0.0)) - asked
        _refuse_long_hold(channel, held)
        wait = max(held, 0.0) + max(-tokens, 0.0) / self._rate
        if wait > 0:
            await self.clock.sleep(wait)
        self._waited_since(asked)

    def _waited_since(self, asked: float) -> None:
        if self.on_wait is not None:
            self.on_wait(max(self.clock.now() - asked, 0.0))

    def _take(self, channel: str) -> float:
        # Slack counts a post when it arrives, and posts leave here at the set pace but arrive
        # with jitter: one that overtakes the previous one's delay would find Slack's bucket
        # empty and get a 429 (which holds the whole channel). So keep one post of the burst in
        # reserve and stay a tenth under the rate: an early arrival always finds a token.
        now = self.clock.now()
        wait, tokens = self._wait(channel, now), self._available(channel, now)
        self._stamp[channel] = now
        self._tokens[channel] = tokens - 1
        return wait

    @property
    def _rate(self) -> float:
        return self.per_second * PACING_HEADROOM

    def _available(self, channel: str, now: float) -> float:
        """The channel's tokens now: below 0 when posts already wait for slots to come."""
        capacity = max(self.burst - 1, 1)
        elapsed = now - self._stamp.get(channel, now)
        return min(capacity, self._tokens.get(channel, capacity) + elapsed * self._rate)

    def _wait(self, channel: str, now: float) -> float:
        tokens = self._available(channel, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate


def _refuse_long_hold(channel: str, held: float) -> None:
    """A post waits out a short hold; a longer one goes back to the worker to retry later."""
    if held > MAX_PACING_WAIT:
        raise RetryableError(f"slack: channel {channel} is rate-limited", retry_after=held)


@dataclass(frozen=True)
class SlackUser:
    """A workspace member as the visitor sees them when they answer from Slack."""

    id: str
    name: str
    icon_url: str | None


class SlackWorkspace:
    """Calls Slack's Web API for every destination; classifies failures as the worker needs."""

    def __init__(self, settings: SlackSettings, clock: Clock | None = None,
                 max_workers: int = 8, on_wait: PacingWait | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.pacer = ChannelPacer(settings.burst, settings.per_second, self.clock, on_wait)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="slack")
        self._client: WebClient | None = None
        self._users: dict[str, tuple[float, SlackUser]] = {}

    @property
    def client(self) -> WebClient:
        if self._client is None:
            token = self.settings.bot_token
            self._client = WebClient(token=token.get_secret_value() if token else None,
                                     base_url=self.settings.api_url,
                                     timeout=int(max(self.settings.timeout_seconds, 1)),
                                     retry_handlers=[], logger=_QUIET_SDK_LOG)
        return self._client

    async def post(self, channel: str, message: dict[str, Any], **extra: Any) -> str:
        """chat.postMessage at the channel's pace; the new message's ts."""
        await self.pacer.acquire(channel)
        arguments = post_arguments(channel, message, **extra)
        try:
            reply = await self.call("chat.postMessage",
                                    lambda: self.client.chat_postMessage(**arguments),
                                    channel=channel)
        except RetryableError:
            await self.pacer.share_hold(channel)
            raise
        return str(reply["ts"])

    async def find(self, channel: str, thread_ts: str | None, since: float,
                   match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """The first message since `since` that `match`es: in the thread (conversations.replies)
        or, without one, among the channel's top-level messages (conversations.history)."""
        method = "conversations.replies" if thread_ts else "conversations.history"
        return await self.call(method, lambda: find_message(
            partial(self._page, channel, thread_ts, f"{since:.6f}"), match), channel=channel)

    def _page(self, channel: str, thread_ts: str | None, oldest: str,
              cursor: str | None) -> Any:
        if thread_ts:
            return self.client.conversations_replies(
                channel=channel, ts=thread_ts, oldest=oldest, include_all_metadata=True,
                limit=PAGE_SIZE, cursor=cursor)
        return self.client.conversations_history(
            channel=channel, oldest=oldest, include_all_metadata=True, limit=PAGE_SIZE,
            cursor=cursor)

    async def update(self, channel: str, ts: str, message: dict[str, Any]) -> None:
        """chat.update of a message the bridge posted (a thread's parent)."""
        arguments = update_arguments(channel, message, ts=ts)
        await self.call("chat.update", lambda: self.client.chat_update(**arguments))

    async def user(self, user_id: str) -> SlackUser:
        """A member's display name and avatar (users.info), remembered for an hour."""
        cached = self._users.get(user_id)
        if cached and cached[0] > self.clock.now():
            return cached[1]
        reply = await self.call("users.info", lambda: self.client.users_info(user=user_id))
        member = _slack_user(user_id, reply.get("user") or {})
        self._users[user_id] = (self.clock.now() + USER_CACHE_SECONDS, member)
        return member

    async def react(self, channel: str, ts: str, name: str) -> None:
        """Put the reaction `name` on a message; having put it already counts as done."""
        def add() -> None:
            try:
                self.client.reactions_add(channel=channel, timestamp=ts, name=name)
            except SlackApiError as exc:
                if exc.response.get("error") != "already_reacted":
                    raise

        await self.call("reactions.add", add)

    async def call(self, method: str, call: Callable[[], Any], channel: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except SlackApiError as exc:
            raise self._classify(method, exc, channel) from exc
        except (TimeoutError, OSError) as exc:
            raise RetryableError(f"slack: {method}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _classify(self, method: str, exc: SlackApiError, channel: str | None) -> Exception:
        status = exc.response.status_code
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        error = str(data.get("error") or "")
        if error.startswith("Received a response in a non-JSON format"):
            error = ""
        detail = error if status == 200 else f"HTTP {status}" + (f" {error}" if error else "")
        reason = f"slack: {method}: {detail}"
        if status == 429 or error in ("ratelimited", "rate_limited"):
            retry_after = _retry_after(exc.response.headers, self.clock.now())
            if channel:
                self.pacer.hold(channel, retry_after)
            return RetryableError(f"{reason} (retry after {retry_after:g} s)", retry_after)
        if status >= 500 or error in RETRYABLE_ERRORS:
            return RetryableError(reason)
        return PermanentError(reason)


def find_message(page: Callable[[str | None], Any],
                 match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The first message of up to LOOKUP_PAGES pages that `match`es, if any."""
    cursor = None
    for _ in range(LOOKUP_PAGES):
        reply = page(cursor)
        for message in reply.get("messages") or []:
            if match(message):
                return dict(message)
        cursor = (reply.get("response_metadata") or {}).get("next_cursor")
        if not reply.get("has_more") or not cursor:
            return None
    return None


def post_arguments(channel: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The arguments of chat.postMessage for a rendered message, cut to Slack's limits."""
    return {"channel": channel, "unfurl_links": False, "unfurl_media": False,
            **fit_message(message), **{key: value for key, value in extra.items() if value}}


def update_arguments(channel: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The arguments of chat.update for a rendered message, cut to Slack's limits."""
    return {"channel": channel, **fit_message(message), **extra}


def _retry_after(headers: dict[str, Any], now: float) -> float:
    """Slack's Retry-After (any header case), or a second when it gives none."""
    value = next((v for name, v in headers.items() if name.lower() == "retry-after"), None)
    wait = parse_retry_after(value, now)
    return 1.0 if wait is None else wait


def _slack_user(user_id: str, member: dict[str, Any]) -> SlackUser:
    profile = member.get("profile") or {}
    name = (profile.get("display_name") or profile.get("real_name") or member.get("real_name")
            or member.get("name") or user_id)
    icon = profile.get("image_192") or profile.get("image_72")
    return SlackUser(user_id, str(name), str(icon) if icon else None)
