"""Slack: one thread per conversation, escalations broadcast, leads in their own channel."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, cast

from slack_sdk import WebClient

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import Delivered, Delivery, Outcome, Skipped
from bridge.destinations.chat_state import (
    MODE_CHANGED,
    VISITOR_TYPES,
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
from bridge.destinations.shared import Shared
from bridge.destinations.slack_metrics import PacingMetrics
from bridge.destinations.slack_render import (
    MAX_BLOCKS,
    REQUEST_LIMIT,
    EscalationView,
    ParentView,
    SlackRenderer,
    TicketShown,
    Waiting,
    escalation_view,
    fit_message,
    named_by_lead,
    visitor_of,
)
from bridge.destinations.slack_settings import SlackSettings
from bridge.destinations.slack_workspace import (
    ChannelBudget,
    ChannelPacer,
    SlackUser,
    SlackWorkspace,
    post_arguments,
    update_arguments,
)
from bridge.errors import PermanentError, RetryableError, TemplateError
from bridge.events import (
    ESCALATION,
    HANDLING,
    LEAD,
    MESSAGE,
    THREAD_NOTICE,
    TICKET_COMMENT,
    TICKET_DELETED,
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
    ThreadNoticeEvent,
    TicketCommentEvent,
    TicketDeletedEvent,
    TicketLinkedEvent,
    TicketStatusEvent,
    conversation_of,
)
from bridge.settings import Settings
from bridge.templating import Templates, cut

log = logging.getLogger("bridge.slack")
Call = tuple[str, dict[str, Any]]  # what a call is for, and its arguments
IN_THREAD = "chat.postMessage (in the thread)"
PARENT_UPDATE = "chat.update (the thread's parent)"
PARENT_EVENT_TYPE = "sitegpt_bridge_thread"  # the metadata on every thread's parent
DELIVERY_EVENT_TYPE = "sitegpt_bridge_delivery"  # the metadata on every other post
PARENT_LOOKBACK_SECONDS = 300.0  # history read from this long before the event came in
CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")  # what Slack's channel ids look like
MERGED_KINDS = frozenset({MESSAGE})  # escalations and leads ping people: never merged
BATCH_PREVIEW = "waiting messages in one reply"
SAMPLE_RECEIVED_AT = 1_705_316_400.0  # 2024-01-15 11:00 UTC, when previews say a message came
DRY_RUN_THREAD = "dry_run_thread"  # the channel a dry run logged a parent for: logged once
NO_CHANNEL = "(no channel set)"  # what a dry run without [slack] channel names as the channel
REQUEST_MESSAGES = 3  # the visitor's last messages an escalation quotes
__all__ = ["MODE_CHANGED", "Call", "SlackDestination", "SlackUser", "json_previews",
           "post_arguments"]


@dataclass(frozen=True)
class Thread:
    channel: str
    ts: str


class SlackDestination:
    """Posts rendered messages with slack_sdk; classifies Slack's failures for the worker."""

    name: ClassVar[str] = "slack"
    KINDS: ClassVar[frozenset[str]] = frozenset({
        MESSAGE, ESCALATION, LEAD, TICKET_LINKED, TICKET_STATUS, TICKET_COMMENT, TICKET_DELETED,
        THREAD_NOTICE, HANDLING})

    def __init__(self, settings: Settings, templates: Templates, clock: Clock | None = None,
                 workspace: SlackWorkspace | None = None) -> None:
        self.settings = settings
        self.slack: SlackSettings = settings.slack
        self.renderer = SlackRenderer(templates, settings)
        self.clock = clock or SystemClock()
        self.workspace = workspace or SlackWorkspace(settings.slack, self.clock)

    @property
    def dry_run(self) -> bool:
        return self.slack.bot_token is None

    def accepts(self, kind: str) -> bool:
        return kind in self.KINDS

    @property
    def client(self) -> WebClient:
        return self.workspace.client

    @property
    def pacer(self) -> ChannelPacer:
        return self.workspace.pacer

    async def deliver(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        try:
            if isinstance(event, MessageEvent):
                if await is_echo(delivery, event, self.name):
                    return Skipped("echo of a reply sent from Slack")
                return await self._post_messages(delivery, event)
            if isinstance(event, EscalationEvent):
                return await self._escalate(delivery, event)
            if isinstance(event, TicketLinkedEvent):
                return await self._link_ticket(delivery, event)
            if isinstance(event, LeadEvent):
                return await self._post_lead(delivery, event)
            if isinstance(event, TicketStatusEvent):
                return await self._ticket_moved(delivery, event)
            if isinstance(event, TicketCommentEvent):
                url = self._issue_url(event.data.issue_key)
                # A long comment takes a while to convert: meanwhile the loop answers webhooks.
                shown = await asyncio.to_thread(self.renderer.ticket_comment, event, url)
                return await self._post_in_thread(delivery, shown)
            if isinstance(event, TicketDeletedEvent):
                return await self._ticket_deleted(delivery, event)
            if isinstance(event, ThreadNoticeEvent):
                return await self._post_notice(delivery, event)
            if isinstance(event, HandlingEvent):
                return await self._handled(delivery, event.data)
        except TemplateError as exc:
            raise PermanentError(f"slack: template error: {exc}") from exc
        raise PermanentError(f"slack: cannot deliver {event.event} events")

    async def verify(self) -> str:
        if self.dry_run:
            return "dry run (no slack.bot_token): messages are logged, not posted"
        reply = await self.workspace.call("auth.test", self.client.auth_test)
        channels = [await self._check_channel(channel) for channel in self._channels()]
        return (f"ok: workspace {reply.get('team')} ({reply.get('team_id')}), "
                f"bot @{reply.get('user')} ({reply.get('user_id')}), {', '.join(channels)}")

    def _channels(self) -> list[str]:
        """Every channel posts may go to, each once: threads, leads, chatbots' and routes' own."""
        named = [self.slack.channel, self.slack.leads_channel,
                 *self.settings.routed_values("slack_channel"),
                 *self.settings.routed_values("leads_channel")]
        return list(dict.fromkeys(channel for channel in named if channel))

    async def _check_channel(self, channel: str) -> str:
        """Whether the bot can read the channel, which it can only once it is a member.

        A channel named rather than given by id, or an app without the history scope, cannot
        be looked at this way: say so rather than fail a setup that posts fine.
        """
        if not CHANNEL_ID.fullmatch(channel):
            return f"channel {channel} (a name: not checked, give its id to check it)"
        read = partial(self.client.conversations_history, channel=channel, limit=1)
        try:
            await self.workspace.call("conversations.history", read, channel)
        except PermanentError as exc:
            if "missing_scope" in str(exc):
                return f"channel {channel} (not checked: the app has no history scope)"
            raise PermanentError(f"{exc}: is the bot invited to channel {channel}?") from exc
        return f"channel {channel} ok"

    async def aclose(self) -> None:
        await self.workspace.aclose()

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """What Slack would be sent for each event it takes, as JSON, without sending anything.

        One entry per call, in the order deliver() makes them; a thread's ts is known only once
        Slack answers, so previews leave it out.
        """
        shown = {name: event for name, event in samples.items()
                 if not for_another_tool(event, self.name)}
        rendered = json_previews(shown, self.accepts, partial(self._preview, samples))
        return rendered | self._batch_previews(samples)

    def _batch_previews(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """Each conversation's message samples as the one reply a backlog of them becomes."""
        waiting: dict[Conversation, list[Waiting]] = {}
        for event in samples.values():
            if isinstance(event, MessageEvent) and (conversation := conversation_of(event)):
                earlier = waiting.setdefault(conversation, [])
                earlier.append(Waiting(event, SAMPLE_RECEIVED_AT + 60 * len(earlier)))
        previews: dict[str, str] = {}
        for conversation, messages in waiting.items():
            if len(messages) > 1:
                batch, count = self.renderer.batch(conversation, messages)
                label = f"{conversation.thread_id}: {IN_THREAD}, {count} {BATCH_PREVIEW}"
                arguments = post_arguments(self._channel_for(conversation.chatbot_id), batch)
                previews[label] = json.dumps(arguments, indent=2, ensure_ascii=False)
        return previews

    def _preview(self, samples: Mapping[str, Event], event: Event) -> list[Call]:
        if isinstance(event, LeadEvent):
            return [("chat.postMessage (lead)", post_arguments(
                self._lead_channel(event.data.chatbot_id), self.renderer.lead(event)))]
        conversation = conversation_of(event)
        assert conversation is not None
        channel = self._channel_for(conversation.chatbot_id)
        if isinstance(event, MessageEvent):
            parent = self.renderer.parent(conversation, ParentView(question=event.data.question))
            return [("chat.postMessage (parent of a new thread)",
                     post_arguments(channel, parent, metadata=parent_metadata(conversation))),
                    (IN_THREAD, post_arguments(channel, self.renderer.message(event)))]
        if isinstance(event, TicketCommentEvent):
            url = self._issue_url(event.data.issue_key)
            return [(IN_THREAD, post_arguments(channel, self.renderer.ticket_comment(event, url)))]
        if isinstance(event, TicketDeletedEvent):
            return [self._parent_preview(channel, conversation, None)]
        if isinstance(event, ThreadNoticeEvent):
            notice = event.data
            return [(IN_THREAD, post_arguments(notice.channel, self.renderer.notice(
                notice.notice, notice.context), thread_ts=notice.thread_ts))]
        if isinstance(event, HandlingEvent):
            data = event.data
            changed = handling_change({}, data)
            assert changed is not None
            line = self.renderer.handling(conversation, data.action, data.user, None)
            parent = self._parent(conversation, changed, None)
            return [(IN_THREAD, post_arguments(data.channel, line, thread_ts=data.thread_ts)),
                    (PARENT_UPDATE, update_arguments(data.channel, parent))]
        if isinstance(event, EscalationEvent):
            request = _sample_request(samples, conversation)
            view = escalation_view(event.data, request, None)
            posted = post_arguments(channel, self.renderer.escalation(conversation, view),
                                    reply_broadcast=True)
            user = event.data.user
            # The parent a live run shows then: the visitor the escalation names, and what
            # they asked first.
            parent = self.renderer.parent(conversation, ParentView(
                visitor=visitor_of(user.name, user.email) if user else None,
                question=request[0] if request else None, escalated=True))
            return [(IN_THREAD, posted), (PARENT_UPDATE, update_arguments(channel, parent))]
        elif isinstance(event, TicketStatusEvent):
            ticket = _moved_to(event, self._issue_url(event.data.issue_key))
            posted = post_arguments(channel, self.renderer.ticket_status(event, ticket))
        else:
            assert isinstance(event, TicketLinkedEvent)
            ticket = TicketShown(event.data.issue_key, event.data.issue_url)
            posted = post_arguments(channel, self.renderer.ticket(event))
        return [(IN_THREAD, posted), self._parent_preview(channel, conversation, ticket)]

    def _parent_preview(self, channel: str, conversation: Conversation,
                        ticket: TicketShown | None) -> Call:
        parent = self.renderer.parent(conversation, ParentView(escalated=True, ticket=ticket))
        return (PARENT_UPDATE, update_arguments(channel, parent))

    async def user(self, user_id: str) -> SlackUser:
        """A member's display name and avatar, remembered for an hour by the workspace."""
        return await self.workspace.user(user_id)

    async def react(self, channel: str, ts: str, name: str) -> None:
        await self.workspace.react(channel, ts, name)

    async def _post_notice(self, delivery: Delivery, event: ThreadNoticeEvent) -> Outcome:
        """A notice the bridge was asked to post in a thread, e.g. that a reply failed.

        Once SiteGPT switched the mode, the parent shows who took over (or no one, handed back).
        """
        notice = event.data
        message = self.renderer.notice(notice.notice, notice.context)
        if self.dry_run:
            return self._dry_run(f"reply in the thread {notice.channel}/{notice.thread_ts}",
                                 message)
        if found := await self._posted_before(delivery, notice.channel, notice.thread_ts):
            ts = found["ts"]
        else:
            ts = await self.workspace.post(notice.channel, message, thread_ts=notice.thread_ts,
                                           metadata=delivery_metadata([delivery]))
        if notice.notice == MODE_CHANGED:
            state = await delivery.state()
            await _save(delivery, {**state, "handler": mode_handler(notice.context)})
            await self._refresh_parent(delivery)
        return Delivered(note=f"{notice.channel}/{ts}")

    async def _handled(self, delivery: Delivery, data: HandlingData) -> Outcome:
        """Claim or Resolve pressed on the parent: the thread gets a line, the parent says who.

        Pressing again what the parent shows already does nothing. A resolve tells the other
        destinations (Jira moves the ticket) with a follow-up event.
        """
        state = await delivery.state()
        changed = handling_change(state, data)
        if changed is None:
            return Skipped(f"the parent shows {data.user}'s {data.action} already")
        previous = previous_handler(state, data)
        conversation = Conversation(data.chatbot_id, data.thread_id)
        line = self.renderer.handling(conversation, data.action, data.user,
                                      previous["user"] if previous else None)
        outcome = await self._post_in_thread(delivery, line)
        if not isinstance(outcome, Delivered):
            return outcome
        await _save(delivery, {**await delivery.state(), **changed})
        await self._refresh_parent(delivery)
        if data.action != "resolve":
            return outcome
        return Delivered(note=outcome.note,
                         follow_ups=[resolved_follow_up(conversation, data.user,
                                                            delivery.clock.now())])

    async def _post_messages(self, delivery: Delivery, event: MessageEvent) -> Outcome:
        """The message, with those waiting right behind it in the same thread, in one reply.

        Nothing waits to collect: what is queued now goes along, a single message goes as it
        always does, and what does not fit Slack's limits stays queued for the next reply.
        """
        await self._learn(delivery, [event])  # before the thread: a new parent starts with it
        if self.dry_run:
            return await self._dry_run_in_thread(delivery, self.renderer.message(event))
        thread = await self._thread(delivery)
        if found := await self._posted_before(delivery, thread.channel, thread.ts):
            return await self._found_reply(delivery, thread.channel, found)
        waiting = [delivery, *await self._queued_messages(delivery)]
        message, count = self._batch(event, waiting)
        ts = await self.workspace.post(thread.channel, message, thread_ts=thread.ts,
                                       metadata=delivery_metadata(waiting[:count]))
        await self._learn(delivery, [item.event for item in waiting[1:count]
                                     if isinstance(item.event, MessageEvent)])
        return Delivered(note=f"{thread.channel}/{ts}",
                         coalesced=[item.claimed.id for item in waiting[1:count]])

    async def _found_reply(self, delivery: Delivery, channel: str,
                           found: Mapping[str, Any]) -> Delivered:
        """The reply a cut-off attempt posted: delivered, with the messages it carried along."""
        carried = set(delivered_in(found))
        went_along: list[int] = []
        if len(carried) > 1:  # they still wait right behind this one, in the same order
            queued = await delivery.queued_behind(MERGED_KINDS, MAX_BLOCKS - 1)
            went_along = [item.claimed.id for item in queued if item.claimed.id in carried]
        return Delivered(note=f"{channel}/{found['ts']}", coalesced=went_along)

    async def _posted_before(self, delivery: Delivery, channel: str,
                             thread_ts: str | None) -> dict[str, Any] | None:
        """The post an earlier attempt of this delivery made before it was cut off, if any.

        Only an uncertain delivery looks, by the metadata every post carries, and at the
        channel's pace, as a post would. A lookup that fails posts again: a message shown twice
        is better than one lost.
        """
        if not delivery.uncertain:
            return None
        since = delivery.claimed.created_at - PARENT_LOOKBACK_SECONDS
        wanted = delivery.claimed.id
        try:
            await self.pacer.acquire(channel)
            found = await self.workspace.find(channel, thread_ts, since,
                                              lambda message: wanted in delivered_in(message))
        except (RetryableError, PermanentError) as exc:
            log.warning("could not look for what delivery %d posted before it was cut off,"
                        " posting it again: %s", wanted, exc)
            delivery.reconciled(None)
            return None
        delivery.reconciled(found is not None)
        return found

    def _batch(self, event: MessageEvent, waiting: list[Delivery]) -> tuple[dict[str, Any], int]:
        """The reply for what waits, or the message alone if the batch template fails here."""
        conversation = conversation_of(event)
        assert conversation is not None
        try:
            # All messages: the first is `event`, and _queued_messages stops at any other kind.
            return self.renderer.batch(conversation, [
                Waiting(cast(MessageEvent, item.event), item.claimed.created_at)
                for item in waiting])
        except TemplateError as exc:
            if len(waiting) == 1:
                raise
            log.warning("%s; the waiting messages go one reply each", exc)
            return self.renderer.message(event), 1

    async def _queued_messages(self, delivery: Delivery) -> list[Delivery]:
        """Messages queued right behind this one; an agent's ends the run, as it may be an echo."""
        queued = await delivery.queued_behind(MERGED_KINDS, MAX_BLOCKS - 1)
        run: list[Delivery] = []
        for item in queued:
            if not isinstance(item.event, MessageEvent) or may_be_echo(item.event):
                break
            run.append(item)
        return run

    async def _learn(self, delivery: Delivery, events: list[MessageEvent]) -> None:
        """What messages tell the parent: the first question, an agent answering, the visitor
        back after it was resolved. The parent is updated only when something changed."""
        state = await delivery.state()
        learnt = learnt_from(state, events, _thread_of(state) is not None)
        if learnt != state:
            await _save(delivery, learnt)
            await self._show_on_parent(delivery, learnt, self._shown(learnt))

    async def _post_in_thread(self, delivery: Delivery, message: dict[str, Any],
                              broadcast: bool = False) -> Outcome:
        if self.dry_run:
            return await self._dry_run_in_thread(delivery, message)
        thread, ts = await self._reply(delivery, message, broadcast)
        return Delivered(note=f"{thread.channel}/{ts}")

    async def _reply(self, delivery: Delivery, message: dict[str, Any],
                     broadcast: bool = False) -> tuple[Thread, str]:
        """Post in the conversation's thread (starting it if need be): the thread and the ts."""
        thread = await self._thread(delivery)
        if found := await self._posted_before(delivery, thread.channel, thread.ts):
            return thread, found["ts"]
        ts = await self.workspace.post(thread.channel, message, thread_ts=thread.ts,
                                       reply_broadcast=broadcast,
                                       metadata=delivery_metadata([delivery]))
        return thread, ts

    async def _escalate(self, delivery: Delivery, event: EscalationEvent) -> Outcome:
        """Broadcast what the visitor asked; the post is kept so the ticket can join it later."""
        data = event.data
        conversation = Conversation(data.chatbot_id, data.thread_id)
        state = await delivery.state()
        view = escalation_view(data, await self._request(delivery), self._shown(state))
        named = visitor_of(data.user.name, data.user.email) if data.user else None
        state = {**state, "escalated_at": delivery.clock.now(), "escalation": view.state(),
                 **({"visitor": named} if named else {})}
        await _save(delivery, state)
        message = self.renderer.escalation(conversation, view)
        if self.dry_run:
            outcome = await self._dry_run_in_thread(delivery, message)
            await self._refresh_parent(delivery)  # logs the parent's update, as a live run makes
            return outcome
        thread, ts = await self._reply(delivery, message, broadcast=True)
        state = await delivery.state()
        await _save(delivery, {**state, "escalation": {**view.state(), "ts": ts}})
        await self._refresh_parent(delivery)
        return Delivered(note=f"{thread.channel}/{ts}")

    async def _request(self, delivery: Delivery) -> list[str]:
        """The visitor's last messages before the escalation came in, each cut."""
        conversation = conversation_of(delivery.event)
        assert conversation is not None
        messages = await delivery.store.transcript(conversation.chatbot_id, conversation.thread_id)
        asked = [message.question for message in messages
                 if message.question and message.message_type in VISITOR_TYPES
                 and message.received_at <= delivery.claimed.created_at]
        return [cut(question, REQUEST_LIMIT) for question in asked[-REQUEST_MESSAGES:]]

    async def _link_ticket(self, delivery: Delivery, event: TicketLinkedEvent) -> Outcome:
        # The parent shows the ticket: Slack keeps what it was told, in its own state.
        state = await delivery.state()
        await _save(delivery, {**state, "ticket": linked_ticket(state, event)})
        outcome = await self._post_in_thread(delivery, self.renderer.ticket(event))
        await self._refresh_parent(delivery)
        await self._show_ticket_on_escalation(delivery)
        return outcome

    async def _show_ticket_on_escalation(self, delivery: Delivery) -> None:
        """The escalation's post, shown again with the ticket's link; only cosmetics if it fails."""
        state = await delivery.state()
        kept, thread = state.get("escalation") or {}, _thread_of(state)
        conversation = conversation_of(delivery.event)
        assert conversation is not None
        if self.dry_run and kept and state.get(DRY_RUN_THREAD):
            view = EscalationView.from_state(kept, self._shown(state))
            self._dry_run(f"update the escalation's post in {state[DRY_RUN_THREAD]}",
                          self.renderer.escalation(conversation, view))
        if self.dry_run or thread is None or not kept.get("ts"):
            return
        view = EscalationView.from_state(kept, self._shown(state))
        await self._update(conversation, thread.channel, kept["ts"],
                           self.renderer.escalation(conversation, view))

    async def _post_lead(self, delivery: Delivery, event: LeadEvent) -> Outcome:
        message = self.renderer.lead(event)
        channel = self._lead_channel(event.data.chatbot_id)
        if self.dry_run:
            outcome = self._dry_run(f"post in {channel or NO_CHANNEL}", message)
            await self._name_from_lead(delivery, event.data)  # logs the parent's update
            return outcome
        if found := await self._posted_before(delivery, channel, None):
            ts = found["ts"]
        else:
            ts = await self.workspace.post(channel, message,
                                           metadata=delivery_metadata([delivery]))
        await self._name_from_lead(delivery, event.data)
        return Delivered(note=f"{channel}/{ts}")

    async def _name_from_lead(self, delivery: Delivery, data: LeadData) -> None:
        """A lead captured in a conversation names its visitor on that thread's parent.

        Such a lead is delivered in line with its conversation (see ordering_key), so Slack's
        state for it is not written by two deliveries at once.
        """
        store = delivery.store
        state = await named_by_lead(store, self.name, data)
        if state is None or data.thread_id is None:
            return
        conversation = Conversation(data.chatbot_id, data.thread_id)
        thread = _thread_of(state)
        await store.save_link(data.chatbot_id, data.thread_id, self.name, state,
                              f"{thread.channel}/{thread.ts}" if thread else None)
        parent = self._parent(conversation, state, self._shown(state))
        if self.dry_run:
            if state.get(DRY_RUN_THREAD):
                self._dry_run(f"update the thread's parent in {state[DRY_RUN_THREAD]}", parent)
        elif thread is not None:
            await self._update(conversation, thread.channel, thread.ts, parent)

    async def _thread(self, delivery: Delivery) -> Thread:
        """The conversation's thread, starting it with a parent message the first time."""
        if thread := _thread_of(await delivery.state()):
            return thread
        async with delivery.one_at_a_time("slack-thread"):
            # Another replica may have started it while this one waited.
            state = await delivery.state()
            return _thread_of(state) or await self._start_thread(delivery, state)

    async def _start_thread(self, delivery: Delivery, state: dict[str, Any]) -> Thread:
        conversation = conversation_of(delivery.event)
        assert conversation is not None
        channel = self._channel_for(conversation.chatbot_id)
        ts = await self._earlier_parent(delivery, channel, conversation)
        if ts is None:
            parent = self._parent(conversation, state, self._shown(state))
            ts = await self.workspace.post(channel, parent,
                                           metadata=parent_metadata(conversation))
        # "question" is kept even while unknown: it marks a thread that shows the first one.
        await _save(delivery, {**state, "channel": channel, "thread_ts": ts,
                               "question": state.get("question")})
        return Thread(channel, ts)

    async def _earlier_parent(self, delivery: Delivery, channel: str,
                              conversation: Conversation) -> str | None:
        """The parent an earlier attempt posted without hearing back (a timeout, a crash).

        Each parent carries the conversation in its message metadata; a retry reads the
        channel's history since the event came in to find it. Without the history scope the
        retry posts a new parent: a second parent is better than a lost message.
        """
        if delivery.attempt <= 1:
            return None
        since = delivery.claimed.created_at - PARENT_LOOKBACK_SECONDS
        try:
            found = await self.workspace.find(channel, None, since,
                                              partial(_is_parent, conversation.key))
        except PermanentError as exc:
            log.warning("could not look for an earlier parent of %s, posting one: %s",
                        conversation.key, exc)
            return None
        return str(found["ts"]) if found else None

    async def _refresh_parent(self, delivery: Delivery) -> None:
        """Show escalation and ticket on the parent; a failure here only costs the cosmetics."""
        state = await delivery.state()
        await self._show_on_parent(delivery, state, self._shown(state))

    async def _show_on_parent(self, delivery: Delivery, state: Mapping[str, Any],
                              ticket: TicketShown | None, required: bool = False) -> None:
        """Update the parent to show `ticket`; unless `required`, a failure is only logged."""
        thread = _thread_of(state)
        conversation = conversation_of(delivery.event)
        assert conversation is not None
        if self.dry_run and state.get(DRY_RUN_THREAD):
            self._dry_run(f"update the thread's parent in {state[DRY_RUN_THREAD]}",
                          self._parent(conversation, state, ticket))
        if self.dry_run or thread is None:
            return
        parent = self._parent(conversation, state, ticket)
        await self._update(conversation, thread.channel, thread.ts, parent, required)

    async def _update(self, conversation: Conversation, channel: str, ts: str,
                      message: dict[str, Any], required: bool = False) -> None:
        """Show `message` in place of the post at `ts`; unless `required`, a failure is logged."""
        try:
            await self.workspace.update(channel, ts, message)
        except (RetryableError, PermanentError) as exc:
            if required:
                raise
            log.warning("could not update a message of %s's thread: %s", conversation.key, exc)

    async def _ticket_moved(self, delivery: Delivery, event: TicketStatusEvent) -> Outcome:
        """A notice per status change, however often (or late) Jira reports the same change."""
        data = event.data
        known = (await delivery.state()).get("ticket") or {}
        if known.get("key") == data.issue_key and known.get("deleted"):
            return Skipped(f"{data.issue_key} is deleted")
        if stale := stale_status(known, data):
            return Skipped(stale)
        moved = _moved_to(event, self._issue_url(data.issue_key))
        outcome = await self._post_in_thread(delivery, self.renderer.ticket_status(event, moved))
        if isinstance(outcome, Delivered) or self.dry_run:  # a dry run shows the update too
            # A status change says more than "the visitor wrote again after it was resolved".
            state = {**await delivery.state(), "ticket": moved.state(), "reopened": False}
            await _save(delivery, state)
            await self._show_on_parent(delivery, state, moved)
        return outcome

    async def _ticket_deleted(self, delivery: Delivery, event: TicketDeletedEvent) -> Outcome:
        """The parent stops showing the ticket; nothing is said in the thread."""
        key = event.data.issue_key
        state = await delivery.state()
        shown = self._shown(state)
        if shown is None or shown.key != key:
            return Skipped(f"the parent does not show {key}")
        await self._show_on_parent(delivery, state, None, required=True)
        if self.dry_run:
            return Skipped("dry run: slack.bot_token is not set")
        # Kept, marked: a late retry of an earlier change must not bring it back.
        await _save(delivery, {**state, "ticket": {**state["ticket"], "deleted": True}})
        return Delivered(note=f"{key} deleted: the parent no longer shows it")

    def _channel_for(self, chatbot_id: str) -> str:
        """Where a new thread of the chatbot starts: its own channel, its route's, or [slack]'s.

        A conversation keeps the thread it has, wherever the settings send new ones.
        """
        return self.settings.routed(chatbot_id, "slack_channel") or self.slack.channel or ""

    def _lead_channel(self, chatbot_id: str) -> str:
        """Leads: the route's leads channel, else [slack]'s, else where its threads go."""
        return (self.settings.routed(chatbot_id, "leads_channel") or self.slack.leads_channel
                or self._channel_for(chatbot_id))

    def _issue_url(self, key: str) -> str | None:
        return self.settings.jira.browse_url(key)  # type: ignore[no-any-return]

    def _parent(self, conversation: Conversation, state: Mapping[str, Any],
                ticket: TicketShown | None) -> dict[str, Any]:
        """The thread's parent showing `ticket`, and the rest as Slack's state has it."""
        resolved = state.get("resolved") or {}
        return self.renderer.parent(conversation, ParentView(
            visitor=state.get("visitor"), question=state.get("question"),
            escalated=bool(state.get("escalated_at")), ticket=ticket,
            handler=state.get("handler"), resolved_by=resolved.get("by"),
            reopened=bool(state.get("reopened"))))

    def _shown(self, state: Mapping[str, Any]) -> TicketShown | None:
        """The ticket the parent shows: none before one is linked, or once it is deleted."""
        ticket = state.get("ticket")
        if not ticket or ticket.get("deleted"):
            return None
        # A ticket linked before Slack kept its url is shown at [jira] url, as it was then.
        return TicketShown.from_state(ticket, ticket.get("url") or self._issue_url(ticket["key"]))

    async def _dry_run_in_thread(self, delivery: Delivery, message: dict[str, Any]) -> Outcome:
        """What a live run sends to the thread: its parent the first time, then the reply."""
        state = await delivery.state()
        channel = state.get(DRY_RUN_THREAD)
        if channel is None:
            conversation = conversation_of(delivery.event)
            assert conversation is not None
            channel = self._channel_for(conversation.chatbot_id) or NO_CHANNEL
            self._dry_run(f"start the thread in {channel} with the parent",
                          self._parent(conversation, state, self._shown(state)))
            await _save(delivery, {**state, DRY_RUN_THREAD: channel})
        return self._dry_run(f"reply in the thread in {channel}", message)

    def _dry_run(self, call: str, message: dict[str, Any]) -> Outcome:
        """Log one call a live run would make, in place of making it."""
        log.info("slack dry run (no bot_token), would %s: %s", call,
                 json.dumps(fit_message(message), ensure_ascii=False))
        return Skipped("dry run: slack.bot_token is not set")


def _moved_to(event: TicketStatusEvent, url: str | None) -> TicketShown:
    data = event.data
    return TicketShown(data.issue_key, url, data.status, data.status_id, data.category,
                       data.changed_at)


def _sample_request(samples: Mapping[str, Event], conversation: Conversation) -> list[str]:
    """What a preview's escalation quotes: the visitor's words in the conversation's samples."""
    asked = [event.data.question for event in samples.values()
             if isinstance(event, MessageEvent) and conversation_of(event) == conversation
             and event.data.question and event.data.message_type in VISITOR_TYPES]
    return [cut(question, REQUEST_LIMIT) for question in asked[-REQUEST_MESSAGES:]]


def _thread_of(state: Mapping[str, Any]) -> Thread | None:
    """The conversation's thread, once Slack's state has one."""
    channel, ts = state.get("channel"), state.get("thread_ts")
    return Thread(channel, ts) if channel and ts else None


async def _save(delivery: Delivery, state: dict[str, Any]) -> None:
    """Slack's state for the conversation, found again by its thread ("channel/thread_ts")."""
    thread = _thread_of(state)
    await delivery.save_state(state, ref=f"{thread.channel}/{thread.ts}" if thread else None)



def json_previews(samples: Mapping[str, Event], accepts: Callable[[str], bool],
                  preview: Callable[[Event], list[Call]]) -> dict[str, str]:
    """render_samples for a destination whose calls are JSON: each labelled by its sample."""
    rendered: dict[str, str] = {}
    for name, event in samples.items():
        if accepts(event.event):
            for label, call in preview(event):
                rendered[f"{name}: {label}"] = json.dumps(call, indent=2, ensure_ascii=False)
    return rendered


def parent_metadata(conversation: Conversation) -> dict[str, Any]:
    """Slack message metadata that marks a thread's parent with its conversation."""
    return {"event_type": PARENT_EVENT_TYPE, "event_payload": {"conversation": conversation.key}}


def _is_parent(key: str, message: Mapping[str, Any]) -> bool:
    """Whether `message` is the bridge's parent of conversation `key`."""
    metadata = message.get("metadata") or {}
    return (metadata.get("event_type") == PARENT_EVENT_TYPE
            and (metadata.get("event_payload") or {}).get("conversation") == key)


def delivery_metadata(deliveries: Sequence[Delivery]) -> dict[str, Any]:
    """Slack message metadata naming every delivery (and its event) a post carries.

    A retry of a delivery cut off mid-call looks for it to learn whether the post landed.
    Ids are joined in strings: Slack's payload values are strings, numbers or booleans.
    """
    return {"event_type": DELIVERY_EVENT_TYPE, "event_payload": {
        "event_id": ",".join(str(item.claimed.event_id) for item in deliveries),
        "delivery_id": ",".join(str(item.claimed.id) for item in deliveries)}}


def delivered_in(message: Mapping[str, Any]) -> list[int]:
    """The deliveries a post by the bridge carries, from its metadata; [] for any other."""
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != DELIVERY_EVENT_TYPE:
        return []
    ids = str((metadata.get("event_payload") or {}).get("delivery_id") or "")
    return [int(part) for part in ids.split(",") if part.strip().isdigit()]


def slack_workspace(shared: Shared) -> SlackWorkspace:
    """The workspace every Slack call of the bridge goes through, so a channel has one budget."""
    return shared.one("slack", lambda: _workspace(shared))


def _workspace(shared: Shared) -> SlackWorkspace:
    metrics = shared.metrics.own("slack", PacingMetrics) if shared.metrics is not None else None
    workspace = SlackWorkspace(shared.settings.slack, shared.clock,
                               shared.settings.delivery.concurrency,
                               metrics.paced if metrics is not None else None)
    if metrics is not None:
        metrics.watch_pacer(workspace.pacer.behind)

    def pace_with_replicas(budget: ChannelBudget) -> None:
        """Replicas sharing the store (PostgreSQL) keep each channel's pace there, for all."""
        workspace.pacer.shared = budget

    shared.when_store_is_shared(pace_with_replicas)
    return workspace


def slack_destination(settings: Settings, templates: Templates,
                      shared: Shared) -> SlackDestination:
    """Always on: without a bot token it runs dry, logging what it would post."""
    return SlackDestination(settings, templates, shared.clock, slack_workspace(shared))
