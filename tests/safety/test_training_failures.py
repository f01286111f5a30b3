"""Training failures (an exception, out of memory, NaN losses, a checkpoint that will not load)
never touch the labels, are shown with their cause, and the next run works."""

import numpy as np
import pytest
import torch
from sqlalchemy import select

import db
from db import queries
from db import runs as run_queries
from db.models import DONE, FAILED, LabelEvent, Run, utcnow
from labeler import projects
from labeler.models import TrainingDiverged


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _label_rows(Session):
    with Session() as session:
        return [
            (e.id, e.item_id, e.class_index, e.annotator, e.undone, e.created_at)
            for e in session.scalars(select(LabelEvent).order_by(LabelEvent.id))
        ]


@pytest.fixture
def sqlite_Session(sqlite_url):
    engine = db.make_engine(sqlite_url)
    yield db.session_factory(engine)
    engine.dispose()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_failed_runs_leave_labels_alone_and_say_why(sqlite_Session, make_image_set, tmp_path, monkeypatch):
    from labeler.worker import Worker

    Session = sqlite_Session
    project = projects.create_project(Session, "fail", "test", images=make_image_set(n=60, test=10))
    with Session.begin() as session:
        pool = queries.items(session, project.id, "pool")
        events = [queries.add_label(session, item.id, item.truth, annotator="ann") for item in pool[:20]]
        queries.undo_events(session, [events[-1].id], "ann")
    before = _label_rows(Session)
    worker = Worker(Session, device="cpu", name="t")
    real_pixels = Worker._pixels_of

    def nan_pixels(self, project_id):  # corrupt input: every loss becomes NaN
        return np.full(np.shape(real_pixels(self, project_id)), np.nan, np.float32) * 255

    def oom(self, job, *args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def broken(self, project_id):
        raise OSError("pixels.npy: Input/output error")

    failures = [
        ("_pixels_of", broken, "Input/output error"),
        ("_round", oom, "memory"),
        ("_pixels_of", nan_pixels, TrainingDiverged.MESSAGE),
    ]
    for method, replacement, cause in failures:
        with monkeypatch.context() as patch:
            patch.setattr(Worker, method, replacement)
            with Session.begin() as session:
                run_id = run_queries.request_run(session, project.id, "supervised", {"budget_s": 1}).id
            assert worker.process_one()
        with Session() as session:
            run = session.get(Run, run_id)
            assert run.status == FAILED and cause in run.error, (cause, run.error)
        assert _label_rows(Session) == before, f"a failed run ({cause}) changed the labels"

    # The newest "finished" model is a crafted file: the next run refuses it, trains afresh,
    # and the payload never runs.
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "labeler-checkpoint-1", "name": "supervised", "config": _Payload(marker)}, crafted)
    with Session.begin() as session:
        session.add(
            Run(
                project_id=project.id,
                model="supervised",
                status=DONE,
                checkpoint=str(crafted),
                finished_at=utcnow(),
            )
        )
    with Session.begin() as session:
        run_id = run_queries.request_run(session, project.id, "supervised", {"budget_s": 1}).id
    assert worker.process_one()
    with Session() as session:
        run = session.get(Run, run_id)
        assert run.status == DONE, run.error
        assert not marker.exists()
        assert any("checkpoint" in note for note in run.metrics["notes"]), "the refusal must be shown"
    assert _label_rows(Session) == before
