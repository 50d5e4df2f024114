"""HubSpot: one contact per lead (by email, else phone), custom fields kept, failures classified."""

from __future__ import annotations

import html
import itertools
import json
import re
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from bridge.destinations.base import Delivered, Skipped
from bridge.destinations.crm import lead_of
from bridge.destinations.crm_settings import HubSpotSettings
from bridge.destinations.hubspot import PREVIEW_CONTACT_ID, HubSpot, contact_properties
from bridge.errors import PermanentError, RetryableError
from bridge.events import LEAD, parse_event
from bridge.template_check import sample_events
from tests.crm_support import lead_body, open_deliveries

API = "https://api.hubspot.test"
TOKEN = "pat-na1-0000-very-secret"
CONTACTS = "/crm/v3/objects/contacts"
UPSERT = f"{CONTACTS}/batch/upsert"
SEARCH = f"{CONTACTS}/search"
NOTES = "/crm/v3/objects/notes"
CAPTURED_MS = 1705316520000  # 2024-01-15T11:02:00Z, the custom-fields sample's capturedAt


def hubspot_settings(**overrides: Any) -> HubSpotSettings:
    values: dict[str, Any] = {"access_token": SecretStr(TOKEN), "api_url": API,
                              "properties": {"Company": "company"}}
    return HubSpotSettings(**(values | overrides))


def hubspot_error(status: int, message: str, category: str, **headers: str) -> httpx.Response:
    body = {"status": "error", "message": message, "correlationId": f"corr-{status}",
            "category": category}
    return httpx.Response(status, json=body, headers=headers)


