"""What to do instead of `backup` when the store is PostgreSQL: its own tools, exactly."""

from __future__ import annotations

import shlex
from pathlib import Path

from bridge.store.postgres.url import without_password


def pg_dump_advice(url: str, target: Path) -> str:
    """What to run instead of `backup`: pg_dump and pg_restore, the password left to PGPASSWORD."""
    database = f"'{without_password(url)}'"
    dump = shlex.quote(str(target))
    # --if-exists: without it --clean fails on every object a new, empty database lacks.
    return (f"the store is PostgreSQL: back it up with pg_dump, e.g.\n"
            f"  PGPASSWORD=... pg_dump --format=custom --file={dump} {database}\n"
            "and restore it (into that database, or a new empty one) with\n"
            f"  PGPASSWORD=... pg_restore --clean --if-exists --dbname={database} {dump}\n"
            "The bridge need not stop while pg_dump runs.")
