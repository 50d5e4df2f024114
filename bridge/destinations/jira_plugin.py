"""Jira as a plugin: its settings section, templates, samples and webhook (the back-channel)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.routing import BaseRoute

from bridge.destinations.jira import build_jira
from bridge.destinations.jira_settings import JiraSettings
from bridge.destinations.plugin import Inbound, Plugin
from bridge.events import ESCALATION, RESOLVED
from bridge.jira_events import jira_routes
from bridge.sections import half_set
from bridge.settings import Settings
from bridge.templating import builtin_dir


def back_channel(settings: Settings) -> str:
    """Whether Jira's webhooks reach Slack threads, and how they are checked; for logs and check."""
    jira: JiraSettings = settings.jira
    if not jira.back_channel and jira.webhook_credentials:
        return "off: [jira] webhook_secret or webhook_token is set, but url is not (no tickets)"
    if not jira.back_channel:
        return "off (set [jira] webhook_secret or webhook_token to receive Jira's webhooks)"
    checks = [name for name, value in (("Cloud signature", jira.webhook_secret),
                                       ("Data Center token", jira.webhook_token)) if value]
    comments = "on" if jira.comments_to_slack else "off"
    return (f"on at POST /jira/webhook ({' and '.join(checks)}); status changes to Slack, "
            f"comments to Slack {comments}")


def _ticket_url(settings: Settings, state: Mapping[str, Any]) -> str | None:
    """The conversation's ticket in Jira's web pages, for the console."""
    url, key = settings.jira.url, state.get("key")
    return f"{url.rstrip('/')}/browse/{quote(str(key))}" if url and key else None


def _routes(inbound: Inbound) -> list[BaseRoute]:
    return jira_routes(inbound.settings, inbound.store, inbound.clock, inbound.on_accept,
                       inbound.metrics)


def _status(settings: Settings) -> list[str]:
    return [f"jira back-channel: {back_channel(settings)}"]


def _unfinished(settings: Settings) -> list[str]:
    jira: JiraSettings = settings.jira
    line = half_set("jira", "url", "no tickets are made", jira.url, email=jira.email,
                    api_token=jira.api_token, project=jira.project,
                    personal_access_token=jira.personal_access_token)
    return [line] if line else []


def _secrets(settings: Settings) -> list[str]:
    """The Cloud credentials as the Basic header they become, which an upstream may echo."""
    jira: JiraSettings = settings.jira
    if not jira.email or jira.api_token is None:
        return []
    pair = f"{jira.email}:{jira.api_token.get_secret_value()}"
    return [base64.b64encode(pair.encode()).decode()]


PLUGIN = Plugin(
    name="jira", section=JiraSettings, build=build_jira, kinds=frozenset({ESCALATION, RESOLVED}),
    templates=builtin_dir() / "jira", samples=Path(__file__).parent / "jira_samples",
    routes=_routes, status=_status, unfinished=_unfinished, secrets=_secrets, docs="jira",
    link=_ticket_url,
    chatbot_keys={"jira_project": (str | None, None)},
    route_keys={"jira_project": (str | None, None)})
