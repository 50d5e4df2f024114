"""Verdicts, the lines of `check`, and the one the console runs too: the credentials test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bridge.destinations import REGISTRY, status_lines
from bridge.destinations.base import Destination
from bridge.errors import DeliveryError
from bridge.redact import Redactor
from bridge.settings import Settings

WARNING = "WARNING: "
FAILED = "FAILED: "


@dataclass(frozen=True)
class Verdict:
    """One line of `check`: `ok` False fails the command; `fix` goes under "to fix"."""

    name: str
    ok: bool
    message: str
    fix: str = ""

    @property
    def line(self) -> str:
        return f"{self.name}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "warning": self.message.startswith(WARNING)}


def failed(name: str, problem: str, fix: str = "") -> Verdict:
    return Verdict(name, False, FAILED + problem, fix)


def warning(name: str, problem: str, fix: str = "") -> Verdict:
    return Verdict(name, True, WARNING + problem, fix)


def from_line(line: str, ok: bool = True) -> Verdict:
    """A "name: message" line (as plugins give them) as a verdict."""
    name, _, message = line.partition(": ")
    return Verdict(name, True, message) if ok else failed(name, message.removeprefix(FAILED))


async def destination_verdicts(destinations: Mapping[str, Destination],
                               settings: Settings) -> list[Verdict]:
    """Each registered destination in turn: off, or what its credentials test says."""
    redact = Redactor.for_settings(settings)
    found = []
    for name in REGISTRY:
        destination = destinations.get(name)
        if destination is None:
            found.append(Verdict(name, True, "off"))
            continue
        try:
            found.append(Verdict(name, True, await destination.verify()))
        except DeliveryError as exc:
            found.append(failed(name, redact(str(exc)), f"check [{name}] (`sitegpt-bridge "
                                                        "check --verbose` shows it)"))
    return found + [from_line(line) for line in status_lines(settings)]
