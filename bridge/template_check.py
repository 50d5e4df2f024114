"""The template check: every template loads and renders every bundled sample it applies to."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from bridge.destinations.base import Destination, RenderSamples, sample_renderer
from bridge.errors import ConfigError, TemplateError
from bridge.events import Event, MessageData, conversation_of, parse_event
from bridge.samples import load_sample, sample_names
from bridge.templating import Templates

TEMPLATE_SUFFIX = ".j2"
LIKELY_TYPO = 0.8  # how alike a user's file and a built-in name must be to suggest it
log = logging.getLogger("bridge")


@dataclass
class TemplateReport:
    """What the check found: one line per problem, and what it covered."""

    problems: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    rendered: dict[str, int] = field(default_factory=dict)
    unpreviewed: list[str] = field(default_factory=list)
    misnamed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self, folder: Path | None) -> list[str]:
        """The report as `check` prints it."""
        lines = [f"templates: FAILED: {problem}" for problem in self.problems]
        if self.ok:
            rendered = ", ".join(f"{count} by {name}" for name, count in self.rendered.items())
            lines.append(f"templates: ok: {len(self.loaded)} load; every sample renders"
                         f" ({rendered or 'no destination previews'})")
        if folder is not None and self.overrides:
            lines.append(f"templates: from {folder}: {', '.join(self.overrides)}")
        elif folder is not None and folder.is_dir():
            lines.append(f"templates: {folder} holds no .j2 file; the built-ins are used")
        lines += [f"templates: {name} cannot preview; its templates were only loaded"
                  for name in self.unpreviewed]
        return lines + self.misnamed_lines(folder)

    def misnamed_lines(self, folder: Path | None) -> list[str]:
        """User files that replace no built-in, named like one: a typo leaves the default on."""
        return [f"templates: WARNING: {name} in {folder} replaces no template; did you mean "
                f"{meant}?" for name, meant in self.misnamed.items()]


def sample_events() -> dict[str, Event]:
    """Every bundled sample payload, by name, as a typed event."""
    events: dict[str, Event] = {}
    for name in sample_names():
        body = load_sample(name)
        events[name] = parse_event(body["event"], body)
    return events


def waiting_messages() -> dict[str, Event]:
    """The bundled message samples, all of one conversation: a backlog to preview as a batch."""
    return {name: event for name, event in sample_events().items()
            if isinstance(event.data, MessageData)}


def check_templates(templates: Templates,
                    destinations: Mapping[str, Destination]) -> TemplateReport:
    """Load every template, then render every sample through every destination that previews."""
    report = TemplateReport()
    folder = templates.user_dir
    if folder is not None and not folder.is_dir():
        report.problems.append(f"templates.dir: {folder} is not a folder")
    elif folder is not None:
        report.overrides = _templates_in(folder)
        report.misnamed = _misnamed(report.overrides, templates.builtin_names())
    problems = _Problems()
    for name in templates.names():
        if name.endswith(TEMPLATE_SUFFIX):
            _load(templates, name, report, problems)
    samples = sample_events()
    for destination in destinations.values():
        _render_samples(destination, samples, report, problems)
    report.problems += problems.lines()
    return report


def require_templates(templates: Templates, destinations: Mapping[str, Destination]) -> None:
    """Raise ConfigError, one line per problem, unless every template passes the check."""
    report = check_templates(templates, destinations)
    for line in report.misnamed_lines(templates.user_dir):
        log.warning(line)
    if not report.ok:
        raise ConfigError("templates failed their check; the bridge will not start",
                          report.problems)


def _templates_in(folder: Path) -> list[str]:
    names = jinja2.FileSystemLoader(str(folder)).list_templates()
    return sorted(name for name in names if name.endswith(TEMPLATE_SUFFIX))


def _misnamed(overrides: list[str], builtins: list[str]) -> dict[str, str]:
    """Each user file that matches no built-in but is close to one, with the one it is like."""
    found = {}
    for name in overrides:
        if name in builtins:
            continue
        if close := difflib.get_close_matches(name, builtins, n=1, cutoff=LIKELY_TYPO):
            found[name] = close[0]
    return found


class _Problems:
    """Each error once, however many samples ran into it, with the first few of those named."""

    def __init__(self) -> None:
        self.samples: dict[str, list[str]] = {}
        self.loading: set[str] = set()

    def load_failed(self, message: str) -> None:
        self.samples.setdefault(message, [])
        self.loading.add(message)

    def render_failed(self, message: str, sample: str) -> None:
        samples = self.samples.setdefault(message, [])
        if message not in self.loading:
            samples.append(sample)

    def lines(self) -> list[str]:
        return [self._line(message, samples) for message, samples in self.samples.items()]

    @staticmethod
    def _line(message: str, samples: list[str]) -> str:
        if not samples:
            return message
        more = f" and {len(samples) - 3} more" if len(samples) > 3 else ""
        return f"{message} (rendering sample: {', '.join(samples[:3])}{more})"


def _load(templates: Templates, name: str, report: TemplateReport, problems: _Problems) -> None:
    try:
        templates.load(name)
    except TemplateError as exc:
        problems.load_failed(str(exc))
        return
    report.loaded.append(name)


def _render_samples(destination: Destination, samples: Mapping[str, Event],
                    report: TemplateReport, problems: _Problems) -> None:
    """One sample at a time, so one broken template does not hide another's failure."""
    render = sample_renderer(destination)
    if render is None:
        report.unpreviewed.append(destination.name)
        return
    count = 0
    for name, event in samples.items():
        try:
            count += len(render({name: event}))
        except TemplateError as exc:
            problems.render_failed(str(exc), f"{destination.name} {name}")
    for name, event in samples.items():
        if context := _same_conversation(name, event, samples):
            _render_with_transcript(render, name, event, context, problems, destination.name)
    report.rendered[destination.name] = count


def _render_with_transcript(render: RenderSamples, name: str, event: Event,
                            context: dict[str, Event], problems: _Problems,
                            destination: str) -> None:
    """Again with the conversation's messages, so a transcript loop runs too (Jira's does).

    An error already found on its own sample is not blamed on this one as well.
    """
    try:
        render({**context, name: event})
    except TemplateError as exc:
        if str(exc) not in problems.samples:
            problems.render_failed(str(exc), f"{destination} {name}")


def _same_conversation(name: str, event: Event, samples: Mapping[str, Event]) -> dict[str, Event]:
    """The message samples of the event's conversation, so transcripts are not empty."""
    conversation = conversation_of(event)
    if conversation is None:
        return {}
    return {other: sample for other, sample in samples.items()
            if other != name and isinstance(sample.data, MessageData)
            and conversation_of(sample) == conversation}
