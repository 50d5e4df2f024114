"""The generic CRM webhook: templated JSON, Standard Webhooks signatures, classified failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from bridge.destinations.base import Delivered
from bridge.destinations.crm import USER_AGENT
from bridge.destinations.crm_settings import CrmWebhookSettings
from bridge.destinations.crm_webhook import CrmWebhook, webhook_id
from bridge.errors import PermanentError, RetryableError, TemplateError
from bridge.template_check import sample_events
from bridge.templating import Templates
from tests.crm_support import lead_body, open_deliveries

# The path carries the hook's own token, as Zapier's and n8n's do: it must never be shown.
URL = "https://hooks.example.test/catch/123/s3cr3t-path"
KEY = b"sixteen byte key for tests"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
API_KEY = "Bearer crm-api-key-0000"


def webhook_settings(**overrides: Any) -> CrmWebhookSettings:
    values: dict[str, Any] = {"url": URL, "headers": {"Authorization": SecretStr(API_KEY)}}
    return CrmWebhookSettings(**(values | overrides))


def expected_signature(key: bytes, request: httpx.Request) -> str:
    """Standard Webhooks, computed here from the spec: HMAC-SHA256 over "id.timestamp.body"."""
    signed = b".".join([request.headers["webhook-id"].encode(),
                        request.headers["webhook-timestamp"].encode(), request.content])
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@pytest.fixture
async def deliveries(tmp_path, clock):
    async with open_deliveries(tmp_path, clock) as opened:
        yield opened


@pytest.fixture
def hook():
    with respx.mock(assert_all_called=False) as mocked:
        yield mocked.post(URL)


async def deliver(destination: CrmWebhook, delivery: Any) -> Any:
    try:
        return await destination.deliver(delivery)
    finally:
        await destination.aclose()


async def test_default_template_sends_every_lead_field(hook, deliveries, clock):
    hook.respond(200)
    body = lead_body("lead-custom-fields", email="ana@example.com", Seats=12)

    outcome = await deliver(CrmWebhook(webhook_settings(), Templates()), await deliveries.of(body))

    assert outcome == Delivered(note="crm webhook https://hooks.example.test: HTTP 200")
    request = hook.calls.last.request
    assert json.loads(request.content) == {
        "event": "NEW_LEAD_CAPTURE",
        "lead": {
            "id": "lead_790", "name": "Ana María Nuñez", "first_name": "Ana María",
            "last_name": "Nuñez", "email": "ana@example.com", "phone": "+34 600 000 000",
            "captured_at": "2024-01-15T11:02:00Z",
            "custom_fields": {"Company": "Nuñez Consulting", "Team size": "11-50",
                              "Interested in": "Enterprise plan", "Seats": 12},
        },
        "chatbot": {"id": "chatbot_123", "name": "Support Bot"},
        "dashboard_url": "https://sitegpt.ai/chatbot_123/leads/lead_790",
    }
    assert request.headers["authorization"] == API_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "lead_790"
    assert request.headers["webhook-timestamp"] == str(int(clock.now()))
    assert "webhook-signature" not in request.headers


async def test_a_lead_sent_again_after_a_cut_off_attempt_has_the_same_webhook_id(
        hook, deliveries, clock):
    hook.respond(200)
    destination = CrmWebhook(webhook_settings(signing_secret=SecretStr(SECRET)), Templates())
    cut_off = await deliveries.of(lead_body())
    await destination.deliver(cut_off)  # its worker dies before recording the outcome
    clock.advance(60)

    await deliver(destination, await deliveries.taken_over(cut_off))

    first, again = (call.request for call in hook.calls)
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == "lead_789"
    assert first.content == again.content  # a receiver keeping webhook-ids drops the copy
    assert first.headers["webhook-timestamp"] != again.headers["webhook-timestamp"]
    assert first.headers["webhook-signature"] != again.headers["webhook-signature"]  # fresh


@pytest.mark.parametrize("lead_id", ["lead_é_ü", "lead\r\nX-Injected: 1", "lead 7", "x" * 500])
async def test_a_lead_id_unfit_for_a_header_goes_out_hashed_and_whole_in_the_body(
        hook, deliveries, lead_id):
    hook.respond(200)
    settings = webhook_settings(signing_secret=SecretStr(SECRET))
    destination = CrmWebhook(settings, Templates())

    outcome = await deliver(destination, await deliveries.of(lead_body(id=lead_id)))

    assert isinstance(outcome, Delivered)
    request = hook.calls.last.request
    sent_id = request.headers["webhook-id"]
    assert sent_id == webhook_id(lead_id) and sent_id.startswith("lead-sha256-")
    assert "x-injected" not in request.headers
    assert json.loads(request.content)["lead"]["id"] == lead_id
    assert request.headers["webhook-signature"] == expected_signature(KEY, request)


async def test_a_request_that_cannot_be_written_fails_at_once(hook, deliveries):
    # The start-up check refuses such a header (test_settings); built around it here, the
    # delivery must still fail at once rather than retry until max_attempts.
    settings = CrmWebhookSettings.model_construct(
        url=URL, headers={"X-Team": SecretStr("équipe")}, signing_secret=None,
        template="crm/lead.json.j2", timeout_seconds=10.0)

    with pytest.raises(PermanentError, match="cannot be sent"):
        await deliver(CrmWebhook(settings, Templates()), await deliveries.of(lead_body()))
    assert not hook.called


@pytest.mark.parametrize("url", ["javascript:alert(1)", "https://evil.example|Open the lead",
                                 "https://evil.example/<script>", "data:text/html,hi"])
async def test_a_dashboard_url_that_is_not_a_plain_http_link_is_sent_as_null(
        hook, deliveries, url):
    hook.respond(200)
    body = lead_body()
    body["data"]["dashboardUrl"] = url

    await deliver(CrmWebhook(webhook_settings(), Templates()), await deliveries.of(body))

    assert json.loads(hook.calls.last.request.content)["dashboard_url"] is None


async def test_user_template_overrides_the_default(hook, deliveries, tmp_path):
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "lead.json.j2").write_text(
        '{"person": {"name": {{ lead.first_name | tojson }}, "email": {{ lead.email | tojson }}},'
        ' "org": {{ lead.custom_fields["Company"] | default(none) | tojson }}}')
    hook.respond(201)

    await deliver(CrmWebhook(webhook_settings(), Templates(user_dir=tmp_path)),
                  await deliveries.of(lead_body(Company="Doe & Sons")))

    assert json.loads(hook.calls.last.request.content) == {
        "person": {"name": "John", "email": "john@example.com"}, "org": "Doe & Sons"}


async def test_a_template_named_in_settings_is_used(hook, deliveries, tmp_path):
    (tmp_path / "pipedrive.json.j2").write_text('{"name": {{ lead.name | tojson }}}')
    hook.respond(200)

    await deliver(CrmWebhook(webhook_settings(template="pipedrive.json.j2"),
                             Templates(user_dir=tmp_path)),
                  await deliveries.of(lead_body()))

    assert json.loads(hook.calls.last.request.content) == {"name": "John Doe"}


@pytest.mark.parametrize(("template", "words"), [
    ('{"name": {{ lead.name }}}', "broken.json.j2: output is not valid JSON"),
    ('{"token": {{ settings | tojson }}}', "broken.json.j2"),
    ('{"name": {{ lead.name | tojson }}', "broken.json.j2"),
])
async def test_a_broken_template_is_permanent_and_names_itself(
        hook, deliveries, tmp_path, template, words):
    (tmp_path / "broken.json.j2").write_text(template)
    destination = CrmWebhook(webhook_settings(template="broken.json.j2"),
                             Templates(user_dir=tmp_path))

    with pytest.raises(PermanentError) as caught:
        await deliver(destination, await deliveries.of(lead_body()))

    assert words in str(caught.value) and not hook.called


@pytest.mark.parametrize(("secret", "key"), [(SECRET, KEY), ("plain-shared-secret",
                                                            b"plain-shared-secret")])
async def test_signature_verifies_the_standard_webhooks_way(hook, deliveries, secret, key):
    hook.respond(204)
    settings = webhook_settings(signing_secret=SecretStr(secret))

    await deliver(CrmWebhook(settings, Templates()), await deliveries.of(lead_body()))

    request = hook.calls.last.request
    assert request.headers["webhook-signature"] == expected_signature(key, request)
    assert request.headers["webhook-id"] == "lead_789"


@pytest.mark.parametrize(("status", "headers", "error", "retry_after"), [
    (408, {}, RetryableError, None),
    (429, {"Retry-After": "12"}, RetryableError, 12.0),
    (429, {}, RetryableError, None),
    (500, {}, RetryableError, None),
    (503, {"Retry-After": "3"}, RetryableError, 3.0),
    (301, {"Location": "https://elsewhere.test/"}, PermanentError, None),
    (400, {}, PermanentError, None),
    (401, {}, PermanentError, None),
    (404, {}, PermanentError, None),
    (422, {}, PermanentError, None),
])
async def test_failures_are_classified_without_revealing_secrets(
        hook, deliveries, status, headers, error, retry_after):
    # An echoing receiver puts our own headers in its answer: they must come back masked.
    hook.respond(status, headers=headers,
                 text=f"rejected; you sent Authorization: {API_KEY} and {SECRET}")
    settings = webhook_settings(signing_secret=SecretStr(SECRET))

    with pytest.raises(error) as caught:
        await deliver(CrmWebhook(settings, Templates()), await deliveries.of(lead_body()))

    reason = str(caught.value)
    assert type(caught.value) is error
    assert reason.startswith(f"crm webhook https://hooks.example.test: HTTP {status} rejected")
    assert "***" in reason
    assert all(secret not in reason for secret in (API_KEY, SECRET, "s3cr3t-path"))
    if error is RetryableError:
        assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(("failure", "words"), [
    (httpx.ReadTimeout("timed out"), "no answer within 10 s (ReadTimeout)"),
    (httpx.ConnectError(f"cannot reach {URL}"), "connection failed (ConnectError)"),
])
async def test_timeouts_and_connection_errors_are_retried(hook, deliveries, failure, words):
    hook.mock(side_effect=failure)

    with pytest.raises(RetryableError) as caught:
        await deliver(CrmWebhook(webhook_settings(), Templates()),
                      await deliveries.of(lead_body()))

    assert str(caught.value) == f"crm webhook https://hooks.example.test: {words}"


async def test_verify_describes_the_target_and_posts_nothing(hook):
    settings = webhook_settings(signing_secret=SecretStr(SECRET))

    line = await CrmWebhook(settings, Templates()).verify()

    assert line == ("POST to https://hooks.example.test (signed); template crm/lead.json.j2 "
                    "renders valid JSON (nothing sent)")
    assert not hook.called


async def test_verify_fails_on_a_broken_template(hook, tmp_path):
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "lead.json.j2").write_text("{{ lead.nickname }}")

    with pytest.raises(PermanentError, match=r"template error: .*crm/lead.json.j2:1: .*nickname"):
        await CrmWebhook(webhook_settings(), Templates(user_dir=tmp_path)).verify()
    assert not hook.called


# Previews

ORIGIN = "https://hooks.example.test"
BODY, HEADERS = f"POST {ORIGIN} body (sent compact)", f"POST {ORIGIN} headers (secrets masked)"
HTTPX_OWN = {"host", "accept", "accept-encoding", "connection", "content-length"}


@pytest.mark.parametrize("sample", ["lead", "lead-custom-fields"])
async def test_previews_are_the_body_and_headers_deliver_sends(hook, deliveries, clock, sample):
    hook.respond(200)
    destination = CrmWebhook(webhook_settings(signing_secret=SecretStr(SECRET)), Templates(), clock)

    previews = destination.render_samples(sample_events())
    await deliver(destination, await deliveries.of(lead_body(sample)))

    request = hook.calls.last.request
    assert list(previews) == [f"{name}: {what}" for name in ("lead", "lead-custom-fields")
                              for what in (BODY, HEADERS)]
    body = json.loads(previews[f"{sample}: {BODY}"])
    assert json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() == request.content
    headers = json.loads(previews[f"{sample}: {HEADERS}"])
    assert set(headers) == set(request.headers) - HTTPX_OWN
    assert headers == {name: "***" if name in ("authorization", "webhook-signature") else value
                       for name, value in request.headers.items() if name in headers}
    assert headers["user-agent"] == USER_AGENT and headers["webhook-id"] == body["lead"]["id"]


async def test_previews_hold_no_secret_and_post_nothing(hook, clock):
    destination = CrmWebhook(webhook_settings(signing_secret=SecretStr(SECRET)), Templates(), clock)

    previews = destination.render_samples(sample_events())

    text = "".join([*previews, *previews.values()])
    assert previews and not hook.called
    assert all(secret not in text for secret in (API_KEY, "crm-api-key", SECRET, "s3cr3t-path"))
    assert "v1," not in text


@pytest.mark.parametrize(("template", "words"), [
    ("{{ lead.nickname }}", r":1: .*nickname"),
    ('{"name": {{ lead.name }}}', r": output is not valid JSON"),
])
def test_a_broken_template_fails_the_preview_naming_the_file(tmp_path, template, words):
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "lead.json.j2").write_text(template)
    destination = CrmWebhook(webhook_settings(), Templates(user_dir=tmp_path))

    with pytest.raises(TemplateError, match=rf"^(.*/)?crm/lead\.json\.j2{words}"):
        destination.render_samples({"lead": sample_events()["lead"]})
