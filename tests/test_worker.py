"""The background worker against a temporary SQLite database, with a tiny fake model."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from sqlalchemy import and_, func, select, update

import labeler.models as models_pkg
from db import queries
from db import runs as run_queries
from db.models import (
    AUDIT,
    CANCELLED,
    DONE,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    LabelEvent,
    Prediction,
    QueuePosition,
    Run,
)
from labeler import projects
from labeler import queue as label_queue
from labeler.config import Terminated
from labeler.models import Progress, SSLModel, TrainingCancelled, TrainingDiverged
from labeler.runspec import RunSpec
from labeler.train import train_model
from labeler.worker import Worker, stopped_by_sigterm
from tests.conftest import tiny_image_set


@dataclass
class FakeConfig:
    lr: float = 0.5
    explode: bool = False  # raise in fit: a model that fails
    sleep_s: float = 0.0  # per step, to make runs slow enough to cancel
    oom: bool = False  # raise the GPU's out-of-memory error
    nan: bool = False  # report a NaN loss
    silent_s: float = 0.0  # compute this long without calling progress


class FakeModel(SSLModel):
    """Softmax regression on the pixels; records concurrency to prove one run at a time."""

    name = "fake"
    Config = FakeConfig
    active = 0
    max_active = 0
    fits = 0

    def build(self):
        d = int(np.prod(self.input_shape))
        self.modules = {"linear": torch.nn.Linear(d, self.num_classes).to(self.device)}

    def fit(self, x, labeled_idx, labels, budget, progress=None):
        cls = type(self)
        cls.active += 1
        cls.max_active = max(cls.max_active, cls.active)
        cls.fits += 1
        try:
            if self.config.explode:
                raise RuntimeError("boom")
            if self.config.oom:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            time.sleep(self.config.silent_s)
            lin = self.modules["linear"]
            opt = torch.optim.SGD(lin.parameters(), lr=self.config.lr)
            xl = torch.as_tensor(x[labeled_idx].reshape(len(labeled_idx), -1))
            yl = torch.as_tensor(labels)
            step, loss = 0, torch.tensor(0.0)
            while not budget.done(step):
                loss = torch.nn.functional.cross_entropy(lin(xl), yl)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                time.sleep(self.config.sleep_s)
                value = float("nan") if self.config.nan else float(loss.detach())
                if progress and progress(
                    Progress(step, budget.elapsed(), budget.fraction(step), {"loss": value})
                ):
                    raise TrainingCancelled()
            return {"loss": float(loss.detach())}
        finally:
            cls.active -= 1

    @torch.no_grad()
    def predict_proba(self, x):
        logits = self.modules["linear"](torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32))
        return torch.softmax(logits, 1).numpy()

    @torch.no_grad()
    def embed(self, x):
        return self.modules["linear"](torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32)).numpy()


@pytest.fixture(autouse=True)
def fake_registered(monkeypatch):
    monkeypatch.setitem(models_pkg._ENTRIES, "fake", (FakeModel.__module__, "FakeModel", "fake"))
    FakeModel.active = FakeModel.max_active = FakeModel.fits = 0


@pytest.fixture
def project(Session):
    images = tiny_image_set(n=48, test=8)
    project = projects.create_project(Session, "tiny", "test", images=images, audit_size=0)
    with Session.begin() as session:
        pool = queries.items(session, project.id, split="pool")
        # Make 4 pool items audit items, label 2 of them, and label 10 pool items.
        for item in pool[-4:]:
            item.split = AUDIT
        session.flush()
        for item in pool[:10] + pool[-4:-2]:
            queries.add_label(session, item, item.truth)
    return project


def queue(Session, project_id, **settings):
    with Session.begin() as session:
        return run_queries.request_run(session, project_id, "fake", {"steps": 20, **settings}).id


def get_run(Session, run_id) -> Run:
    with Session() as session:
        return session.get(Run, run_id)


def test_worker_runs_a_queued_run_to_done_with_predictions(Session, project):
    run_id = queue(Session, project.id)
    worker = Worker(Session, device="cpu", name="t", write_every_s=0.0)
    assert worker.process_one() is True
    run = get_run(Session, run_id)
    assert run.status == DONE, run.error
    assert run.labels_used == 10  # pool labels only: audit labels are not trained on
    assert run.step == 20 and run.progress == 1.0
    assert run.test_accuracy is not None and 0.0 <= run.test_accuracy <= 1.0
    assert run.audit_n == 2 and run.audit_low <= run.audit_accuracy <= run.audit_high
    assert run.metrics["classes"] == 2  # the classes it knows (History leaves out later ones)
    with Session() as session:  # the newest answer it read (an undo names the runs that read it)
        assert run.metrics["labels_upto"] == session.scalar(select(func.max(LabelEvent.id))) > 0
    assert projects.checkpoint_path(project.id, run_id).exists()
    with Session() as session:
        preds = run_queries.predictions(session, run_id)
        assert len(preds) == queries.count_items(session, project.id)  # every split
        assert len(run_queries.run_metrics(session, run_id)) >= 1
        labeled = set(queries.current_labels(session, project.id))
        splits = {i.id: i.split for i in queries.items(session, project.id)}
        for p in preds:
            assert 0.0 <= p.confidence <= 1.0 and np.isfinite([p.x, p.y, p.entropy]).all()
            if p.item_id in labeled or splits[p.item_id] != "pool":
                assert p.score < 0  # never offered first
        # The queue offers unlabeled pool/audit items only, highest score first, never test.
        offered = label_queue.next_items(session, project.id, k=100)
        assert offered and all(i.id not in labeled and i.split != "test" for i, _ in offered)
        scores = [p.score for _, p in offered]
        assert scores == sorted(scores, reverse=True)
    assert worker.process_one() is False  # queue empty


def test_a_runs_audit_accuracy_counts_the_audit_answers_given_while_it_trained(Session, project, monkeypatch):
    """A run's audit point is measured on the audit answers standing when it is stored (README:
    "labeled when it finished"): it used those of its start, so audit images labeled during a
    run were left out and a corrected one counted with its old answer (exploratory session)."""
    original = Worker._round

    def round_then_answer(self, inputs, spec, start, notes):
        result = original(self, inputs, spec, start, notes)
        with Session.begin() as session:  # while the run "trained": two new answers, one corrected
            guesses = dict(zip(inputs.item_ids, result.prediction_columns()["predicted"].tolist()))
            answered = queries.current_labels(session, project.id)
            audit = queries.items(session, project.id, split=AUDIT)
            for item in [i for i in audit if i.id not in answered]:
                queries.add_label(session, item, item.truth)
            corrected = next(i for i in audit if i.id in answered)
            queries.add_label(session, corrected, 1 - guesses[corrected.id])  # a class not guessed
        return result

    monkeypatch.setattr(Worker, "_round", round_then_answer)
    run_id = queue(Session, project.id)
    assert Worker(Session, device="cpu", name="t", write_every_s=0.0).process_one() is True
    run = get_run(Session, run_id)
    assert run.status == DONE, run.error
    with Session() as session:
        guesses = {p.item_id: p.predicted for p in run_queries.predictions(session, run_id)}
        answers = queries.current_labels(session, project.id)
        audit = [item.id for item in queries.items(session, project.id, split=AUDIT)]
    assert run.audit_n == 4 == len(audit)  # the two answered at the start, and two more
    right = sum(guesses[i] == answers[i] for i in audit)
    assert right < 4 and run.audit_accuracy == pytest.approx(right / 4)
    assert run.audit_low <= run.audit_accuracy <= run.audit_high


def test_a_short_database_outage_does_not_fail_the_run(Session, project, monkeypatch):
    """The first missed progress write failed the run (its minutes lost), and the end could not
    be written either, so later it read "the worker stopped" (found by an exploratory session)."""
    from sqlalchemy.exc import OperationalError

    down = OperationalError("UPDATE runs", {}, ConnectionRefusedError("connection refused"))
    failures = {"record_progress": 3, "store_round": 2}

    def flaky(name):
        real = getattr(run_queries, name)

        def call(*args, **kwargs):
            if failures[name]:
                failures[name] -= 1
                raise down
            return real(*args, **kwargs)

        return call

    for name in failures:
        monkeypatch.setattr(run_queries, name, flaky(name))
    run_id = queue(Session, project.id)
    worker = Worker(Session, device="cpu", name="t", write_every_s=0.0, outage_retry_s=0.01)
    assert worker.process_one() is True
    run = get_run(Session, run_id)
    assert run.status == DONE, run.error
    assert run.step == 20 and failures == {"record_progress": 0, "store_round": 0}


def test_an_outage_longer_than_the_patience_fails_the_run_once_the_database_is_back(
    Session, project, monkeypatch
):
    from sqlalchemy.exc import OperationalError

    def down(*args, **kwargs):
        raise OperationalError("UPDATE runs", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(run_queries, "store_round", down)
    run_id = queue(Session, project.id)
    worker = Worker(Session, device="cpu", name="t", outage_patience_s=0.05, outage_retry_s=0.01)
    worker.process_one()
    run = get_run(Session, run_id)
    assert run.status == FAILED and "connection refused" in run.error


def test_store_round_stores_nothing_for_a_run_no_longer_running(Session, project):
    """A retry through an outage after a commit whose answer was lost found the run DONE and
    stored its predictions again; a run marked interrupted meanwhile was turned DONE."""
    run_id = queue(Session, project.id)
    with Session.begin() as session:
        session.get(Run, run_id).status = INTERRUPTED
    with Session.begin() as session:
        outcome = run_queries.store_round(
            session,
            run_id,
            {"item_id": []},
            checkpoint="x.pt",
            step=1,
            seconds=1.0,
            test_accuracy=None,
            audit_n=0,
            audit_accuracy=None,
            audit_interval=(None, None),
            metrics={},
        )
    assert outcome == INTERRUPTED and get_run(Session, run_id).status == INTERRUPTED


def test_second_run_warm_starts_and_notes_a_bad_checkpoint(Session, project):
    first = queue(Session, project.id)
    worker = Worker(Session, device="cpu", name="t")
    worker.process_one()
    projects.checkpoint_path(project.id, first).write_bytes(b"not a checkpoint")
    second = queue(Session, project.id)
    worker.process_one()
    run = get_run(Session, second)
    assert run.status == DONE
    assert any("scratch" in note for note in run.metrics["notes"])


def test_cancel_stops_a_running_run(Session, project):
    run_id = queue(Session, project.id, steps=None, budget_s=30, config={"sleep_s": 0.01})
    worker = Worker(Session, device="cpu", name="t", write_every_s=0.05, poll_s=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while get_run(Session, run_id).status != RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        with Session.begin() as session:
            run_queries.cancel_run(session, run_id)
        started = time.monotonic()
        while get_run(Session, run_id).status == RUNNING and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert get_run(Session, run_id).status == CANCELLED
        assert time.monotonic() - started < 5
    finally:
        worker.stop()
    with Session() as session:
        assert run_queries.predictions(session, run_id) == []


def test_cancel_of_a_queued_run_is_immediate(Session, project):
    run_id = queue(Session, project.id)
    with Session.begin() as session:
        assert run_queries.cancel_run(session, run_id).status == CANCELLED
    assert Worker(Session, device="cpu").process_one() is False


def test_a_failing_run_is_failed_and_the_worker_goes_on(Session, project):
    bad = queue(Session, project.id, config={"explode": True})
    worker = Worker(Session, device="cpu", name="t")
    worker.process_one()
    run = get_run(Session, bad)
    assert run.status == FAILED and "boom" in run.error
    good = queue(Session, project.id)
    worker.process_one()
    assert get_run(Session, good).status == DONE


def test_bad_settings_fail_with_a_readable_error(Session, project):
    run_id = queue(Session, project.id, strategy="nonsense")
    Worker(Session, device="cpu").process_one()
    run = get_run(Session, run_id)
    assert run.status == FAILED and "strategy" in run.error.lower()
    run_id = queue(Session, project.id, config={"nosuch": 1})
    Worker(Session, device="cpu").process_one()
    assert "nosuch" in get_run(Session, run_id).error


def test_never_two_runs_at_once(Session, project):
    second = projects.create_project(
        Session, "tiny2", "test", images=tiny_image_set(n=20, seed=1), audit_size=0
    )
    with Session.begin() as session:
        for item in queries.items(session, second.id)[:4]:
            queries.add_label(session, item, item.truth)
    a = queue(Session, project.id, config={"sleep_s": 0.005})
    b = queue(Session, second.id, config={"sleep_s": 0.005})
    w1, w2 = Worker(Session, device="cpu", name="w1"), Worker(Session, device="cpu", name="w2")
    threads = [threading.Thread(target=w.process_one) for w in (w1, w2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert FakeModel.fits == 2 and FakeModel.max_active == 1
    assert get_run(Session, a).status == get_run(Session, b).status == DONE


def test_claim_is_exclusive(Session, project):
    queue(Session, project.id)
    with Session.begin() as s1:
        assert run_queries.claim_next_run(s1, "a") is not None
    with Session.begin() as s2:
        assert run_queries.claim_next_run(s2, "b") is None


def test_an_idle_poll_takes_no_write_lock(Session, db_url, project):
    """Every worker polls every second; with nothing queued the poll must not wait for (or take)
    SQLite's write lock, which a long writer holds (an import, a backup, another app's answers)."""
    import sqlite3

    writer = sqlite3.connect(db_url.split("///", 1)[-1], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    try:
        with Session.begin() as session:
            session.connection().exec_driver_sql("PRAGMA busy_timeout=0")  # fail at once, never wait
            assert run_queries.claim_next_run(session, "idle") is None
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    queue(Session, project.id)  # with a run queued it takes the lock (and the run)
    with Session.begin() as session:
        assert run_queries.claim_next_run(session, "busy") is not None


def running(Session, project_id, owner) -> int:
    """A RUNNING run of `owner`, set directly (a worker claims one run per project at a time)."""
    run_id = queue(Session, project_id)
    with Session.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(status=RUNNING, worker=owner))
    return run_id


def test_request_run_keeps_one_follow_up(Session, project):
    with Session.begin() as session:
        first = run_queries.request_run(session, project.id, "fake", {"steps": 1})
        first.status = RUNNING
        second = run_queries.request_run(session, project.id, "fake", {"steps": 2})
        third = run_queries.request_run(session, project.id, "fake", {"steps": 3})
        assert second.id == third.id != first.id and third.settings == {"steps": 3}
        assert len(run_queries.active_runs(session, project.id)) == 2


def test_mark_interrupted_at_start_up(Session, project):
    run_id = queue(Session, project.id)
    with Session.begin() as session:
        run_queries.claim_next_run(session, "crashed")
    # A fresh heartbeat from another worker is left alone; our own leftover is not.
    with Session.begin() as session:
        assert run_queries.mark_interrupted(session, stale_after_s=600, worker="someone-else") == []
    worker = Worker(Session, device="cpu", name="crashed")
    assert worker.recover() == [run_id]
    assert get_run(Session, run_id).status == INTERRUPTED
    # A stale heartbeat counts too, whoever owned the run.
    other = queue(Session, project.id)
    with Session.begin() as session:
        run_queries.claim_next_run(session, "gone")
        session.execute(update(Run).where(Run.id == other).values(heartbeat_at=None, started_at=None))
    with Session.begin() as session:
        assert run_queries.mark_interrupted(session, stale_after_s=None) == [other]


def test_recover_marks_runs_of_dead_processes_on_this_host_at_once(Session, project):
    # A killed app or `labeler worker` on this host leaves a RUNNING run with a fresh heartbeat;
    # the next worker to look sees that its process is gone and marks the run at once, while
    # runs of live processes, and of other hosts, are left alone.
    import os
    import socket
    import subprocess
    import sys

    from labeler.worker import process_gone

    host = socket.gethostname()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(ended.stdout)
    owners = [f"worker@{host}:{dead_pid}", f"worker@{host}:{os.getpid()}", f"worker@elsewhere:{dead_pid}"]
    ids = [running(Session, project.id, owner) for owner in owners]
    assert [process_gone(owner) for owner in owners] == [True, False, False]
    assert not process_gone("crashed") and not process_gone(f"x@{host}:notapid")
    assert Worker(Session, device="cpu", name="newcomer").recover() == [ids[0]]
    assert [get_run(Session, i).status for i in ids] == [INTERRUPTED, RUNNING, RUNNING]


def test_should_auto_retrain(Session, project):
    with Session.begin() as session:
        p = session.get(type(project), project.id)
        p.settings = {**p.settings, "auto_retrain_every": 5}
    with Session() as session:
        assert label_queue.should_auto_retrain(session, project.id)  # 10 labels, no run yet
    run_id = queue(Session, project.id)
    with Session() as session:
        assert not label_queue.should_auto_retrain(session, project.id)  # one is queued
    Worker(Session, device="cpu").process_one()
    with Session.begin() as session:
        assert not label_queue.should_auto_retrain(session, project.id)
        unlabeled = [
            i
            for i in queries.items(session, project.id, split="pool")
            if i.id not in queries.current_labels(session, project.id)
        ]
        for item in unlabeled[:5]:
            queries.add_label(session, item, item.truth)
    with Session() as session:
        assert label_queue.should_auto_retrain(session, project.id)
    assert get_run(Session, run_id).status == DONE


def test_labels_taken_back_after_a_run_do_not_hold_back_the_next(Session, project):
    """A bulk label the last run used, undone, left "labels now minus the run's" below zero, so
    the sidebar said "0 new labels" and nothing retrained for hundreds of labels (an exploratory
    session: 291 undone, 90 labels given, no run). New labels are those given since it began."""
    from datetime import timedelta

    from db.models import LabelEvent, Run, utcnow
    from labeler.ui import parts

    with Session.begin() as session:
        p = session.get(type(project), project.id)
        p.settings = {**p.settings, "auto_retrain_every": 5}
        pool = queries.items(session, project.id, split="pool")
        labeled = queries.current_labels(session, project.id)
        bulk = [i for i in pool if i.id not in labeled][:8]
        events = [queries.add_label(session, i, i.truth, kind="bulk") for i in bulk]
        for event in session.scalars(select(LabelEvent)):  # all given before the run began
            event.created_at = utcnow() - timedelta(hours=1)
        n = len(run_queries.pool_labels(session, project.id))
        session.add(Run(project_id=project.id, model="m2", status=DONE, labels_used=n, started_at=utcnow()))
    with Session.begin() as session:
        queries.undo_events(session, [e.id for e in events], "anonymous")
        fresh = [i for i in pool if i.id not in labeled and i not in bulk][:5]
        for item in fresh:
            queries.add_label(session, item, item.truth)
    with Session() as session:
        assert parts.labels_since_last_run(session, project.id) == 5
        assert label_queue.should_auto_retrain(session, project.id)


def test_status_snapshot_and_thread(Session, project):
    worker = Worker(Session, device="cpu", name="t", poll_s=0.05).start()
    try:
        assert worker.status()["alive"]
        run_id = queue(Session, project.id)
        worker.wake()
        deadline = time.monotonic() + 20
        # The run is DONE in the database a moment before the worker counts it as processed.
        while (
            get_run(Session, run_id).status != DONE or worker.status()["busy"]
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get_run(Session, run_id).status == DONE
        assert worker.status()["processed"] == 1
    finally:
        worker.stop()
    assert not worker.status()["alive"]


def test_train_model_rejects_no_labels_and_nan():
    x = np.zeros((4, 1, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="no labels"):
        train_model(RunSpec("fake", steps=1), x, [], [], 2)
    with pytest.raises(ValueError, match="Unknown model"):
        train_model(RunSpec("nope", steps=1), x, [0], [0], 2)
    model = train_model(RunSpec("fake", steps=3), x, [0, 1], [0, 1], 2)
    assert model.predict_proba(x).shape == (4, 2)


def test_worker_with_a_real_registry_model(Session, project):
    with Session.begin() as session:
        run_id = run_queries.request_run(
            session, project.id, "supervised", {"steps": 5, "strategy": "margin"}
        ).id
    Worker(Session, device="cpu").process_one()
    run = get_run(Session, run_id)
    assert run.status == DONE, run.error
    with Session() as session:
        assert len(run_queries.predictions(session, run_id)) == queries.count_items(session, project.id)


def test_old_predictions_are_pruned_and_auto_retrain_queues_with_project_settings(Session, project):
    worker = Worker(Session, device="cpu", keep_predictions=1)
    ids = [queue(Session, project.id) for _ in range(1)]
    worker.process_one()
    ids.append(queue(Session, project.id))
    worker.process_one()
    with Session() as session:
        assert run_queries.predictions(session, ids[0]) == []  # pruned, the run row stays
        assert session.get(Run, ids[0]).status == DONE
        assert len(run_queries.predictions(session, ids[1])) > 0
    with Session.begin() as session:
        p = session.get(type(project), project.id)
        p.settings = {**p.settings, "auto_retrain_every": 1, "model": "fake"}
        unlabeled = [
            i
            for i in queries.items(session, project.id, split="pool")
            if i.id not in queries.current_labels(session, project.id)
        ]
        queries.add_label(session, unlabeled[0], unlabeled[0].truth)
        run = label_queue.maybe_auto_retrain(session, project.id)
        assert run is not None and run.model == "fake" and run.status == QUEUED
        assert label_queue.maybe_auto_retrain(session, project.id) is None  # one is queued already


def test_queue_never_offers_labeled_test_or_audit_first(Session, project):
    """next_items follows the stored scores; the worker's scores put the pool first."""
    run_id = queue(Session, project.id)
    Worker(Session, device="cpu").process_one()
    with Session() as session:
        items = {i.id: i for i in queries.items(session, project.id)}
        labeled = set(queries.current_labels(session, project.id))
        n_pool_unlabeled = sum(1 for i in items.values() if i.split == "pool" and i.id not in labeled)
        offered = label_queue.next_items(session, project.id, k=n_pool_unlabeled)
        assert {i.split for i, _ in offered} == {"pool"}
        assert not {i.id for i, _ in offered} & labeled
        everything = label_queue.next_items(session, project.id, k=1000)
        assert all(items[i.id].split != "test" for i, _ in everything)
        assert all(p.run_id == run_id for _, p in everything)
        # The queue was stored with the predictions: one position per pool and audit image,
        # in the order of the scores.
        positioned = session.execute(
            select(QueuePosition.item_id, Prediction.score)
            .join(Prediction, and_(Prediction.item_id == QueuePosition.item_id, Prediction.run_id == run_id))
            .where(QueuePosition.run_id == run_id)
            .order_by(QueuePosition.position)
        ).all()
        assert {i for i, _ in positioned} == {i for i, item in items.items() if item.split != "test"}
        scores = [score for _, score in positioned]
        assert scores == sorted(scores, reverse=True)
        timing = session.get(Run, run_id).metrics["timing"]
        assert set(timing) == {"before_training_s", "training_s", "after_training_s", "store_s"}


