"""HubSpot as the CRM: every lead becomes one contact, matched by email or else by phone."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.clock import Clock, SystemClock
from bridge.destinations.base import Delivered, Delivery, Outcome, Skipped
from bridge.destinations.crm import (
    DETAIL_LIMIT,
    USER_AGENT,
    Lead,
    LeadDestination,
    http_failure,
    iso_to_millis,
    lead_of,
    response_excerpt,
    split_name,
    transport_failure,
)
from bridge.destinations.crm_settings import HubSpotSettings
from bridge.errors import DeliveryError, PermanentError, RetryableError
from bridge.events import Event
from bridge.templating import cut

CONTACTS = "/crm/v3/objects/contacts"
UPSERT = f"{CONTACTS}/batch/upsert"
SEARCH = f"{CONTACTS}/search"
NOTES = "/crm/v3/objects/notes"
NOTE_TO_CONTACT = 202  # HubSpot-defined association type "note to contact"
# HubSpot counts its burst limit over 10 s windows: a 429 without Retry-After waits one out.
RATE_WINDOW_SECONDS = 10.0
# HubSpot's search sees a new contact only after a few seconds; asking sooner could miss it
# and create the contact twice.
SEARCH_LAG_SECONDS = 30.0
EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
# A preview cannot know which contact HubSpot matches or makes.
PREVIEW_CONTACT_ID = "<contact id>"


@dataclass(frozen=True)
class Contact:
    id: str
    created: bool


class Conflict(PermanentError):
    """HubSpot answered 409: the contact exists already (`existing_id` when HubSpot names it)."""

    def __init__(self, reason: str, existing_id: str | None) -> None:
        super().__init__(reason)
        self.existing_id = existing_id


def contact_properties(lead: Lead, settings: HubSpotSettings) -> tuple[dict[str, str], list[str]]:
    """The contact's properties, and the "Field: value" lines left for a note (none when
    `unmapped_property` takes them)."""
    first, last = split_name(lead.name)
    standard = {"firstname": first, "lastname": last, "phone": lead.phone}
    properties = {name: value for name, value in standard.items() if value}
    unmapped: list[str] = []
    for name, text in lead.filled_custom_fields().items():
        if target := settings.properties.get(name):
            properties[target] = text
        else:
            unmapped.append(f"{name}: {text}")
    if unmapped and settings.unmapped_property:
        properties[settings.unmapped_property] = "\n".join(unmapped)
        return properties, []
    return properties, unmapped


def note_body(lead: Lead, lines: list[str]) -> str:
    """The note's HTML (HubSpot notes are rich text), every value escaped."""
    source = f" from {lead.chatbot_name}" if lead.chatbot_name else ""
    heading = f"<strong>SiteGPT lead {html.escape(lead.id)}{html.escape(source)}</strong>"
    return "<p>" + "<br>".join([heading, *(html.escape(line) for line in lines)]) + "</p>"


def upsert_request(email: str, properties: dict[str, str]) -> dict[str, Any]:
    """Create or update the contact with this email, in one call."""
    return {"inputs": [{"idProperty": "email", "id": email, "properties": properties}]}


