"""Any CRM taking a JSON POST: each lead rendered from a template, signed as Standard Webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import Delivered, Delivery, Outcome
from bridge.destinations.crm import (
    USER_AGENT,
    Lead,
    LeadDestination,
    http_failure,
    lead_of,
    response_excerpt,
    transport_failure,
)
from bridge.destinations.crm_settings import CrmWebhookSettings
from bridge.errors import PermanentError, TemplateError
from bridge.events import LEAD, Event, parse_event
from bridge.samples import load_sample
from bridge.templating import Templates

SECRET_PREFIX = "whsec_"
SAMPLE = "lead-custom-fields"
SIGNATURE = "webhook-signature"
MASK = "***"
# A lead id that is visible ASCII goes out as it is; any other is hashed: a header value must be
# ASCII without CR or LF, and the real id is in the body anyway.
_PLAIN_ID = re.compile(r"[!-~]{1,128}")
HASHED_ID_PREFIX = "lead-sha256-"


def webhook_id(lead_id: str) -> str:
    """The `webhook-id` header for a lead: stable, so a receiver can deduplicate retries."""
    if _PLAIN_ID.fullmatch(lead_id):
        return lead_id
    digest = hashlib.sha256(lead_id.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED_ID_PREFIX + digest[:32]


def signing_key(secret: str) -> bytes:
    """Standard Webhooks: the base64 after "whsec_" is the key; a secret without it is used raw."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    return secret.encode()


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: v1, then base64 HMAC-SHA256 of "id.timestamp.body"."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def lead_context(lead: Lead) -> dict[str, Any]:
    """What the template sees: the lead and its chatbot, nothing from the settings."""
    return {
        "event": LEAD,
        "lead": {
            "id": lead.id,
            "name": lead.name,
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "email": lead.email,
            "phone": lead.phone,
            "captured_at": lead.captured_at,
            "custom_fields": dict(lead.custom_fields),
        },
        "chatbot": {"id": lead.chatbot_id, "name": lead.chatbot_name},
        "dashboard_url": lead.dashboard_url,
    }


class CrmWebhook(LeadDestination):
    """POSTs each lead to `[crm.webhook] url` (Pipedrive, Twenty, n8n, Zapier, your own)."""

    def __init__(self, settings: CrmWebhookSettings, templates: Templates,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.templates = templates
        self.clock = clock or SystemClock()  # for previews; deliver() uses the delivery's
        self.url = settings.url or ""
        parts = urlsplit(self.url)
        # Only scheme and host ever appear in reasons: hook URLs often carry a token in the path.
        self.origin = f"{parts.scheme}://{parts.hostname}"
        self.target = f"crm webhook {self.origin}"
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.timeout_seconds))
        return self._client

    def body(self, lead: Lead) -> bytes:
        """The rendered template as compact UTF-8 JSON, or TemplateError naming the template."""
        rendered = self.templates.render_json(self.settings.template, lead_context(lead))
        return json.dumps(rendered, ensure_ascii=False, separators=(",", ":")).encode()

    def headers(self, lead: Lead, body: bytes, now: float) -> httpx.Headers:
        """Configured headers, JSON content type, and the Standard Webhooks id/timestamp/signature.

        The id (the lead's) and timestamp go out even unsigned so a receiver can deduplicate.
        """
        headers = httpx.Headers(
            {name: value.get_secret_value() for name, value in self.settings.headers.items()})
        headers.setdefault("content-type", "application/json")
        headers.setdefault("user-agent", USER_AGENT)
        timestamp = int(now)
        message_id = webhook_id(lead.id)
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(timestamp)
        if self.settings.signing_secret is not None:
            key = signing_key(self.settings.signing_secret.get_secret_value())
            headers[SIGNATURE] = signature(key, message_id, timestamp, body)
        return headers

    def masked(self, headers: httpx.Headers) -> dict[str, str]:
        """The headers to show: configured values (all secrets) and the signature as ***."""
        hidden = {name.lower() for name in self.settings.headers} | {SIGNATURE}
        return {name: MASK if name in hidden else value for name, value in headers.items()}

    def secrets(self) -> list[str]:
        values = [value.get_secret_value() for value in self.settings.headers.values()]
        if self.settings.signing_secret is not None:
            values.append(self.settings.signing_secret.get_secret_value())
        return values

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """For each lead: the body deliver() would POST, pretty-printed here (it goes compact),
        then its headers with every secret masked. Nothing is sent; the URL's path is not shown.
        """
        rendered: dict[str, str] = {}
        for name, event in samples.items():
            if self.accepts(event.event):
                lead = lead_of(event)
                body = self.body(lead)
                headers = self.masked(self.headers(lead, body, self.clock.now()))
                rendered[f"{name}: POST {self.origin} body (sent compact)"] = json.dumps(
                    json.loads(body), indent=2, ensure_ascii=False)
                rendered[f"{name}: POST {self.origin} headers (secrets masked)"] = json.dumps(
                    headers, indent=2, ensure_ascii=False)
        return rendered

    async def deliver(self, delivery: Delivery) -> Outcome:
        lead = lead_of(delivery.event)
        body = self._rendered_body(lead)
        try:
            headers = self.headers(lead, body, delivery.clock.now())
            response = await self.client().post(self.url, content=body, headers=headers)
        except (UnicodeEncodeError, httpx.LocalProtocolError) as exc:
            # A request that cannot even be written fails the same way on every retry.
            raise PermanentError(
                f"{self.target}: the request cannot be sent ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise transport_failure(exc, self.target, self.settings.timeout_seconds) from exc
        if response.is_success:
            return Delivered(note=f"{self.target}: HTTP {response.status_code}")
        detail = response_excerpt(response, self.secrets())
        reason = f"{self.target}: HTTP {response.status_code} {detail}".rstrip()
        raise http_failure(response, reason, delivery.clock.now())

    async def verify(self) -> str:
        """Render the template with a sample lead; nothing is posted."""
        self._rendered_body(lead_of(parse_event(LEAD, load_sample(SAMPLE))))
        signed = "signed" if self.settings.signing_secret is not None else "unsigned"
        return (f"POST to {self.target.removeprefix('crm webhook ')} ({signed}); "
                f"template {self.settings.template} renders valid JSON (nothing sent)")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _rendered_body(self, lead: Lead) -> bytes:
        """The body, or PermanentError naming the template that failed."""
        try:
            return self.body(lead)
        except TemplateError as exc:
            raise PermanentError(f"{self.target}: template error: {exc}") from exc
