"""The operator console: off unless configured, login, sessions, CSRF, escaping, actions."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from bridge.app import Bridge, create_app, open_bridge
from bridge.console.auth import COOKIE, LoginLimiter
from bridge.console.password import password_matches
from bridge.event_rows import new_event
from bridge.events import parse_event
from bridge.server import ProxiedPeer
from tests.bridges import build_bridge
from tests.console_support import (
    HOSTILE,
    PASSWORD,
    PASSWORD_HASH,
    Chat,
    console_bridge,
    console_settings,
    csrf_of,
    log_in,
    message,
    post_message,
    serving,
)
from tests.fake_slack import FakeSlack, fake_fixture, slack_server_fixture  # noqa: F401 (fixtures)

OLDER = re.compile(r'<a href="([^"]+)">Older</a>')


@pytest.fixture
def chat() -> Chat:
    return Chat()


@pytest.fixture
def client(make_settings, chat) -> Iterator[TestClient]:
    yield from serving(console_bridge(console_settings(make_settings), chat))


@pytest.fixture
def operator(client) -> TestClient:
    assert log_in(client).status_code == 303
    return client


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


# Off unless configured


@pytest.mark.parametrize("path", ["/console/", "/console/login", "/console/deliveries",
                                  "/console/static/console.css"])
def test_without_a_password_hash_every_console_path_is_404(make_settings, path):
    with TestClient(create_app(build_bridge(make_settings()), run_worker=False)) as client:
        assert client.get(path).status_code == 404
        assert client.post(path).status_code in (404, 405)


def test_a_hash_that_is_not_argon2id_is_a_settings_error(make_settings):
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        make_settings({"console": {"password_hash": "plaintext"}})
    assert "console.password_hash" in " ".join(error.value.problems)


# Password and login


def test_the_password_matches_only_its_hash():
    assert password_matches(PASSWORD_HASH, PASSWORD)
    assert not password_matches(PASSWORD_HASH, PASSWORD + " ")
    assert not password_matches(None, PASSWORD)


def test_console_password_prints_the_hash_of_one_line_of_stdin(monkeypatch, capsys):
    import io

    from bridge.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["console-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("$argon2id$") and password_matches(printed, "s3cret")


def test_a_page_sends_a_stranger_to_log_in_and_a_post_is_refused(client):
    page = client.get("/console/deliveries", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/console/login")
    assert client.post("/console/deliveries/retry", data={"csrf": "x"}).status_code == 401


def test_logging_in_sets_a_strict_httponly_cookie_for_the_console_only(client):
    answer = log_in(client)
    assert answer.status_code == 303
    cookie = next(value for value in answer.headers.get_list("set-cookie")
                  if value.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it is Secure
    page = client.get("/console/")
    assert page.status_code == 200 and "Log out" in page.text


def test_a_wrong_password_is_refused_and_a_few_a_minute_then_429(client):
    for _ in range(5):
        assert log_in(client, "wrong").status_code == 401
    assert log_in(client, PASSWORD).status_code == 429


def test_a_login_without_its_form_token_is_refused(client):
    client.get("/console/login")
    answer = client.post("/console/login", data={"password": PASSWORD, "csrf": "forged"})
    assert answer.status_code == 403


def test_the_limiter_forgets_failures_after_a_minute():
    limiter = LoginLimiter(allowed=2, window=60)
    limiter.failed("a", now=0)
    limiter.failed("a", now=1)
    assert limiter.blocked("a", now=59) and not limiter.blocked("b", now=59)
    assert not limiter.blocked("a", now=61.5)


def test_log_out_ends_the_session(operator):
    page = operator.get("/console/")
    answer = operator.post("/console/logout", data={"csrf": csrf_of(page.text)},
                           follow_redirects=False)
    assert answer.status_code == 303
    assert operator.get("/console/", follow_redirects=False).status_code == 303


def test_a_session_ends_after_the_idle_time(make_settings):
    settings = console_settings(make_settings, session_idle="1s")
    for client in serving(console_bridge(settings)):
        log_in(client)
        assert client.get("/console/", follow_redirects=False).status_code == 200
        time.sleep(2.1)  # itsdangerous counts whole seconds
        assert client.get("/console/", follow_redirects=False).status_code == 303


def test_a_session_survives_a_restart_since_its_key_is_in_the_store(make_settings):
    settings = console_settings(make_settings)
    for client in serving(console_bridge(settings)):
        log_in(client)
        cookie = client.cookies[COOKIE]
    for client in serving(console_bridge(settings)):
        client.cookies.set(COOKIE, cookie, path="/console/")
        assert client.get("/console/", follow_redirects=False).status_code == 200


def test_the_trusted_user_header_is_believed_only_from_a_trusted_proxy(make_settings):
    settings = console_settings(make_settings, trusted_user_header="Remote-User")
    for trusted, expected in ((["testclient"], 200), (["10.9.9.9"], 303)):
        app = ProxiedPeer(create_app(console_bridge(settings), run_worker=False), trusted)
        with TestClient(app) as client:
            page = client.get("/console/", headers={"Remote-User": "alice"},
                              follow_redirects=False)
            assert page.status_code == expected
            assert ("alice" in page.text) == (expected == 200)
            if expected == 200:  # the proxy now names someone else: they, not alice
                page = client.get("/console/", headers={"Remote-User": "bob"})
                assert "bob" in page.text and "alice" not in page.text


# Every POST carries the session's CSRF token


def test_a_post_without_the_sessions_csrf_token_is_403(operator):
    assert operator.post("/console/destinations/chat/pause", data={}).status_code == 403
    assert operator.post("/console/destinations/chat/pause",
                         data={"csrf": "guess"}).status_code == 403
    assert "paused" not in operator.get("/console/").text.split("<h2>Webhooks")[0]


def test_data_pages_forbid_framing_inline_scripts_and_caching(operator):
    page = operator.get("/console/deliveries")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


# Hostile visitor text is shown as text


def test_a_visitors_markup_is_escaped_on_every_page_that_shows_it(operator, sample, chat):
    chat.broken = True
    post_message(operator, message(sample, "t-hostile", HOSTILE))
    wait_for(lambda: "failed" in operator.get("/console/deliveries").text)
    pages = [operator.get("/console/deliveries/1").text,
             operator.get("/console/conversations/chatbot_123/t-hostile").text]
    for page in pages:
        assert "<script>" not in page and "<img src=x" not in page
        assert "&lt;script&gt;" in page


# Actions


def test_a_failed_delivery_retried_is_delivered(operator, sample, chat):
    chat.broken = True
    post_message(operator, message(sample, "t1", "hello"))
    wait_for(lambda: "channel_not_found" in operator.get("/console/deliveries?status=failed").text)
    chat.broken = False
    page = operator.get("/console/deliveries/1")
    operator.post("/console/deliveries/1/retry", data={"csrf": csrf_of(page.text)})
    wait_for(lambda: chat.delivered == [1])


def test_bulk_retry_confirms_the_count_then_requeues_what_matches(operator, sample, chat):
    chat.broken = True
    for n in range(3):
        post_message(operator, message(sample, f"t{n}", f"hello {n}"))
    wait_for(lambda: operator.get("/console/deliveries?status=failed").text.count(
        "channel_not_found") == 3)
    chat.broken = False
    token = csrf_of(operator.get("/console/deliveries").text)
    confirm = operator.post("/console/deliveries/retry",
                            data={"csrf": token, "status": "failed", "conversation": "t1"})
    assert "1 delivery matches" in confirm.text and chat.delivered == []
    operator.post("/console/deliveries/retry", data={
        "csrf": token, "status": "failed", "conversation": "t1", "confirmed": "yes"})
    wait_for(lambda: chat.delivered == [2])


def test_cancel_skips_a_waiting_delivery(make_settings, sample):
    for client in serving(console_bridge(console_settings(make_settings)), run_worker=False):
        log_in(client)
        post_message(client, message(sample, "t1", "hello"))
        token = csrf_of(client.get("/console/").text)
        client.post("/console/deliveries/1/cancel", data={"csrf": token})
        assert "cancelled in the console" in client.get("/console/deliveries/1").text


def test_pause_holds_deliveries_and_resume_lets_them_go(operator, sample, chat):
    token = csrf_of(operator.get("/console/").text)
    operator.post("/console/destinations/chat/pause", data={"csrf": token})
    assert "Resume" in operator.get("/console/").text
    post_message(operator, message(sample, "t1", "first"))
    post_message(operator, message(sample, "t1", "second"))
    time.sleep(0.3)  # several polls: nothing may go while paused
    assert chat.delivered == []
    operator.post("/console/destinations/chat/resume", data={"csrf": token})
    wait_for(lambda: chat.delivered == [1, 2])


# Pages


def test_deliveries_page_through_older_ones_by_id(operator, sample, chat):
    from bridge.console import app as console_app

    console_app.PAGE_SIZE, saved = 2, console_app.PAGE_SIZE
    try:
        for n in range(3):
            post_message(operator, message(sample, f"t{n}", f"m {n}"))
        wait_for(lambda: len(chat.delivered) == 3)
        first = operator.get("/console/deliveries")
        assert 'href="/console/deliveries/3"' in first.text and "before=2" in first.text
        older = operator.get("/console/deliveries?before=2")
        assert 'href="/console/deliveries/1"' in older.text
        assert 'href="/console/deliveries/3"' not in older.text
    finally:
        console_app.PAGE_SIZE = saved


def test_the_templates_page_renders_every_sample(operator):
    page = operator.get("/console/templates")
    assert page.status_code == 200 and "message-visitor: chat.post" in page.text


def test_the_templates_render_against_a_recent_event_picked_from_a_list(operator, sample, chat):
    post_message(operator, message(sample, "t-real", "a real question <b>"))
    wait_for(lambda: chat.delivered == [1])
    listed = operator.get("/console/templates").text
    assert '<option value="1">event 1: ADD_MESSAGE · chatbot_123/t-real</option>' in listed
    page = operator.get("/console/templates?event=1").text
    assert "event 1: chat.post" in page and "message-visitor: chat.post" not in page
    assert "a real question &lt;b&gt;" in page and "a real question <b>" not in page
    assert '<option value="1" selected>' in page


@pytest.mark.parametrize(("picked", "problem"), [
    ("99", "event 99 is no longer kept"), ("x", "not an event id: x")])
def test_an_event_that_cannot_be_picked_says_why_and_shows_the_samples(operator, picked,
                                                                       problem):
    page = operator.get(f"/console/templates?event={picked}").text
    assert problem in page and "message-visitor: chat.post" in page


def test_the_settings_page_shows_checks_and_masks_secrets(operator):
    page = operator.get("/console/settings")
    assert "store: ok: sqlite" in page.text and "templates: ok" in page.text
    assert "tok-messages" not in page.text and "**********" in page.text
    assert PASSWORD_HASH not in page.text


def test_the_overview_counts_each_destination(operator, sample, chat):
    chat.broken = True
    post_message(operator, message(sample, "t1", "hello"))
    wait_for(lambda: "channel_not_found" in operator.get("/console/").text)
    assert "<svg" in operator.get("/console/").text


# The same from the command line


async def test_pause_and_resume_from_the_command_line(make_settings, tmp_path, capsys):
    import asyncio

    from bridge.cli import main
    from bridge.store import open_store

    settings = make_settings()
    await open_store(settings.store.url).close()  # made and migrated, as `serve` leaves it
    config = str(tmp_path / "settings.toml")
    run = asyncio.to_thread
    assert await run(main, ["pause", "slack", "--config", config]) == 0
    assert await run(main, ["pause", "slack", "--config", config]) == 0
    assert capsys.readouterr().out == "slack: paused\nslack: paused already\n"
    store = open_store(settings.store.url)
    try:
        assert list(await store.paused()) == ["slack"]
    finally:
        await store.close()
    assert await run(main, ["resume", "slack", "--config", config]) == 0
    assert await run(main, ["resume", "slack", "--config", config]) == 0
    assert capsys.readouterr().out == "slack: resumed\nslack: was not paused\n"
    with pytest.raises(SystemExit) as refused:
        main(["pause", "nowhere", "--config", config])
    assert refused.value.code == 2


def test_the_webhook_chart_counts_each_outcome_since_the_start():
    from bridge.console.chart import WebhookHistory
    from bridge.metrics import Metrics

    metrics, history = Metrics(["messages"]), WebhookHistory()
    history.start(0.0)
    for outcome in ("accepted", "accepted", "duplicate", "unauthorized"):
        metrics.webhook("messages", outcome)
    history.sample(metrics, 30.0)  # within the first minute: not kept apart
    assert len(history.samples) == 1
    drawn = history.chart(metrics, 90.0)
    assert "accepted 2" in drawn and "duplicate 1" in drawn and "refused 1" in drawn
    assert drawn.count("<rect") == 3


def test_refusals_are_counted_by_reason_in_the_last_hour_and_since_the_start():
    from bridge.console.chart import WebhookHistory
    from bridge.metrics import Metrics

    metrics, history = Metrics(["messages", "leads"]), WebhookHistory()
    history.start(0.0)
    metrics.webhook("messages", "unauthorized")
    metrics.webhook("leads", "unauthorized")
    metrics.webhook("messages", "accepted")
    history.sample(metrics, 60.0)
    metrics.webhook("messages", "too_large")
    found = [(refused.reason, refused.last_hour, refused.since_start)
             for refused in history.refusals(metrics, 3700.0)]  # the first minute is gone
    assert found == [("too_large", 1.0, 1.0), ("unauthorized", 0.0, 2.0)]


def test_the_overview_shows_webhooks_refused_by_reason(operator):
    assert "None refused since the bridge started" in operator.get("/console/").text
    for _ in range(2):
        operator.post("/webhooks/messages", json={}, headers={"X-WEBHOOK-TOKEN": "wrong"})
    page = operator.get("/console/").text
    refusals = page.partition('id="refusals"')[2].partition("</table>")[0]
    assert "<td>unauthorized</td><td>2</td><td>2</td>" in refusals
    assert 'id="pacing"' not in page  # no destination here declares a pacing gauge


def test_the_overview_shows_how_far_behind_slack_is_paced(make_settings, fake):
    from bridge.destinations.slack_metrics import PacingMetrics

    bridge = slack_bridge(make_settings, fake)
    bridge.metrics.own("slack", PacingMetrics).watch_pacer(lambda: 42.25)
    for client in slack_console(make_settings, fake, bridge):
        log_in(client)
        pacing = client.get("/console/").text.partition('id="pacing"')[2]
        assert "<td>slack</td><td>42.2s</td>" in pacing.partition("</table>")[0]
        assert "sitegpt_bridge_slack_pacing_behind_seconds" in pacing


def test_over_https_the_session_cookie_is_secure(make_settings):
    bridge = console_bridge(console_settings(make_settings))
    with TestClient(create_app(bridge, run_worker=False), base_url="https://127.0.0.1") as client:
        cookie = next(value for value in log_in(client).headers.get_list("set-cookie")
                      if value.startswith(COOKIE))
        assert "Secure" in cookie


def test_a_broken_override_shows_its_file_and_line(make_settings, tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "broken.j2").write_text("fine\n{{ oops\n")
    settings = make_settings({"console": {"password_hash": PASSWORD_HASH},
                              "templates": {"dir": str(folder)}})
    for client in serving(console_bridge(settings), run_worker=False):
        log_in(client)
        page = client.get("/console/templates").text
        assert f"{folder / 'broken.j2'}:2: " in page


def test_a_conversation_links_to_its_jira_ticket(make_settings, sample):
    settings = make_settings({
        "console": {"password_hash": PASSWORD_HASH},
        "jira": {"url": "https://jira.example.com/", "email": "ops@example.com",
                 "api_token": "t", "project": "SUP"}})
    bridge = console_bridge(settings)
    for client in serving(bridge, run_worker=False):
        log_in(client)
        post_message(client, message(sample, "t-linked", "hello"))
        assert client.portal is not None
        client.portal.call(bridge.store.save_link, "chatbot_123", "t-linked", "jira",
                           {"key": "SUP-7"}, "SUP-7")
        for path in ("/console/conversations/chatbot_123/t-linked", "/console/deliveries/1"):
            assert '<a href="https://jira.example.com/browse/SUP-7">SUP-7</a>' in \
                client.get(path).text


def test_a_conversation_shows_its_visitor_ticket_status_and_lead(make_settings, sample):
    bridge = console_bridge(console_settings(make_settings))
    lead = sample("lead")
    lead["data"] |= {"threadId": "t-lead"}
    lead["data"]["leadDetails"] |= {"name": "Ann <b>Lee</b>"}
    for client in serving(bridge, run_worker=False):
        log_in(client)
        post_message(client, message(sample, "t-lead", "hello"))
        assert client.portal is not None
        client.portal.call(bridge.store.accept, new_event(
            parse_event(lead["event"], lead), lead, ["chat"]), bridge.clock.now(), 600)
        client.portal.call(bridge.store.save_link, "chatbot_123", "t-lead", "chat", {
            "visitor": {"name": "Ann", "email": "ann@example.com"},
            "ticket": {"key": "SUP-9", "url": "javascript:alert(1)", "status": "In Review"}},
            None)
        page = client.get("/console/conversations/chatbot_123/t-lead").text
    assert "<dt>Visitor</dt><dd>Ann · ann@example.com</dd>" in page
    assert "<dt>Ticket</dt><dd>SUP-9 · In Review</dd>" in page  # no link to a non-web URL
    assert "<h2>Lead</h2>" in page and "Ann &lt;b&gt;Lee&lt;/b&gt;" in page


# Testing credentials

SLACK_TOKEN = "xoxb-console-secret"


def slack_console(make_settings, fake: FakeSlack, bridge: Bridge | None = None
                  ) -> Iterator[TestClient]:
    yield from serving(bridge or slack_bridge(make_settings, fake), run_worker=False)


def slack_bridge(make_settings, fake: FakeSlack) -> Bridge:
    return open_bridge(make_settings({
        "console": {"password_hash": PASSWORD_HASH},
        "slack": {"bot_token": SLACK_TOKEN, "api_url": fake.api_url, "channel": "C_CONV",
                  "signing_secret": "shh"}}))


def test_test_credentials_shows_what_each_destination_answers(make_settings, fake):
    for client in slack_console(make_settings, fake):
        log_in(client)
        page = client.get("/console/settings").text
        assert 'id="credentials"' not in page
        answer = client.post("/console/settings/credentials", data={"csrf": csrf_of(page)})
        assert answer.status_code == 200
        credentials = answer.text.partition('id="credentials"')[2].partition("</ul>")[0]
        assert "slack: ok" in credentials and "Acme" in credentials
        assert "jira: off" in credentials


def test_a_refused_credential_is_shown_with_its_secret_masked(make_settings, fake):
    fake.fail_next("auth.test", error=f"invalid_auth for {SLACK_TOKEN}")
    for client in slack_console(make_settings, fake):
        log_in(client)
        page = client.get("/console/settings").text
        answer = client.post("/console/settings/credentials", data={"csrf": csrf_of(page)})
        credentials = answer.text.partition('id="credentials"')[2].partition("</ul>")[0]
        assert 'class="bad">slack: FAILED: ' in credentials and "invalid_auth" in credentials
        assert SLACK_TOKEN not in answer.text


def test_test_credentials_needs_the_forms_csrf_token(make_settings, fake):
    for client in slack_console(make_settings, fake):
        log_in(client)
        before = auth_tests(fake)
        assert client.post("/console/settings/credentials",
                           data={"csrf": "forged"}).status_code == 403
        assert auth_tests(fake) == before


def auth_tests(fake: FakeSlack) -> int:
    return sum(method == "auth.test" for method, _, _ in list(fake.calls))


# Conversations


def test_conversations_are_found_by_the_visitors_email_and_paged(make_settings, monkeypatch):
    import bridge.console.app

    monkeypatch.setattr(bridge.console.app, "PAGE_SIZE", 1)
    built = console_bridge(console_settings(make_settings))
    for client in serving(built, run_worker=False):
        log_in(client)
        assert client.portal is not None
        for thread, visitor in (("t-ana", "Ana <ana@example.com>"), ("t-bob", "Bob <bob@x.io>"),
                                ("t-cy", f"Cy {HOSTILE}")):
            client.portal.call(built.store.save_link, "bot", thread, "slack",
                               {"channel": "C1", "visitor": visitor})
        page = client.get("/console/conversations", params={"q": "ANA@EXAMPLE.COM"}).text
        assert "bot/t-ana" in page and "bot/t-bob" not in page and "Older" not in page
        newest = client.get("/console/conversations").text
        assert "bot/t-cy" in newest and "bot/t-bob" not in newest
        older = OLDER.search(newest)
        assert older is not None
        assert "bot/t-bob" in client.get(older[1].replace("&amp;", "&")).text
        assert "<script>" not in client.get("/console/conversations",
                                            params={"q": "<script>"}).text


def test_slacks_template_previews_are_drawn_beside_their_json(make_settings, fake):
    for client in slack_console(make_settings, fake):
        log_in(client)
        page = client.get("/console/templates").text
        assert page.count('class="sl-message"') >= 3
        assert "<strong>" in page and 'class="sl-section"' in page
        assert "<script" not in page and "style=" not in page
