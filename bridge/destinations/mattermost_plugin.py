"""Mattermost as a plugin: its settings section, templates, samples, the WebSocket replies
come in on and the route its buttons call."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute

from bridge.destinations.mattermost import (
    MattermostDestination,
    mattermost_destination,
    mattermost_server,
)
from bridge.destinations.mattermost_listener import (
    LISTENING,
    ListenerMetrics,
    replies_listener,
)
from bridge.destinations.mattermost_replies import MattermostReplies
from bridge.destinations.mattermost_settings import (
    ACTIONS_PATH,
    MattermostSettings,
    mattermost_replies_on,
)
from bridge.destinations.plugin import Inbound, Plugin
from bridge.destinations.shared import Shared
from bridge.mattermost_buttons import mattermost_routes
from bridge.sections import half_set
from bridge.settings import Settings
from bridge.templating import builtin_dir


def _routes(inbound: Inbound) -> list[BaseRoute]:
    return mattermost_routes(inbound.settings, inbound.store, inbound.clock, inbound.on_accept,
                             inbound.metrics)


def _unfinished(settings: Settings) -> list[str]:
    mattermost: MattermostSettings = settings.mattermost
    effect = "nothing is posted to Mattermost"
    lines = [half_set("mattermost", "bot_token", effect, mattermost.bot_token,
                      url=mattermost.url, channel=mattermost.channel,
                      leads_channel=mattermost.leads_channel, actions_url=mattermost.actions_url),
             half_set("mattermost", "url", effect, mattermost.url,
                      bot_token=mattermost.bot_token),
             _doubled_actions_path(mattermost)]
    return [line for line in lines if line]


def _doubled_actions_path(mattermost: MattermostSettings) -> str | None:
    """actions_url is the bridge's address alone: the buttons add the route's path to it."""
    given = (mattermost.actions_url or "").rstrip("/")
    if not given.endswith(ACTIONS_PATH):
        return None
    return (f"mattermost: mattermost.actions_url ends with {ACTIONS_PATH}: the buttons would "
            f"call {given}{ACTIONS_PATH}; give the bridge's address alone")


def _status(settings: Settings) -> list[str]:
    """Where the root post's buttons call, and which there are."""
    endpoint = settings.mattermost.actions_endpoint
    if endpoint is None:
        return []
    buttons = "Take over, Hand back, I'll take it, Resolve"
    if not mattermost_replies_on(settings):
        buttons = ("I'll take it, Resolve (Take over and Hand back need replies from "
                   "Mattermost: [mattermost] replies and a SiteGPT API key)")
    return [f"mattermost buttons: {buttons}: Mattermost calls {endpoint}"]


def _state(settings: Settings) -> str:
    mattermost: MattermostSettings = settings.mattermost
    return (f"on: threads in channel {mattermost.channel}, leads in "
            f"{mattermost.leads_channel or mattermost.channel}")


def _reply_tool(settings: Settings, shared: Shared) -> MattermostReplies:
    return MattermostReplies(mattermost_server(shared), shared.clock)


PLUGIN = Plugin(
    name="mattermost", section=MattermostSettings, build=mattermost_destination,
    kinds=MattermostDestination.KINDS, templates=builtin_dir() / "mattermost",
    samples=Path(__file__).parent / "mattermost_samples",
    routes=_routes, built_with=lambda settings: settings.mattermost.on, state=_state,
    status=_status, unfinished=_unfinished, docs="mattermost", background=replies_listener,
    metrics=ListenerMetrics, listening=LISTENING,
    route_keys={"mattermost_channel": (str | None, None),
                "mattermost_leads_channel": (str | None, None)},
    replies=mattermost_replies_on, reply_tool=_reply_tool)
