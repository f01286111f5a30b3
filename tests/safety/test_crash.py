"""SIGKILL in the middle of labeling and of training: every acknowledged label survives, and a
killed run is marked interrupted at the next worker start.

The labeling process is a stand-in for the Streamlit server (tests/safety/label_worker.py): it
runs the label page's code path (claim, one committed add_label transaction, then "Saved.").
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from db import queries
from db.models import DONE, INTERRUPTED, RUNNING, LabelEvent, Run
from labeler import projects

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("label_worker.py")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def test_sigkill_while_labeling_keeps_every_acknowledged_label(db_url, Session, make_image_set):
    project = projects.create_project(Session, "crash", "test", images=make_image_set(n=400, classes=2))
    process = subprocess.Popen(
        [sys.executable, str(WORKER), db_url, str(project.id), "ann", "400"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = []
    try:
        while len(acked) < 25:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            if line.startswith("ack "):
                acked.append(int(line.split()[1]))
    finally:
        os.kill(process.pid, signal.SIGKILL)  # mid-stream: likely inside the next transaction
        process.wait(timeout=30)
    acked += [int(line.split()[1]) for line in process.stdout.read().splitlines() if line.startswith("ack ")]
    assert process.returncode == -signal.SIGKILL

    # A fresh engine, as a restarted server would open.
    import db

    engine = db.make_engine(db_url)
    try:
        with db.session_factory(engine)() as session:
            labels = queries.current_labels(session, project.id)
            assert set(acked) <= set(labels), f"lost: {sorted(set(acked) - set(labels))}"
            # At most the one in flight was committed without its acknowledgement.
            assert len(labels) - len(acked) <= 1
            assert all(labels[i] == i % 2 for i in acked)
            if db_url.startswith("sqlite"):
                assert session.connection().exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        engine.dispose()


def test_sigkill_during_training_marks_the_run_interrupted_and_the_next_run_works(
    preferred_Session, make_image_set
):
    """On PostgreSQL when a server is given (the worker on a shared database), else SQLite."""
    Session = preferred_Session
    project = projects.create_project(Session, "train-crash", "test", images=make_image_set(n=60, test=10))
    with Session.begin() as session:
        queries.add_labels(session, [i.id for i in queries.items(session, project.id, "pool")[:20]], 0)
        labels_before = queries.current_labels(session, project.id)
    from db import runs

    with Session.begin() as session:
        run_id = runs.request_run(session, project.id, "supervised", {"budget_s": 120}).id

    args = [
        sys.executable,
        "-m",
        "labeler",
        "worker",
        "--name",
        "w1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--poll-s",
        "0.2",
    ]
    worker = subprocess.Popen(
        args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with Session() as session:
                run = session.get(Run, run_id)
                if run.status == RUNNING and run.step > 0:
                    break
                assert run.status in ("queued", RUNNING), run.error
            assert worker.poll() is None, worker.stderr.read()
            assert time.monotonic() < deadline, "the worker did not start training"
            time.sleep(0.2)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    with Session() as session:
        assert session.get(Run, run_id).status == RUNNING  # nobody was left to say otherwise

    with Session.begin() as session:
        next_id = runs.request_run(session, project.id, "supervised", {"budget_s": 1}).id
    # The next start of the same worker (in this process, to spare a second torch import).
    from labeler.worker import Worker

    assert Worker(Session, device="cpu", name="w1").run_forever(until_idle=True) == 1
    with Session() as session:
        killed = session.get(Run, run_id)
        assert killed.status == INTERRUPTED and killed.error
        after = session.get(Run, next_id)
        assert after.status == DONE, after.error
        assert queries.current_labels(session, project.id) == labels_before
        assert session.scalar(select(LabelEvent.id).where(LabelEvent.undone.is_(True))) is None