def test_a_failed_run_keeps_the_note_on_its_warm_start(Session, project):
    with Session.begin() as session:
        session.add(Run(project_id=project.id, model="fake", status=DONE, checkpoint="/gone/model.pt"))
    run_id = queue(Session, project.id, config={"explode": True})
    Worker(Session, device="cpu").process_one()
    run = get_run(Session, run_id)
    assert run.status == FAILED and any("missing" in note for note in run.metrics["notes"])


@pytest.mark.parametrize(
    ("config", "expected"),
    [({"oom": True}, "GPU ran out of memory"), ({"nan": True}, TrainingDiverged.MESSAGE)],
)
def test_oom_and_nan_fail_with_a_readable_error(Session, project, config, expected):
    run_id = queue(Session, project.id, config=config)
    worker = Worker(Session, device="cpu")
    worker.process_one()
    run = get_run(Session, run_id)
    assert run.status == FAILED and expected in run.error
    assert "Training failed (" not in run.error
    assert worker.status()["last_error"] == run.error


def test_a_round_stops_at_the_first_nan_progress_report_without_the_worker():
    # The check lives in the round, so `simulate` and the benchmarks stop as the app does; the
    # fake model's final loss is finite: only the progress report says NaN.
    from labeler.round import run_round

    images = tiny_image_set(n=20, test=4)
    labels = np.where(np.arange(20) < 6, images.truth, -1)
    truth = np.where(np.array(images.splits) == "test", images.truth, -1)
    spec = RunSpec("fake", steps=5, config={"nan": True})
    with pytest.raises(TrainingDiverged) as raised:
        run_round(spec, images.pixels, np.array(images.splits), labels, truth, 2)
    assert raised.value.detail == "loss not finite at step 1"
    FakeModel.fits = 0
    run_round(RunSpec("fake", steps=5), images.pixels, np.array(images.splits), labels, truth, 2)
    assert FakeModel.fits == 1  # the same round without NaN finishes


