"""Mattermost's settings section, `[mattermost]`: the server, the bot, its channels and pace."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from bridge.destinations.sitegpt_settings import sitegpt_key_set
from bridge.sections import Section
from bridge.settings import Settings

ACTIONS_PATH = "/mattermost/actions"  # the route the root post's buttons call, on actions_url


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

    @property
    def actions_endpoint(self) -> str | None:
        """Where the root post's buttons call, or None: no buttons."""
        if not self.on or not self.actions_url:
            return None
        return f"{self.actions_url.rstrip('/')}{ACTIONS_PATH}"

    @field_validator("actions_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        # Mattermost calls only http(s) integrations: anything else would make buttons that
        # fail on every press.
        parts = urlsplit(url) if url is not None else None
        if parts is not None and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError("must be the bridge's http:// or https:// address as Mattermost "
                             "reaches it, e.g. https://bridge.example.com")
        return url

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
