"""Slack's own metrics: how long posts wait for their channel's slot."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram

# A post waits for its channel's next slot: nothing when the channel is quiet, about a second
# per post ahead of it while a backlog is caught up.
PACING_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60)
BEHIND = "sitegpt_bridge_slack_pacing_behind_seconds"


class PacingMetrics:
    """The pacer's delay, read at each scrape, and each post's wait for its slot."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.behind = Gauge(
            BEHIND,
            "How long a Slack post asking now would wait for its slot, on the busiest channel.",
            registry=registry)
        self.wait = Histogram(
            "sitegpt_bridge_slack_pacing_wait_seconds",
            "How long each Slack post waited for its channel's next slot.",
            buckets=PACING_BUCKETS, registry=registry)

    def watch_pacer(self, behind: Callable[[], float]) -> None:
        """Read the Slack pacer's delay at each scrape."""
        self.behind.set_function(behind)

    def paced(self, seconds: float) -> None:
        """A Slack post waited `seconds` for its channel's slot."""
        self.wait.observe(seconds)
