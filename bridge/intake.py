"""The former name of bridge.event_rows; "intake" now means only the store's side (EventIntake)."""

from __future__ import annotations

from bridge.event_rows import new_event, transcript_line

__all__ = ["new_event", "transcript_line"]
