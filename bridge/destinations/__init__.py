"""The destinations, registered by name in an explicit mapping: each plugin and what it brings.

`bridge.plugins` fills it, one line per destination; nothing else in the core names one. See
docs/architecture.md, "Adding a destination".
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, overload

from pydantic import create_model
from starlette.routing import BaseRoute

from bridge.destinations.base import Destination
from bridge.destinations.plugin import Inbound, Plugin
from bridge.destinations.shared import Shared
from bridge.metrics import Metrics
from bridge.sections import ChatbotSettings, RouteSettings
from bridge.settings import Settings
from bridge.templating import Templates

REGISTRY: dict[str, Plugin] = {}
_models: dict[tuple[Plugin, ...], type[Settings]] = {}


def register(plugin: Plugin) -> None:
    """Plug a destination in: its settings section, templates, samples and routes with it."""
    REGISTRY[plugin.name] = plugin


def settings_model() -> type[Settings]:
    """The Settings model: the general sections, then one section per registered destination.

    Each destination's per-chatbot keys join the `[[chatbots]]` tables, its route keys the
    `[[routes]]` tables.
    """
    plugins = tuple(REGISTRY.values())
    if plugins not in _models:
        chatbot_keys: dict[str, Any] = {key: field for plugin in plugins
                                        for key, field in plugin.chatbot_keys.items()}
        route_keys: dict[str, Any] = {key: field for plugin in plugins
                                      for key, field in plugin.route_keys.items()}
        chatbot = create_model("ChatbotSettings", __base__=ChatbotSettings, **chatbot_keys)
        route = create_model("RouteSettings", __base__=RouteSettings, **route_keys)
        fields: dict[str, Any] = {plugin.name: (plugin.section, plugin.section())
                                  for plugin in plugins}
        _models[plugins] = create_model("Settings", __base__=Settings,
                                        chatbots=(list[chatbot], []),  # type: ignore[valid-type]
                                        routes=(list[route], []),  # type: ignore[valid-type]
                                        **fields)
    return _models[plugins]


def make_settings(**sections: Any) -> Settings:
    """Settings from these sections (and BRIDGE_* variables), as the registry's model reads them."""
    return settings_model()(**sections)


def build_destinations(settings: Settings, templates: Templates,
                       shared: Shared | None = None) -> dict[str, Destination]:
    """Every destination whose settings switch it on, by name: one clock, one of each client."""
    shared = shared or Shared(settings)
    built = {name: plugin.build(settings, templates, shared) for name, plugin in REGISTRY.items()}
    return {name: destination for name, destination in built.items() if destination is not None}


def destinations_for(kind: str, destinations: dict[str, Destination]) -> list[str]:
    """The destinations that get a delivery row for an event of this kind."""
    return [name for name, destination in destinations.items() if destination.accepts(kind)]


class Takers(Sequence[str]):
    """The registered destinations that declare they take any of these event kinds.

    Read when used, not when made: a module a plugin imports can name them before the
    registry is filled.
    """

    def __init__(self, *kinds: str) -> None:
        self.kinds = frozenset(kinds)

    def _names(self) -> list[str]:
        return [name for name, plugin in REGISTRY.items() if plugin.kinds & self.kinds]

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"Takers({sorted(self.kinds)}: {self._names()})"

    def built_with(self, settings: Settings) -> list[str]:
        """Those of them that these settings switch on."""
        return [name for name in self._names() if REGISTRY[name].built_with(settings)]



def off_hint(kind: str) -> str:
    """Why no destination may take events of this kind: the feature is off (or "")."""
    return next((plugin.off_hints[kind] for plugin in REGISTRY.values()
                 if kind in plugin.off_hints), "")


def with_plugin_metrics(metrics: Metrics) -> Metrics:
    """`metrics` with every plugin's own in it from the start, so a scrape shows them at zero."""
    for name, plugin in REGISTRY.items():
        if plugin.metrics is not None:
            metrics.own(name, plugin.metrics)
    return metrics


def template_folders() -> dict[str, Path]:
    """Each plugin's built-in templates folder, by the prefix its templates are named with."""
    return {name: plugin.templates for name, plugin in REGISTRY.items()
            if plugin.templates is not None}


def sample_folders() -> list[Path]:
    """The folders of sample payloads the plugins bring."""
    return [plugin.samples for plugin in REGISTRY.values() if plugin.samples is not None]


def templates_for(settings: Settings) -> Templates:
    """The templates: the user's folder first, then every plugin's built-in ones."""
    return Templates(settings.templates.dir, template_folders())


def inbound_routes(inbound: Inbound) -> list[BaseRoute]:
    """Every route the plugins receive on (Slack's Events API, Jira's webhook)."""
    return [route for plugin in REGISTRY.values() if plugin.routes is not None
            for route in plugin.routes(inbound)]


def background_jobs(inbound: Inbound) -> dict[str, Awaitable[None]]:
    """What the plugins listen to while serve runs (Mattermost's WebSocket), by plugin name."""
    jobs = {name: plugin.background(inbound) for name, plugin in REGISTRY.items()
            if plugin.background is not None}
    return {name: job for name, job in jobs.items() if job is not None}


def status_lines(settings: Settings) -> list[str]:
    """What the plugins add to the start-up log and to `check`, in registry order."""
    return [line for plugin in REGISTRY.values() for line in plugin.status(settings)]


def unfinished_lines(settings: Settings) -> list[str]:
    """Settings the plugins find set by halves, one line each: `check` fails on them."""
    return [line for plugin in REGISTRY.values() for line in plugin.unfinished(settings)]
