"""The [console] section: off until a password hash is set."""

from __future__ import annotations

from datetime import timedelta

from pydantic import field_validator

from bridge.sections import Duration, Section


class ConsoleSettings(Section):
    """The operator console at /console/: every path answers 404 until `password_hash` is set."""

    # A hash, not the password: it holds `$` (which compose's .env would expand), so it
    # belongs in settings.toml, and `check` may show it.
    password_hash: str | None = None
    session_idle: Duration = timedelta(hours=12)
    trusted_user_header: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _argon2id(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("$argon2id$"):
            raise ValueError("must be an argon2id hash, as `sitegpt-bridge console-password`"
                             " prints it")
        return value

    @field_validator("session_idle")
    @classmethod
    def _positive(cls, idle: timedelta) -> timedelta:
        if idle.total_seconds() <= 0:
            raise ValueError("must be more than 0 seconds")
        return idle

    @property
    def enabled(self) -> bool:
        return self.password_hash is not None
