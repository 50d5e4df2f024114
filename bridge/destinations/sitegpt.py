"""SiteGPT's API: replies written in a chat tool's thread (Slack, Mattermost) reach the visitor
as an agent; Take over/Hand back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from bridge.destinations import REGISTRY
from bridge.destinations.base import (
    Delivered,
    Delivery,
    Outcome,
    Skipped,
    parse_retry_after,
    path_segment,
    spent,
)
from bridge.destinations.plugin import Plugin
from bridge.destinations.replies import SLACK, Author, Reply, ReplyTool, reply_of
from bridge.destinations.shared import Shared
from bridge.destinations.sitegpt_settings import (
    SiteGPTSettings,
    half_set_replies,
    sitegpt_api_key,
    sitegpt_key_set,
)
from bridge.destinations.slack import MODE_CHANGED, Call, json_previews
from bridge.destinations.slack_render import SlackRenderer
from bridge.destinations.slack_replies import SENT_REACTION, plain_text
from bridge.destinations.slack_workspace import post_arguments
from bridge.errors import DeliveryError, PermanentError, RetryableError
from bridge.events import (
    CHAT_REPLY,
    MODE_CHANGE,
    SLACK_REPLY,
    THREAD_NOTICE,
    ChatReplyEvent,
    Conversation,
    Event,
    ModeChangeData,
    ModeChangeEvent,
    SlackReplyEvent,
    canonical_json,
)
from bridge.redact import Redactor
from bridge.settings import Settings
from bridge.store import Echo, FollowUp
from bridge.templating import Templates

log = logging.getLogger("bridge.sitegpt")
ECHO_MEMORY_SECONDS = 3600.0  # SiteGPT sends a reply back within seconds; an hour is plenty
MAX_REASON = 300
# The notices for the thread, as follow-up events: <tool>/<name>.json.j2 is what it posts.
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
    """Calls SiteGPT's v0 API for what people do in a chat tool; tells its thread how it went.

    The thread is told by a follow-up event (a notice) addressed to the tool the reply or
    button came from; who wrote a reply, and marking it sent, is asked of that tool (its
    plugin's `reply_tool`, sharing the bridge's one client of it).
    """

    name: ClassVar[str] = "sitegpt"
    KINDS: ClassVar[frozenset[str]] = frozenset({SLACK_REPLY, CHAT_REPLY, MODE_CHANGE})

    def __init__(self, settings: Settings, templates: Templates, shared: Shared,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.shared = shared
        self.redact = Redactor.for_settings(settings)  # reasons are posted in the thread
        self.renderer = SlackRenderer(templates, settings)  # previews of Slack's notices only
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tools: dict[str, ReplyTool] = {}

    def accepts(self, kind: str) -> bool:
        return kind in self.KINDS

    async def deliver(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        if isinstance(event, SlackReplyEvent | ChatReplyEvent):
            return await self._send_reply(delivery, reply_of(event.data))
        if isinstance(event, ModeChangeEvent):
            return await self._change_mode(delivery, event.data)
        raise PermanentError(f"sitegpt: cannot deliver {event.event} events")

    async def verify(self) -> str:
        tools = " and ".join(name.capitalize() for name in replying_tools(self.settings))
        return (f"on: replies from {tools} go to {self.settings.sitegpt.api_url} as agent"
                " messages (the API key is checked by the first reply)")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        for tool in self._tools.values():
            await tool.aclose()

    def tool(self, name: str) -> ReplyTool:
        """The chat tool a reply came from, made on first use from its plugin."""
        if name not in self._tools:
            plugin = REGISTRY.get(name)
            made = (plugin.reply_tool(self.settings, self.shared)
                    if plugin is not None and plugin.reply_tool is not None
                    and plugin.replies(self.settings) else None)
            if made is None:
                raise PermanentError(f"sitegpt: replies from {name} are off in the settings")
            self._tools[name] = made
        return self._tools[name]

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

        A preview asks no chat tool anything, so the member who wrote a reply (and those it
        mentions) go by their ids, and the failure notice shows an example of SiteGPT refusing.
        Slack's notices are shown here; another tool's, with that tool's own previews.
        """
        return json_previews(samples, self.accepts, self._preview)

    def _preview(self, event: Event) -> list[Call]:
        """The calls for one event; none for one from a chat tool whose replies are off."""
        if _tool_of(event) not in replying_tools(self.settings):
            return []
        if isinstance(event, SlackReplyEvent | ChatReplyEvent):
            reply = reply_of(event.data)
            text = plain_text(reply.text, {}) if reply.tool == SLACK else reply.text
            author = Author((reply.user_name or "").lstrip("@") or reply.user)
            request = reply_request(reply, author, text)
            if request is None:
                return []
            if reply.tool != SLACK:
                return [_shown(request), (f"{reply.tool}: a ✅ on the reply (once SiteGPT took"
                                          " it)", {"channel": reply.channel, "post": reply.post})]
            reaction = {"channel": reply.channel, "timestamp": reply.post, "name": SENT_REACTION}
            refused = reply_failed(reply, _example_reason(request))
            return [_shown(request), ("reactions.add (once SiteGPT took the reply)", reaction),
                    self._notice_preview(reply.channel, reply.thread, refused,
                                         "if SiteGPT refuses the reply")]
        assert isinstance(event, ModeChangeEvent)
        change = event.data
        request = mode_request(change)
        if change.tool != SLACK:
            return [_shown(request)]
        refused = mode_failed(change, _example_reason(request))
        return [_shown(request),
                self._notice_preview(change.channel, change.thread_ts, mode_changed(change),
                                     "once SiteGPT switched"),
                self._notice_preview(change.channel, change.thread_ts, refused,
                                     "if SiteGPT refuses the switch")]

    def _notice_preview(self, channel: str, thread_ts: str, notice: Notice, when: str) -> Call:
        message = self.renderer.notice(notice.name, notice.context)
        return (f"chat.postMessage (in the thread, {when})",
                post_arguments(channel, message, thread_ts=thread_ts))

    async def _send_reply(self, delivery: Delivery, reply: Reply) -> Outcome:
        try:
            tool = self.tool(reply.tool)
            outcome = await self._post_reply(delivery, reply, tool)
        except DeliveryError as exc:
            if self._gives_up(delivery, exc):
                await delivery.store.forget_echo(reply.source)
            notice = reply_failed(reply, self.redact(str(exc)))
            exc.follow_ups = [_told(reply.tool, reply.chatbot_id, reply.thread_id, reply.channel,
                                    reply.thread, notice)]
            raise
        if isinstance(outcome, Delivered):
            await _mark_sent(tool, reply)
        return outcome

    async def _post_reply(self, delivery: Delivery, reply: Reply, tool: ReplyTool) -> Outcome:
        author = await tool.author(reply)
        request = reply_request(reply, author, await tool.readable(reply))
        if request is None:
            return Skipped("the reply has no text")
        # Remembered before the call: SiteGPT may send the echo before it answers us.
        echo = Echo(reply.chatbot_id, reply.thread_id, request.body["message"], author.name,
                    reply.source, reply.tool)
        await delivery.store.remember_echo(echo, delivery.clock.now(), ECHO_MEMORY_SECONDS)
        await self._call(request)
        return Delivered(note=f"sent to the visitor as {author.name}")

    async def _change_mode(self, delivery: Delivery, data: ModeChangeData) -> Outcome:
        def told(notice: Notice) -> FollowUp:
            return _told(data.tool, data.chatbot_id, data.thread_id, data.channel,
                         data.thread_ts, notice)

        try:
            await self._call(mode_request(data))
        except DeliveryError as exc:
            exc.follow_ups = [told(mode_failed(data, self.redact(str(exc))))]
            raise
        return Delivered(note=f"mode {data.mode}", follow_ups=[told(mode_changed(data))])

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
        raise _classify(what, response, key.get_secret_value(), self.shared.clock.now())

    def _gives_up(self, delivery: Delivery, exc: DeliveryError) -> bool:
        """Whether the worker will stop after this failure (its own rule, seen from here)."""
        if not isinstance(exc, RetryableError):
            return True
        return spent(delivery.claimed, self.settings.delivery, delivery.clock.now()) is not None


