"""The app starts, accepts SiteGPT's own curl example, and deduplicates it."""

from __future__ import annotations

from starlette.testclient import TestClient

from bridge.app import create_app, open_bridge

CURL_EXAMPLE = {
    "event": "ADD_MESSAGE",
    "data": {"chatbotId": "test_123", "threadId": "test_thread", "question": "Test question",
             "answer": "Test answer", "messageType": "NORMAL_MESSAGE"},
}


def test_curl_example_is_accepted_then_deduplicated(make_settings):
    app = create_app(open_bridge(make_settings()), run_worker=False)
    with TestClient(app) as client:
        headers = {"X-WEBHOOK-TOKEN": "tok-messages"}
        first = client.post("/webhooks/messages", json=CURL_EXAMPLE, headers=headers)
        again = client.post("/webhooks/messages", json=CURL_EXAMPLE, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "accepted"
    assert again.json() == {"status": "duplicate", "id": first.json()["id"]}
