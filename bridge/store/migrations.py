"""Numbered schema versions, the same for every backend, and the rules for moving between them.

Each backend keeps one migration per version (its own SQL) and applies every missing one in a
single transaction at start-up; a store whose version is newer than the code refuses to open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from bridge.errors import StoreError

C = TypeVar("C")

# What each version added; a backend's migrations must match these numbers and names.
VERSIONS: dict[int, str] = {
    1: "first release",
    2: "per-destination conversation links",
    3: "ids that are never reused",
    4: "attempt history and delivery notes",
    5: "lease tokens",
    6: "readiness probe",
    7: "why a delivery waits",
    8: "settings each process runs with",
    9: "the operator console's signing key and paused destinations",
    10: "the console's conversation list, newest first",
    11: "echoes of replies per chat tool, and listeners' cursors",
}
SCHEMA_VERSION = max(VERSIONS)


class StoreTooNew(StoreError):
    """The store was written by a newer bridge: this one must not touch it."""


class StoreNeedsUpgrade(StoreError):
    """An operator command met an older store: only `serve` or `worker` upgrades it."""


@dataclass(frozen=True)
class Migration(Generic[C]):
    """One step up, run on the backend's connection `C` inside the migrating transaction."""

    version: int
    apply: Callable[[C], None]

    @property
    def name(self) -> str:
        return VERSIONS[self.version]


def steps_from(found: int, migrations: Sequence[Migration[C]], where: str,
               upgrade: bool = True) -> list[Migration[C]]:
    """The migrations a store at version `found` still needs, in order.

    Without `upgrade` (the operator commands) an older store is refused rather than migrated:
    the bridge of that older version may still be running on it, and would break.
    """
    if [m.version for m in migrations] != list(range(1, SCHEMA_VERSION + 1)):
        raise AssertionError("a backend must have one migration per schema version")
    if found > SCHEMA_VERSION:
        raise StoreTooNew(
            f"the store at {where} has schema version {found}, but this sitegpt-bridge knows "
            f"versions up to {SCHEMA_VERSION}: run the newer bridge that wrote it, or restore "
            "a backup taken before that upgrade")
    if not upgrade and 0 < found < SCHEMA_VERSION:
        raise StoreNeedsUpgrade(
            f"the store at {where} has schema version {found}, older than this "
            f"sitegpt-bridge's {SCHEMA_VERSION}: `serve` or `worker` upgrades it when it "
            "starts. Stop the bridge of the older version first; until then, use its own "
            "commands on this store")
    return [m for m in migrations if m.version > found]
