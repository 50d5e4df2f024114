"""The CRM destination's shared parts: the factory, name splitting, leads, failure classes."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from bridge.app import open_bridge
from bridge.destinations import build_destinations
from bridge.destinations.crm import (
    field_text,
    http_failure,
    lead_of,
    response_excerpt,
    retry_after,
    split_name,
)
from bridge.destinations.crm_webhook import CrmWebhook
from bridge.destinations.hubspot import HubSpot
from bridge.errors import ConfigError, PermanentError, RetryableError
from bridge.event_rows import new_event
from bridge.events import ESCALATION, LEAD, MESSAGE, parse_event
from bridge.samples import load_sample
from bridge.templating import Templates
from tests.crm_support import lead_body

HOOK = "https://hooks.example.test/lead"


@pytest.mark.parametrize(("name", "first", "last"), [
    ("Cher", "Cher", None),
    ("John Doe", "John", "Doe"),
    ("Ana María Nuñez", "Ana María", "Nuñez"),
    ("  Zoë   Ægir-Øster  ", "Zoë", "Ægir-Øster"),
    ("李 小龍", "李", "小龍"),
    ("Jean-Luc  de la Tour", "Jean-Luc de la", "Tour"),
    ("", None, None),
    ("   ", None, None),
    (None, None, None),
])
def test_split_name_keeps_the_last_word_as_last_name(name, first, last):
    assert split_name(name) == (first, last)


@pytest.mark.parametrize(("value", "text"), [
    ("  Acme  ", "Acme"), (12, "12"), (1.5, "1.5"), (True, "true"), (None, ""),
    (["a", "ñ"], '["a", "ñ"]'), ({"k": "v"}, '{"k": "v"}'),
])
def test_field_text(value, text):
    assert field_text(value) == text


def test_lead_of_reads_the_sample_with_blank_values_as_none():
    lead = lead_of(parse_event(LEAD, lead_body("lead-custom-fields", email="  ")))

    assert (lead.id, lead.email, lead.phone) == ("lead_790", None, "+34 600 000 000")
    assert (lead.first_name, lead.last_name) == ("Ana María", "Nuñez")
    assert lead.chatbot_name == "Support Bot"
    assert lead.custom_fields == {"Company": "Nuñez Consulting", "Team size": "11-50",
                                  "Interested in": "Enterprise plan"}


def test_lead_of_refuses_other_events():
    with pytest.raises(PermanentError, match="only NEW_LEAD_CAPTURE"):
        lead_of(parse_event(ESCALATION, load_sample("escalation")))


@pytest.mark.parametrize(("crm", "kind"), [
    ({"kind": "none"}, None),
    ({"kind": "hubspot", "hubspot": {"access_token": "pat-x"}}, HubSpot),
    ({"kind": "webhook", "webhook": {"url": HOOK}}, CrmWebhook),
])
def test_factory_builds_the_configured_kind(make_settings, crm, kind):
    built = build_destinations(make_settings({"crm": crm}), Templates())

    if kind is None:
        assert "crm" not in built
        return
    destination = built["crm"]
    assert type(destination) is kind and destination.name == "crm"
    assert destination.accepts(LEAD)
    assert not destination.accepts(MESSAGE) and not destination.accepts(ESCALATION)


@pytest.mark.parametrize(("crm", "problem"), [
    ({"kind": "webhook", "webhook": {"url": "ftp://hooks.example.test/lead"}},
     "crm.webhook.url: must be an http:// or https:// URL"),
    ({"kind": "webhook", "webhook": {"url": HOOK, "signing_secret": "whsec_not base64!"}},
     "crm.webhook.signing_secret: the part after whsec_ is not valid base64"),
    ({"kind": "hubspot"}, 'crm.kind = "hubspot" needs crm.hubspot.access_token'),
])
def test_settings_refuse_a_crm_that_cannot_work(make_settings, crm, problem):
    with pytest.raises(ConfigError) as caught:
        make_settings({"crm": crm})

    assert caught.value.problems == [problem]


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"Retry-After": "7"}, 7.0),
    ({"Retry-After": "2.5"}, 2.5),
    ({"Retry-After": "-3"}, 0.0),
    ({"Retry-After": "Tue, 14 Nov 2023 22:13:40 GMT"}, 20.0),  # 20 s after the fake clock
    ({"Retry-After": "soon"}, None),
    ({}, None),
])
def test_retry_after_reads_seconds_or_an_http_date(clock, headers, seconds):
    assert retry_after(httpx.Response(429, headers=headers), clock.now()) == seconds


@pytest.mark.parametrize(("status", "kind"), [
    (408, RetryableError), (429, RetryableError), (500, RetryableError), (504, RetryableError),
    (400, PermanentError), (403, PermanentError), (409, PermanentError), (410, PermanentError),
])
def test_http_failure_retries_only_what_can_pass_later(status, kind):
    failure = http_failure(httpx.Response(status), "why", 0.0, default_wait=10.0)

    assert type(failure) is kind and str(failure) == "why"
    if kind is RetryableError:
        assert failure.retry_after == 10.0


def test_response_excerpt_masks_secrets_and_stays_short():
    response = httpx.Response(400, text="echo: key-123\n" + "x" * 1000)

    excerpt = response_excerpt(response, ["key-123", ""])

    assert excerpt.startswith("echo: *** xxx") and len(excerpt) == 300


async def test_a_lead_flows_from_the_store_to_the_webhook_through_the_worker(
        make_settings, clock):
    settings = make_settings({"crm": {"kind": "webhook", "webhook": {"url": HOOK}}})
    bridge = open_bridge(settings, clock)
    body = load_sample("lead")
    event = parse_event(LEAD, body)
    try:
        with respx.mock() as mock:
            hook = mock.post(HOOK).respond(202)
            await bridge.store.accept(new_event(event, body, ["crm"]), clock.now(), 600.0)
            await bridge.worker.drain()
        [row] = await bridge.store.deliveries()
    finally:
        await bridge.close()

    assert (row.destination, row.status, row.note) == \
        ("crm", "delivered", "crm webhook https://hooks.example.test: HTTP 202")
    assert json.loads(hook.calls.last.request.content)["lead"]["email"] == "john@example.com"