def search_request(prop: str, value: str) -> dict[str, Any]:
    """The oldest contact whose `prop` equals `value`."""
    return {
        "filterGroups": [{"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]}],
        "sorts": [{"propertyName": "createdate", "direction": "ASCENDING"}],
        "properties": [prop],
        "limit": 1,
    }


def properties_request(properties: dict[str, str]) -> dict[str, Any]:
    """The body that creates a contact, or updates the one found."""
    return {"properties": properties}


def note_request(contact_id: str, body: str, timestamp_ms: int) -> dict[str, Any]:
    """A note with this HTML body, attached to the contact."""
    association = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": NOTE_TO_CONTACT}
    return {
        "properties": {"hs_timestamp": str(timestamp_ms), "hs_note_body": body},
        "associations": [{"to": {"id": contact_id}, "types": [association]}],
    }


def describe_error(body: Any) -> str:
    """HubSpot's error body as one line: category, message and the correlationId to quote."""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[key]) for key in ("category", "message") if body.get(key)]
    text = cut(": ".join(parts), DETAIL_LIMIT)
    if correlation := body.get("correlationId"):
        text += f" (correlationId {correlation})"
    return text


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class HubSpotApi:
    """The contacts and notes endpoints the bridge uses, every failure classified."""

    def __init__(self, client: httpx.AsyncClient, timeout: float, clock: Clock) -> None:
        self.client = client
        self.timeout = timeout
        self.clock = clock

    async def call(self, method: str, path: str, body: Any = None,
                   params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = await self.client.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            raise transport_failure(exc, f"hubspot {method} {path}", self.timeout) from exc
        if not response.is_success:
            raise self.failure(response, f"hubspot {method} {path}")
        answer = _json(response)
        return answer if isinstance(answer, dict) else {}

    def failure(self, response: httpx.Response, where: str) -> DeliveryError:
        error = _json(response)
        detail = describe_error(error) or response_excerpt(response, [])
        reason = f"{where}: HTTP {response.status_code} {detail}".rstrip()
        if response.status_code == 409:
            message = error.get("message", "") if isinstance(error, dict) else ""
            match = EXISTING_ID.search(str(message))
            return Conflict(reason, match[1] if match else None)
        wait = RATE_WINDOW_SECONDS if response.status_code == 429 else None
        return http_failure(response, reason, self.clock.now(), wait)

    async def upsert_by_email(self, email: str, properties: dict[str, str]) -> Contact:
        try:
            answer = await self.call("POST", UPSERT, upsert_request(email, properties))
        except Conflict as conflict:
            return await self.update_existing(conflict, "email", email, properties)
        results = answer.get("results") or []
        if not results:
            detail = describe_error((answer.get("errors") or [None])[0])
            raise PermanentError(f"hubspot upsert returned no contact: {detail}".rstrip(": "))
        return Contact(str(results[0]["id"]), bool(results[0].get("new")))

    async def upsert_by_phone(self, phone: str, properties: dict[str, str]) -> Contact:
        if (contact_id := await self.find("phone", phone)) is not None:
            await self.update(contact_id, properties)
            return Contact(contact_id, created=False)
        return await self.create("phone", phone, properties)

    async def find(self, prop: str, value: str) -> str | None:
        """The oldest contact whose `prop` equals `value`, if any."""
        answer = await self.call("POST", SEARCH, search_request(prop, value))
        results = answer.get("results") or []
        return str(results[0]["id"]) if results else None

    async def update(self, contact_id: str, properties: dict[str, str]) -> None:
        await self.call("PATCH", f"{CONTACTS}/{contact_id}", properties_request(properties))

    async def create(self, prop: str, value: str, properties: dict[str, str]) -> Contact:
        try:
            answer = await self.call("POST", CONTACTS, properties_request(properties))
        except Conflict as conflict:
            return await self.update_existing(conflict, prop, value, properties)
        except RetryableError as exc:
            # HubSpot may have created it although the answer was lost: look again only
            # once the search can see it.
            wait = max(exc.retry_after or 0.0, SEARCH_LAG_SECONDS)
            raise RetryableError(str(exc), wait) from exc
        return Contact(str(answer["id"]), created=True)

    async def update_existing(self, conflict: Conflict, prop: str, value: str,
                              properties: dict[str, str]) -> Contact:
        """A 409 means the contact exists: update that one, never make another."""
        contact_id = conflict.existing_id or await self.find(prop, value)
        if contact_id is None:
            raise RetryableError(
                f"{conflict}; no contact found by {prop} yet, looking again later",
                SEARCH_LAG_SECONDS) from conflict
        await self.update(contact_id, properties)
        return Contact(contact_id, created=False)

    async def add_note(self, contact_id: str, body: str, timestamp_ms: int) -> None:
        await self.call("POST", NOTES, note_request(contact_id, body, timestamp_ms))


class HubSpot(LeadDestination):
    """Creates or updates one HubSpot contact per lead through the CRM v3 API."""

    def __init__(self, settings: HubSpotSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()  # for previews; deliver() uses the delivery's
        self._client: httpx.AsyncClient | None = None

    def api(self, clock: Clock) -> HubSpotApi:
        if self._client is None:
            token = self.settings.access_token
            self._client = httpx.AsyncClient(
                base_url=self.settings.api_url,
                headers={"Authorization": f"Bearer {token.get_secret_value() if token else ''}",
                         "User-Agent": USER_AGENT},
                timeout=httpx.Timeout(self.settings.timeout_seconds),
            )
        return HubSpotApi(self._client, self.settings.timeout_seconds, clock)

    async def deliver(self, delivery: Delivery) -> Outcome:
        lead = lead_of(delivery.event)
        api = self.api(delivery.clock)
        properties, unmapped = contact_properties(lead, self.settings)
        if lead.email is not None:
            contact = await api.upsert_by_email(lead.email, properties)
        elif lead.phone is not None:
            contact = await api.upsert_by_phone(lead.phone, properties)
        else:
            return Skipped(f"lead {lead.id} has neither email nor phone to match a contact by")
        note = f"hubspot contact {contact.id} {'created' if contact.created else 'updated'}"
        if unmapped:
            when = iso_to_millis(lead.captured_at, delivery.clock.now())
            await api.add_note(contact.id, note_body(lead, unmapped), when)
            note += ", unmapped fields in a note"
        return Delivered(note=note)

    def render_samples(self, samples: Mapping[str, Event]) -> dict[str, str]:
        """For each lead: the request bodies deliver() makes first, as JSON, with the contact's
        mapped properties, and the note when one takes unmapped fields. Nothing is sent; a lead
        with neither email nor phone sends nothing, so shows nothing.
        """
        rendered: dict[str, str] = {}
        for name, event in samples.items():
            if self.accepts(event.event):
                for call, body in self._preview(lead_of(event)):
                    rendered[f"{name}: {call}"] = json.dumps(body, indent=2, ensure_ascii=False)
        return rendered

    def _preview(self, lead: Lead) -> list[tuple[str, dict[str, Any]]]:
        properties, unmapped = contact_properties(lead, self.settings)
        if lead.email is not None:
            calls = [(f"POST {UPSERT}", upsert_request(lead.email, properties))]
        elif lead.phone is not None:
            calls = [(f"POST {SEARCH} (by phone)", search_request("phone", lead.phone)),
                     (f"then PATCH {CONTACTS}/{PREVIEW_CONTACT_ID} (found) or POST {CONTACTS}",
                      properties_request(properties))]
        else:
            return []
        if unmapped:
            when = iso_to_millis(lead.captured_at, self.clock.now())
            note = note_request(PREVIEW_CONTACT_ID, note_body(lead, unmapped), when)
            calls.append((f"POST {NOTES} (unmapped fields)", note))
        return calls

    async def verify(self) -> str:
        await self.api(self.clock).call("GET", CONTACTS, params={"limit": "1"})
        host = urlsplit(self.settings.api_url).hostname
        unmapped = (f"property {self.settings.unmapped_property!r}"
                    if self.settings.unmapped_property else "a note on the contact")
        return f"HubSpot at {host}: token accepted; unmapped lead fields go to {unmapped}"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
