"""The SQLite backend: one file, WAL mode, group commit on one writer thread."""

from __future__ import annotations

from bridge.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
