"""Mattermost: one thread per conversation (a root post and its replies), leads apart."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge.destinations.base import Delivered, Delivery, Outcome, Skipped
from bridge.destinations.chat_state import (
    MODE_CHANGED,
    for_another_tool,
    handling_change,
    is_echo,
    learnt_from,
    linked_ticket,
    may_be_echo,
    mode_handler,
    previous_handler,
    resolved_follow_up,
    stale_status,
)
from bridge.destinations.mattermost_actions import buttons
from bridge.destinations.mattermost_server import MESSAGE_LIMIT, MattermostServer, fit_post
from bridge.destinations.mattermost_settings import MattermostSettings
from bridge.destinations.shared import Shared
from bridge.destinations.slack_render import (
    TicketShown,
    chatbot_name,
    conversation_context,
    lead_context,
    named_by_lead,
    plain,
    source_url,
    visitor_of,
)
from bridge.errors import PermanentError, RetryableError, TemplateError
from bridge.events import (
    ESCALATION,
    HANDLING,
    LEAD,
    MESSAGE,
    THREAD_NOTICE,
    TICKET_LINKED,
    TICKET_STATUS,
    Conversation,
    EscalationEvent,
    Event,
    HandlingData,
    HandlingEvent,
    LeadData,
    LeadEvent,
    MessageEvent,
    ThreadNoticeData,
    ThreadNoticeEvent,
    TicketLinkedEvent,
    TicketStatusEvent,
    conversation_of,
)
from bridge.settings import Settings
from bridge.store.protocols import ChannelBudgets
from bridge.templating import Templates, cut, link_safe

log = logging.getLogger("bridge.mattermost")
MARK = "sitegpt_bridge"  # the props key that names what a post carries, for a retry to find
LOOKBACK_SECONDS = 300.0  # posts read from this long before the event came in
MAX_BATCH = 50  # messages of a backlog that go in one reply
BATCH_SEPARATOR = "\n\n"
MERGED_KINDS = frozenset({MESSAGE})  # escalations and leads ping people: never merged
SAMPLE_ESCALATED_AT = 1_705_316_400.0  # 2024-01-15 11:00 UTC, when a preview was escalated
REQUEST_LIMIT = 2000  # of the visitor's last message, kept to show with an escalation
ROOT = "POST /api/v4/posts (the thread's root)"
REPLY = "POST /api/v4/posts (in the thread)"
ROOT_PATCH = "PUT /api/v4/posts/{root}/patch"
NOTICE_KEYS = ("user_id", "user_name", "reason", "mode")  # what notices' templates are told


@dataclass(frozen=True)
class Thread:
    channel: str
    root_id: str


class MattermostDestination:
    """Posts each conversation as a Mattermost thread and keeps its root post current."""

    name: ClassVar[str] = "mattermost"
    # Claims and notices are addressed to the one chat tool whose thread they are for.
    KINDS: ClassVar[frozenset[str]] = frozenset({
        MESSAGE, ESCALATION, LEAD, TICKET_LINKED, TICKET_STATUS, HANDLING, THREAD_NOTICE})

    def __init__(self, settings: Settings, templates: Templates, server: MattermostServer
                 ) -> None:
        self.settings = settings
        self.mattermost: MattermostSettings = settings.mattermost
        self.templates = templates
        self.server = server

    def accepts(self, kind: str) -> bool:
        return kind in self.KINDS

    async def deliver(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        try:
            if isinstance(event, MessageEvent):
                if await is_echo(delivery, event, self.name):
                    return Skipped("echo of a reply sent from Mattermost")
                return await self._post_message(delivery, event)
            if isinstance(event, EscalationEvent):
                return await self._escalate(delivery, event)
            if isinstance(event, LeadEvent):
                return await self._post_lead(delivery, event)
            if isinstance(event, TicketLinkedEvent):
                return await self._link_ticket(delivery, event)
            if isinstance(event, TicketStatusEvent):
                return await self._ticket_moved(delivery, event)
            if isinstance(event, HandlingEvent):
                return await self._handled(delivery, event.data)
            if isinstance(event, ThreadNoticeEvent):
                return await self._post_notice(delivery, event.data)
        except TemplateError as exc:
            raise PermanentError(f"mattermost: template error: {exc}") from exc
        raise PermanentError(f"mattermost: cannot deliver {event.event} events")

    async def verify(self) -> str:
        me = await self.server.me()
        channels = [await self._check_channel(channel, setting)
                    for channel, setting in self._channels().items()]
        return (f"ok: {self.mattermost.url}, bot @{me.get('username')} ({me.get('id')}), "
                f"{', '.join(channels)}")

    def _channels(self) -> dict[str, str]:
        """Every channel posts go to, each once, with the setting that names it: threads,
        leads, and those of chatbots and routes."""
        named = {channel: f"routes.{key}" for key in ("mattermost_leads_channel",
                                                      "mattermost_channel")
                 for channel in self.settings.routed_values(key)}
        named.update({self.mattermost.leads_channel: "mattermost.leads_channel",
                      self.mattermost.channel: "mattermost.channel"})
        return {channel: setting for channel, setting in named.items() if channel}

    def _channel_for(self, chatbot_id: str) -> tuple[str, str]:
        """Where a new thread of the chatbot starts, and the setting that says so.

        A conversation keeps the thread it has, wherever the settings send new ones.
        """
        if routed := self.settings.routed(chatbot_id, "mattermost_channel"):
            return routed, "routes.mattermost_channel"
        return self.mattermost.channel or "", "mattermost.channel"

    def _lead_channel(self, chatbot_id: str) -> tuple[str, str]:
        """Leads: the route's leads channel, else [mattermost]'s, else where its threads go."""
        if routed := self.settings.routed(chatbot_id, "mattermost_leads_channel"):
            return routed, "routes.mattermost_leads_channel"
        if self.mattermost.leads_channel:
            return self.mattermost.leads_channel, "mattermost.leads_channel"
        return self._channel_for(chatbot_id)

    async def _check_channel(self, channel: str, setting: str) -> str:
        found = await self.server.channel(channel, setting)
        return f"channel {found.get('name') or channel} ({channel}) ok"

    async def aclose(self) -> None:
        await self.server.aclose()

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """What Mattermost would be sent for each event it takes, as JSON, in deliver()'s order.

        Post ids are known only once Mattermost answers: previews leave the root's out.
        """
        rendered: dict[str, str] = {}
        for label, event in samples.items():
            if self.accepts(event.event) and not for_another_tool(event, self.name):
                for call, body in self._preview(event):
                    rendered[f"{label}: {call}"] = json.dumps(fit_post(body), indent=2,
                                                              ensure_ascii=False)
        return rendered

    def _preview(self, event: Event) -> list[tuple[str, dict[str, Any]]]:
        if isinstance(event, LeadEvent):
            return [("POST /api/v4/posts (lead)", self._lead(event))]
        conversation = conversation_of(event)
        assert conversation is not None
        if isinstance(event, MessageEvent):
            first = learnt_from({}, [event], thread_started=False)
            return [(ROOT, self._root(conversation, first)), (REPLY, self._message(event))]
        if isinstance(event, EscalationEvent):
            state: dict[str, Any] = {"escalated_at": SAMPLE_ESCALATED_AT}
            return [(REPLY, self._escalation(event, None)),
                    (ROOT_PATCH, self._root(conversation, state))]
        if isinstance(event, TicketLinkedEvent):
            state = {"ticket": linked_ticket({}, event)}
            return [(REPLY, self._ticket(event)), (ROOT_PATCH, self._root(conversation, state))]
        if isinstance(event, HandlingEvent):
            changed = handling_change({}, event.data)
            assert changed is not None
            return [(REPLY, self._handling(event.data, None)),
                    (ROOT_PATCH, self._root(conversation, changed))]
        if isinstance(event, ThreadNoticeEvent):
            notice = [(REPLY, self._notice(event.data))]
            if event.data.notice != MODE_CHANGED:
                return notice
            handler = {"handler": mode_handler(event.data.context)}
            return [*notice, (ROOT_PATCH, self._root(conversation, handler))]
        assert isinstance(event, TicketStatusEvent)
        moved = self._moved_to(event)
        return [(REPLY, self._ticket_status(event, moved)),
                (ROOT_PATCH, self._root(conversation, {"ticket": moved.state()}))]

    async def _post_message(self, delivery: Delivery, event: MessageEvent) -> Outcome:
        """The message, with those queued right behind it (a backlog), in one reply."""
        await self._learn(delivery, [event])  # before the thread: a new root starts with it
        thread = await self._thread(delivery)
        if found := await self._posted_before(delivery, thread):
            return await self._found_reply(delivery, thread, found)
        waiting = [delivery, *await delivery.queued_behind(MERGED_KINDS, MAX_BATCH - 1)]
        body, count = self._batch(event, waiting)
        post_id = await self.server.post(thread.channel, _marked(body, waiting[:count]),
                                         thread.root_id)
        carried = [item.event for item in waiting[:count] if isinstance(item.event, MessageEvent)]
        questions = [event.data.question for event in carried if event.data.question]
        if questions:  # an escalation shows what the visitor asked last
            state = await delivery.state()
            await _save(delivery, {**state, "request": cut(questions[-1], REQUEST_LIMIT)})
        await self._learn(delivery, carried[1:])
        return Delivered(note=f"{thread.channel}/{post_id}",
                         coalesced=[item.claimed.id for item in waiting[1:count]])

    async def _learn(self, delivery: Delivery, events: list[MessageEvent]) -> None:
        """What messages tell the root post: the first question, an agent answering. The root
        is patched only when something changed."""
        state = await delivery.state()
        learnt = learnt_from(state, events, _thread_of(state) is not None)
        if learnt != state:
            await _save(delivery, learnt)
            await self._patch_root(delivery)

    def _batch(self, event: MessageEvent,
               waiting: list[Delivery]) -> tuple[dict[str, Any], int]:
        """`event` and the first messages queued behind it (`waiting[1:]`) as one post within
        Mattermost's limit, and how many.

        One message alone is its own reply, cut if it must be; several are never cut, and
        what does not fit waits for the next reply.
        """
        bodies = [self._message(event)]
        length = len(bodies[0]["message"])
        for item in waiting[1:]:
            if may_be_echo(item.event):  # skipped on its own turn if it is one
                break
            body = self._queued_body(item)
            if body is None or body.get("props"):  # a card goes in a reply of its own
                break
            length += len(BATCH_SEPARATOR) + len(body["message"])
            if length > MESSAGE_LIMIT:
                break
            bodies.append(body)
        count = len(bodies)
        if count == 1:
            return bodies[0], 1
        joined = BATCH_SEPARATOR.join(body["message"] for body in bodies[:count])
        return {"message": joined}, count

    def _queued_body(self, item: Delivery) -> dict[str, Any] | None:
        """A queued message's reply, or None: one that fails to render fails on its own turn."""
        if not isinstance(item.event, MessageEvent):
            return None
        try:
            return self._message(item.event)
        except TemplateError as exc:
            log.warning("%s; it goes in a reply of its own", exc)
            return None

    async def _found_reply(self, delivery: Delivery, thread: Thread,
                           found: Mapping[str, Any]) -> Delivered:
        """The reply a cut-off attempt made: delivered, with the messages it carried along."""
        carried = set(delivered_in(found))
        went_along: list[int] = []
        if len(carried) > 1:  # they still wait right behind this one, in the same order
            queued = await delivery.queued_behind(MERGED_KINDS, MAX_BATCH - 1)
            went_along = [item.claimed.id for item in queued if item.claimed.id in carried]
        return Delivered(note=f"{thread.channel}/{found['id']}", coalesced=went_along)

    async def _posted_before(self, delivery: Delivery, thread: Thread | None,
                             channel: str | None = None) -> dict[str, Any] | None:
        """The post an earlier attempt of this delivery made before it was cut off, if any.

        Only an uncertain delivery looks: in its thread, or among the channel's recent posts.
        A lookup that fails posts again: a message shown twice is better than one lost.
        """
        if not delivery.uncertain:
            return None
        wanted = delivery.claimed.id
        try:
            if thread is not None:
                posts = await self.server.thread_posts(thread.root_id)
            else:
                since = delivery.claimed.created_at - LOOKBACK_SECONDS
                posts = await self.server.channel_posts(channel or "", since)
        except (RetryableError, PermanentError) as exc:
            log.warning("could not look for what delivery %d posted before it was cut off,"
                        " posting it again: %s", wanted, exc)
            delivery.reconciled(None)
            return None
        found = next((post for post in posts if wanted in delivered_in(post)), None)
        delivery.reconciled(found is not None)
        return found

    async def _escalate(self, delivery: Delivery, event: EscalationEvent) -> Outcome:
        thread = await self._thread(delivery)
        state = await delivery.state()
        named = visitor_of(event.data.user.name, event.data.user.email) if event.data.user else None
        await _save(delivery, {**state, "escalated_at": delivery.clock.now(),
                               **({"visitor": named} if named else {})})
        body = self._escalation(event, state.get("request"))
        outcome = await self._post_in_thread(delivery, thread, body)
        await self._patch_root(delivery)
        return outcome

    async def _post_in_thread(self, delivery: Delivery, thread: Thread,
                              body: dict[str, Any]) -> Delivered:
        if found := await self._posted_before(delivery, thread):
            return Delivered(note=f"{thread.channel}/{found['id']}")
        post_id = await self.server.post(thread.channel, _marked(body, [delivery]),
                                         thread.root_id)
        return Delivered(note=f"{thread.channel}/{post_id}")

    async def _post_lead(self, delivery: Delivery, event: LeadEvent) -> Outcome:
        channel, setting = self._lead_channel(event.data.chatbot_id)
        if found := await self._posted_before(delivery, None, channel):
            return Delivered(note=f"{channel}/{found['id']}")
        post_id = await self.server.post(channel, _marked(self._lead(event), [delivery]),
                                         setting=setting)
        await self._name_from_lead(delivery, event.data)
        return Delivered(note=f"{channel}/{post_id}")

    async def _name_from_lead(self, delivery: Delivery, data: LeadData) -> None:
        """A lead captured in a conversation names its visitor on that thread's root post.

        Such a lead is delivered in line with its conversation (see ordering_key), so
        Mattermost's state for it is not written by two deliveries at once.
        """
        state = await named_by_lead(delivery.store, self.name, data)
        if state is None or data.thread_id is None:
            return
        thread = _thread_of(state)
        await delivery.store.save_link(data.chatbot_id, data.thread_id, self.name, state,
                                       _ref(thread))
        if thread is not None:
            await self._patch(Conversation(data.chatbot_id, data.thread_id), thread, state)

    async def _link_ticket(self, delivery: Delivery, event: TicketLinkedEvent) -> Outcome:
        thread = await self._thread(delivery)
        state = await delivery.state()
        await _save(delivery, {**state, "ticket": linked_ticket(state, event)})
        outcome = await self._post_in_thread(delivery, thread, self._ticket(event))
        await self._patch_root(delivery)
        return outcome

    async def _ticket_moved(self, delivery: Delivery, event: TicketStatusEvent) -> Outcome:
        """A notice per status change; a repeat or a late retry of an older one is skipped."""
        data = event.data
        known = (await delivery.state()).get("ticket") or {}
        if stale := stale_status(known, data):
            return Skipped(stale)
        thread = await self._thread(delivery)
        moved = self._moved_to(event, known.get("url") if known.get("key") == data.issue_key
                               else None)
        outcome = await self._post_in_thread(delivery, thread, self._ticket_status(event, moved))
        await _save(delivery, {**await delivery.state(), "ticket": moved.state()})
        await self._patch_root(delivery)
        return outcome

    async def _handled(self, delivery: Delivery, data: HandlingData) -> Outcome:
        """I'll take it or Resolve pressed on the root: a line in the thread, the root says who.

        Pressing again what the root shows already does nothing. A resolve tells the other
        destinations (Jira moves the ticket) with a follow-up event.
        """
        state = await delivery.state()
        thread = _thread_of(state)
        if data.tool != self.name or thread != Thread(data.channel, data.thread_ts):
            return Skipped("pressed on another thread than the conversation's in Mattermost")
        changed = handling_change(state, data)
        if changed is None:
            return Skipped(f"the root shows {data.user_name or data.user}'s {data.action} "
                           "already")
        line = self._handling(data, previous_handler(state, data))
        outcome = await self._post_in_thread(delivery, thread, line)
        await _save(delivery, {**await delivery.state(), **changed})
        await self._patch_root(delivery)
        if data.action != "resolve":
            return outcome
        conversation = Conversation(data.chatbot_id, data.thread_id)
        return Delivered(note=outcome.note, follow_ups=[
            resolved_follow_up(conversation, data.user, delivery.clock.now())])

    async def _post_notice(self, delivery: Delivery, notice: ThreadNoticeData) -> Outcome:
        """A notice the bridge was asked to post in the thread: a reply that did not reach the
        visitor, a mode SiteGPT switched or would not switch.

        Once SiteGPT switched the mode, the root shows who took over (or no one, handed back).
        """
        thread = Thread(notice.channel, notice.thread_ts)
        if _thread_of(await delivery.state()) != thread:
            return Skipped("the notice is for another thread than the conversation's in "
                           "Mattermost")
        outcome = await self._post_in_thread(delivery, thread, self._notice(notice))
        if notice.notice == MODE_CHANGED:
            state = await delivery.state()
            await _save(delivery, {**state, "handler": mode_handler(notice.context)})
            await self._patch_root(delivery)
        return outcome

    async def _thread(self, delivery: Delivery) -> Thread:
        """The conversation's thread, starting it with its root post the first time."""
        if thread := _thread_of(await delivery.state()):
            return thread
        async with delivery.one_at_a_time("mattermost-thread"):
            state = await delivery.state()  # another replica may have started it meanwhile
            if thread := _thread_of(state):
                return thread
            conversation = conversation_of(delivery.event)
            assert conversation is not None
            channel, setting = self._channel_for(conversation.chatbot_id)
            root_id = await self._earlier_root(delivery, channel, conversation)
            if root_id is None:
                root_id = await self.server.post(channel, self._root(conversation, state),
                                                 setting=setting)
            # "question" is kept even while unknown: it marks a root that shows the first one.
            await _save(delivery, {**state, "channel": channel, "root_id": root_id,
                                   "question": state.get("question")})
            return Thread(channel, root_id)

    async def _earlier_root(self, delivery: Delivery, channel: str,
                            conversation: Conversation) -> str | None:
        """The root an earlier attempt posted without hearing back (a timeout, a crash)."""
        if delivery.attempt <= 1:
            return None
        since = delivery.claimed.created_at - LOOKBACK_SECONDS
        try:
            posts = await self.server.channel_posts(channel, since)
        except (RetryableError, PermanentError) as exc:
            log.warning("could not look for an earlier root post of %s, posting one: %s",
                        conversation.key, exc)
            return None
        found = next((post for post in posts if not post.get("root_id")
                      and _mark(post).get("conversation") == conversation.key), None)
        return str(found["id"]) if found else None

    async def _patch_root(self, delivery: Delivery) -> None:
        """Show on the root post what the state now knows, once the thread exists."""
        state = await delivery.state()
        thread = _thread_of(state)
        conversation = conversation_of(delivery.event)
        if thread is not None and conversation is not None:
            await self._patch(conversation, thread, state)

    async def _patch(self, conversation: Conversation, thread: Thread,
                     state: Mapping[str, Any]) -> None:
        """A failure costs only the cosmetics, and retrying would post the notice twice: it is
        left for the next patch to mend."""
        try:
            await self.server.patch(thread.root_id, self._root(conversation, state))
        except (RetryableError, PermanentError) as exc:
            log.warning("could not update the root post of %s: %s", conversation.key, exc)

    def _moved_to(self, event: TicketStatusEvent, url: str | None = None) -> TicketShown:
        """The ticket at its new status, linked where Jira's settings or its link said."""
        data = event.data
        return TicketShown(data.issue_key, self.settings.jira.browse_url(data.issue_key) or url,
                           data.status, data.status_id, data.category, data.changed_at)

    def _root(self, conversation: Conversation, state: Mapping[str, Any]) -> dict[str, Any]:
        ticket = state.get("ticket")
        shown = TicketShown.from_state(ticket) if ticket else None
        root = self._render("mattermost/root.json.j2", {
            **self._conversation(conversation), "visitor": state.get("visitor"),
            "question": plain(state.get("question")),
            "escalated": bool(state.get("escalated_at")),
            "ticket": shown.context() if shown else None,
            "handler": _member(state.get("handler"), "user"),
            "resolved_by": _member(state.get("resolved"), "by"),
            "reopened": bool(state.get("reopened")),
            "actions": buttons(self.settings, conversation)})
        return {**root, "props": {**root.get("props", {}),
                                  MARK: {"conversation": conversation.key}}}

    def _message(self, event: MessageEvent) -> dict[str, Any]:
        data = event.data
        return self._render("mattermost/message.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "message": {"type": data.message_type or "UNKNOWN", "question": data.question,
                        "answer": data.answer,
                        "sources": [source_url(source) for source in data.sources or []],
                        "agent_name": data.agent_name, "agent_id": data.agent_id,
                        "system_message_type": data.system_message_type}})

    def _escalation(self, event: EscalationEvent, request: str | None) -> dict[str, Any]:
        data = event.data
        conversation = Conversation(data.chatbot_id, data.thread_id)
        return self._render("mattermost/escalation.json.j2", {
            **self._conversation(conversation),
            "visitor": data.user.model_dump() if data.user else None,
            "request": request,
            "dashboard_url": data.dashboard_url if link_safe(data.dashboard_url)
            else conversation.dashboard_url,
            "mention": self.mattermost.escalation_mention})

    def _lead(self, event: LeadEvent) -> dict[str, Any]:
        data = event.data
        return self._render("mattermost/lead.json.j2", lead_context(
            event, data.chatbot_name or self._name(data.chatbot_id)))

    def _ticket(self, event: TicketLinkedEvent) -> dict[str, Any]:
        data = event.data
        return self._render("mattermost/ticket.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "ticket": {"key": data.issue_key, "url": data.issue_url, "created": data.created}})

    def _ticket_status(self, event: TicketStatusEvent, ticket: TicketShown) -> dict[str, Any]:
        data = event.data
        return self._render("mattermost/ticket_status.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "ticket": {**ticket.context(), "previous_status": data.previous_status},
            "actor": data.actor})

    def _handling(self, data: HandlingData,
                  previous: Mapping[str, Any] | None) -> dict[str, Any]:
        """The thread's line when someone claims or resolves the conversation."""
        return self._render("mattermost/handling.json.j2", {
            **self._conversation(Conversation(data.chatbot_id, data.thread_id)),
            "action": data.action, "user_id": data.user, "user_name": data.user_name,
            "previous": previous})

    def _notice(self, notice: ThreadNoticeData) -> dict[str, Any]:
        """A notice's post: what a notice leaves unsaid is none, so templates may test it."""
        return self._render(f"mattermost/{notice.notice}.json.j2", {
            **self._conversation(Conversation(notice.chatbot_id, notice.thread_id)),
            **dict.fromkeys(NOTICE_KEYS), **notice.context})

    def _conversation(self, conversation: Conversation) -> dict[str, Any]:
        return conversation_context(self.settings, conversation)

    def _name(self, chatbot_id: str) -> str:
        return chatbot_name(self.settings, chatbot_id)

    def _render(self, name: str, context: dict[str, Any]) -> dict[str, Any]:
        body = self.templates.render_json(name, context)
        if not isinstance(body, dict) or not isinstance(body.get("message"), str):
            raise TemplateError(f"{name}: must render a JSON object with a \"message\" string")
        if not isinstance(body.get("props", {}), dict):
            raise TemplateError(f"{name}: \"props\" must be an object")
        return body