def test_running_workers_names_each_worker_with_a_running_run_once(Session, project):
    for owner in ["a", "b", "a"]:
        running(Session, project.id, owner)
    with Session.begin() as session:
        assert sorted(run_queries.running_workers(session)) == ["a", "b"]
        run_queries.mark_interrupted(session, stale_after_s=600, worker="b")
    with Session.begin() as session:
        assert run_queries.running_workers(session) == ["a"]


def test_stopping_the_worker_interrupts_its_run(Session, project):
    run_id = queue(Session, project.id, steps=None, budget_s=30, config={"sleep_s": 0.01})
    worker = Worker(Session, device="cpu", poll_s=0.05).start()
    deadline = time.monotonic() + 10
    while get_run(Session, run_id).status != RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    worker.stop(timeout=10)
    assert time.monotonic() - started < 5 and not worker.alive
    run = get_run(Session, run_id)
    assert run.status == INTERRUPTED and "start training again" in run.error


def test_shutdown_at_exit_marks_a_run_that_does_not_stop_in_time_interrupted(Session, project):
    """The app server's atexit hook: a run computing without reporting (predicting a large pool)
    cannot be told to stop; it is marked interrupted rather than left "running"."""
    run_id = queue(Session, project.id, config={"silent_s": 4.0})
    worker = Worker(Session, device="cpu", poll_s=0.05).start()
    deadline = time.monotonic() + 30
    while get_run(Session, run_id).status != RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.shutdown(timeout=0.1)
    run = get_run(Session, run_id)
    assert worker.alive  # still silent: marked from outside
    assert run.status == INTERRUPTED and "start training again" in run.error
    worker.stop(timeout=60)
    assert get_run(Session, run_id).status == INTERRUPTED  # and so it stays


