"""What a destination declares to plug into the bridge: the one record the registry keeps of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from bridge.clock import Clock
from bridge.destinations.base import Destination
from bridge.sections import Section
from bridge.settings import Settings
from bridge.templating import Templates

if TYPE_CHECKING:  # the factory's and the routes' signatures only
    from markupsafe import Markup

    from bridge.destinations.replies import ReplyTool
    from bridge.destinations.shared import Shared
    from bridge.metrics import Metrics
    from bridge.store import Store

Factory = Callable[[Settings, Templates, "Shared"], Destination | None]
SettingsLines = Callable[[Settings], list[str]]


@dataclass(frozen=True)
class Inbound:
    """What a plugin's inbound routes are built from: they store events and wake the worker."""

    settings: Settings
    store: Store
    clock: Clock
    on_accept: Callable[[], None]
    metrics: Metrics


Routes = Callable[[Inbound], list[BaseRoute]]
# What runs for as long as `serve` does with these settings (Mattermost's WebSocket): started
# with the routes, cancelled and started again when a settings change rebuilds them.
Background = Callable[[Inbound], Awaitable[None] | None]
ReplyTools = Callable[[Settings, "Shared"], "ReplyTool | None"]


def no_lines(settings: Settings) -> list[str]:
    """For a plugin with nothing to say."""
    return []


def plainly_on(settings: Settings) -> str:
    return "on"


def always_built(settings: Settings) -> bool:
    return True


def never(settings: Settings) -> bool:
    return False


@dataclass(frozen=True, eq=False)  # one record per destination: equal only to itself
class Plugin:
    """A destination and everything it brings: the core knows it only through this record.

    `name` is both its settings section (`[name]`, `BRIDGE_NAME__KEY`) and the destination
    its deliveries go to. `kinds` are the event kinds it takes, declared so that events made
    before any destination is built (Jira's webhooks) can be addressed to it.
    """

    name: str
    section: type[Section]
    build: Factory
    kinds: frozenset[str]
    templates: Path | None = None  # its built-in templates, found as "<name>/<file>"
    samples: Path | None = None  # sample payloads (*.json) for render and the template check
    routes: Routes | None = None  # what it receives (Slack's Events API, Jira's webhook)
    background: Background | None = None  # what it listens to while serve runs
    # A gauge among its metrics that is 1 while that listener listens, caught up (the
    # console's overview shows it while the listener runs).
    listening: str | None = None
    state: Callable[[Settings], str] = plainly_on  # how it runs when built: "on", "dry run..."
    # Whether its settings build it: events addressed by kind before any destination is built
    # (Jira's webhooks) leave out one that is off, where no worker would ever take them.
    built_with: Callable[[Settings], bool] = always_built
    status: SettingsLines = no_lines  # more lines for the start-up log and `check`
    unfinished: SettingsLines = no_lines  # settings set by halves: `check` fails naming each
    secrets: SettingsLines = no_lines  # forms of its secrets an upstream may echo back
    off_hints: Mapping[str, str] = field(default_factory=dict)  # kind -> why none takes it
    docs: str | None = None  # its page of the manual, docs/<docs>.md
    # One rendered body as `render` shows it to people, given how it runs (`state`'s line).
    picture: Callable[[str, str], str] | None = None
    # One rendered body as HTML, every text in it escaped, as the console's preview shows it
    # beside the body; None for a body that is not a message.
    preview: Callable[[str], Markup | None] | None = None
    metrics: Callable[[CollectorRegistry], object] | None = None  # its own, shown from the start
    # Gauges among those metrics saying, in seconds, how far behind it runs (the console shows
    # them on its overview).
    pacing: tuple[str, ...] = ()
    # Where a person opens what it made of a conversation (a ticket), from its saved state.
    link: Callable[[Settings, Mapping[str, Any]], str | None] | None = None
    # Its keys in each [[chatbots]] table, as pydantic fields: name -> (type, default).
    chatbot_keys: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    # Its keys in each [[routes]] table, the same way; one left out means its own section's.
    route_keys: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    # A chat tool people answer visitors from: whether its settings send replies to SiteGPT
    # (given a SiteGPT API key), and what the SiteGPT destination asks of it for one (who
    # wrote it, marking it sent). Its notices (a reply failed) are addressed to it by name.
    replies: Callable[[Settings], bool] = never
    reply_tool: ReplyTools | None = None
