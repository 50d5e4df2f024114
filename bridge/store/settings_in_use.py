"""What each running bridge process records of the settings it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SettingsInUse:
    """One process's settings: their fingerprints, when loaded, and the last file it refused.

    `sections` maps each settings section (and "templates") to a hash of its values, secrets
    included; `fingerprint` hashes them all. No value is kept in clear.
    """

    process: str  # "<host>:<pid>"
    role: str  # serve or worker
    fingerprint: str
    loaded_at: float
    sections: dict[str, str] = field(default_factory=dict)
    rejected: str | None = None  # why the settings file on disk was refused, if it was
    rejected_at: float | None = None

    @property
    def host(self) -> str:
        return self.process.rpartition(":")[0]

    @property
    def pid(self) -> int:
        return int(self.process.rpartition(":")[2])