def test_sigterm_stops_a_foreground_worker_and_interrupts_its_run(Session, project):
    """`python -m labeler worker` stopped with SIGTERM (systemd, docker, kill) died with its run
    left "running" until another worker started or its heartbeat went stale."""
    import os
    import signal

    run_id = queue(Session, project.id, steps=None, budget_s=60, config={"sleep_s": 0.01})
    worker = Worker(Session, device="cpu", poll_s=0.05)

    def terminate_once_running():
        deadline = time.monotonic() + 60
        while get_run(Session, run_id).status != RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate_once_running)
    sender.start()
    with pytest.raises(Terminated), stopped_by_sigterm():  # a KeyboardInterrupt
        worker.run_forever()  # in the main thread, as the CLI runs it: stopped as by Ctrl-C
    sender.join()
    run = get_run(Session, run_id)
    assert run.status == INTERRUPTED and "start training again" in run.error


def test_sigterm_inside_a_transaction_is_raised_as_it_ends(Session, project):
    """SIGTERM's KeyboardInterrupt raised in the middle of a transaction (inside SQLAlchemy's
    commit, say) could leave it open with SQLite's write lock held: the heartbeat waited on it and
    `labeler worker` hung instead of stopping (this file's SIGTERM test, once). It is raised once
    the transaction has ended, and the database is free."""
    import os
    import signal

    from db.models import Project

    worker = Worker(Session, device="cpu")
    inside = []

    def rename(session):
        session.get(Project, project.id).name = "renamed"
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread, at once
        for _ in range(1000):  # bytecodes enough for the handler to run here
            pass
        inside.append("went on")

    with pytest.raises(Terminated), stopped_by_sigterm():
        worker._write(rename)
    assert inside == ["went on"]
    with Session.begin() as session:  # committed, and nothing holds the write lock
        assert session.get(Project, project.id).name == "renamed"
        session.get(Project, project.id).name = "tiny"


