"""One Mattermost server: REST API v4 calls with the bot's token, paced per channel.

httpx directly, not mattermostdriver: that library's last release is from 2022 and it makes
blocking `requests` calls; the bridge needs five endpoints, asynchronous, with its own
classification of failures into retry or give up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from bridge.clock import Clock
from bridge.destinations.base import parse_retry_after
from bridge.destinations.mattermost_settings import MattermostSettings
from bridge.destinations.slack_workspace import ChannelPacer
from bridge.errors import PermanentError, RetryableError
from bridge.templating import CUT_MARKER

MESSAGE_LIMIT = 16_383  # characters in a post's message, Mattermost's own limit
DEFAULT_RETRY_AFTER = 1.0
EPOCH_2001 = 1_000_000_000  # a reset header larger than this is a time, not a wait


class MattermostServer:
    """Calls Mattermost for the destination; turns its answers into the bridge's errors."""

    def __init__(self, settings: MattermostSettings, clock: Clock,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        assert settings.url and settings.bot_token
        self.settings = settings
        self.clock = clock
        self.pacer = ChannelPacer(settings.burst, settings.per_second, clock)
        self.http = httpx.AsyncClient(
            base_url=settings.url.rstrip("/") + "/api/v4/", timeout=settings.timeout_seconds,
            transport=transport,
            headers={"Authorization": f"Bearer {settings.bot_token.get_secret_value()}"})

    async def post(self, channel: str, body: Mapping[str, Any], root_id: str | None = None,
                   setting: str = "mattermost.channel") -> str:
        """A new post in `channel` (a reply when `root_id` is given) at its pace; its id."""
        try:
            await self.pacer.acquire(channel)
        except RetryableError as exc:  # the pacer speaks of Slack, whose it first was
            raise RetryableError(f"mattermost: channel {channel} is rate-limited",
                                 retry_after=exc.retry_after) from exc
        payload = {**fit_post(body), "channel_id": channel,
                   **({"root_id": root_id} if root_id else {})}
        try:
            reply = await self.call("POST", "posts", payload, channel=channel, setting=setting)
        except RetryableError:
            await self.pacer.share_hold(channel)  # a 429 holds it for every replica
            raise
        return str(reply["id"])

    async def patch(self, post_id: str, body: Mapping[str, Any]) -> None:
        """Change a post the bot made (a thread's root): its message and props."""
        await self.call("PUT", f"posts/{post_id}/patch", fit_post(body))

    async def thread_posts(self, root_id: str) -> list[dict[str, Any]]:
        """The root post and every reply of a thread."""
        return _posts(await self.call("GET", f"posts/{root_id}/thread"))

    async def channel_posts(self, channel: str, since: float) -> list[dict[str, Any]]:
        """The channel's posts made or changed since `since` (epoch seconds)."""
        return _posts(await self.call("GET", f"channels/{channel}/posts?since={int(since * 1000)}",
                                      channel=channel))

    async def channel_page(self, channel: str, page: int, per_page: int,
                           setting: str | None = None) -> list[dict[str, Any]]:
        """One page of the channel's posts, replies included, newest first; `setting` names
        the channel in a refusal."""
        return _posts(await self.call(
            "GET", f"channels/{channel}/posts?page={page}&per_page={per_page}",
            channel=channel, setting=setting))

    async def me(self) -> dict[str, Any]:
        return await self.call("GET", "users/me")  # type: ignore[no-any-return]

    async def channel(self, channel: str, setting: str) -> dict[str, Any]:
        reply = await self.call("GET", f"channels/{channel}", channel=channel, setting=setting)
        return reply  # type: ignore[no-any-return]

    async def call(self, method: str, path: str, payload: Any = None,
                   channel: str | None = None, setting: str | None = None) -> Any:
        what = f"{method} /api/v4/{path}"
        try:
            response = await self.http.request(method, path, json=payload)
        except httpx.TimeoutException as exc:
            raise RetryableError(f"mattermost: {what}: timed out") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"mattermost: {what}: {type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return response.json()
        raise self._failure(what, response, channel, setting)

    def _failure(self, what: str, response: httpx.Response, channel: str | None,
                 setting: str | None) -> Exception:
        status = response.status_code
        reason = f"mattermost: {what}: HTTP {status}{_detail(response)}"
        if status == 429:
            wait = self._retry_after(response.headers)
            if channel:
                self.pacer.hold(channel, wait)
            return RetryableError(f"{reason} (retry after {wait:g} s)", wait)
        if status >= 500 or status == 408:
            return RetryableError(reason)
        if status == 401:
            return PermanentError(f"{reason}: mattermost.bot_token is not accepted")
        if status in (403, 404) and channel and setting:
            return PermanentError(f"{reason}: is the bot a member of {setting} {channel}"
                                  " (and of its team)?")
        return PermanentError(reason)

    def _retry_after(self, headers: httpx.Headers) -> float:
        """Retry-After, else X-Ratelimit-Reset (seconds to wait, or when, as epoch seconds)."""
        now = self.clock.now()
        wait = parse_retry_after(headers.get("retry-after"), now)
        if wait is None:
            wait = parse_retry_after(headers.get("x-ratelimit-reset"), now)
            if wait is not None and wait > EPOCH_2001:
                wait = max(wait - now, 0.0)
        return DEFAULT_RETRY_AFTER if wait is None else max(wait, DEFAULT_RETRY_AFTER / 10)

    async def aclose(self) -> None:
        await self.http.aclose()


def _detail(response: httpx.Response) -> str:
    """Mattermost's own message of a failure, short; nothing when it sent none."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        return ""
    return f" {str(message)[:200]}" if message else ""


def _posts(reply: Any) -> list[dict[str, Any]]:
    """The posts of a post list (`order` of ids, `posts` by id), in its order."""
    posts = reply.get("posts") or {}
    return [posts[post_id] for post_id in reply.get("order") or [] if post_id in posts]


def fit_post(body: Mapping[str, Any]) -> dict[str, Any]:
    """The post with its message within Mattermost's limit, so it is never refused for length."""
    message = str(body.get("message") or "")
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - len(CUT_MARKER)].rstrip("\\") + CUT_MARKER
    return {**body, "message": message}
