"""One redactor for every error text the bridge stores, logs or posts: no secret gets out."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

from bridge.destinations import REGISTRY
from bridge.settings import Settings
from bridge.store.url import store_url_secrets

MASK = "***"
# A hook URL's path segment this long is taken for a token (Zapier's, n8n's uuid): shown alone
# in an upstream's message, it is masked too. Shorter ones ("hooks", "catch") are just words.
TOKEN_SEGMENT = 16


class Redactor:
    """Replaces every occurrence of any of its secrets with ***, longest first."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    @classmethod
    def for_settings(cls, settings: Settings) -> Redactor:
        return cls(secrets_of(settings))


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings, in the forms an upstream may echo it back.

    Each destination adds the forms only it knows (a Basic header, a hook URL's path).
    """
    values = [*_secret_values(settings), *store_url_secrets(settings.store.url)]
    values += [form for plugin in REGISTRY.values() for form in plugin.secrets(settings)]
    return [form for value in values for form in (value, quote(value, safe=""))]


def _secret_values(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_values(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)


def hook_url_parts(url: str | None) -> list[str]:
    """What a hook URL hides after its host: it often is the hook's only credential.

    The path goes whole, with its leading slash, as servers quote it ("POST /hooks/T0K3N");
    without the slash only when it has several segments, so that a path like "/lead" does not
    mask the word everywhere; a long segment alone, as it looks like a token.
    """
    if not url:
        return []
    parts = urlsplit(url)
    path = parts.path.strip("/")
    hidden = [url, parts.query, parts.password or "", parts.username or ""]
    if path:
        hidden += [f"/{path}", f"/{unquote(path)}"]
        hidden += [path, unquote(path)] if "/" in path or len(path) >= TOKEN_SEGMENT else []
    pieces = [*path.split("/"), *(value for _, value in parse_qsl(parts.query))]
    return hidden + [piece for piece in pieces if len(piece) >= TOKEN_SEGMENT]


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any handler formats it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # the handler reports a record whose arguments do not fit
            return True
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True