def test_heartbeat_stays_fresh_while_a_model_is_silent(Session, project):
    run_id = queue(Session, project.id, steps=1, config={"silent_s": 1.0})
    worker = Worker(Session, device="cpu", heartbeat_s=0.1)
    beats = []

    def watch():
        while len(beats) < 50:
            with Session() as session:
                run = session.get(Run, run_id)
                if run.status == RUNNING and run.step == 0 and run.heartbeat_at is not None:
                    beats.append(run.heartbeat_at)  # before the model's first progress call
                if run.status == DONE:
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    worker.process_one()
    watcher.join(10)
    assert get_run(Session, run_id).status == DONE
    assert len(set(beats)) >= 3  # renewed during the silent second, not only at the claim


def test_a_starting_worker_warms_up_before_its_first_run(Session, project, monkeypatch):
    """PyTorch's lazy imports are paid when the worker starts, not inside the first run."""
    order = []
    monkeypatch.setattr(Worker, "warm_up", lambda self: order.append("warm-up") or 0.0)
    real = Worker.process_one

    def process_one(self):
        order.append("run")
        return real(self)

    monkeypatch.setattr(Worker, "process_one", process_one)
    queue(Session, project.id)
    Worker(Session, device="cpu").run_forever(until_idle=True)
    assert order[:2] == ["warm-up", "run"]


