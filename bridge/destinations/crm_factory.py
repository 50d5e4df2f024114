"""The CRM destination `[crm] kind` chooses: HubSpot, the generic webhook, or none."""

from __future__ import annotations

from bridge.destinations.base import Destination
from bridge.destinations.crm_settings import CrmSettings
from bridge.destinations.crm_webhook import CrmWebhook
from bridge.destinations.hubspot import HubSpot
from bridge.destinations.plugin import Plugin
from bridge.destinations.shared import Shared
from bridge.events import LEAD
from bridge.redact import hook_url_parts
from bridge.sections import half_set
from bridge.settings import Settings
from bridge.templating import Templates, builtin_dir


def build_crm(settings: Settings, templates: Templates, shared: Shared) -> Destination | None:
    """The CRM destination `[crm] kind` names, or None when it is "none"."""
    crm = settings.crm
    if crm.kind == "hubspot":
        return HubSpot(crm.hubspot, shared.clock)
    if crm.kind == "webhook":
        return CrmWebhook(crm.webhook, templates, shared.clock)
    return None


def _unfinished(settings: Settings) -> list[str]:
    crm: CrmSettings = settings.crm
    line = half_set("crm", "kind", "leads go to no CRM", crm.kind != "none",
                    **{"hubspot.access_token": crm.hubspot.access_token,
                       "webhook.url": crm.webhook.url})
    return [line] if line else []


def _secrets(settings: Settings) -> list[str]:
    """What a hook URL hides after its host: often the hook's only credential."""
    return hook_url_parts(settings.crm.webhook.url)


PLUGIN = Plugin(name="crm", section=CrmSettings, build=build_crm, kinds=frozenset({LEAD}),
                templates=builtin_dir() / "crm", unfinished=_unfinished, secrets=_secrets,
                docs="crm")
