"""What the operator commands' and the console's filters match, written once for every backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def conversation_filter(conversation: str, mark: str) -> tuple[str, list[str]]:
    """`deliveries --conversation ID`: the ordering key itself, or that thread of any chatbot.

    `mark` is the backend's placeholder ("?" or "%s"); % and _ in the id are taken literally.
    """
    literal = _literal(conversation)
    return (f"(d.ordering_key = {mark} OR d.ordering_key LIKE {mark} ESCAPE '\\')",
            [conversation, f"%/{literal}"])


@dataclass(frozen=True)
class DeliveryFilter:
    """What the console's delivery list is narrowed to; empty fields match everything."""

    status: str = ""
    destination: str = ""
    conversation: str = ""
    since: float | None = None
    until: float | None = None
    error: str = ""

    def where(self, mark: str) -> tuple[list[str], list[Any]]:
        """SQL clauses over `deliveries d` and their parameters, in `mark`'s placeholder style."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (("d.status = {}", self.status),
                              ("d.destination = {}", self.destination),
                              ("d.created_at >= {}", self.since),
                              ("d.created_at < {}", self.until)):
            if value not in ("", None):
                clauses.append(clause.format(mark))
                params.append(value)
        if self.conversation:
            clause, values = conversation_filter(self.conversation, mark)
            clauses.append(clause)
            params += values
        if self.error:
            clauses.append(f"LOWER(d.last_error) LIKE {mark} ESCAPE '\\'")
            params.append(f"%{_literal(self.error.lower())}%")
        return clauses, params


def _literal(text: str) -> str:
    """`text` for LIKE with % and _ taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
