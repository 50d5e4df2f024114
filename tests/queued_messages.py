"""Messages written straight into a store, and how many wait: for the crash tests and bench."""

from __future__ import annotations

import asyncio
import time

from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.store import open_store


async def pending_count(url: str) -> int:
    store = open_store(url)
    try:
        return (await store.queue_depth())["pending"]
    finally:
        await store.close()


async def accept_messages(url: str, serials: range, gap: float = 0.0,
                          destination: str = "slack") -> None:
    store = open_store(url)
    try:
        for n in serials:
            body = {"event": "ADD_MESSAGE", "data": {
                "chatbotId": "bot", "threadId": "t1", "question": f"m{n:02d}",
                "messageType": "USER_MESSAGE"}}
            event = parse_event("ADD_MESSAGE", body)
            await store.accept(new_event(event, body, [destination]), time.time(), 600)
            await asyncio.sleep(gap)
    finally:
        await store.close()
