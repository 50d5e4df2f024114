"""`[store] url`: which backend it names and where, checked without opening anything.

A backend's own url rules live in its subpackage, imported only when a url names it; masking
is the same for every url (bridge.store.masking).
"""

from __future__ import annotations

from pathlib import Path

from bridge.errors import StoreError
from bridge.store.masking import MASK, masked_store_url, scrub, store_url_secrets

__all__ = ["MASK", "backend_named", "backup_advice", "masked_store_url", "scrub",
           "sqlite_path", "store_scheme", "store_url_secrets"]
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
        shown = f"{masked_store_url(url)!r}" if "://" in url else "(it has no scheme://)"
        raise StoreError(f"unsupported store url {shown}: {USAGE}")
    if scheme == "sqlite":
        sqlite_path(url)
    else:
        from bridge.store.postgres.url import check_postgres_url

        try:
            check_postgres_url(url)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
    return scheme


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///PATH` url names; any other url is a StoreError."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise StoreError(f"unsupported store url {masked_store_url(url)!r}: use sqlite:///PATH")
    return Path(url.removeprefix("sqlite:///"))


def backup_advice(url: str, target: Path) -> str | None:
    """What to run instead of `backup` where the bridge does not copy the store itself."""
    if backend_named(url) != "postgresql":
        return None
    from bridge.store.postgres.advice import pg_dump_advice

    return pg_dump_advice(url, target)
