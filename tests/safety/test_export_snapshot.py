"""An export is one snapshot: labels given, undone or renamed while it runs change nothing in
it, and labels.csv, the zip and the Parquet file agree. Runs on SQLite and on PostgreSQL.

The deterministic test commits a change from another connection after every query the export
runs (an SQLAlchemy event), so each gap between two reads gets a concurrent write; the threaded
test does the same with a real second annotator."""

from __future__ import annotations

import io
import re
import threading
import zipfile

import pandas as pd
import pytest
from sqlalchemy import event, func, select

import db
from db import queries
from db.models import LabelEvent
from labeler import export, projects


def _labeled_project(Session, make_image_set, n_labeled: int = 12):
    project = projects.create_project(Session, "snap", "test", images=make_image_set(n=60, classes=3))
    with Session.begin() as session:
        for i, item in enumerate(queries.items(session, project.id, "pool")[:n_labeled]):
            queries.add_label(session, item.id, i % 3, annotator="ann")
    return project


def _current(Session, project_id) -> dict[str, str]:
    """{file key: class name} of every labeled image, read now."""
    with Session() as session:
        frame = export.labels_frame(session, project_id)
    return dict(zip(frame["file"], frame["label"]))


def _undo_newest(session, project_id: int, annotator: str) -> None:
    newest = session.scalar(
        select(func.max(LabelEvent.id)).where(
            LabelEvent.project_id == project_id,
            LabelEvent.annotator == annotator,
            LabelEvent.undone.is_(False),
        )
    )
    queries.undo_events(session, [newest], annotator)


class _WriterAfterEveryRead:
    """After each SELECT the export's engine runs, commit a new label, an undo and a rename
    from a second engine (another connection), while the export's transaction is open."""

    def __init__(self, engine, url: str, project_id: int):
        self.engine, self.project_id, self.active, self.writes = engine, project_id, False, 0
        self.writer = db.make_engine(url)
        self.Writer = db.session_factory(self.writer)
        event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, _conn, _cursor, statement, *_args):
        # "SELECT 1" is a pool's liveness ping, run before the export's transaction begins.
        if not self.active or not re.match(r"\s*SELECT\b.*\bFROM\b", statement, re.IGNORECASE | re.DOTALL):
            return
        self.writes += 1
        with self.Writer.begin() as session:
            unlabeled = [
                item
                for item in queries.items(session, self.project_id, "pool")
                if item.id not in queries.current_labels(session, self.project_id)
            ]
            queries.add_label(session, unlabeled[0].id, 2, annotator="other")
            _undo_newest(session, self.project_id, "ann")
            queries.rename_class(session, self.project_id, 0, f"renamed-{self.writes}")

    def close(self):
        event.remove(self.engine, "after_cursor_execute", self._after)
        self.writer.dispose()


@pytest.mark.parametrize("what", ["all", "labels", "dataset"])
def test_export_reads_one_snapshot_while_others_label_undo_and_rename(
    db_url, Session, tmp_path, make_image_set, what
):
    project = _labeled_project(Session, make_image_set)
    before = _current(Session, project.id)
    writer = _WriterAfterEveryRead(Session.kw["bind"], db_url, project.id)
    writer.active = True
    try:
        written = {p.name: p for p in export.export_all(Session, project.id, tmp_path / "out", what=what)}
    finally:
        writer.active = False
        writer.close()
    assert writer.writes >= 2, "the export ran fewer reads than the test needs to interleave"
    assert _current(Session, project.id) != before, "the concurrent writes must have changed the labels"

    if "labels.csv" in written:
        frame = pd.read_csv(written["labels.csv"], dtype=str, keep_default_na=False)
        assert dict(zip(frame["file"], frame["label"])) == before
    if "dataset.zip" in written:
        with zipfile.ZipFile(written["dataset.zip"]) as archive:
            meta = pd.read_csv(io.BytesIO(archive.read("metadata.csv")), dtype=str, keep_default_na=False)
            inner = pd.read_csv(io.BytesIO(archive.read("labels.csv")), dtype=str, keep_default_na=False)
            images = [n for n in archive.namelist() if "/" in n]
        assert dict(zip(inner["file"], inner["label"])) == before
        assert sorted(meta["file_name"]) == sorted(images) and len(images) == len(before)
        assert sorted(meta["label"]) == sorted(before.values())
        parquet = pd.read_parquet(written["dataset.parquet"])
        assert dict(zip(parquet["file"], parquet["label"])) == before


def test_export_while_another_annotator_labels_and_undoes(db_url, Session, tmp_path, make_image_set):
    project = _labeled_project(Session, make_image_set, n_labeled=20)
    stop = threading.Event()
    errors: list[BaseException] = []
    writer = db.make_engine(db_url)
    Writer = db.session_factory(writer)

    def annotate():
        try:
            with Writer() as session:
                pool = [item.id for item in queries.items(session, project.id, "pool")]
            i = 0
            while not stop.is_set():
                with Writer.begin() as session:
                    queries.add_label(session, pool[20 + i % (len(pool) - 20)], i % 3, annotator="ann")
                with Writer.begin() as session:
                    _undo_newest(session, project.id, "ann")
                i += 1
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    thread = threading.Thread(target=annotate)
    thread.start()
    try:
        for k in range(15):
            written = {
                p.name: p for p in export.export_all(Session, project.id, tmp_path / f"out{k}", what="all")
            }
            frame = pd.read_csv(written["labels.csv"], dtype=str, keep_default_na=False)
            with zipfile.ZipFile(written["dataset.zip"]) as archive:
                inner = pd.read_csv(io.BytesIO(archive.read("labels.csv")), dtype=str, keep_default_na=False)
            assert frame.equals(inner), "labels.csv and the zip come from different moments"
    finally:
        stop.set()
        thread.join(timeout=60)
        writer.dispose()
    assert not errors, errors