def test_a_run_killed_with_its_server_does_not_count_as_having_used_its_labels(Session, project):
    """A run marked interrupted trained no model on its labels: auto-retrain and the Train page
    counted new labels from it ("0 new labels since the last run"), so nothing retrained until N
    more labels came. They count from the run before it; a failed or cancelled run still counts
    (a failing model is not queued again at every label, a cancel is not undone by the next)."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import CANCELLED, FAILED, LabelEvent, Run, utcnow
    from labeler.ui import parts

    now = utcnow()
    with Session.begin() as session:
        p = session.get(type(project), project.id)
        p.settings = {**p.settings, "auto_retrain_every": 5}
        n = len(run_queries.pool_labels(session, project.id))
        session.add(
            Run(
                project_id=project.id,
                model="m2",
                status=DONE,
                labels_used=n - 5,
                started_at=now - timedelta(hours=1),
            )
        )
        session.flush()
        pool = set(run_queries.pool_labels(session, project.id))
        events = sorted(e.id for e in session.scalars(select(LabelEvent)) if e.item_id in pool)
        session.execute(update(LabelEvent).values(created_at=now - timedelta(hours=2)))
        after = update(LabelEvent).where(LabelEvent.id.in_(events[-5:]))  # 5 given after that run began
        session.execute(after.values(created_at=now - timedelta(minutes=30)))
        killed = Run(project_id=project.id, model="m2", status=INTERRUPTED, labels_used=n, started_at=now)
        session.add(killed)
    with Session() as session:
        assert label_queue.should_auto_retrain(session, project.id)
        assert parts.labels_since_last_run(session, project.id) == 5
    for status in (FAILED, CANCELLED):
        with Session.begin() as session:
            session.get(Run, killed.id).status = status
        with Session() as session:
            assert not label_queue.should_auto_retrain(session, project.id)
            assert parts.labels_since_last_run(session, project.id) == 0


def test_the_end_of_training_is_written_however_recent_the_last_progress_write(Session, project, monkeypatch):
    """Progress writes are spaced out; the one saying training ended (then every image is
    predicted, minutes on a big project) must not be skipped, or the page shows a frozen 96 %."""
    written = []
    real = run_queries.record_progress

    def spy(session, run_id, step, fraction, *args, **kwargs):
        written.append(fraction)
        return real(session, run_id, step, fraction, *args, **kwargs)

    monkeypatch.setattr(run_queries, "record_progress", spy)
    run_id = queue(Session, project.id)
    Worker(Session, device="cpu", write_every_s=3600).process_one()
    assert get_run(Session, run_id).status == DONE
    assert written[0] < 1.0 and written[-1] == 1.0  # the first write, then the end (not spaced out)


def test_a_checkpoint_that_does_not_fit_on_the_disk_says_so_and_leaves_no_half_file(tmp_path, monkeypatch):
    """PyTorch said "unexpected pos 64 vs 0" and the .tmp file stayed, keeping a full disk full."""
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from labeler.models import base
    from labeler.worker import describe_error

    class Model:  # what save_checkpoint asks of a model
        def state(self):
            return {}

    path = tmp_path / "runs" / "1.pt"
    handles = []

    def half_written(state, target):
        # As PyTorch's writer: the file it opened (given a path) stays referenced from the
        # exception's traceback, so it stayed open, and its unlink freed no space (exploratory).
        file = open(target, "wb") if isinstance(target, (str, Path)) else target  # noqa: SIM115
        handles.append(file)
        file.write(b"half")
        file.flush()
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(base.torch, "save", half_written)
    # Full while the half file is there; its space comes back once it is removed.
    monkeypatch.setattr(
        shutil, "disk_usage", lambda p: usage(100, 100, 0 if any(Path(p).iterdir()) else 40 << 20)
    )
    with pytest.raises(OSError) as raised:
        base.save_checkpoint(Model(), path)
    assert not list(path.parent.iterdir())  # no half file
    assert handles and all(file.closed for file in handles)  # and no open handle keeping its space
    assert describe_error(raised.value).startswith("The disk is full")
