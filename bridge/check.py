"""What `check` finds: one verdict per check, each ok or what is wrong, and how to fix it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bridge.app import Bridge, slow_lease
from bridge.destinations import unfinished_lines
from bridge.drift import settings_drift
from bridge.errors import StoreError
from bridge.settings import Settings
from bridge.template_check import check_templates
from bridge.verdicts import (
    FAILED,
    WARNING,
    Verdict,
    destination_verdicts,
    failed,
    from_line,
    warning,
)

HALF_SET_FIX = "set what the line says is missing, or unset the rest to switch it off"


async def verdicts(settings: Settings, path: Path, bridge: Bridge) -> list[Verdict]:
    """Every check in the order printed: settings, templates, destinations, store.

    More checks go in this list as one `Verdict` each.
    """
    found = settings_verdicts(settings, path)
    found += template_verdicts(bridge, settings)
    found += await destination_verdicts(bridge.destinations, settings)
    found += [await store_verdict(bridge, settings)]
    found += await drift_verdicts(bridge, settings, path)
    return found


async def drift_verdicts(bridge: Bridge, settings: Settings, path: Path) -> list[Verdict]:
    """Each running bridge that does not use these settings: it was not told, or refused them."""
    fix = ("fix the file (the bridge reloads it by itself), or restart the bridge for keys "
           "that need it")
    return [warning("running", line, fix)
            for line in await settings_drift(settings, bridge.store, str(path))]


def settings_verdicts(settings: Settings, path: Path) -> list[Verdict]:
    """The settings read, then what in them fails later or works against you."""
    details = [failed(f"webhooks.{name}", "no token, so it answers 503",
                      f"set [webhooks.{name}] tokens or BRIDGE_WEBHOOKS__{name.upper()}__TOKENS")
               for name in settings.unconfigured_endpoints()]
    details += [replace(from_line(line, ok=False), fix=HALF_SET_FIX)
                for line in unfinished_lines(settings)]
    details += [warning(f"webhooks.{name}", "still the example token from "
                        "settings.example.toml", f"set your own [webhooks.{name}] tokens, the "
                        "same as in SiteGPT's webhook settings")
                for name in settings.example_tokens_in_use()]
    if (slow := slow_lease(settings)) is not None:
        details.append(warning("delivery.lease", slow.removeprefix("delivery.lease is ")))
    failures = sum(not verdict.ok for verdict in details)
    summary = (Verdict("settings", True, f"ok: read from {path}") if not failures
               else failed("settings", f"{failures} problem{'s' if failures > 1 else ''} in "
                           f"{path} and the BRIDGE_* variables, below"))
    return [summary, *details]


def template_verdicts(bridge: Bridge, settings: Settings) -> list[Verdict]:
    report = check_templates(bridge.templates, bridge.destinations)
    folder = settings.templates.dir
    found = [from_line(line, ok=not line.startswith(f"templates: {FAILED}"))
             for line in report.lines(folder) if f": {WARNING}" not in line]
    found += [warning("templates", line.partition(WARNING)[2],
                      f"rename the file in {folder} to the template it should replace")
              for line in report.misnamed_lines(folder)]
    return found


async def store_verdict(bridge: Bridge, settings: Settings) -> Verdict:
    try:
        info = await bridge.store.info()
    except StoreError as exc:
        return failed("store", str(exc))
    return Verdict("store", True, f"ok: {info.backend} at {info.location}, schema version "
                                  f"{info.schema_version}")


def report_lines(found: list[Verdict]) -> list[str]:
    """The verdicts, one line each, then what to fix."""
    fixes = [f"  {verdict.name}: {verdict.fix}" for verdict in found if verdict.fix]
    return [verdict.line for verdict in found] + (["", "to fix:", *fixes] if fixes else [])
