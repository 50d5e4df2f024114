"""The durable store: its records, its contracts, and open_store() to pick a backend by url.

The records and protocols here are the whole contract; backends live in subpackages
(bridge.store.sqlite) and are imported only when a url names them.
"""

from __future__ import annotations

from bridge.clock import Clock
from bridge.store.filters import DeliveryFilter
from bridge.store.protocols import (
    ChannelBudgets,
    ConsoleKeys,
    ConsoleQueries,
    ConversationLinks,
    DeliveryQueue,
    DeliveryStore,
    Echoes,
    EventIntake,
    Housekeeping,
    Lifecycle,
    ListenerCursors,
    ListenerIntake,
    NewWork,
    Operations,
    Pauses,
    QueuedBehind,
    QueueStats,
    ReplyIntake,
    Serialised,
    SettingsRecords,
    SharedPacing,
    Store,
    Transcripts,
)
from bridge.store.records import (
    STATUSES,
    Acceptance,
    Attempt,
    Backup,
    ClaimedDelivery,
    ConversationLink,
    ConversationPage,
    ConversationRecord,
    DeliveryRow,
    DeliveryStatus,
    DestinationSummary,
    Echo,
    FollowUp,
    Lease,
    NewEvent,
    Pruned,
    RetryKind,
    StoredMessage,
    StoreInfo,
)
from bridge.store.settings_in_use import SettingsInUse
from bridge.store.url import sqlite_path, store_scheme

__all__ = [
    "STATUSES", "Acceptance", "Attempt", "Backup", "ChannelBudgets", "ClaimedDelivery",
    "ConsoleKeys", "ConsoleQueries", "ConversationLink", "ConversationLinks",
    "ConversationPage", "ConversationRecord", "DeliveryFilter", "DeliveryQueue", "DeliveryRow",
    "DeliveryStatus",
    "DeliveryStore", "DestinationSummary", "Echo", "Echoes", "EventIntake", "FollowUp",
    "Housekeeping", "Lease", "Lifecycle", "ListenerCursors", "ListenerIntake", "NewEvent",
    "NewWork", "Operations", "Pauses", "Pruned", "QueueStats", "QueuedBehind", "ReplyIntake",
    "RetryKind", "Serialised",
    "SettingsInUse", "SettingsRecords", "SharedPacing", "Store", "StoreInfo",
    "StoredMessage", "Transcripts", "open_store", "sqlite_path", "store_scheme",
]


def open_store(url: str, synchronous: str = "FULL", commit_timeout: float = 3.0,
               clock: Clock | None = None, pool_size: int = 10, upgrade: bool = True) -> Store:
    """The store named by `[store] url`, migrated to the schema this code knows.

    The operator commands pass `upgrade=False`: they refuse an older store rather than
    migrate it under a bridge of the older version that may still be running on it.

    SQLite opens (and migrates) here; PostgreSQL on first use or at `open()`, in the event
    loop that uses it, since its connections belong to one loop.
    """
    scheme = store_scheme(url)
    if scheme == "sqlite":
        from bridge.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), synchronous, commit_timeout, clock, upgrade)
    if scheme == "postgresql":
        from bridge.store.postgres.store import PostgresStore

        return PostgresStore(url, pool_size, commit_timeout, clock, upgrade)
    raise AssertionError(f"no opener for {scheme}")  # store_scheme knows only openable ones
