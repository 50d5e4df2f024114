"""The CRM's settings section, `[crm]`: which kind, and HubSpot's or the webhook's own table."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator

from bridge.sections import Section
from bridge.store.url import MASK

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[ -~]*")


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