def _tool_of(event: Event) -> str:
    """The chat tool a reply was written in, or a button pressed in."""
    if isinstance(event, SlackReplyEvent):
        return SLACK
    if isinstance(event, ChatReplyEvent | ModeChangeEvent):
        return event.data.tool
    return ""


async def _mark_sent(tool: ReplyTool, reply: Reply) -> None:
    # A failure here must not fail the delivery: a retry would send the reply twice.
    try:
        await tool.mark_sent(reply)
    except DeliveryError as exc:
        log.warning("could not mark reply %s/%s as sent: %s", reply.channel, reply.post, exc)


def reply_request(reply: Reply, author: Author, text: str) -> ApiRequest | None:
    """The reply as an agent message from `author`, or None when no text is left to send."""
    text = text.strip()
    if not text:
        return None
    body: dict[str, Any] = {"message": text, "from": "AGENT", "threadId": reply.thread_id,
                            "agentName": author.name}
    if author.icon_url:
        body["iconUrl"] = author.icon_url
    path = f"/chatbots/{path_segment(reply.chatbot_id)}/message"
    return ApiRequest(reply.chatbot_id, "POST", path, body)


def mode_request(data: ModeChangeData) -> ApiRequest:
    path = f"/chatbots/{path_segment(data.chatbot_id)}/threads/{path_segment(data.thread_id)}"
    return ApiRequest(data.chatbot_id, "PATCH", path, {"mode": data.mode})