class FakeHubSpot:
    """Enough of HubSpot's contacts API to count contacts: upsert, search, create, update, notes."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.contacts: dict[str, dict[str, str]] = {}
        self.notes: list[dict[str, Any]] = []
        self.unindexed: set[str] = set()  # created, but not yet visible to search
        self.lose_create_answer = False
        self._ids = (str(n) for n in itertools.count(501))
        router.post(UPSERT).mock(side_effect=self.upsert)
        router.post(SEARCH).mock(side_effect=self.search)
        router.post(CONTACTS).mock(side_effect=self.create)
        router.patch(path__regex=rf"{CONTACTS}/(?P<contact_id>\d+)").mock(side_effect=self.update)
        router.post(NOTES).mock(side_effect=self.add_note)

    def new_contact(self, properties: dict[str, str]) -> str:
        contact_id = next(self._ids)
        self.contacts[contact_id] = dict(properties)
        return contact_id

    def with_value(self, prop: str, value: str, searchable: bool = False) -> list[str]:
        return [contact_id for contact_id, properties in self.contacts.items()
                if properties.get(prop) == value
                and not (searchable and contact_id in self.unindexed)]

    def upsert(self, request: httpx.Request) -> httpx.Response:
        [given] = json.loads(request.content)["inputs"]
        assert given["idProperty"] == "email"
        existing = self.with_value("email", given["id"])
        if existing:
            self.contacts[existing[0]].update(given["properties"])
            return httpx.Response(200, json={"results": [{"id": existing[0], "new": False}]})
        contact_id = self.new_contact({"email": given["id"], **given["properties"]})
        return httpx.Response(200, json={"results": [{"id": contact_id, "new": True}]})

    def search(self, request: httpx.Request) -> httpx.Response:
        [wanted] = json.loads(request.content)["filterGroups"][0]["filters"]
        found = self.with_value(wanted["propertyName"], wanted["value"], searchable=True)
        return httpx.Response(200, json={"total": len(found),
                                         "results": [{"id": found[0]}] if found else []})

    def create(self, request: httpx.Request) -> httpx.Response:
        contact_id = self.new_contact(json.loads(request.content)["properties"])
        self.unindexed.add(contact_id)
        if self.lose_create_answer:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(201, json={"id": contact_id})

    def update(self, request: httpx.Request, contact_id: str) -> httpx.Response:
        self.contacts[contact_id].update(json.loads(request.content)["properties"])
        return httpx.Response(200, json={"id": contact_id})

    def add_note(self, request: httpx.Request) -> httpx.Response:
        self.notes.append(json.loads(request.content))
        return httpx.Response(201, json={"id": f"note-{len(self.notes)}"})


@pytest.fixture
async def deliveries(tmp_path, clock):
    async with open_deliveries(tmp_path, clock) as opened:
        yield opened


@pytest.fixture
def router():
    with respx.mock(base_url=API, assert_all_called=False) as mocked:
        yield mocked


@pytest.fixture
async def hubspot():
    destination = HubSpot(hubspot_settings())
    yield destination
    await destination.aclose()


def test_properties_map_name_phone_and_custom_fields_and_keep_the_rest_as_lines():
    lead = lead_of(parse_event(LEAD, lead_body("lead-custom-fields")))
    settings = hubspot_settings(properties={"Company": "company", "Team size": "team_size"})

    properties, left_for_note = contact_properties(lead, settings)

    assert properties == {
        "firstname": "Ana María", "lastname": "Nuñez", "phone": "+34 600 000 000",
        "company": "Nuñez Consulting", "team_size": "11-50",
        "message": "Interested in: Enterprise plan",
    }
    assert left_for_note == []


def test_unmapped_fields_are_left_for_a_note_when_no_property_takes_them():
    lead = lead_of(parse_event(LEAD, lead_body("lead-custom-fields", Seats=12, Tags=["a", "b"],
                                                Agreed=True, Empty=None, Blank=" ")))

    properties, left_for_note = contact_properties(lead, hubspot_settings(unmapped_property=""))

    assert "message" not in properties and properties["company"] == "Nuñez Consulting"
    assert left_for_note == ["Team size: 11-50", "Interested in: Enterprise plan", "Seats: 12",
                             'Tags: ["a", "b"]', "Agreed: true"]


async def test_lead_with_email_is_upserted_by_email_with_the_private_app_token(
        router, hubspot, deliveries):
    upsert = router.post(UPSERT).respond(200, json={"results": [{"id": "501", "new": True}]})

    outcome = await hubspot.deliver(await deliveries.of(lead_body()))

    assert outcome == Delivered(note="hubspot contact 501 created")
    request = upsert.calls.last.request
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {"inputs": [{
        "idProperty": "email", "id": "john@example.com",
        "properties": {"firstname": "John", "lastname": "Doe", "phone": "+1234567890"}}]}


async def test_unmapped_fields_go_to_a_note_on_the_contact_when_unmapped_property_is_unset(
        router, deliveries):
    fake = FakeHubSpot(router)
    hubspot = HubSpot(hubspot_settings(unmapped_property=""))
    body = lead_body("lead-custom-fields", email="ana@example.com", Notes="<b>VIP</b> & urgent")

    outcome = await hubspot.deliver(await deliveries.of(body))
    await hubspot.aclose()

    assert outcome == Delivered(note="hubspot contact 501 created, unmapped fields in a note")
    [note] = fake.notes
    assert note["associations"] == [{"to": {"id": "501"}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}]}]
    assert note["properties"]["hs_timestamp"] == str(CAPTURED_MS)
    text = note["properties"]["hs_note_body"]
    assert "Team size: 11-50" in text and "Interested in: Enterprise plan" in text
    assert html.escape("Notes: <b>VIP</b> & urgent") in text and "<b>VIP" not in text
    assert fake.contacts["501"]["company"] == "Nuñez Consulting"


async def test_lead_without_email_updates_the_contact_its_phone_finds(router, hubspot, deliveries):
    search = router.post(SEARCH).respond(200, json={"total": 1, "results": [{"id": "77"}]})
    update = router.patch(f"{CONTACTS}/77").respond(200, json={"id": "77"})
    create = router.post(CONTACTS).respond(201, json={"id": "999"})

    outcome = await hubspot.deliver(await deliveries.of(lead_body("lead-custom-fields")))

    assert outcome == Delivered(note="hubspot contact 77 updated")
    wanted = json.loads(search.calls.last.request.content)["filterGroups"]
    assert wanted == [{"filters": [
        {"propertyName": "phone", "operator": "EQ", "value": "+34 600 000 000"}]}]
    assert json.loads(update.calls.last.request.content)["properties"]["firstname"] == "Ana María"
    assert not create.called


async def test_lead_without_email_is_created_when_its_phone_finds_no_one(
        router, hubspot, deliveries):
    router.post(SEARCH).respond(200, json={"total": 0, "results": []})
    create = router.post(CONTACTS).respond(201, json={"id": "502"})

    outcome = await hubspot.deliver(await deliveries.of(lead_body("lead-custom-fields")))

    assert outcome == Delivered(note="hubspot contact 502 created")
    assert json.loads(create.calls.last.request.content)["properties"]["phone"] == \
        "+34 600 000 000"


@pytest.mark.parametrize("sample", ["lead", "lead-custom-fields"])
async def test_the_same_lead_delivered_twice_is_one_contact(router, hubspot, deliveries, sample):
    fake = FakeHubSpot(router)
    delivery = await deliveries.of(lead_body(sample))

    first = await hubspot.deliver(delivery)
    fake.unindexed.clear()
    again = await hubspot.deliver(delivery)

    assert len(fake.contacts) == 1
    assert first == Delivered(note="hubspot contact 501 created")
    assert again == Delivered(note="hubspot contact 501 updated")


@pytest.mark.parametrize("sample", ["lead", "lead-custom-fields"])  # by email, by phone
async def test_a_lead_sent_again_after_a_cut_off_attempt_updates_the_same_contact(
        router, hubspot, deliveries, sample):
    fake = FakeHubSpot(router)
    cut_off = await deliveries.of(lead_body(sample))
    await hubspot.deliver(cut_off)  # its worker dies before recording the outcome
    fake.unindexed.clear()

    again = await hubspot.deliver(await deliveries.taken_over(cut_off))

    assert len(fake.contacts) == 1  # upserted by its email, or found by its phone
    assert again == Delivered(note="hubspot contact 501 updated")


async def test_a_lost_create_answer_is_retried_only_once_search_can_see_the_contact(
        router, hubspot, deliveries):
    fake = FakeHubSpot(router)
    fake.lose_create_answer = True
    delivery = await deliveries.of(lead_body("lead-custom-fields"))

    with pytest.raises(RetryableError) as lost:
        await hubspot.deliver(delivery)
    fake.lose_create_answer = False
    fake.unindexed.clear()  # the retry comes after the search lag it asked for
    outcome = await hubspot.deliver(delivery)

    assert lost.value.retry_after is not None and lost.value.retry_after >= 30
    assert outcome == Delivered(note="hubspot contact 501 updated")
    assert len(fake.contacts) == 1


@pytest.mark.parametrize("path", [UPSERT, CONTACTS])
async def test_conflict_updates_the_existing_contact_hubspot_names(
        router, hubspot, deliveries, path):
    sample = "lead" if path == UPSERT else "lead-custom-fields"
    router.post(SEARCH).respond(200, json={"total": 0, "results": []})
    conflict = router.post(path).mock(return_value=hubspot_error(
        409, "Contact already exists. Existing ID: 4242", "CONFLICT"))
    update = router.patch(f"{CONTACTS}/4242").respond(200, json={"id": "4242"})

    outcome = await hubspot.deliver(await deliveries.of(lead_body(sample)))

    assert outcome == Delivered(note="hubspot contact 4242 updated")
    assert conflict.call_count == 1 and update.call_count == 1


async def test_conflict_without_an_id_looks_the_contact_up(router, hubspot, deliveries):
    router.post(UPSERT).mock(return_value=hubspot_error(409, "Conflict", "CONFLICT"))
    search = router.post(SEARCH).respond(200, json={"total": 1, "results": [{"id": "88"}]})
    update = router.patch(f"{CONTACTS}/88").respond(200, json={"id": "88"})

    outcome = await hubspot.deliver(await deliveries.of(lead_body()))

    assert outcome == Delivered(note="hubspot contact 88 updated")
    assert json.loads(search.calls.last.request.content)["filterGroups"][0]["filters"][0] == \
        {"propertyName": "email", "operator": "EQ", "value": "john@example.com"}
    assert update.called


async def test_conflict_that_search_cannot_find_yet_is_retried_never_created(
        router, hubspot, deliveries):
    router.post(SEARCH).respond(200, json={"total": 0, "results": []})
    create = router.post(CONTACTS).mock(return_value=hubspot_error(409, "Conflict", "CONFLICT"))

    with pytest.raises(RetryableError) as caught:
        await hubspot.deliver(await deliveries.of(lead_body("lead-custom-fields")))

    assert caught.value.retry_after == 30 and create.call_count == 1
    assert "HTTP 409" in str(caught.value) and "corr-409" in str(caught.value)


@pytest.mark.parametrize(("response", "error", "retry_after", "words"), [
    (hubspot_error(429, "You have reached your secondly limit.", "RATE_LIMITS",
                   **{"Retry-After": "7"}), RetryableError, 7.0, ["HTTP 429", "RATE_LIMITS"]),
    (hubspot_error(429, "You have reached your secondly limit.", "RATE_LIMITS"),
     RetryableError, 10.0, ["HTTP 429", "secondly limit", "corr-429"]),
    (hubspot_error(502, "Bad gateway", "INTERNAL_ERROR"), RetryableError, None, ["HTTP 502"]),
    (httpx.Response(503, text="<html>unavailable</html>"), RetryableError, None,
     ["HTTP 503", "unavailable"]),
    (hubspot_error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION"),
     PermanentError, None, ["HTTP 401", "INVALID_AUTHENTICATION", "credentials", "corr-401"]),
    (hubspot_error(403, "This app hasn't been granted all required scopes.", "MISSING_SCOPES"),
     PermanentError, None, ["HTTP 403", "MISSING_SCOPES", "corr-403"]),
    (hubspot_error(400, 'Property "team_size" does not exist', "VALIDATION_ERROR"),
     PermanentError, None, ["HTTP 400", "VALIDATION_ERROR", "team_size", "corr-400"]),
    (hubspot_error(404, "Not found", "OBJECT_NOT_FOUND"), PermanentError, None, ["HTTP 404"]),
])
async def test_failures_are_classified_with_hubspots_message_and_correlation_id(
        router, hubspot, deliveries, response, error, retry_after, words):
    router.post(UPSERT).mock(return_value=response)

    with pytest.raises(error) as caught:
        await hubspot.deliver(await deliveries.of(lead_body()))

    reason = str(caught.value)
    assert type(caught.value) is error
    assert all(word in reason for word in words), reason
    assert TOKEN not in reason
    if error is RetryableError:
        assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(("failure", "words"), [
    (httpx.ReadTimeout("timed out"), "no answer within 10 s"),
    (httpx.ConnectTimeout("timed out"), "no answer within 10 s"),
    (httpx.ConnectError("connection refused"), "connection failed (ConnectError)"),
])
async def test_timeouts_and_connection_errors_are_retried(
        router, hubspot, deliveries, failure, words):
    router.post(UPSERT).mock(side_effect=failure)

    with pytest.raises(RetryableError) as caught:
        await hubspot.deliver(await deliveries.of(lead_body()))

    assert words in str(caught.value) and TOKEN not in str(caught.value)


async def test_a_failing_note_is_retried(router, deliveries):
    router.post(UPSERT).respond(200, json={"results": [{"id": "501", "new": True}]})
    router.post(NOTES).mock(return_value=hubspot_error(503, "Try again", "INTERNAL_ERROR"))
    hubspot = HubSpot(hubspot_settings(unmapped_property=""))

    with pytest.raises(RetryableError, match="notes: HTTP 503"):
        await hubspot.deliver(await deliveries.of(lead_body(Company="Doe Inc", Budget="5k")))
    await hubspot.aclose()


async def test_upsert_answer_without_a_contact_is_permanent(router, hubspot, deliveries):
    router.post(UPSERT).respond(207, json={"status": "COMPLETE", "results": [], "errors": [
        {"category": "VALIDATION_ERROR", "message": "Email address is invalid"}]})

    with pytest.raises(PermanentError, match="no contact: VALIDATION_ERROR: Email address"):
        await hubspot.deliver(await deliveries.of(lead_body()))


async def test_lead_with_neither_email_nor_phone_is_skipped_without_a_call(
        router, hubspot, deliveries):
    outcome = await hubspot.deliver(await deliveries.of(lead_body(email=None, phone="  ")))

    assert outcome == Skipped("lead lead_789 has neither email nor phone to match a contact by")
    assert not router.calls


async def test_verify_reads_one_contact_with_the_token(router, hubspot):
    read = router.get(CONTACTS, params={"limit": "1"}).respond(200, json={"results": []})

    line = await hubspot.verify()

    assert read.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"
    assert line == "HubSpot at api.hubspot.test: token accepted; unmapped lead fields go to " \
                   "property 'message'"


async def test_verify_reports_a_refused_token_without_revealing_it(router, hubspot):
    router.get(CONTACTS).mock(return_value=hubspot_error(
        401, "The OAuth token used to make this call expired.", "EXPIRED_AUTHENTICATION"))

    with pytest.raises(PermanentError) as caught:
        await hubspot.verify()

    assert re.search(r"HTTP 401 EXPIRED_AUTHENTICATION: .*expired.*corr-401", str(caught.value))
    assert TOKEN not in str(caught.value)


async def test_client_is_made_on_first_use_and_closed_by_aclose(router, hubspot, deliveries):
    router.post(UPSERT).respond(200, json={"results": [{"id": "501", "new": True}]})
    assert hubspot._client is None

    await hubspot.deliver(await deliveries.of(lead_body()))
    client = hubspot._client
    await hubspot.aclose()

    assert client is not None and client.is_closed and hubspot._client is None
    assert client.timeout == httpx.Timeout(10.0)


# Previews


@pytest.mark.parametrize(("sample", "unmapped_property", "existing", "calls"), [
    ("lead", "", False, [("POST", UPSERT)]),
    ("lead-custom-fields", "", False, [("POST", SEARCH), ("POST", CONTACTS), ("POST", NOTES)]),
    ("lead-custom-fields", "message", False, [("POST", SEARCH), ("POST", CONTACTS)]),
    ("lead-custom-fields", "message", True, [("POST", SEARCH), ("PATCH", f"{CONTACTS}/501")]),
])
async def test_previews_are_the_requests_deliver_makes(
        router, deliveries, clock, sample, unmapped_property, existing, calls):
    fake = FakeHubSpot(router)
    if existing:
        fake.new_contact({"phone": "+34 600 000 000"})
    hubspot = HubSpot(hubspot_settings(unmapped_property=unmapped_property), clock)

    previews = hubspot.render_samples(sample_events())
    await hubspot.deliver(await deliveries.of(lead_body(sample)))
    await hubspot.aclose()

    shown = {label.removeprefix(f"{sample}: "): json.loads(text.replace(PREVIEW_CONTACT_ID, "501"))
             for label, text in previews.items() if label.startswith(f"{sample}: ")}
    sent = [json.loads(call.request.content) for call in router.calls]
    assert [(call.request.method, call.request.url.path) for call in router.calls] == calls
    assert list(shown.values()) == sent
    assert all(f"{method} {path.replace('501', PREVIEW_CONTACT_ID)}" in label
               for label, (method, path) in zip(shown, calls, strict=True))


def test_previews_hold_no_secret_and_call_no_one(router):
    previews = HubSpot(hubspot_settings(unmapped_property="")).render_samples(sample_events())

    text = "".join([*previews, *previews.values()])
    assert {label.split(": ")[0] for label in previews} == {"lead", "lead-custom-fields"}
    assert TOKEN not in text and "Bearer" not in text
    assert not router.calls


def test_a_lead_that_matches_no_contact_previews_nothing():
    event = parse_event(LEAD, lead_body(email=None, phone=" "))

    assert HubSpot(hubspot_settings()).render_samples({"lead": event}) == {}
