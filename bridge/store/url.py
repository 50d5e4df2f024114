"""`[store] url`: which backend it names and where, checked without opening anything."""

from __future__ import annotations

from pathlib import Path

from bridge.errors import StoreError
from bridge.store.postgres.url import check_postgres_url

# A backend adds its scheme here and its opener in bridge.store; libpq takes both spellings.
SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
SETTING = "[store] url (or BRIDGE_STORE__URL)"  # where a store that cannot open is set
USAGE = "use sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DB"


def backend_named(url: str) -> str | None:
    """The backend a store url's scheme names ("sqlite", "postgresql"), unchecked; or None."""
    return SCHEMES.get(url.split("://", 1)[0] if "://" in url else "")


def store_scheme(url: str) -> str:
    """The backend a store url names ("sqlite", "postgresql"), checked without connecting."""
    scheme = backend_named(url)
    if scheme is None:
        raise StoreError(f"unsupported store url {url!r}: {USAGE}")
    if scheme == "sqlite":
        sqlite_path(url)
    else:
        try:
            check_postgres_url(url)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
    return scheme


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///PATH` url names; any other url is a StoreError."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise StoreError(f"unsupported store url {url!r}: use sqlite:///PATH")
    return Path(url.removeprefix("sqlite:///"))