def _marked(body: Mapping[str, Any], deliveries: Sequence[Delivery]) -> dict[str, Any]:
    """The post naming every delivery it carries, so a retry cut off mid-call can find it.

    Ids are joined in a string: Mattermost keeps props as they are sent.
    """
    ids = ",".join(str(item.claimed.id) for item in deliveries)
    return {**body, "props": {**body.get("props", {}), MARK: {"deliveries": ids}}}


def _mark(post: Mapping[str, Any]) -> dict[str, Any]:
    mark = (post.get("props") or {}).get(MARK)
    return mark if isinstance(mark, dict) else {}


def delivered_in(post: Mapping[str, Any]) -> list[int]:
    """The deliveries a post by the bridge carries, from its props; [] for any other."""
    ids = str(_mark(post).get("deliveries") or "")
    return [int(part) for part in ids.split(",") if part.strip().isdigit()]


def _member(kept: Mapping[str, Any] | None, id_key: str) -> dict[str, Any] | None:
    """A handler or resolver as the root template sees it: `user` (a member's id, or none for
    a SiteGPT agent) and `name`; none when there is none."""
    if not kept:
        return None
    return {"user": kept.get(id_key), "name": kept.get("name")}


def _thread_of(state: Mapping[str, Any]) -> Thread | None:
    """The conversation's thread, once Mattermost's state has one."""
    channel, root_id = state.get("channel"), state.get("root_id")
    return Thread(channel, root_id) if channel and root_id else None


