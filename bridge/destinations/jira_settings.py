"""Jira's settings section, `[jira]`: where tickets go, how to sign in, the back-channel."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from bridge.sections import Section


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
    # Resolve in Slack moves the conversation's ticket through this transition (its name, or
    # the name of the status it leads to); unset, Resolve leaves the ticket alone.
    resolve_transition: str | None = None
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

    def browse_url(self, key: str) -> str | None:
        """Where a person opens the ticket `key`, or None without tickets."""
        return f"{self.url.rstrip('/')}/browse/{key}" if self.url else None

    @property
    def auth_kind(self) -> str:
        return "personal access token" if self.personal_access_token else "email + API token"
