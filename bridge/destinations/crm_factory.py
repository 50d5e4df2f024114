"""The CRM destination `[crm] kind` chooses: HubSpot, the generic webhook, or none."""

from __future__ import annotations

from bridge.destinations.base import Destination
from bridge.destinations.crm_webhook import CrmWebhook
from bridge.destinations.hubspot import HubSpot
from bridge.destinations.shared import Shared
from bridge.settings import Settings
from bridge.templating import Templates


def build_crm(settings: Settings, templates: Templates, shared: Shared) -> Destination | None:
    """The CRM destination `[crm] kind` names, or None when it is "none"."""
    crm = settings.crm
    if crm.kind == "hubspot":
        return HubSpot(crm.hubspot, shared.clock)
    if crm.kind == "webhook":
        return CrmWebhook(crm.webhook, templates, shared.clock)
    return None
