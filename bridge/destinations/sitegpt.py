"""SiteGPT's API: replies written in Slack reach the visitor as an agent; Take over/Hand back."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from bridge.destinations.base import (
    Delivered,
    Delivery,
    Outcome,
    Skipped,
    parse_retry_after,
    spent,
)
from bridge.destinations.plugin import Plugin
from bridge.destinations.shared import Shared
from bridge.destinations.sitegpt_settings import (
    SiteGPTSettings,
    half_set_replies,
    replies_enabled,
    sitegpt_api_key,
)
from bridge.destinations.slack import MODE_CHANGED, Call, json_previews, slack_workspace
from bridge.destinations.slack_render import SlackRenderer
from bridge.destinations.slack_workspace import SlackUser, SlackWorkspace, post_arguments
from bridge.errors import DeliveryError, PermanentError, RetryableError
from bridge.events import (
    CHAT_REPLY,
    MODE_CHANGE,
    SLACK_REPLY,
    THREAD_NOTICE,
    Conversation,
    Event,
    ModeChangeData,
    ModeChangeEvent,
    SlackReplyData,
    SlackReplyEvent,
    canonical_json,
)
from bridge.redact import Redactor
from bridge.settings import Settings
from bridge.store import Echo, FollowUp
from bridge.templating import Templates

log = logging.getLogger("bridge.sitegpt")
ECHO_MEMORY_SECONDS = 3600.0  # SiteGPT sends a reply back within seconds; an hour is plenty
SENT_REACTION = "white_check_mark"
MAX_REASON = 300
_ANGLED = re.compile(r"<([^<>\n]*)>")
_MENTION = re.compile(r"<@([^|<>\s]+)(?:\|[^<>]*)?>")
_UNESCAPES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))
# The notices for the thread, as follow-up events: slack/<name>.json.j2 is what Slack posts.
REPLY_FAILED = "reply_failed"
MODE_FAILED = "mode_failed"
NOTICES = (REPLY_FAILED, MODE_CHANGED, MODE_FAILED)
EXAMPLE_REFUSAL = "HTTP 404: Thread not found"  # what a preview shows as SiteGPT's answer


@dataclass(frozen=True)
class ApiRequest:
    """One call to SiteGPT's API for one chatbot: what deliver() sends and a preview shows."""

    chatbot_id: str
    method: str
    path: str
    body: dict[str, Any]

    @property
    def what(self) -> str:
        """How failures name the call: never with the key."""
        return f"sitegpt: {self.method} {self.path}"


@dataclass(frozen=True)
class Notice:
    """A notice for the thread the event came from: its template name and context."""

    name: str
    context: dict[str, Any]


