"""Slack's settings section, `[slack]`: the bot, its channels and its pace."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from bridge.sections import Section


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
