"""What the CRM kinds (HubSpot, the generic webhook) share: the lead, its fields, HTTP failures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from bridge import __version__
from bridge.destinations.base import parse_retry_after
from bridge.errors import DeliveryError, PermanentError, RetryableError
from bridge.events import LEAD, Event, LeadData
from bridge.templating import cut, link_safe

NAME = "crm"
DETAIL_LIMIT = 300
USER_AGENT = f"sitegpt-bridge/{__version__}"


@dataclass(frozen=True)
class Lead:
    """A captured lead as plain data: what every CRM kind reads, and never a setting."""

    id: str
    name: str | None
    email: str | None
    phone: str | None
    captured_at: str | None
    chatbot_id: str
    chatbot_name: str | None
    dashboard_url: str | None
    custom_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def first_name(self) -> str | None:
        return split_name(self.name)[0]

    @property
    def last_name(self) -> str | None:
        return split_name(self.name)[1]

    def filled_custom_fields(self) -> dict[str, str]:
        """Custom fields that carry a value, each as the text a CRM property takes."""
        texts = {name: field_text(value) for name, value in self.custom_fields.items()}
        return {name: text for name, text in texts.items() if text}


class LeadDestination:
    """What both CRM kinds share: the name "crm" and taking new leads only."""

    name: ClassVar[str] = NAME

    def accepts(self, kind: str) -> bool:
        return kind == LEAD


def lead_of(event: Event) -> Lead:
    """The lead an event carries, or PermanentError when it is not a lead."""
    data = event.data
    if not isinstance(data, LeadData):
        raise PermanentError(f"{NAME}: only {LEAD} events are delivered, got {event.event}")
    details = data.lead_details
    return Lead(
        id=details.id,
        name=_blank_to_none(details.name),
        email=_blank_to_none(details.email),
        phone=_blank_to_none(details.phone),
        captured_at=details.captured_at,
        chatbot_id=data.chatbot_id,
        chatbot_name=data.chatbot_name,
        dashboard_url=data.dashboard_url if link_safe(data.dashboard_url) else None,
        custom_fields=details.custom_fields,
    )


def _blank_to_none(value: str | None) -> str | None:
    return (value or "").strip() or None


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """First and last name: the last word is the last name, the words before it the first.

    A single word stays whole as the first name. Characters are kept exactly as SiteGPT sent
    them; only surrounding and repeated whitespace goes.
    """
    words = (name or "").split()
    if not words:
        return None, None
    if len(words) == 1:
        return words[0], None
    return " ".join(words[:-1]), words[-1]


def field_text(value: Any) -> str:
    """A custom field's value as text: strings as they are, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, ensure_ascii=False)


def retry_after(response: httpx.Response, now: float) -> float | None:
    """Seconds the server asks us to wait (Retry-After as seconds or an HTTP date), if it says."""
    return parse_retry_after(response.headers.get("retry-after"), now)


def http_failure(response: httpx.Response, reason: str, now: float,
                 default_wait: float | None = None) -> DeliveryError:
    """408, 429 and 5xx are worth retrying (after Retry-After when given); any other is not."""
    status = response.status_code
    if status in (408, 429) or status >= 500:
        wait = retry_after(response, now)
        return RetryableError(reason, wait if wait is not None else default_wait)
    return PermanentError(reason)


def transport_failure(exc: httpx.TransportError, where: str, timeout: float) -> RetryableError:
    """A timeout or connection failure, named by type only: httpx messages may carry the URL."""
    if isinstance(exc, httpx.TimeoutException):
        return RetryableError(f"{where}: no answer within {timeout:g} s ({type(exc).__name__})")
    return RetryableError(f"{where}: connection failed ({type(exc).__name__})")


def response_excerpt(response: httpx.Response, secrets: list[str]) -> str:
    """The start of a response body for an error reason, with any secret it echoes masked."""
    text = " ".join(response.text.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return cut(text, DETAIL_LIMIT)


def iso_to_millis(value: str | None, fallback: float) -> int:
    """An ISO-8601 moment (SiteGPT's capturedAt) as epoch milliseconds, else the fallback."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return int(fallback * 1000)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)

