"""What the routes for Slack's and Jira's own webhooks share: refusals and bounded bodies."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

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
