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
    RouteSettings,
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
    routes: list[RouteSettings] = []
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

    def route(self, chatbot_id: str) -> RouteSettings | None:
        """The first `[[routes]]` table naming the chatbot, if any."""
        return next((route for route in self.routes if chatbot_id in route.chatbots), None)

    def routed(self, chatbot_id: str, key: str) -> Any:
        """A destination's `key` for the chatbot: its `[[chatbots]]` table's, else its route's.

        None when neither sets it: the destination's own section decides then. A route may set
        a key to an empty value on purpose (no mention); a chatbot's empty key counts as unset.
        """
        chatbot = self.chatbot(chatbot_id)
        if chatbot is not None and getattr(chatbot, key, None):
            return getattr(chatbot, key)
        route = self.route(chatbot_id)
        return getattr(route, key, None) if route is not None else None

    def routed_values(self, key: str) -> list[Any]:
        """Every value of `key` set in a `[[chatbots]]` or `[[routes]]` table, each once."""
        tables = [*self.chatbots, *self.routes]
        named = [getattr(table, key, None) for table in tables]
        return list(dict.fromkeys(value for value in named if value))

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
