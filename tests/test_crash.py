"""An accepted event survives kill -9 of the server, and SiteGPT's retry after it is a duplicate."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bridge.destinations import build_destinations, destinations_for
from bridge.events import ESCALATION, canonical_json
from bridge.settings import Settings
from bridge.templating import Templates
from tests.bridges import query
from tests.servers import BridgeProcess
from tests.settings_files import TOKENS

pytestmark = pytest.mark.slow  # kill -9 and takeovers take seconds


def destinations_on(settings: Settings, kind: str) -> list[str]:
    """The destinations these settings switch on for `kind`: each must get a pending delivery."""
    built = build_destinations(settings, Templates(settings.templates.dir))
    try:
        return sorted(destinations_for(kind, built))
    finally:
        for destination in built.values():
            asyncio.run(destination.aclose())


def post_escalation(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/webhooks/escalations", json=body, timeout=10,
                      headers={"X-WEBHOOK-TOKEN": TOKENS["escalations"]})


def test_an_accepted_event_survives_kill_9_and_its_retry_is_a_duplicate(
        make_settings, tmp_path, sample):
    settings = make_settings()
    config, db = tmp_path / "settings.toml", settings.store.sqlite_path
    body = sample("escalation")
    with BridgeProcess(config, cwd=tmp_path, args=["--no-worker"]) as first:
        accepted = post_escalation(first.url, body).json()
        first.kill()
    assert accepted["status"] == "accepted"
    assert query(db, "SELECT id, kind, body FROM events") == [
        (accepted["id"], ESCALATION, canonical_json(body))]
    pending = query(db, "SELECT destination FROM deliveries WHERE event_id = ?"
                        " AND status = 'pending' ORDER BY destination", [accepted["id"]])
    assert [name for (name,) in pending] == destinations_on(settings, ESCALATION)
    with BridgeProcess(config, cwd=tmp_path, args=["--no-worker"]) as restarted:
        retried = post_escalation(restarted.url, body).json()
    assert retried == {"status": "duplicate", "id": accepted["id"]}
    assert len(query(db, "SELECT id FROM events")) == 1
