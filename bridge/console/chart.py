"""The overview's webhook chart: the Prometheus counters sampled in memory, drawn as SVG."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from bridge.metrics import Metrics

MINUTE = 60.0
HOUR_OF_MINUTES = 60
WIDTH, HEIGHT, BAR = 720, 140, 10
COLOURS = {"accepted": "#1e7b34", "duplicate": "#8a8f99", "refused": "#b3261e"}


def _outcome(label: str) -> str:
    """Accepted and duplicate as they are; every refusal reason counts as refused."""
    return label if label in ("accepted", "duplicate") else "refused"


def outcomes(metrics: Metrics) -> dict[str, float]:
    """Webhooks so far by their counter's outcome label (each refusal's reason), all endpoints."""
    found: dict[str, float] = {}
    for family in metrics.webhooks.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                label = sample.labels.get("outcome", "")
                found[label] = found.get(label, 0.0) + sample.value
    return found


def grouped(counts: dict[str, float]) -> dict[str, float]:
    """Outcome counts as the chart draws them: accepted, duplicate, refused."""
    found = dict.fromkeys(COLOURS, 0.0)
    for label, value in counts.items():
        found[_outcome(label)] += value
    return found


@dataclass(frozen=True)
class Refusals:
    """Webhooks refused for one reason: in the last hour, and since the bridge started."""

    reason: str
    last_hour: float
    since_start: float


@dataclass
class WebhookHistory:
    """Webhook totals by outcome, one sample a minute at most, for the last hour.

    Sampled whenever a console page is served, from zero when the app was made (the counters
    start there too): a minute with no page served shows as a gap in the samples, and its
    webhooks count in the next minute that has one. The bar of now is drawn live.
    """

    samples: deque[tuple[float, dict[str, float]]] = field(
        default_factory=lambda: deque(maxlen=HOUR_OF_MINUTES + 1))

    def start(self, now: float) -> None:
        self.samples.append((now, {}))

    def sample(self, metrics: Metrics, now: float) -> None:
        if self.samples and now - self.samples[-1][0] < MINUTE:
            return
        self.samples.append((now, outcomes(metrics)))

    def per_minute(self, now: float,
                   live: dict[str, float]) -> list[tuple[float, dict[str, float]]]:
        """(minute's end, webhooks by outcome label since the sample before), within the hour."""
        points = [*self.samples, (now, live)]
        return [(later[0], {key: value - earlier[1].get(key, 0.0)
                            for key, value in later[1].items()})
                for earlier, later in pairwise(points)
                if later[0] > now - HOUR_OF_MINUTES * MINUTE]

    def refusals(self, metrics: Metrics, now: float) -> list[Refusals]:
        """Each reason a webhook was refused for since the start, most in the last hour first."""
        live = outcomes(metrics)
        hour: dict[str, float] = {}
        for _, counts in self.per_minute(now, live):
            for label, value in counts.items():
                hour[label] = hour.get(label, 0.0) + value
        found = [Refusals(label, hour.get(label, 0.0), total) for label, total in live.items()
                 if total and _outcome(label) == "refused"]
        return sorted(found, key=lambda refused: (-refused.last_hour, -refused.since_start,
                                                  refused.reason))

    def chart(self, metrics: Metrics, now: float) -> Markup:
        minutes = [(at, grouped(counts))
                   for at, counts in self.per_minute(now, outcomes(metrics))]
        total = {key: sum(counts[key] for _, counts in minutes) for key in COLOURS}
        tallest = max([sum(counts.values()) for _, counts in minutes] + [1.0])
        bars = [self._bar(now, at, counts, tallest) for at, counts in minutes]
        legend = " ".join(f'<tspan fill="{COLOURS[key]}">{escape(key)} {total[key]:g}</tspan>'
                          for key in COLOURS)
        return Markup(
            f'<svg role="img" aria-label="webhooks in the last hour" width="{WIDTH}" '
            f'height="{HEIGHT + 20}" viewBox="0 0 {WIDTH} {HEIGHT + 20}">'
            f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#d8dde6"/>'
            f'{"".join(bars)}<text x="0" y="{HEIGHT + 15}">{legend}</text></svg>')

    @staticmethod
    def _bar(now: float, at: float, counts: dict[str, float], tallest: float) -> str:
        x = WIDTH - (now - at) / (HOUR_OF_MINUTES * MINUTE) * WIDTH - BAR
        parts, y = [], float(HEIGHT)
        for key, colour in COLOURS.items():
            height = counts[key] / tallest * (HEIGHT - 10)
            y -= height
            if height:
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{BAR - 2}" '
                             f'height="{height:.1f}" fill="{colour}"/>')
        return "".join(parts)