class SiteGPTDestination:
    """Calls SiteGPT's v0 API for what people do in Slack; tells the thread how it went.

    The thread is told by a follow-up event (a notice), delivered by whichever destination
    takes notices; who wrote a reply is asked of the Slack workspace the bridge shares.
    """

    name: ClassVar[str] = "sitegpt"
    KINDS: ClassVar[frozenset[str]] = frozenset({SLACK_REPLY, CHAT_REPLY, MODE_CHANGE})

    def __init__(self, settings: Settings, templates: Templates, workspace: SlackWorkspace,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.redact = Redactor.for_settings(settings)  # reasons are posted in the thread
        self.workspace = workspace
        self.renderer = SlackRenderer(templates, settings)  # previews of the notices only
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
        await self.workspace.aclose()  # the shared workspace: closing it twice is harmless

    @property
    def http(self) -> httpx.AsyncClient:
        # Made on first use: loading the CA bundle costs start-up time when no reply comes.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.settings.sitegpt.api_url.rstrip("/"), transport=self._transport,
                timeout=httpx.Timeout(self.settings.sitegpt.timeout_seconds),
                headers={"User-Agent": "sitegpt-bridge"})
        return self._client

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """SiteGPT's API call for each event it takes, then what the thread is told, as JSON.

        A preview asks Slack nothing, so the member who wrote a reply and those it mentions
        go by their ids, and the failure notice shows an example of SiteGPT refusing.
        """
        return json_previews(samples, self.accepts, self._preview)

    def _preview(self, event: Event) -> list[Call]:
        if isinstance(event, SlackReplyEvent):
            data = event.data
            request = reply_request(data, SlackUser(data.user, data.user, None), {})
            if request is None:
                return []
            reaction = {"channel": data.channel, "timestamp": data.ts, "name": SENT_REACTION}
            refused = reply_failed(data, _example_reason(request))
            return [_shown(request), ("reactions.add (once SiteGPT took the reply)", reaction),
                    self._notice_preview(data, refused, "if SiteGPT refuses the reply")]
        assert isinstance(event, ModeChangeEvent)
        change = event.data
        request = mode_request(change)
        refused = mode_failed(change, _example_reason(request))
        return [_shown(request),
                self._notice_preview(change, mode_changed(change), "once SiteGPT switched"),
                self._notice_preview(change, refused, "if SiteGPT refuses the switch")]

    def _notice_preview(self, data: SlackReplyData | ModeChangeData, notice: Notice,
                        when: str) -> Call:
        message = self.renderer.notice(notice.name, notice.context)
        return (f"chat.postMessage (in the thread, {when})",
                post_arguments(data.channel, message, thread_ts=data.thread_ts))

    async def _send_reply(self, delivery: Delivery, data: SlackReplyData) -> Outcome:
        try:
            outcome = await self._post_reply(delivery, data)
        except DeliveryError as exc:
            if self._gives_up(delivery, exc):
                await delivery.store.forget_echo(data.slack_event_id)
            exc.follow_ups = [_told(data, reply_failed(data, self.redact(str(exc))))]
            raise
        if isinstance(outcome, Delivered):
            await self._react(data.channel, data.ts)
        return outcome

    async def _post_reply(self, delivery: Delivery, data: SlackReplyData) -> Outcome:
        author = await self.workspace.user(data.user)
        request = reply_request(data, author, await self._names(_MENTION.findall(data.text)))
        if request is None:
            return Skipped("the reply has no text")
        # Remembered before the call: SiteGPT may send the echo before it answers us.
        echo = Echo(data.chatbot_id, data.thread_id, request.body["message"], author.name,
                    data.slack_event_id)
        await delivery.store.remember_echo(echo, delivery.clock.now(), ECHO_MEMORY_SECONDS)
        await self._call(request)
        return Delivered(note=f"sent to the visitor as {author.name}")

    async def _change_mode(self, delivery: Delivery, data: ModeChangeData) -> Outcome:
        try:
            await self._call(mode_request(data))
        except DeliveryError as exc:
            exc.follow_ups = [_told(data, mode_failed(data, self.redact(str(exc))))]
            raise
        return Delivered(note=f"mode {data.mode}", follow_ups=[_told(data, mode_changed(data))])

    async def _names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Display names of mentioned members; one Slack cannot name stays as its id."""
        names: dict[str, str] = {}
        for user_id in set(user_ids):
            try:
                names[user_id] = (await self.workspace.user(user_id)).name
            except PermanentError as exc:
                log.info("cannot name mentioned member %s: %s", user_id, exc)
        return names

    async def _call(self, request: ApiRequest) -> Any:
        key = sitegpt_api_key(self.settings, request.chatbot_id)
        if key is None:
            raise PermanentError(
                f"sitegpt: no API key for chatbot {request.chatbot_id}: set [sitegpt] api_key or"
                " the chatbot's sitegpt_api_key")
        what = request.what
        try:
            response = await self.http.request(
                request.method, request.path, json=request.body,
                headers={"Authorization": f"Bearer {key.get_secret_value()}"})
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{what}: timed out") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return _json(response)
        raise _classify(what, response, key.get_secret_value(), self.workspace.clock.now())

    def _gives_up(self, delivery: Delivery, exc: DeliveryError) -> bool:
        """Whether the worker will stop after this failure (its own rule, seen from here)."""
        if not isinstance(exc, RetryableError):
            return True
        return spent(delivery.claimed, self.settings.delivery, delivery.clock.now()) is not None

    async def _react(self, channel: str, ts: str) -> None:
        # A failure here must not fail the delivery: a retry would send the reply twice.
        try:
            await self.workspace.react(channel, ts, SENT_REACTION)
        except DeliveryError as exc:
            log.warning("could not mark reply %s/%s as sent: %s", channel, ts, exc)


def reply_request(data: SlackReplyData, author: SlackUser,
                  names: Mapping[str, str]) -> ApiRequest | None:
    """The reply as an agent message from `author`, or None when no text is left to send."""
    text = plain_text(data.text, names).strip()
    if not text:
        return None
    body: dict[str, Any] = {"message": text, "from": "AGENT", "threadId": data.thread_id,
                            "agentName": author.name}
    if author.icon_url:
        body["iconUrl"] = author.icon_url
    return ApiRequest(data.chatbot_id, "POST", f"/chatbots/{_part(data.chatbot_id)}/message",
                      body)


def mode_request(data: ModeChangeData) -> ApiRequest:
    path = f"/chatbots/{_part(data.chatbot_id)}/threads/{_part(data.thread_id)}"
    return ApiRequest(data.chatbot_id, "PATCH", path, {"mode": data.mode})


def _told(data: SlackReplyData | ModeChangeData, notice: Notice) -> FollowUp:
    """The notice as a follow-up event for the thread; the worker addresses it."""
    conversation = Conversation(data.chatbot_id, data.thread_id)
    body = canonical_json({"event": THREAD_NOTICE, "data": {
        "chatbotId": data.chatbot_id, "threadId": data.thread_id, "channel": data.channel,
        "threadTs": data.thread_ts, "notice": notice.name, "context": notice.context}})
    return FollowUp(THREAD_NOTICE, body, conversation.key, ())


def reply_failed(data: SlackReplyData, reason: str) -> Notice:
    return Notice(REPLY_FAILED, {"reason": reason, "user_id": data.user})


def mode_changed(data: ModeChangeData) -> Notice:
    return Notice(MODE_CHANGED, {"mode": data.mode, "user_id": data.user})


def mode_failed(data: ModeChangeData, reason: str) -> Notice:
    return Notice(MODE_FAILED, {"mode": data.mode, "user_id": data.user, "reason": reason})


def _shown(request: ApiRequest) -> Call:
    """A request as a preview prints it: the key is added only when it is sent."""
    return (f"{request.method} {request.path}",
            {"method": request.method, "path": request.path, "json": request.body})


def _example_reason(request: ApiRequest) -> str:
    return f"{request.what}: {EXAMPLE_REFUSAL}"


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


def _classify(what: str, response: httpx.Response, secret: str, now: float) -> DeliveryError:
    status = response.status_code
    reason = f"{what}: HTTP {status}"
    message = _message(response).replace(secret, "***")
    if message:
        reason += f": {message}"
    if status == 429:
        after = parse_retry_after(response.headers.get("retry-after"), now)
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


def sitegpt_destination(settings: Settings, templates: Templates,
                        shared: Shared) -> SiteGPTDestination | None:
    """On when replies from Slack are configured: signing secret, bot token, a SiteGPT key.

    Its lookups and reactions go through the bridge's one Slack workspace, so they share each
    channel's budget with the threads' own posts.
    """
    if not replies_enabled(settings):
        return None
    return SiteGPTDestination(settings, templates, slack_workspace(shared))


REPLIES_OFF = (" (replies from Slack are off: they need [slack] bot_token and signing_secret,"
               " and a SiteGPT API key; see docs/slack.md)")
PLUGIN = Plugin(name="sitegpt", section=SiteGPTSettings, build=sitegpt_destination,
                kinds=SiteGPTDestination.KINDS, unfinished=half_set_replies,
                off_hints=dict.fromkeys(SiteGPTDestination.KINDS, REPLIES_OFF), docs="slack",
                chatbot_keys={"sitegpt_api_key": (SecretStr | None, None)})
