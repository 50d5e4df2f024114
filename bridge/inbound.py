"""What the routes for Slack's and Jira's own webhooks share: refusals, bodies, storing an event."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from bridge.clock import Clock
from bridge.errors import StoreError
from bridge.store import EventIntake, NewEvent
from bridge.web import BodyTooLarge, read_bounded


class Refused(Exception):
    """A request that is not the sender's or cannot be read; `response` is the answer."""

    def __init__(self, status: int, message: str, outcome: str = "rejected") -> None:
        super().__init__(message)
        self.response = JSONResponse({"status": outcome, "error": message}, status)


async def bounded_body(request: Request, limit: int) -> bytes:
    """The body, or Refused: 413 when larger than `limit`, 400 when the sender hung up."""
    try:
        return await read_bounded(request, limit)
    except BodyTooLarge as exc:
        raise Refused(413, f"body larger than {limit} bytes") from exc
    except ClientDisconnect as exc:
        raise Refused(400, "client disconnected mid-body") from exc


def _uncounted(outcome: str) -> None:
    pass


@dataclass(frozen=True)
class Storing:
    """Stores an inbound event and answers for it; `source` names it in the log, `count` is
    told each outcome (accepted, duplicate, unavailable, ignored)."""

    store: EventIntake
    clock: Clock
    window: float
    on_accept: Callable[[], None]
    log: logging.Logger
    count: Callable[[str], None] = _uncounted

    async def accept(self, source: str, event: NewEvent) -> JSONResponse:
        try:
            accepted = await self.store.accept(event, self.clock.now(), self.window)
        except StoreError as exc:
            self.log.error("%s: store unavailable: %s", source, exc)
            self.count("unavailable")
            return JSONResponse({"status": "unavailable", "error": "store busy, retry"}, 503)
        if accepted.status == "accepted":
            self.on_accept()
        self.count(accepted.status)
        self.log.info("%s: %s event %d", source, accepted.status, accepted.event_id,
                      extra={"endpoint": source.replace(" ", "-"), "outcome": accepted.status,
                             "event_id": accepted.event_id,
                             "conversation": event.ordering_key})
        return JSONResponse({"status": accepted.status, "id": accepted.event_id})

    def ignored(self, source: str, reason: str) -> JSONResponse:
        # Slack and Jira retry anything but a 2xx: what the bridge does not want still gets 200.
        self.log.debug("%s ignored: %s", source, reason)
        self.count("ignored")
        return JSONResponse({"status": "ignored", "reason": reason})
