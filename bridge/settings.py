"""The Settings model: the general sections, and each registered destination's beside them."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bridge.console.settings import ConsoleSettings
from bridge.environment import BridgeEnvSource
from bridge.sections import (
    ChatbotSettings,
    DeliverySettings,
    LogSettings,
    ServerSettings,
    StoreSettings,
    TemplatesSettings,
    WebhooksSettings,
)

EXAMPLE_TOKENS = frozenset({"abc-messages-xyz", "abc-escalations-xyz", "abc-leads-xyz"})
# What the settings file holds while it is being validated (see bridge.config.load_settings).
toml_data: ContextVar[dict[str, Any] | None] = ContextVar("toml_data", default=None)


class Settings(BaseSettings):
    """Everything the bridge reads at start-up: the general sections here, and one section per
    registered destination, added by `bridge.destinations.settings_model()`.
    """

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    chatbots: list[ChatbotSettings] = []
    delivery: DeliverySettings = DeliverySettings()
    templates: TemplatesSettings = TemplatesSettings()
    log: LogSettings = LogSettings()
    console: ConsoleSettings = ConsoleSettings()

    if TYPE_CHECKING:  # a destination's section, e.g. settings.slack, is its plugin's model
        def __getattr__(self, section: str) -> Any: ...

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = InitSettingsSource(settings_cls, init_kwargs=toml_data.get() or {})
        # Lists in variables may also be written t1,t2 or keep podman's quotes (environment.py).
        return init_settings, BridgeEnvSource(settings_cls), toml

    def chatbot(self, chatbot_id: str) -> ChatbotSettings | None:
        return next((bot for bot in self.chatbots if bot.id == chatbot_id), None)

    def unconfigured_endpoints(self) -> list[str]:
        """Webhooks without a token: each answers 503 until one is set."""
        return [name for name in WebhooksSettings.model_fields
                if not getattr(self.webhooks, name).tokens]

    def example_tokens_in_use(self) -> list[str]:
        """Endpoints whose tokens still include a value from settings.example.toml."""
        endpoints = self.webhooks.model_dump()
        return [
            name
            for name, endpoint in endpoints.items()
            if any(token.get_secret_value() in EXAMPLE_TOKENS for token in endpoint["tokens"])
        ]
