"""Settings: a TOML file overridden by BRIDGE_<SECTION>__<KEY> variables, checked at start-up."""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from bridge.errors import ConfigError, StoreError
from bridge.store.url import MASK, backend_named, masked_store_url, sqlite_path, store_scheme

DEFAULT_CONFIG = Path("settings.toml")
EXAMPLE_CONFIG = Path("settings.example.toml")
EXAMPLE_TOKENS = frozenset({"abc-messages-xyz", "abc-escalations-xyz", "abc-leads-xyz"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[ -~]*")
_toml_data: ContextVar[dict[str, Any] | None] = ContextVar("toml_data", default=None)


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


class SlackSettings(Section):
    bot_token: SecretStr | None = None
    api_url: str = "https://slack.com/api/"
    channel: str | None = None
    leads_channel: str | None = None
    escalation_mention: str = ""
    signing_secret: SecretStr | None = None
    private_note_prefix: str = "//"
    burst: int = Field(3, ge=1)
    per_second: float = Field(1.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _channel_with_token(self) -> SlackSettings:
        if self.bot_token is not None and not self.channel:
            raise ValueError("slack.channel is required when slack.bot_token is set")
        return self


class JiraSettings(Section):
    url: str | None = None
    email: str | None = None
    api_token: SecretStr | None = None
    personal_access_token: SecretStr | None = None
    project: str | None = None
    issue_type: str = "Task"
    labels: list[str] = ["sitegpt"]
    timeout_seconds: float = Field(15.0, gt=0)
    webhook_secret: SecretStr | None = None
    webhook_token: SecretStr | None = None
    comments_to_slack: bool = False
    # Jira sends the whole issue with every event: a long ticket outgrows SiteGPT's bodies.
    webhook_max_body_bytes: int = Field(1_048_576, ge=1024)

    @field_validator("webhook_secret", "webhook_token")
    @classmethod
    def _webhook_credential_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty: leave it unset to turn the back-channel off")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_without_spaces(cls, labels: list[str]) -> list[str]:
        spaced = [label for label in labels if not label or any(c.isspace() for c in label)]
        if spaced:
            raise ValueError(f"Jira labels cannot be empty or contain spaces: {spaced}")
        return labels

    @model_validator(mode="after")
    def _one_auth(self) -> JiraSettings:
        if not self.url:
            return self
        cloud = self.email is not None or self.api_token is not None
        server = self.personal_access_token is not None
        if cloud and server:
            raise ValueError(
                "set either email + api_token (Cloud) or personal_access_token "
                "(Server/Data Center), not both"
            )
        if not cloud and not server:
            raise ValueError(
                "jira.url is set but no credentials: set email + api_token (Cloud) "
                "or personal_access_token (Server/Data Center)"
            )
        if cloud and not (self.email and self.api_token):
            raise ValueError("Cloud auth needs both jira.email and jira.api_token")
        if not self.project:
            raise ValueError("jira.project is required when jira.url is set")
        return self

    @property
    def webhook_credentials(self) -> bool:
        return self.webhook_secret is not None or self.webhook_token is not None

    @property
    def back_channel(self) -> bool:
        """Whether Jira's webhooks are received: tickets on, and a secret or a token set.

        Without tickets there is nothing to follow, as the credentials alone do nothing.
        """
        return bool(self.url) and self.webhook_credentials

    @property
    def auth_kind(self) -> str:
        return "personal access token" if self.personal_access_token else "email + API token"


class HubSpotSettings(Section):
    access_token: SecretStr | None = None
    api_url: str = "https://api.hubapi.com"
    properties: dict[str, str] = {}
    unmapped_property: str | None = "message"
    timeout_seconds: float = Field(10.0, gt=0)


def masked_url(url: str) -> str:
    """`url` with anything after its host (path, query, a user and password) masked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    hidden = parts.path.strip("/") or parts.query or parts.fragment or parts.username
    return f"{parts.scheme}://{host}/" + (MASK if hidden else "")


class CrmWebhookSettings(Section):
    url: str | None = Field(None, repr=False)  # shown masked, see _url_shown
    headers: dict[str, SecretStr] = {}
    signing_secret: SecretStr | None = None
    template: str = "crm/lead.json.j2"
    timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        # Checked here: a header that cannot be written would fail every lead, on every retry.
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if not _HEADER_VALUE.fullmatch(value.get_secret_value()):
                raise ValueError(f"the value of header {name!r} must be printable ASCII, "
                                 "on one line")
        return headers

    @field_serializer("url")
    def _url_shown(self, url: str | None) -> str | None:
        """Printed (`check`) as scheme and host: hook URLs often carry a token in the path."""
        return masked_url(url) if url else url

    @field_validator("signing_secret")
    @classmethod
    def _standard_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        # Standard Webhooks secrets are "whsec_" + base64; a secret without the prefix is
        # used as raw bytes, so only a prefixed one can be malformed.
        value = secret.get_secret_value() if secret is not None else ""
        if value.startswith("whsec_"):
            try:
                base64.b64decode(value.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                raise ValueError("the part after whsec_ is not valid base64") from None
        return secret


class CrmSettings(Section):
    kind: Literal["none", "hubspot", "webhook"] = "none"
    hubspot: HubSpotSettings = HubSpotSettings()
    webhook: CrmWebhookSettings = CrmWebhookSettings()

    @model_validator(mode="after")
    def _kind_is_configured(self) -> CrmSettings:
        if self.kind == "hubspot" and self.hubspot.access_token is None:
            raise ValueError('crm.kind = "hubspot" needs crm.hubspot.access_token')
        if self.kind == "webhook" and not self.webhook.url:
            raise ValueError('crm.kind = "webhook" needs crm.webhook.url')
        return self


class ChatbotSettings(Section):
    id: str
    name: str | None = None
    slack_channel: str | None = None
    jira_project: str | None = None
    sitegpt_api_key: SecretStr | None = None


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


class SiteGPTSettings(Section):
    api_url: str = "https://sitegpt.ai/api/v0"
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(10.0, gt=0)


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class Settings(BaseSettings):
    """Everything the bridge reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    slack: SlackSettings = SlackSettings()
    jira: JiraSettings = JiraSettings()
    crm: CrmSettings = CrmSettings()
    chatbots: list[ChatbotSettings] = []
    delivery: DeliverySettings = DeliverySettings()
    templates: TemplatesSettings = TemplatesSettings()
    sitegpt: SiteGPTSettings = SiteGPTSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = InitSettingsSource(settings_cls, init_kwargs=_toml_data.get() or {})
        return init_settings, env_settings, toml

    def chatbot(self, chatbot_id: str) -> ChatbotSettings | None:
        return next((bot for bot in self.chatbots if bot.id == chatbot_id), None)

    def sitegpt_api_key(self, chatbot_id: str) -> SecretStr | None:
        """The chatbot's own SiteGPT API key, else the shared one."""
        chatbot = self.chatbot(chatbot_id)
        if chatbot and chatbot.sitegpt_api_key:
            return chatbot.sitegpt_api_key
        return self.sitegpt.api_key or None

    def replies_enabled(self) -> bool:
        """Answering from Slack needs Slack's signing secret, a bot token and a SiteGPT key."""
        return all(self._reply_needs().values())

    def _reply_needs(self) -> dict[str, bool]:
        """Each setting replies from Slack need, by name, and whether it is set."""
        return {"slack.signing_secret": bool(self.slack.signing_secret),
                "slack.bot_token": bool(self.slack.bot_token),
                "sitegpt.api_key": bool(self.sitegpt.api_key)
                or any(bot.sitegpt_api_key for bot in self.chatbots)}

    def unconfigured_endpoints(self) -> list[str]:
        """Webhooks without a token: each answers 503 until one is set."""
        return [name for name in WebhooksSettings.model_fields
                if not getattr(self.webhooks, name).tokens]

    def half_configured(self) -> list[str]:
        """What has some of its settings but not the one that switches it on, one line each."""
        found = [
            _half("slack", "bot_token", "Slack runs dry: nothing is posted", self.slack.bot_token,
                  channel=self.slack.channel, leads_channel=self.slack.leads_channel),
            _half("jira", "url", "no tickets are made", self.jira.url, email=self.jira.email,
                  api_token=self.jira.api_token, project=self.jira.project,
                  personal_access_token=self.jira.personal_access_token),
            _half("crm", "kind", "leads go to no CRM", self.crm.kind != "none",
                  **{"hubspot.access_token": self.crm.hubspot.access_token,
                     "webhook.url": self.crm.webhook.url}),
        ]
        return [line for line in found if line] + self._half_replies()

    def _half_replies(self) -> list[str]:
        """A signing secret or a SiteGPT key asks for replies from Slack, which need both."""
        needed = self._reply_needs()
        missing = [name for name, value in needed.items() if not value]
        wanted = needed["slack.signing_secret"] or needed["sitegpt.api_key"]
        if not wanted or not missing:
            return []
        return [f"replies from Slack: {', '.join(missing)} not set: replies stay off"]

    def example_tokens_in_use(self) -> list[str]:
        """Endpoints whose tokens still include a value from settings.example.toml."""
        endpoints = self.webhooks.model_dump()
        return [
            name
            for name, endpoint in endpoints.items()
            if any(token.get_secret_value() in EXAMPLE_TOKENS for token in endpoint["tokens"])
        ]


def _half(section: str, switch: str, effect: str, switched_on: Any, **keys: Any) -> str | None:
    """A line for a section whose `keys` are set while its `switch` is not, else None."""
    given = [f"{section}.{name}" for name, value in keys.items() if value]
    if switched_on or not given:
        return None
    return f"{section}: {', '.join(given)} set but not {section}.{switch}: {effect}"


def resolve_config_path(named: str | None) -> tuple[Path, str | None]:
    """The settings file every command reads, and a note when it is the example file.

    --config, else $BRIDGE_CONFIG, else ./settings.toml, else ./settings.example.toml: the
    same order for `serve` and every operator command, so they all see one store and one token.
    """
    if named:
        return Path(named), None
    if env_path := os.environ.get("BRIDGE_CONFIG"):
        return Path(env_path), None
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG, None
    if EXAMPLE_CONFIG.is_file():
        return EXAMPLE_CONFIG, (f"no {DEFAULT_CONFIG} here, using {EXAMPLE_CONFIG} "
                                f"(copy it to {DEFAULT_CONFIG} to make it yours)")
    raise ConfigError(f"no settings file: found neither {DEFAULT_CONFIG} nor {EXAMPLE_CONFIG} "
                      f"in {Path.cwd()}; name one with --config FILE or BRIDGE_CONFIG")


def load_settings(named: str | None = None) -> Settings:
    """Read, merge and validate the settings, or raise ConfigError with one line per problem."""
    path, _ = resolve_config_path(named)
    if unknown := _unknown_variables(os.environ):
        raise ConfigError("unknown BRIDGE_ environment variables", unknown)
    data = _read_toml(path)
    token = _toml_data.set(data)
    try:
        return Settings()
    except ValidationError as exc:
        raise _invalid(exc, path, os.environ) from exc
    except SettingsError as exc:  # a BRIDGE_* value that does not parse; its text may be secret
        raise ConfigError(
            f"invalid BRIDGE_* variable: {exc}; lists and tables must be JSON, "
            """e.g. BRIDGE_WEBHOOKS__MESSAGES__TOKENS='["t1", "t2"]'""") from exc
    finally:
        _toml_data.reset(token)


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """BRIDGE_* names that match no section: pydantic-settings would ignore them silently."""
    sections = set(Settings.model_fields)
    names = [name for name in environ
             if name.upper().startswith("BRIDGE_") and name.upper() != "BRIDGE_CONFIG"]
    return [f"{name}: unknown setting (expected BRIDGE_<SECTION>__<KEY>)" for name in names
            if name.upper().removeprefix("BRIDGE_").split("__")[0].lower() not in sections]


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _invalid(exc: ValidationError, path: Path, environ: Mapping[str, str]) -> ConfigError:
    """One problem per line, each blamed on the variable that set it, else on the file."""
    problems: list[str] = []
    sources: dict[str, None] = {}
    for error in exc.errors():
        variable = _source_variable(error["loc"], environ)
        inside = [] if variable else _variables_inside(error["loc"], environ)
        # A table's own check (e.g. a url without credentials) weighs the file and the
        # variables that set keys of it together: name both.
        for source in [variable or str(path), *inside]:
            sources[source] = None
        blame = (f" (from {variable})" if variable
                 else f" (with {', '.join(inside)} from the environment)" if inside else "")
        problems.append(_describe(error) + blame)
    return ConfigError(f"invalid settings in {' and '.join(sources)}", problems)


def _variables_inside(location: tuple[int | str, ...], environ: Mapping[str, str]) -> list[str]:
    """The BRIDGE_* variables that set keys inside the table at `location`."""
    if not location:
        return []
    prefix = "BRIDGE_" + "__".join(str(part) for part in location).upper() + "__"
    return sorted(name for name in environ if name.upper().startswith(prefix))


def _source_variable(location: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The BRIDGE_* variable that set this key, or the table holding it, if one did."""
    variables = {name.upper(): name for name in environ}
    for end in range(len(location), 0, -1):
        wanted = "BRIDGE_" + "__".join(str(part) for part in location[:end]).upper()
        if wanted in variables:
            return variables[wanted]
    return None


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location or message.startswith(f"{location}."):  # it names its key already
        return message
    return f"{location}: {message}"
