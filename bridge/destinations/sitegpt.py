"""SiteGPT's API: replies written in Slack reach the visitor as an agent; Take over/Hand back."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import Delivered, Delivery, Outcome, Skipped
from bridge.destinations.slack import SlackDestination
from bridge.errors import DeliveryError, PermanentError, RetryableError
from bridge.events import (
    MODE_CHANGE,
    SLACK_REPLY,
    ModeChangeData,
    ModeChangeEvent,
    SlackReplyData,
    SlackReplyEvent,
)
from bridge.settings import Settings
from bridge.store import Echo
from bridge.templating import Templates

log = logging.getLogger("bridge.sitegpt")
ECHO_MEMORY_SECONDS = 3600.0  # SiteGPT sends a reply back within seconds; an hour is plenty
SENT_REACTION = "white_check_mark"
MAX_REASON = 300
_ANGLED = re.compile(r"<([^<>\n]*)>")
_MENTION = re.compile(r"<@([^|<>\s]+)(?:\|[^<>]*)?>")
_UNESCAPES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


class SiteGPTDestination:
    """Calls SiteGPT's v0 API for what people do in Slack; tells the thread how it went."""

    name: ClassVar[str] = "sitegpt"
    KINDS: ClassVar[frozenset[str]] = frozenset({SLACK_REPLY, MODE_CHANGE})

    def __init__(self, settings: Settings, slack: SlackDestination,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.slack = slack
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def accepts(self, kind: str) -> bool:
        return kind in self.KINDS

    async def deliver(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        if isinstance(event, SlackReplyEvent):
            return await self._send_reply(delivery, event.data)
        if isinstance(event, ModeChangeEvent):
            return await self._change_mode(delivery, event.data)
        raise PermanentError(f"sitegpt: cannot deliver {event.event} events")

    async def verify(self) -> str:
        return (f"on: replies from Slack go to {self.settings.sitegpt.api_url} as agent messages"
                " (the API key is checked by the first reply)")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self.slack.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        # Made on first use: loading the CA bundle costs start-up time when no reply comes.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.settings.sitegpt.api_url.rstrip("/"), transport=self._transport,
                timeout=httpx.Timeout(self.settings.sitegpt.timeout_seconds),
                headers={"User-Agent": "sitegpt-bridge"})
        return self._client

    async def _send_reply(self, delivery: Delivery, data: SlackReplyData) -> Outcome:
        try:
            outcome = await self._post_reply(delivery, data)
        except DeliveryError as exc:
            if self._gives_up(delivery, exc):
                await delivery.store.forget_echo(data.slack_event_id)
                await self._tell(data.channel, data.thread_ts, "reply_failed",
                                 {"reason": str(exc), "user_id": data.user})
            raise
        if isinstance(outcome, Delivered):
            await self._react(data.channel, data.ts)
        return outcome

    async def _post_reply(self, delivery: Delivery, data: SlackReplyData) -> Outcome:
        author = await self.slack.user(data.user)
        text = plain_text(data.text, await self._names(_MENTION.findall(data.text))).strip()
        if not text:
            return Skipped("the reply has no text")
        # Remembered before the call: SiteGPT may send the echo before it answers us.
        echo = Echo(data.chatbot_id, data.thread_id, text, author.name, data.slack_event_id)
        await delivery.store.remember_echo(echo, delivery.clock.now(), ECHO_MEMORY_SECONDS)
        body: dict[str, Any] = {"message": text, "from": "AGENT", "threadId": data.thread_id,
                                "agentName": author.name}
        if author.icon_url:
            body["iconUrl"] = author.icon_url
        await self._call(data.chatbot_id, "POST", f"/chatbots/{_part(data.chatbot_id)}/message",
                         body)
        return Delivered(note=f"sent to the visitor as {author.name}")

    async def _change_mode(self, delivery: Delivery, data: ModeChangeData) -> Outcome:
        context = {"mode": data.mode, "user_id": data.user}
        path = f"/chatbots/{_part(data.chatbot_id)}/threads/{_part(data.thread_id)}"
        try:
            await self._call(data.chatbot_id, "PATCH", path, {"mode": data.mode})
        except DeliveryError as exc:
            if self._gives_up(delivery, exc):
                await self._tell(data.channel, data.thread_ts, "mode_failed",
                                 {**context, "reason": str(exc)})
            raise
        await self._tell(data.channel, data.thread_ts, "mode_changed", context)
        return Delivered(note=f"mode {data.mode}")

    async def _names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Display names of mentioned members; one Slack cannot name stays as its id."""
        names: dict[str, str] = {}
        for user_id in set(user_ids):
            try:
                names[user_id] = (await self.slack.user(user_id)).name
            except PermanentError as exc:
                log.info("cannot name mentioned member %s: %s", user_id, exc)
        return names

    async def _call(self, chatbot_id: str, method: str, path: str, body: dict[str, Any]) -> Any:
        key = self.settings.sitegpt_api_key(chatbot_id)
        if key is None:
            raise PermanentError(
                f"sitegpt: no API key for chatbot {chatbot_id}: set [sitegpt] api_key or the"
                " chatbot's sitegpt_api_key")
        what = f"sitegpt: {method} {path}"
        try:
            response = await self.http.request(
                method, path, json=body,
                headers={"Authorization": f"Bearer {key.get_secret_value()}"})
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{what}: timed out") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return _json(response)
        raise _classify(what, response, key.get_secret_value())

    def _gives_up(self, delivery: Delivery, exc: DeliveryError) -> bool:
        """Whether the worker will stop after this failure (its own rule, seen from here)."""
        if not isinstance(exc, RetryableError):
            return True
        limits = self.settings.delivery
        age = delivery.clock.now() - delivery.claimed.created_at
        return delivery.attempt >= limits.max_attempts or age >= limits.max_age.total_seconds()

    async def _tell(self, channel: str, thread_ts: str, notice: str,
                    context: dict[str, Any]) -> None:
        """Best effort: SiteGPT's outcome stands whether or not Slack shows it."""
        try:
            await self.slack.tell_thread(channel, thread_ts, notice, context)
        except DeliveryError as exc:
            log.warning("could not post %s in thread %s/%s: %s", notice, channel, thread_ts, exc)

    async def _react(self, channel: str, ts: str) -> None:
        # A failure here must not fail the delivery: a retry would send the reply twice.
        try:
            await self.slack.react(channel, ts, SENT_REACTION)
        except DeliveryError as exc:
            log.warning("could not mark reply %s/%s as sent: %s", channel, ts, exc)


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


def _part(value: str) -> str:
    """An id as one URL path segment, whatever it contains."""
    return quote(value, safe="")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _classify(what: str, response: httpx.Response, secret: str) -> DeliveryError:
    status = response.status_code
    reason = f"{what}: HTTP {status}"
    message = _message(response).replace(secret, "***")
    if message:
        reason += f": {message}"
    if status == 429:
        after = _retry_after(response.headers.get("retry-after"))
        return RetryableError(reason, retry_after=after)
    if status >= 500 or status == 408:
        return RetryableError(reason)
    return PermanentError(reason)


def _message(response: httpx.Response) -> str:
    """SiteGPT's own explanation, from its JSON error shapes, cut short."""
    body = _json(response)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("code")
        found = body.get("message") or error or body.get("detail")
        return str(found)[:MAX_REASON] if found else ""
    text = response.text.strip()
    return "" if not text or text.startswith("<") else text[:MAX_REASON]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - SystemClock().now(), 0.0)


def sitegpt_destination(settings: Settings, templates: Templates,
                        clock: Clock | None = None) -> SiteGPTDestination | None:
    """On when replies from Slack are configured: signing secret, bot token, a SiteGPT key."""
    if not settings.replies_enabled():
        return None
    return SiteGPTDestination(settings, SlackDestination(settings, templates, clock))