async def _save(delivery: Delivery, state: dict[str, Any]) -> None:
    """Mattermost's state for the conversation, found again by its thread ("channel/root")."""
    await delivery.save_state(state, ref=_ref(_thread_of(state)))


def _ref(thread: Thread | None) -> str | None:
    return f"{thread.channel}/{thread.root_id}" if thread else None



def mattermost_destination(settings: Settings, templates: Templates,
                           shared: Shared) -> MattermostDestination | None:
    """On only with `[mattermost] url` and `bot_token`; one server client per bridge."""
    mattermost: MattermostSettings = settings.mattermost
    if not mattermost.on:
        return None
    return MattermostDestination(settings, templates, mattermost_server(shared))


def mattermost_server(shared: Shared) -> MattermostServer:
    """The bridge's one Mattermost client: its threads, and the replies and buttons in them,
    share each channel's pace."""
    return shared.one("mattermost", lambda: _server(shared, shared.settings.mattermost))


def _server(shared: Shared, mattermost: MattermostSettings) -> MattermostServer:
    server = MattermostServer(mattermost, shared.clock)

    def pace_with_replicas(budgets: ChannelBudgets) -> None:
        """Replicas sharing the store (PostgreSQL) keep each channel's pace there, for all."""
        server.pacer.shared = MattermostBudgets(budgets)

    shared.when_store_is_shared(pace_with_replicas)
    return server


@dataclass(frozen=True)
class MattermostBudgets:
    """The store's channel budgets, with Mattermost's channels apart from Slack's."""

    budgets: ChannelBudgets

    async def take_token(self, channel: str, now: float, capacity: float,
                         rate: float) -> tuple[float, float]:
        return await self.budgets.take_token(f"mattermost:{channel}", now, capacity, rate)

    async def hold_channel(self, channel: str, now: float, until: float) -> None:
        await self.budgets.hold_channel(f"mattermost:{channel}", now, until)
