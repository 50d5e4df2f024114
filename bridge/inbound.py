"""What the routes for Slack's and Jira's own webhooks share: refusals, bounded bodies, and
finding the conversation a request is about."""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from bridge.errors import StoreError
from bridge.events import Conversation
from bridge.store import ConversationLinks
from bridge.web import BodyTooLarge, read_bounded

log = logging.getLogger("bridge.inbound")


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


async def conversation_by_ref(store: ConversationLinks, destination: str,
                              ref: str) -> Conversation | None:
    """The conversation whose `destination` link has this ref; Refused 503 while the store
    cannot answer, so the sender retries instead of seeing a 500."""
    if "\x00" in ref:  # no ref holds one, and PostgreSQL's text cannot even be asked about it
        return None
    try:
        found = await store.conversation_by_ref(destination, ref)
    except StoreError as exc:
        log.error("%s webhook: store unavailable: %s", destination, exc)
        raise Refused(503, "store busy, retry", "unavailable") from exc
    return Conversation(*found) if found else None
