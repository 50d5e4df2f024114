"""Settings building blocks: Section, durations, and the general sections (server, store...)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
)

from bridge.errors import StoreError
from bridge.store.url import backend_named, masked_store_url, sqlite_path, store_scheme

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class WrittenDuration(timedelta):
    """A duration that remembers how the settings wrote it ("24h", "120s", 90), to show it so."""

    written: str | float

    def __new__(cls, written: str | float, seconds: float) -> WrittenDuration:
        duration = super().__new__(cls, seconds=seconds)
        duration.written = written
        return duration

    def __reduce__(self) -> tuple[Any, ...]:  # copies (of defaults) keep the written form
        return WrittenDuration, (self.written, self.total_seconds())


def duration(written: str | float) -> WrittenDuration:
    """Accept "250ms", "90s", "5m", "24h", "7d", plain seconds, or ISO 8601 ("PT2M")."""
    if isinstance(written, str) and (match := _DURATION.match(written)):
        return WrittenDuration(written, float(match[1]) * _UNITS[match[2]])
    if isinstance(written, int | float) and not isinstance(written, bool):
        return WrittenDuration(written, written)
    try:
        return WrittenDuration(written, _ISO_DURATION.validate_python(written).total_seconds())
    except ValidationError:
        raise ValueError(f'not a duration: {written!r}; write e.g. "90s", "5m" or "24h"') from None


def _duration_or_given(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else duration(value)


def _as_written(value: timedelta) -> str | float:
    """What `check` prints: the text from the settings, not pydantic's ISO 8601 ("P1D")."""
    if isinstance(value, WrittenDuration):
        return value.written
    return f"{value.total_seconds():g}s"


_ISO_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)
Duration = Annotated[timedelta, PlainValidator(_duration_or_given),
                     PlainSerializer(_as_written, return_type=Any, when_used="json")]
MIN_LEASE = timedelta(seconds=3)


class Section(BaseModel):
    """A settings table: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(262_144, ge=1024)
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576)
    request_timeout: Duration = timedelta(seconds=10)
    forwarded_allow_ips: list[str] = ["127.0.0.1"]
    metrics_token: SecretStr | None = None

    @field_validator("request_timeout")
    @classmethod
    def _positive(cls, timeout: timedelta) -> timedelta:
        if timeout.total_seconds() <= 0:
            raise ValueError("must be more than 0 seconds")
        return timeout


class StoreSettings(Section):
    url: str = Field("sqlite:///data/bridge.db", repr=False)  # shown masked, see _url_shown
    dedup_window_seconds: int = Field(600, ge=0)
    commit_timeout_seconds: float = Field(3.0, gt=0, le=4.5)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    retention_days: int = Field(30, ge=1)
    pool_size: int = Field(10, ge=2, le=200)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str) -> str:
        try:
            store_scheme(url)
        except StoreError as exc:
            raise ValueError(str(exc)) from exc
        return url

    @field_serializer("url")
    def _url_shown(self, url: str) -> str:
        """A PostgreSQL URI carries a password: `check` prints it masked."""
        return masked_store_url(url)

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "postgresql" if backend_named(self.url) == "postgresql" else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        return sqlite_path(self.url)


def _not_empty(token: SecretStr) -> SecretStr:
    if not token.get_secret_value():
        raise ValueError("a token must not be empty: it would accept an empty X-WEBHOOK-TOKEN")
    return token


class WebhookEndpoint(Section):
    tokens: list[Annotated[SecretStr, AfterValidator(_not_empty)]] = []


class WebhooksSettings(Section):
    messages: WebhookEndpoint = WebhookEndpoint()
    escalations: WebhookEndpoint = WebhookEndpoint()
    leads: WebhookEndpoint = WebhookEndpoint()


class ChatbotSettings(Section):
    """A `[[chatbots]]` table; each destination adds its own per-chatbot keys (`chatbot_keys`)."""

    id: str
    name: str | None = None

    if TYPE_CHECKING:  # a destination's key, e.g. slack_channel, is declared by its plugin
        def __getattr__(self, key: str) -> Any: ...


class RouteSettings(Section):
    """A `[[routes]]` table: where some chatbots' conversations go. Each destination adds its own
    keys (`route_keys`); a key left out comes from the destination's own section."""

    chatbots: list[str] = Field(min_length=1)

    if TYPE_CHECKING:  # a destination's key, e.g. slack_channel, is declared by its plugin
        def __getattr__(self, key: str) -> Any: ...


class DeliverySettings(Section):
    max_age: Duration = duration("24h")
    max_attempts: int = Field(60, ge=1)
    concurrency: int = Field(16, ge=1)
    lease: Duration = duration("15s")
    backoff_initial: Duration = duration("1s")
    backoff_cap: Duration = duration("3m")
    shutdown_grace: Duration = duration("5s")
    poll_interval: Duration = duration("1s")

    @field_validator("lease")
    @classmethod
    def _renewable_lease(cls, lease: timedelta) -> timedelta:
        # Renewed every third of itself: shorter, and one slow commit could let it run out.
        if lease < MIN_LEASE:
            raise ValueError(f"must be at least {MIN_LEASE.total_seconds():g}s: a worker renews"
                             " it every third of that while a delivery is in flight")
        return lease


class TemplatesSettings(Section):
    dir: Path | None = None


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


def half_set(section: str, switch: str, effect: str, switched_on: Any,
             **keys: Any) -> str | None:
    """A line for a section whose `keys` are set while its `switch` is not, else None."""
    given = [f"{section}.{name}" for name, value in keys.items() if value]
    if switched_on or not given:
        return None
    return f"{section}: {', '.join(given)} set but not {section}.{switch}: {effect}"
