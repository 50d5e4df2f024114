"""Slack as a plugin: its settings section, templates, samples and Events API routes."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute

from bridge.destinations.plugin import Inbound, Plugin
from bridge.destinations.shared import Shared
from bridge.destinations.sitegpt_settings import replies_enabled
from bridge.destinations.slack import SlackDestination, slack_destination, slack_workspace
from bridge.destinations.slack_metrics import BEHIND, PacingMetrics
from bridge.destinations.slack_picture import picture
from bridge.destinations.slack_preview import preview
from bridge.destinations.slack_replies import SlackReplies
from bridge.destinations.slack_settings import SlackSettings
from bridge.sections import half_set
from bridge.settings import Settings
from bridge.slack_events import slack_routes
from bridge.templating import builtin_dir


def _routes(inbound: Inbound) -> list[BaseRoute]:
    return slack_routes(inbound.settings, inbound.store, inbound.clock, inbound.on_accept,
                        inbound.metrics)


def _state(settings: Settings) -> str:
    if settings.slack.bot_token is None:
        return "dry run (no bot token): messages are logged, not posted"
    return "on"


def _unfinished(settings: Settings) -> list[str]:
    slack: SlackSettings = settings.slack
    line = half_set("slack", "bot_token", "Slack runs dry: nothing is posted", slack.bot_token,
                    channel=slack.channel, leads_channel=slack.leads_channel)
    return [line] if line else []


def _reply_tool(settings: Settings, shared: Shared) -> SlackReplies:
    return SlackReplies(slack_workspace(shared))


PLUGIN = Plugin(
    name="slack", section=SlackSettings, build=slack_destination, kinds=SlackDestination.KINDS,
    templates=builtin_dir() / "slack", samples=Path(__file__).parent / "slack_samples",
    routes=_routes, state=_state, unfinished=_unfinished, docs="slack",
    metrics=PacingMetrics, pacing=(BEHIND,), picture=picture, preview=preview,
    chatbot_keys={"slack_channel": (str | None, None)},
    route_keys={"slack_channel": (str | None, None), "leads_channel": (str | None, None),
                "escalation_mention": (str | None, None)},
    replies=replies_enabled, reply_tool=_reply_tool)
