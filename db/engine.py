"""Engine and session setup: SQLite (WAL, foreign keys, busy timeout) or any SQLAlchemy URL."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from .models import Base

BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Durable on commit: an acknowledged label survives a killed server.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine and the tables. For SQLite, create the file's folder first."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _refuse_an_emptied_database(Path(path))
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _create_tables(engine)
    return engine


def _refuse_an_emptied_database(path: Path) -> None:
    """A SQLite database without tables beside a `projects` folder with files in it was emptied
    or replaced (a 0-byte file after a crash or a bad copy): made afresh, it started a new
    project 1 and wrote its images over the old project's files (an exploratory session).
    Refused, with nothing changed."""
    from labeler.config import SettingError, data_dir

    try:
        if path.resolve().parent != data_dir().resolve():  # not the data folder's own database
            return
    except SettingError:
        return
    folder = path.parent / "projects"
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if _has_tables(path):
        return
    raise ValueError(
        f"The database {path} is empty, but {folder} holds project files, so it was emptied or "
        "replaced; restore it from a backup (python -m labeler backup makes them), or move that "
        "folder away to start afresh (nothing was changed)."
    )


def _create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create missing tables and indexes. Two processes starting at once against one PostgreSQL database
    can both decide a table is missing; the loser's CREATE fails, and a second look finds it."""
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            # Indexes added to a table that existed before them (create_all makes new tables only).
            for table in Base.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(engine, checkfirst=True)
            return
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def _has_tables(path: Path) -> bool:
    """Whether the SQLite file holds any table, read without writing to it (the engine's first
    connection sets WAL mode, which writes a header even to an empty file)."""
    if not path.exists():
        return False
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return (
                connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                > 0
            )
        finally:
            connection.close()
    except sqlite3.DatabaseError:  # damaged, locked or unreadable: the engine reports it as before
        return True


@functools.lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the configured one)."""
    if url is None:
        from labeler.config import db_url

        url = db_url()
    return _cached_engine(url)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(engine or get_engine(), expire_on_commit=False)


def _is_locked(error: OperationalError) -> bool:
    text = str(error.orig).lower()
    return "locked" in text or "busy" in text or "could not serialize" in text or "deadlock" in text


def retrying(fn, *, attempts: int = 8, base_delay: float = 0.05):
    """Run `fn()`; when the database is momentarily locked, wait and try again.

    `fn` must open and commit its own transaction so a retry repeats all of it.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as error:
            if not _is_locked(error) or attempt == attempts - 1:
                raise
            time.sleep(base_delay * 2**attempt)


@contextlib.contextmanager
def consistent_read(Session: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose reads all see one snapshot of the database, whatever commits meanwhile."""
    with Session() as session:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        elif dialect == "sqlite":
            connection = session.connection()
            # pysqlite opens no transaction for a SELECT, so each statement would read its own
            # snapshot; in WAL mode a read transaction keeps the first one until it ends.
            if not connection.connection.driver_connection.in_transaction:
                connection.exec_driver_sql("BEGIN")
        yield session
