"""The console in a real browser (Debian's Chromium under Playwright), found by role and name.

Skipped where /usr/bin/chromium is missing, except under CI=true, where that is a failure.
One server for the module; each test logs in with a fresh browser context.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.app import create_app, open_bridge
from bridge.config import load_settings
from bridge.samples import load_sample
from tests.console_support import (
    HOSTILE,
    PASSWORD,
    PASSWORD_HASH,
    Chat,
    console_bridge,
    message,
)
from tests.fake_slack import FakeSlack
from tests.servers import serving
from tests.settings_files import TOKENS, write_toml

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
# `make screenshots` sets this: the pictures of docs/console.md are taken along the way.
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")

pytestmark = pytest.mark.xdist_group("console-browser")

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail("the console's browser tests need /usr/bin/chromium (apt-get install "
                    "chromium): .ci/run installs it", pytrace=False)
    pytest.skip("no /usr/bin/chromium: `apt-get install chromium` to run the console's browser"
                " tests", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def chat() -> Chat:
    return Chat()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, chat: Chat) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("console")
    config = write_toml(folder / "settings.toml", {
        "store": {"url": f"sqlite:///{folder}/bridge.db"},
        "webhooks": {name: {"tokens": [token]} for name, token in TOKENS.items()},
        "delivery": {"backoff_initial": "0.05s", "backoff_cap": "0.2s", "poll_interval": "0.05s"},
        "console": {"password_hash": PASSWORD_HASH},
    })
    with serving(create_app(console_bridge(load_settings(str(config)), chat))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1000, "height": 700})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    log_in(opened)
    yield opened
    context.close()


def log_in(page: Page) -> None:
    page.goto("/console/")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def send(base_url: str, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{base_url}/webhooks/messages", json=body,
                        headers={"X-WEBHOOK-TOKEN": TOKENS["messages"]})
    assert answer.status_code == 200, answer.text


def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def text_at(page: Page, url: str) -> str:
    response = page.goto(url)
    assert response is not None
    return response.text()


def shoot(page: Page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"))


def open_delivery_of(page: Page, thread: str) -> None:
    page.goto(f"/console/deliveries?conversation={thread}")
    page.get_by_role("row").nth(1).get_by_role("link").first.click()


def test_log_in_and_log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.goto("/console/deliveries")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def test_a_failed_delivery_retried_is_delivered(page: Page, base_url: str, chat: Chat) -> None:
    chat.broken = True
    send(base_url, message(load_sample, "browser-retry", "hello"))
    until(lambda: "channel_not_found" in text_at(
        page, "/console/deliveries?status=failed&conversation=browser-retry"))
    chat.broken = False
    open_delivery_of(page, "browser-retry")
    shoot(page, "delivery")
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text("requeued")
    until(lambda: ">delivered<" in text_at(page, page.url))


def test_bulk_retry_after_a_confirmation(page: Page, base_url: str, chat: Chat) -> None:
    chat.broken = True
    for n in range(3):
        send(base_url, message(load_sample, "browser-bulk", f"bulk {n}"))
    url = "/console/deliveries?status=failed&conversation=browser-bulk"
    until(lambda: text_at(page, url).count("channel_not_found") == 3)
    chat.broken = False
    shoot(page, "deliveries")
    page.get_by_role("button", name="Retry all matching").click()
    expect(page.get_by_text("3 deliveries match")).to_be_visible()
    page.get_by_role("button", name="Retry 3").click()
    expect(page.get_by_role("status")).to_have_text("requeued 3")
    until(lambda: "channel_not_found" not in text_at(page, url))


def test_pause_and_resume(page: Page, base_url: str, chat: Chat) -> None:
    page.get_by_role("button", name="Pause chat").click()
    expect(page.get_by_role("status")).to_have_text("chat: paused")
    sent = len(chat.delivered)
    send(base_url, message(load_sample, "browser-pause", "while paused"))
    time.sleep(0.5)  # many polls: nothing goes to a paused destination
    assert len(chat.delivered) == sent
    httpx.post(f"{base_url}/webhooks/messages", json={}, headers={"X-WEBHOOK-TOKEN": "wrong"})
    page.reload()
    expect(page.locator("#refusals")).to_contain_text("unauthorized")
    shoot(page, "overview")
    page.get_by_role("button", name="Resume chat").click()
    expect(page.get_by_role("status")).to_have_text("chat: resumed")
    until(lambda: len(chat.delivered) == sent + 1)


def test_a_template_preview(page: Page) -> None:
    page.get_by_role("link", name="Templates").click()
    page.get_by_text("message-visitor: chat.post").click()
    expect(page.get_by_text("I still can't log in")).to_be_visible()


def test_hostile_visitor_text_is_shown_as_text_and_runs_nothing(page: Page,
                                                                base_url: str) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    send(base_url, message(load_sample, "browser-hostile", HOSTILE))
    page.goto("/console/conversations/chatbot_123/browser-hostile")
    expect(page.get_by_text(HOSTILE, exact=False)).to_be_visible()
    assert page.title() != "pwned" and dialogs == []
    assert page.locator("main script, main img").count() == 0


def test_slack_credentials_and_a_slack_preview(browser: Browser,
                                                         tmp_path: Path) -> None:
    with FakeSlack() as fake:
        config = write_toml(tmp_path / "settings.toml", {
            "store": {"url": f"sqlite:///{tmp_path}/bridge.db"},
            "webhooks": {name: {"tokens": [token]} for name, token in TOKENS.items()},
            "slack": {"bot_token": "xoxb-browser", "api_url": fake.api_url, "channel": "C_CONV",
                      "signing_secret": "shh"},
            "console": {"password_hash": PASSWORD_HASH},
        })
        bridge = open_bridge(load_settings(str(config)))
        with serving(create_app(bridge, run_worker=False)) as url:
            context = browser.new_context(base_url=url, viewport={"width": 1000, "height": 700})
            page = context.new_page()
            page.set_default_timeout(10_000)
            log_in(page)
            page.get_by_role("link", name="Settings").click()
            page.get_by_role("button", name="Test credentials").click()
            expect(page.locator("#credentials")).to_contain_text("slack: ok")
            assert "xoxb-browser" not in page.content()
            shoot(page, "settings")
            page.get_by_role("link", name="Templates").click()
            drawn = page.locator("details").filter(has=page.locator(".sl-message")).first
            drawn.locator("summary").click()
            expect(drawn.locator(".sl-message")).to_be_visible()
            expect(drawn.locator("pre").last).to_contain_text('"channel"')
            drawn.scroll_into_view_if_needed()
            shoot(page, "templates")
            context.close()
