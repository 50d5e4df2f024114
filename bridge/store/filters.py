"""What the operator commands' filters match, written once for every backend's SQL."""

from __future__ import annotations


def conversation_filter(conversation: str, mark: str) -> tuple[str, list[str]]:
    """`deliveries --conversation ID`: the ordering key itself, or that thread of any chatbot.

    `mark` is the backend's placeholder ("?" or "%s"); % and _ in the id are taken literally.
    """
    literal = conversation.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return (f"(d.ordering_key = {mark} OR d.ordering_key LIKE {mark} ESCAPE '\\')",
            [conversation, f"%/{literal}"])
