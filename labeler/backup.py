"""A consistent copy of the database while the app runs (SQLite's online backup API).

Restore: stop the app and the worker, copy the backup over the database file
(`LABELER_DATA_DIR/labeler.db` by default), delete `labeler.db-wal` and `labeler.db-shm` beside
it if present, and start again. Checkpoints and pixels live in the data folder, not the database.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from db.models import INTERRUPTED, RUNNING, utcnow

from .config import database_trouble, db_url, sqlite_file

INTERRUPTED_BY_BACKUP = "The backup was taken while this run trained; start training again."


def _interrupt_running(copy: sqlite3.Connection) -> None:
    """A run training when the copy was taken can never finish in it: restored, it read
    "running" (a Cancel button that did nothing) until a worker noticed. Marked interrupted in
    the copy, as a worker marks a run whose process died; the database itself is untouched."""
    if copy.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone():
        copy.execute(
            "UPDATE runs SET status = ?, finished_at = ?, error = COALESCE(error, ?) WHERE status = ?",
            (INTERRUPTED, utcnow().isoformat(sep=" "), INTERRUPTED_BY_BACKUP, RUNNING),
        )
        copy.commit()


def backup(out: str | Path, url: str | None = None) -> Path:
    """Copy the SQLite database at `url` (default: the configured one) to `out`.

    Readers and writers may keep working meanwhile; the copy is one consistent snapshot,
    checked with `PRAGMA integrity_check` before it replaces `out`; a run training then is marked
    interrupted in the copy. For PostgreSQL use
    `pg_dump` instead: this raises a ValueError saying so.
    """
    source_path = sqlite_file(url or db_url())
    if source_path is None:
        raise ValueError("Online backup is for SQLite; for PostgreSQL use pg_dump.")
    if not source_path.exists():
        raise ValueError(f"There is no database at {source_path} to back up; check LABELER_DATA_DIR.")
    out = Path(out)
    own = source_path.resolve()
    if out.resolve() == own:
        raise ValueError("The backup file must not be the database itself; choose another --out.")
    # SQLite's own files beside it: a copy there "succeeded" and was gone when the source closed.
    if out.resolve() in {own.with_name(own.name + end) for end in ("-wal", "-shm", "-journal")}:
        raise ValueError(f"{out.name} is one of the database's own files; choose another --out.")
    if out.is_dir():  # it left a copy beside the folder, and blamed that copy's name
        raise ValueError(f"{out} is a folder; give --out a file name, such as {out / 'labeler-backup.db'}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own beside the target (the same file system, so the rename is atomic): a fixed
    # OUT.tmp was deleted first, whoever's file it was.
    try:
        handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as error:  # --out is named: the message named the copy's hidden temporary name
        raise OSError(error.errno, error.strerror, str(out)) from None
    os.close(handle)
    tmp = Path(name)
    source = sqlite3.connect(source_path, timeout=30)
    target = sqlite3.connect(tmp)
    done = False
    try:
        # All pages in one step: under WAL this reads one snapshot while writers carry on. A
        # step-wise copy restarts whenever another connection writes, and might never finish.
        source.backup(target, pages=-1)
        _interrupt_running(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        check = target.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise ValueError(f"The backup copy failed its integrity check ({check}); try again.")
        target.close()
        tmp.replace(out)
        done = True
    except sqlite3.DatabaseError as error:  # they ended in a traceback (exploratory session)
        trouble = database_trouble(error)
        if trouble == "full":  # the copy's disk
            raise ValueError(
                f"The disk is full: {out} could not be written; free some space, then back up again."
            ) from None
        if trouble == "busy":
            raise ValueError(
                "The database stayed busy for 30 s, so no backup was written; try again."
            ) from None
        if trouble == "damaged":
            raise ValueError(
                f"The database {source_path} is damaged ({error}), so no backup was written; restore "
                "your last good backup, or recover what is left with sqlite3's .recover."
            ) from None
        # Anything else (a disk error under the copy) says nothing of the database's health.
        raise ValueError(f"The backup to {out} failed ({error}); nothing was written.") from None
    finally:
        target.close()
        source.close()
        if not done:  # no half copy left beside the target
            tmp.unlink(missing_ok=True)
    return out