def _told(tool: str, chatbot_id: str, thread_id: str, channel: str, thread: str,
          notice: Notice) -> FollowUp:
    """The notice as a follow-up event for the thread in `tool`, and no other tool's."""
    conversation = Conversation(chatbot_id, thread_id)
    body = canonical_json({"event": THREAD_NOTICE, "data": {
        "chatbotId": chatbot_id, "threadId": thread_id, "channel": channel,
        "threadTs": thread, "notice": notice.name, "context": notice.context, "tool": tool}})
    return FollowUp(THREAD_NOTICE, body, conversation.key, (tool,))


def _who(user: str, user_name: str | None) -> dict[str, str]:
    """The member a notice names: their id in the tool, and the name it gave, when it did."""
    return {"user_id": user, **({"user_name": user_name} if user_name else {})}


def reply_failed(reply: Reply, reason: str) -> Notice:
    return Notice(REPLY_FAILED, {"reason": reason, **_who(reply.user, reply.user_name)})


def mode_changed(data: ModeChangeData) -> Notice:
    return Notice(MODE_CHANGED, {"mode": data.mode, **_who(data.user, data.user_name)})


def mode_failed(data: ModeChangeData, reason: str) -> Notice:
    return Notice(MODE_FAILED, {"mode": data.mode, "reason": reason,
                                **_who(data.user, data.user_name)})


def _shown(request: ApiRequest) -> Call:
    """A request as a preview prints it: the key is added only when it is sent."""
    return (f"{request.method} {request.path}",
            {"method": request.method, "path": request.path, "json": request.body})


def _example_reason(request: ApiRequest) -> str:
    return f"{request.what}: {EXAMPLE_REFUSAL}"


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


def replying_tools(settings: Settings) -> list[str]:
    """The chat tools whose replies these settings send to SiteGPT."""
    return [name for name, plugin in REGISTRY.items() if plugin.replies(settings)]


def sitegpt_destination(settings: Settings, templates: Templates,
                        shared: Shared) -> SiteGPTDestination | None:
    """On when a chat tool's replies are configured (Slack: signing secret and bot token;
    Mattermost: url and bot token) and a SiteGPT API key is set.

    Its lookups and marks go through the bridge's one client of each tool, so they share each
    channel's budget with the threads' own posts.
    """
    if not sitegpt_key_set(settings) or not replying_tools(settings):
        return None
    return SiteGPTDestination(settings, templates, shared)


def _unfinished(settings: Settings) -> list[str]:
    """Replies set by halves. A SiteGPT key that another chat tool's replies use (Mattermost's)
    asks nothing of Slack."""
    others = [name for name in replying_tools(settings) if name != SLACK]
    return half_set_replies(settings, key_asks_slack=not others)


REPLIES_OFF = (" (replies are off: they need a SiteGPT API key and a chat tool to answer from:"
               " [slack] bot_token and signing_secret, or [mattermost] url and bot_token; see"
               " docs/slack.md and docs/mattermost.md)")
PLUGIN = Plugin(name="sitegpt", section=SiteGPTSettings, build=sitegpt_destination,
                kinds=SiteGPTDestination.KINDS, unfinished=_unfinished,
                off_hints=dict.fromkeys(SiteGPTDestination.KINDS, REPLIES_OFF), docs="slack",
                chatbot_keys={"sitegpt_api_key": (SecretStr | None, None)})
