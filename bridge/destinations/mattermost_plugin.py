"""Mattermost as a plugin: its settings section, templates, samples, and the WebSocket replies
come in on."""

from __future__ import annotations

from bridge.destinations.mattermost import (
    MattermostDestination,
    mattermost_destination,
    mattermost_server,
)
from bridge.destinations.mattermost_listener import ListenerMetrics, replies_listener
from bridge.destinations.mattermost_replies import MattermostReplies
from bridge.destinations.mattermost_settings import MattermostSettings, mattermost_replies_on
from bridge.destinations.plugin import Plugin
from bridge.destinations.shared import Shared
from bridge.sections import half_set
from bridge.settings import Settings
from bridge.templating import builtin_dir


def _unfinished(settings: Settings) -> list[str]:
    mattermost: MattermostSettings = settings.mattermost
    effect = "nothing is posted to Mattermost"
    lines = [half_set("mattermost", "bot_token", effect, mattermost.bot_token,
                      url=mattermost.url, channel=mattermost.channel,
                      leads_channel=mattermost.leads_channel),
             half_set("mattermost", "url", effect, mattermost.url,
                      bot_token=mattermost.bot_token)]
    return [line for line in lines if line]


def _state(settings: Settings) -> str:
    mattermost: MattermostSettings = settings.mattermost
    return (f"on: threads in channel {mattermost.channel}, leads in "
            f"{mattermost.leads_channel or mattermost.channel}")


def _reply_tool(settings: Settings, shared: Shared) -> MattermostReplies:
    return MattermostReplies(mattermost_server(shared), shared.clock)


PLUGIN = Plugin(
    name="mattermost", section=MattermostSettings, build=mattermost_destination,
    kinds=MattermostDestination.KINDS, templates=builtin_dir() / "mattermost",
    built_with=lambda settings: settings.mattermost.on, state=_state,
    unfinished=_unfinished, docs="mattermost", background=replies_listener,
    metrics=ListenerMetrics,
    route_keys={"mattermost_channel": (str | None, None),
                "mattermost_leads_channel": (str | None, None)},
    replies=mattermost_replies_on, reply_tool=_reply_tool)
