"""The destinations, registered explicitly: name → factory that returns None when switched off."""

from __future__ import annotations

from collections.abc import Callable

from bridge.destinations.base import Destination
from bridge.destinations.shared import Shared
from bridge.settings import Settings
from bridge.templating import Templates

Factory = Callable[[Settings, Templates, Shared], Destination | None]
REGISTRY: dict[str, Factory] = {}


def build_destinations(settings: Settings, templates: Templates,
                       shared: Shared | None = None) -> dict[str, Destination]:
    """Every destination whose settings switch it on, by name: one clock, one Slack workspace."""
    shared = shared or Shared(settings)
    built = {name: factory(settings, templates, shared) for name, factory in REGISTRY.items()}
    return {name: destination for name, destination in built.items() if destination is not None}


def destinations_for(kind: str, destinations: dict[str, Destination]) -> list[str]:
    """The destinations that get a delivery row for an event of this kind."""
    return [name for name, destination in destinations.items() if destination.accepts(kind)]


def _register_builtin() -> None:
    from bridge.destinations.crm_factory import build_crm
    from bridge.destinations.jira import build_jira
    from bridge.destinations.sitegpt import sitegpt_destination
    from bridge.destinations.slack import slack_destination

    REGISTRY["slack"] = slack_destination
    REGISTRY["jira"] = build_jira
    REGISTRY["crm"] = build_crm
    REGISTRY["sitegpt"] = sitegpt_destination


_register_builtin()
