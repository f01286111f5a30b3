"""A consistent copy of the database while the app runs (SQLite's online backup API)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .config import db_url


def backup(out: str | Path, url: str | None = None) -> Path:
    """Copy the SQLite database at `url` (default: the configured one) to `out`, page by page.

    Readers and writers may keep working meanwhile; the copy is one consistent snapshot.
    For PostgreSQL use `pg_dump` instead: this raises a ValueError saying so.
    """
    url = url or db_url()
    if not url.startswith("sqlite:///"):
        raise ValueError("Online backup is for SQLite; for PostgreSQL use pg_dump.")
    source_path = Path(url.split("///", 1)[1])
    if not source_path.exists():
        raise ValueError(f"There is no database at {source_path} to back up.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(source_path, timeout=30)
    target = sqlite3.connect(tmp)
    try:
        source.backup(target, pages=1024)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        target.close()
        source.close()
    tmp.replace(out)
    return out
