"""The bridge's own exceptions; library errors are translated into these where they happen.

    BridgeError
    ├── ConfigError          settings or templates are wrong: the bridge refuses to start
    ├── TemplateError        a template failed to load, render, or produced invalid output
    ├── StoreError           the store could not do what was asked
    │   └── StoreBusy        it could not commit in time (the web layer answers 503)
    └── DeliveryError        a destination call failed; the destination says which kind
        ├── RetryableError   try again later: 429, 5xx, timeouts (carries retry_after)
        └── PermanentError   give up now: bad credentials, unknown channel, template error
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Settings or templates are invalid; `problems` holds one line per problem."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class TemplateError(BridgeError):
    """A template failed; the message names the file and, where known, the line."""


class StoreError(BridgeError):
    """The store failed to read or write."""


class StoreBusy(StoreError):
    """The store could not commit within its deadline."""


class DeliveryError(BridgeError):
    """A destination could not deliver.

    `follow_ups`: events stored only if the worker gives the delivery up with this error, such
    as a notice in the thread that it failed.
    """

    follow_ups: Sequence[Any] = ()  # bridge.store's FollowUp: errors.py imports no module


class RetryableError(DeliveryError):
    """A transient failure: the worker schedules another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """A failure that retrying cannot fix: the delivery is failed at once."""
