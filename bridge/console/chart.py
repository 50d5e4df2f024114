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


def totals(metrics: Metrics) -> dict[str, float]:
    """Webhooks so far by outcome, from the Prometheus counter."""
    found = dict.fromkeys(COLOURS, 0.0)
    for family in metrics.webhooks.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found[_outcome(sample.labels.get("outcome", ""))] += sample.value
    return found


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
        self.samples.append((now, dict.fromkeys(COLOURS, 0.0)))

    def sample(self, metrics: Metrics, now: float) -> None:
        if self.samples and now - self.samples[-1][0] < MINUTE:
            return
        self.samples.append((now, totals(metrics)))

    def per_minute(self, now: float,
                   live: dict[str, float]) -> list[tuple[float, dict[str, float]]]:
        """(minute's end, webhooks by outcome since the sample before), within the hour."""
        points = [*self.samples, (now, live)]
        pairs = pairwise(points)
        return [(later[0], {key: later[1][key] - earlier[1][key] for key in COLOURS})
                for earlier, later in pairs if later[0] > now - HOUR_OF_MINUTES * MINUTE]

    def chart(self, metrics: Metrics, now: float) -> Markup:
        minutes = self.per_minute(now, totals(metrics))
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
