"""SiteGPT's API settings section, `[sitegpt]`, and when replies from Slack are on."""

from __future__ import annotations

from pydantic import Field, SecretStr

from bridge.sections import Section
from bridge.settings import Settings


class SiteGPTSettings(Section):
    api_url: str = "https://sitegpt.ai/api/v0"
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(10.0, gt=0)


def sitegpt_api_key(settings: Settings, chatbot_id: str) -> SecretStr | None:
    """The chatbot's own SiteGPT API key, else the shared one."""
    chatbot = settings.chatbot(chatbot_id)
    if chatbot and chatbot.sitegpt_api_key:
        return chatbot.sitegpt_api_key
    return settings.sitegpt.api_key or None


def sitegpt_key_set(settings: Settings) -> bool:
    """Whether any chatbot has a SiteGPT API key: the shared one, or its own."""
    return bool(settings.sitegpt.api_key) or any(bot.sitegpt_api_key for bot in settings.chatbots)


def replies_enabled(settings: Settings) -> bool:
    """Answering from Slack needs Slack's signing secret, a bot token and a SiteGPT key."""
    return all(reply_needs(settings).values())


def reply_needs(settings: Settings) -> dict[str, bool]:
    """Each setting replies from Slack need, by name, and whether it is set."""
    return {"slack.signing_secret": bool(settings.slack.signing_secret),
            "slack.bot_token": bool(settings.slack.bot_token),
            "sitegpt.api_key": sitegpt_key_set(settings)}


def half_set_replies(settings: Settings, key_asks_slack: bool = True) -> list[str]:
    """A SiteGPT key asks for replies from Slack (unless another chat tool's replies use it:
    `key_asks_slack` False), which need Slack's signing secret and bot token too; a signing
    secret asks for a bot token. A signing secret and a bot token alone are whole: Claim and
    Resolve need no SiteGPT key."""
    needed = reply_needs(settings)
    missing = [name for name, value in needed.items() if not value]
    wanted = (needed["sitegpt.api_key"] and key_asks_slack) or (
        needed["slack.signing_secret"] and not needed["slack.bot_token"])
    if not wanted or not missing:
        return []
    return [f"replies from Slack: {', '.join(missing)} not set: replies stay off"]
