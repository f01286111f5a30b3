"""Engine setup: SQLite durability pragmas, foreign keys, lock retries, and the column types and
orderings that differ between SQLite and PostgreSQL."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import delete, inspect, select, text
from sqlalchemy.exc import OperationalError

import db
from db import queries
from db.models import DONE, AppliedAnswer, LabelEvent, Prediction, Project, Run
from labeler import queue

ROOT = Path(__file__).resolve().parents[2]


def test_sqlite_connections_are_durable_and_checked(sqlite_url):
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            assert pragma("journal_mode") == "wal"  # readers never block the writer
            assert pragma("foreign_keys") == 1
            assert pragma("synchronous") == 2  # FULL: a commit is on disk before it returns
            assert pragma("busy_timeout") >= 5000
    finally:
        engine.dispose()


def test_foreign_keys_cascade(Session, tiny_project):
    with Session.begin() as session:
        item = queries.items(session, tiny_project.id)[0]
        queries.record_applied(session, queries.add_label(session, item.id, 0), "tab-1")
    with Session.begin() as session:
        session.execute(delete(Project).where(Project.id == tiny_project.id))
    with Session() as session:
        assert session.scalar(select(LabelEvent.id)) is None
        assert session.scalar(select(AppliedAnswer.id)) is None


def _started_again_after(url: str, statement: str):
    """An engine on `url` made anew after `statement` ran there: a database from before a table
    or an index existed, as the next start finds it."""
    engine = db.make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(statement)
    engine.dispose()
    return db.make_engine(url)


def test_a_database_made_before_a_table_existed_gets_it(sqlite_url):
    """Tables added since (applied_answers) are created in an existing database on start."""
    engine = _started_again_after(sqlite_url, "DROP TABLE applied_answers")
    try:
        assert "applied_answers" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_database_made_before_an_index_existed_gets_it(db_url):
    """create_all makes new tables only: an index added to an existing table (the annotator's,
    for a person's newest answer) was never made in a database from before it (review)."""
    engine = _started_again_after(db_url, "DROP INDEX ix_label_events_annotator")
    try:
        names = {index["name"] for index in inspect(engine).get_indexes("label_events")}
        assert "ix_label_events_annotator" in names
    finally:
        engine.dispose()


def test_json_and_boolean_columns_round_trip(Session, tiny_project):
    settings = {"budget_s": 12.5, "config": {"hidden": [64, 32], "name": "ü'\""}, "flag": True}
    with Session.begin() as session:
        session.add(Run(project_id=tiny_project.id, model="m2", settings=settings, cancel_requested=True))
    with Session() as session:
        run = session.scalars(select(Run)).one()
        assert run.settings == settings and run.cancel_requested is True


def test_queue_puts_items_without_a_prediction_last(Session, tiny_project):
    """`nulls_last` matters on PostgreSQL, where NULL sorts first in a descending order."""
    with Session.begin() as session:
        pool = queries.items(session, tiny_project.id, "pool")
        run = Run(project_id=tiny_project.id, model="m2", status=DONE)
        session.add(run)
        session.flush()
        for score, item in zip([0.1, 0.9, 0.5], pool[:3]):
            session.add(
                Prediction(
                    run_id=run.id,
                    item_id=item.id,
                    predicted=0,
                    confidence=0.5,
                    entropy=0.1,
                    margin=0.1,
                    score=score,
                )
            )
    with Session() as session:
        order = [item.id for item, _ in queue.next_items(session, tiny_project.id, k=5)]
    assert order[:3] == [pool[1].id, pool[2].id, pool[0].id]
    assert order[3:] == [pool[3].id, pool[4].id]  # then by row


def test_retrying_waits_out_locks_and_reports_other_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return "saved"

    assert db.retrying(flaky, base_delay=0.001) == "saved" and len(calls) == 3

    def broken():
        raise OperationalError("INSERT", {}, Exception("no such table: items"))

    with pytest.raises(OperationalError, match="no such table"):
        db.retrying(broken, base_delay=0.001)

    def always_locked():
        raise OperationalError("INSERT", {}, Exception("could not serialize access"))

    with pytest.raises(OperationalError):
        db.retrying(always_locked, attempts=3, base_delay=0.001)


def test_a_writer_waits_for_a_held_lock(sqlite_url, make_image_set):
    from labeler import projects

    engine = db.make_engine(sqlite_url)
    Session = db.session_factory(engine)
    project = projects.create_project(Session, "lock", "test", images=make_image_set())
    with Session() as session:
        item_id = queries.items(session, project.id)[0].id
    held = threading.Event()

    def hold_lock():
        with engine.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            held.set()
            time.sleep(0.5)
            connection.exec_driver_sql("COMMIT")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    held.wait()

    def commit():
        with Session.begin() as session:
            queries.add_label(session, item_id, 1)

    db.retrying(commit)
    holder.join()
    with Session() as session:
        assert queries.current_labels(session, project.id) == {item_id: 1}
    engine.dispose()


def test_processes_starting_together_create_the_schema_once(db_url):
    code = "import sys, db; db.make_engine(sys.argv[1]).dispose()"
    starters = [
        subprocess.Popen([sys.executable, "-c", code, db_url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for starter in starters:
        _, err = starter.communicate(timeout=60)
        assert starter.returncode == 0, err
    engine = db.make_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM claims")).scalar() == 0
    engine.dispose()
