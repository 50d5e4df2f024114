"""What the destinations of one bridge share: one Slack workspace (client and pacer), the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.clock import Clock, SystemClock
from bridge.destinations.slack_workspace import SlackWorkspace
from bridge.metrics import Metrics
from bridge.settings import Settings


@dataclass
class Shared:
    """Built once per bridge and handed to every destination factory."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    metrics: Metrics | None = None
    _slack: SlackWorkspace | None = field(default=None, repr=False)

    def slack(self) -> SlackWorkspace:
        """The workspace every Slack post goes through, so a channel has one budget."""
        if self._slack is None:
            on_wait = self.metrics.paced if self.metrics is not None else None
            self._slack = SlackWorkspace(self.settings.slack, self.clock,
                                         self.settings.delivery.concurrency, on_wait)
            if self.metrics is not None:
                self.metrics.watch_pacer(self._slack.pacer.behind)
        return self._slack
