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
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
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
from bridge.store.url import sqlite_path, store_scheme

DEFAULT_CONFIG = Path("settings.toml")
MASK = "**********"  # as pydantic prints a SecretStr
EXAMPLE_TOKENS = frozenset({"abc-messages-xyz", "abc-escalations-xyz", "abc-leads-xyz"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_toml_data: ContextVar[dict[str, Any] | None] = ContextVar("toml_data", default=None)


def _parse_duration(value: Any) -> Any:
    """Accept "90s", "5m", "24h", "7d" or plain seconds."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
MIN_LEASE = timedelta(seconds=3)


class Section(BaseModel):
    """A settings table: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(262_144, ge=1024)
    forwarded_allow_ips: list[str] = ["127.0.0.1"]
    metrics_token: SecretStr | None = None


class StoreSettings(Section):
    url: str = "sqlite:///data/bridge.db"
    dedup_window_seconds: int = Field(600, ge=0)
    commit_timeout_seconds: float = Field(3.0, gt=0, le=4.5)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    retention_days: int = Field(30, ge=1)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str) -> str:
        try:
            store_scheme(url)
        except StoreError as exc:
            raise ValueError(str(exc)) from exc
        return url

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
                "jira: set either email + api_token (Cloud) or personal_access_token "
                "(Server/Data Center), not both"
            )
        if not cloud and not server:
            raise ValueError(
                "jira: jira.url is set but no credentials: set email + api_token (Cloud) "
                "or personal_access_token (Server/Data Center)"
            )
        if cloud and not (self.email and self.api_token):
            raise ValueError("jira: Cloud auth needs both jira.email and jira.api_token")
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
    max_age: Duration = timedelta(hours=24)
    max_attempts: int = Field(60, ge=1)
    concurrency: int = Field(16, ge=1)
    lease: Duration = timedelta(seconds=15)
    backoff_initial: Duration = timedelta(seconds=1)
    backoff_cap: Duration = timedelta(minutes=3)
    shutdown_grace: Duration = timedelta(seconds=5)
    poll_interval: Duration = timedelta(seconds=1)

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
        has_key = bool(self.sitegpt.api_key) or any(bot.sitegpt_api_key for bot in self.chatbots)
        return bool(self.slack.signing_secret and self.slack.bot_token and has_key)

    def example_tokens_in_use(self) -> list[str]:
        """Endpoints whose tokens still include a value from settings.example.toml."""
        endpoints = self.webhooks.model_dump()
        return [
            name
            for name, endpoint in endpoints.items()
            if any(token.get_secret_value() in EXAMPLE_TOKENS for token in endpoint["tokens"])
        ]


def resolve_config_path(named: str | None) -> tuple[Path, bool]:
    """The config file to read and whether someone named it (then it must exist)."""
    if named:
        return Path(named), True
    if env_path := os.environ.get("BRIDGE_CONFIG"):
        return Path(env_path), True
    return DEFAULT_CONFIG, False


def load_settings(named: str | None = None) -> Settings:
    """Read, merge and validate the settings, or raise ConfigError with one line per problem."""
    path, required = resolve_config_path(named)
    if unknown := _unknown_variables(os.environ):
        raise ConfigError("unknown BRIDGE_ environment variables", unknown)
    data = _read_toml(path, required)
    token = _toml_data.set(data)
    try:
        return Settings()
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise ConfigError(f"invalid settings in {path}", problems) from exc
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


def _read_toml(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file not found: {path}")
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message
