"""The pieces every destination shares."""

from __future__ import annotations

import pytest

from bridge.destinations.base import parse_retry_after

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
