"""The pieces every destination shares."""

from __future__ import annotations

import pytest

from bridge.destinations.base import Delivery, parse_retry_after
from tests.clock import FakeClock

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(("header", "seconds"), [
    ("30", 30.0),
    (" 2.5 ", 2.5),
    (["7"], 7.0),
    ("-4", 0.0),
    ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0),
    ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),
    ("", None),
    (None, None),
    ("soon", None),
])
def test_retry_after_as_seconds_or_http_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds


async def test_a_delivery_reads_and_replaces_only_its_own_destinations_state(tmp_path, sample):
    from bridge.errors import PermanentError
    from bridge.event_rows import new_event
    from bridge.events import parse_event
    from bridge.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/bridge.db")
    try:
        for body in (sample("message-visitor"), sample("lead")):
            event = parse_event(body["event"], body)
            await store.accept(new_event(event, body, ["slack", "jira"]), NOW, 60)
        claimed = await store.claim("w", NOW, 10, 60)
        deliveries = {(job.kind, job.destination): Delivery(
            job, parse_event(job.kind, job.payload), store, FakeClock(NOW)) for job in claimed}
        slack = deliveries[("ADD_MESSAGE", "slack")]
        jira = deliveries[("ADD_MESSAGE", "jira")]
        assert await slack.state() == {}
        await slack.save_state({"channel": "C1", "thread_ts": "1.1"}, ref="C1/1.1")
        await jira.save_state({"key": "SUP-1"}, ref="SUP-1")
        await slack.save_state({"channel": "C1", "thread_ts": "1.1", "escalated_at": NOW},
                               ref="C1/1.1")
        assert await slack.state() == {"channel": "C1", "thread_ts": "1.1", "escalated_at": NOW}
        assert await jira.state() == {"key": "SUP-1"}
        data = slack.event.data
        assert await store.conversation_by_ref("slack", "C1/1.1") == (
            data.chatbot_id, data.thread_id)  # type: ignore[union-attr]
        with pytest.raises(PermanentError, match="no conversation"):
            await deliveries[("NEW_LEAD_CAPTURE", "slack")].state()
    finally:
        await store.close()
