"""`python -m labeler backup` while another thread keeps labeling: a sound, consistent copy."""

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import db
from db import queries
from labeler import backup as backup_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_Session(sqlite_url):
    engine = db.make_engine(sqlite_url)
    yield db.session_factory(engine)
    engine.dispose()


def test_backup_while_labeling_is_consistent_and_complete(sqlite_Session, make_image_set, tmp_path):
    from labeler import projects

    Session = sqlite_Session
    project = projects.create_project(Session, "b", "test", images=make_image_set(n=2000))
    with Session() as session:
        ids = [item.id for item in queries.items(session, project.id)]
    committed: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        for item_id in ids:
            if stop.is_set():
                return

            def commit(item_id: int = item_id) -> None:
                with Session.begin() as session:
                    queries.add_label(session, item_id, item_id % 2, annotator="writer")

            db.retrying(commit)
            committed.append(item_id)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(committed) < 30:
            assert thread.is_alive(), "the writer stopped early"
            thread.join(0.01)
        before = list(committed)
        out = tmp_path / "copy" / "backup.db"
        result = subprocess.run(
            [sys.executable, "-m", "labeler", "backup", "--out", str(out)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        during = len(committed)
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stderr
    assert during > len(before), "the writer should have kept going during the backup"

    copy = sqlite3.connect(out)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(copy.execute("SELECT item_id, class_index FROM label_events"))
        assert set(before) <= set(rows), "a label committed before the backup started is missing"
        assert all(rows[i] == i % 2 for i in rows)
        assert len(rows) <= len(committed)
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        copy.close()
    # The copy opens as a labeler database (the restore path in the README).
    engine = db.make_engine(f"sqlite:///{out}")
    with db.session_factory(engine)() as session:
        assert queries.label_count(session, project.id) == len(rows)
    engine.dispose()


def test_a_run_training_at_backup_time_is_interrupted_in_the_copy_only(
    sqlite_Session, make_image_set, tmp_path
):
    """Restored, it read "running" (a Cancel button that did nothing) until a worker noticed."""
    from db import runs as run_queries
    from db.models import INTERRUPTED, QUEUED, RUNNING, Run
    from labeler import projects

    Session = sqlite_Session
    project = projects.create_project(Session, "b", "test", images=make_image_set(n=20))
    with Session.begin() as session:
        training = run_queries.request_run(session, project.id, "m2", {}).id
        run_queries.claim_next_run(session, "w")
        queued = run_queries.request_run(session, project.id, "m2", {}).id
    out = backup_module.backup(tmp_path / "backup.db", url=str(Session.kw["bind"].url))
    engine = db.make_engine(f"sqlite:///{out}")
    with db.session_factory(engine)() as session:
        copied = session.get(Run, training)
        assert copied.status == INTERRUPTED and copied.finished_at is not None
        assert copied.error == backup_module.INTERRUPTED_BY_BACKUP
        assert session.get(Run, queued).status == QUEUED  # it trains once restored
    engine.dispose()
    with Session() as session:
        assert session.get(Run, training).status == RUNNING  # the database itself is untouched


def test_backup_refuses_postgres_and_missing_databases(tmp_path):
    with pytest.raises(ValueError, match="pg_dump"):
        backup_module.backup(tmp_path / "x.db", url="postgresql+psycopg://u@h/db")
    with pytest.raises(ValueError, match="no database"):
        backup_module.backup(tmp_path / "x.db", url=f"sqlite:///{tmp_path / 'missing.db'}")


def test_backup_to_a_folder_says_so_and_leaves_nothing(tmp_path):
    """`backup --out FOLDER` left a copy named FOLDER.tmp beside the folder and said it could not
    write that file (an exploratory session)."""
    import sqlite3

    path = tmp_path / "live.db"
    sqlite3.connect(path).execute("create table t (x)").connection.commit()
    folder = tmp_path / "backups"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"backups is a folder; give --out a file name"):
        backup_module.backup(folder, url=f"sqlite:///{path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "live.db"]


def test_backup_leaves_a_file_named_like_its_copy_alone(tmp_path):
    """The copy was written to OUT.tmp, deleted first whoever's file it was (review)."""
    import sqlite3

    path = tmp_path / "live.db"
    sqlite3.connect(path).execute("create table t (x)").connection.commit()
    (tmp_path / "b.db.tmp").write_text("a file of the user's")
    backup_module.backup(tmp_path / "b.db", url=f"sqlite:///{path}")
    assert (tmp_path / "b.db.tmp").read_text() == "a file of the user's"
    assert sqlite3.connect(tmp_path / "b.db").execute("select count(*) from t").fetchone() == (0,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db", "b.db.tmp", "live.db"]


def test_backup_refuses_the_databases_own_files_as_its_copy(tmp_path):
    """A copy written over labeler.db-wal "succeeded" (exit 0) and was gone when the source
    connection closed; with the app running it replaced the live WAL (exploratory session)."""
    import sqlite3

    path = tmp_path / "live.db"
    sqlite3.connect(path).execute("create table t (x)").connection.commit()
    for end in ("-wal", "-shm", "-journal"):
        with pytest.raises(ValueError, match=rf"live.db{end} is one of the database's own files"):
            backup_module.backup(tmp_path / f"live.db{end}", url=f"sqlite:///{path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.db"]


def test_backup_of_a_damaged_database_or_onto_a_full_disk_says_so_in_a_sentence(tmp_path, monkeypatch):
    """Both ended in an sqlite3 traceback (exploratory session)."""
    import sqlite3

    path = tmp_path / "live.db"
    db = sqlite3.connect(path)
    db.execute("create table t (x)")
    db.executemany("insert into t values (?)", [("x" * 500,)] * 200)
    db.commit()
    db.close()
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[4096:8192] = bytes(range(256)) * 16  # a page of the table overwritten
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"live.db is damaged \(.+\), so no backup was written; restore"):
        backup_module.backup(tmp_path / "b.db", url=f"sqlite:///{path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.db"]
    path.write_bytes(good)
    connect = sqlite3.connect

    def failing(message: str, code: str):
        class Failing:  # the copy's disk fails, as SQLite reports it
            def __init__(self, *args, **kwargs):
                self.db = connect(*args, **kwargs)

            def backup(self, *args, **kwargs):
                error = sqlite3.OperationalError(message)
                error.sqlite_errorname = code
                raise error

            def __getattr__(self, name):
                return getattr(self.db, name)

        return Failing

    monkeypatch.setattr(sqlite3, "connect", failing("database or disk is full", "SQLITE_FULL"))
    with pytest.raises(ValueError, match=r"^The disk is full: .*b.db could not be written; free some space"):
        backup_module.backup(tmp_path / "b.db", url=f"sqlite:///{path}")
    # A disk error under the copy says nothing of the database's health (review: it said to
    # restore a backup over a healthy database).
    monkeypatch.setattr(sqlite3, "connect", failing("disk I/O error", "SQLITE_IOERR_WRITE"))
    with pytest.raises(
        ValueError, match=r"^The backup to .*b.db failed \(disk I/O error\); nothing was written\.$"
    ):
        backup_module.backup(tmp_path / "b.db", url=f"sqlite:///{path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.db"]
