"""What to do instead of `backup` when the store is PostgreSQL: its own tools, exactly."""

from __future__ import annotations

from pathlib import Path

from bridge.store.postgres.url import without_password


def pg_dump_advice(url: str, target: Path) -> str:
    """What to run instead of `backup`: pg_dump, with the password left to PGPASSWORD."""
    return (f"the store is PostgreSQL: back it up with pg_dump, e.g.\n"
            f"  PGPASSWORD=... pg_dump --format=custom --file={target} "
            f"'{without_password(url)}'\n"
            "and restore with pg_restore --clean --dbname=URL; the bridge need not stop")
