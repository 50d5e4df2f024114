"""`[store] url`: which backend it names and where, checked without opening anything."""

from __future__ import annotations

from pathlib import Path

from bridge.errors import StoreError

SCHEMES = ("sqlite",)  # a backend adds its scheme here and its opener in bridge.store


def store_scheme(url: str) -> str:
    """The backend a store url names: the part before "://", if it is one the bridge has."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        raise StoreError(f"unsupported store url {url!r}: use sqlite:///PATH")
    if scheme == "sqlite":
        sqlite_path(url)
    return scheme


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///PATH` url names; any other url is a StoreError."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise StoreError(f"unsupported store url {url!r}: use sqlite:///PATH")
    return Path(url.removeprefix("sqlite:///"))
