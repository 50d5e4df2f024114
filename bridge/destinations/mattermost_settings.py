"""Mattermost's settings section, `[mattermost]`: the server, the bot, its channels and pace."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from bridge.destinations.sitegpt_settings import sitegpt_key_set
from bridge.sections import Section
from bridge.settings import Settings


class MattermostSettings(Section):
    """Off unless both `url` and `bot_token` are set; then `channel` is required."""

    url: str | None = None
    bot_token: SecretStr | None = None
    channel: str | None = None
    leads_channel: str | None = None
    escalation_mention: str = ""
    # Replies from the thread reach the visitor (with a SiteGPT API key); a reply starting
    # with the prefix is a note for the team and stays in Mattermost.
    replies: bool = True
    private_note_prefix: str = "//"
    # The bridge's address as Mattermost reaches it (https://bridge.example.com): the root
    # post's buttons (Take over, Hand back, Claim, Resolve) call {actions_url}/mattermost/actions.
    # No buttons without it.
    actions_url: str | None = None
    burst: int = Field(3, ge=1)
    per_second: float = Field(1.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)

    @property
    def on(self) -> bool:
        return bool(self.url and self.bot_token)

    @model_validator(mode="after")
    def _channel_when_on(self) -> MattermostSettings:
        if self.on and not self.channel:
            raise ValueError("mattermost.channel is required when mattermost.url and "
                             "mattermost.bot_token are set")
        return self


def mattermost_replies_on(settings: Settings) -> bool:
    """Replies from Mattermost reach the visitor: Mattermost on, `replies`, a SiteGPT API key."""
    mattermost: MattermostSettings = settings.mattermost
    return mattermost.on and mattermost.replies and sitegpt_key_set(settings)
