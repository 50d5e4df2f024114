"""The destinations this bridge delivers to: one line per plugin, in the order they are shown."""

from __future__ import annotations

from bridge.destinations import register
from bridge.destinations.crm_factory import PLUGIN as CRM
from bridge.destinations.jira_plugin import PLUGIN as JIRA
from bridge.destinations.mattermost_plugin import PLUGIN as MATTERMOST
from bridge.destinations.sitegpt import PLUGIN as SITEGPT
from bridge.destinations.slack_plugin import PLUGIN as SLACK

BUILTIN = (SLACK, MATTERMOST, JIRA, CRM, SITEGPT)

for plugin in BUILTIN:
    register(plugin)
