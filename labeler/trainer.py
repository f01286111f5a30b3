"""The one background worker: takes queued runs from the database and trains them, one at a time.

The Streamlit process starts one `Worker` thread (`labeler.ui.common.worker()`, cached with
st.cache_resource); the same loop runs in the foreground with `python -m labeler worker`, e.g.
on a GPU machine against a shared database. Everything the UI needs (progress, loss points,
errors, predictions) goes through the database; `Worker.status()` is a snapshot for this
process only.

A run, start to end:

1. claim the oldest QUEUED run (an UPDATE guarded by status, so two workers never share one);
2. load the project's pixels and its current *pool* labels; the test split's truth and the
   audit labels are never trained on, and the audit and test images are not even shown to the
   model as unlabeled data;
3. warm-start from the project's newest DONE checkpoint of the same model (fresh, with a note
   in `Run.metrics["notes"]`, when it does not fit or will not load);
4. fit within the run's budget, writing step, progress, heartbeat and loss points about once a
   second and stopping within a second of a cancel request;
5. save the checkpoint, then in one transaction write a Prediction row per item (all splits)
   with the acquisition score of the run's strategy and a 2-D latent point, the test and audit
   accuracies, and mark the run DONE. Any error marks it FAILED with a readable message and the
   worker carries on.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import runs as run_queries
from db.engine import retrying
from db.models import (
    AUDIT,
    CANCELLED,
    DONE,
    FAILED,
    INTERRUPTED,
    POOL,
    RUNNING,
    TEST,
    Item,
    Project,
    Run,
    utcnow,
)

from . import active
from .config import SettingError, default_device
from .evaluate import wilson_interval
from .models import Progress, SSLModel, TrainingCancelled, TrainingDiverged, check_finite, save_checkpoint
from .runspec import RunSpec

log = logging.getLogger(__name__)

# One run at a time per process, whatever number of Worker objects exists: they share a GPU.
_PROCESS_LOCK = threading.Lock()

PREDICT_CHUNK = 4096


@dataclass
class _Job:
    run_id: int
    project_id: int
    model: str
    settings: RunSpec
    num_classes: int
    item_ids: np.ndarray  # (N,) in row order
    rows: np.ndarray  # (N,)
    splits: np.ndarray  # (N,) str
    truth: np.ndarray  # (N,) int, -1 unknown
    labels: dict[int, int]  # item_id -> class, pool only (training)
    audit_labels: dict[int, int]  # item_id -> class
    warm_start: str | None


def describe_error(error: BaseException) -> str:
    """One readable sentence for Run.error."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "The GPU ran out of memory: lower the batch size or model size in the model settings, or train on the CPU."
    if isinstance(error, MemoryError):
        return (
            "The computer ran out of memory: lower the batch size or model size, or use a smaller data set."
        )
    if isinstance(error, (SettingError, TrainingDiverged)):
        return str(error)
    if isinstance(error, ValueError) and str(error):
        return str(error)
    return f"Training failed ({type(error).__name__}: {error}); see the worker's log for details."


class Worker:
    """Trains queued runs one at a time in a daemon thread (`start`) or synchronously (`process_one`)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        device: str | None = None,
        name: str | None = None,
        poll_s: float = 1.0,
        write_every_s: float = 1.0,
        stale_after_s: float = 600.0,
        pixels: Callable[[int], np.ndarray] | None = None,
        checkpoint_path: Callable[[int, int], Path] | None = None,
        keep_predictions: int = 5,
        heartbeat_s: float = 30.0,
    ):
        self.Session = session_factory
        self.device = device or default_device()
        self.name = name or f"worker@{socket.gethostname()}:{os.getpid()}"
        self.poll_s = poll_s
        self.write_every_s = write_every_s
        self.stale_after_s = stale_after_s
        self._pixels = pixels
        self._checkpoint_path = checkpoint_path
        self.keep_predictions = keep_predictions
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "name": self.name,
            "device": self.device,
            "run_id": None,
            "project_id": None,
            "model": None,
            "step": 0,
            "progress": 0.0,
            "seconds": 0.0,
            "processed": 0,
            "last_error": None,
            "last_run_id": None,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Worker:
        """Start the daemon thread (once); returns self."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(target=self.run_forever, name=f"labeler-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the loop; a run in progress ends within a second and is marked INTERRUPTED."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wake(self) -> None:
        """Look for queued runs now instead of at the next poll (call after queuing one)."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status, alive=self.alive, busy=self._status["run_id"] is not None)

    def _set(self, **values) -> None:
        with self._lock:
            self._status.update(values)

    def recover(self) -> list[int]:
        """Mark runs as INTERRUPTED whose worker is gone: this worker's own leftovers, runs of a
        worker process on this host that no longer exists (a killed app or `labeler worker`,
        seen at once), and runs whose heartbeat went silent (workers elsewhere)."""

        def work():
            with self.Session.begin() as session:
                running = session.scalars(select(Run.worker).where(Run.status == RUNNING).distinct())
                gone = [name for name in running if name and name != self.name and process_gone(name)]
                return run_queries.mark_interrupted(session, self.stale_after_s, worker=[self.name, *gone])

        ids = retrying(work)
        if ids:
            log.warning("Marked interrupted runs: %s", ids)
        return ids

    def warm_up(self) -> float:
        """Pay once per process, before any run, what the first run would otherwise wait for:
        PyTorch imports its compiler stack (torch._dynamo) when the first optimizer is built,
        5 s or more on a busy 2-core machine. Returns the seconds it took."""
        started = time.monotonic()
        try:
            torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        except Exception:  # only an optimisation: the run itself will say what is wrong
            log.warning("Warm-up failed", exc_info=True)
        return time.monotonic() - started

    def run_forever(self, poll_s: float | None = None, until_idle: bool = False) -> int:
        """Process runs until `stop()` (or, with until_idle, until the queue is empty); returns
        how many runs were processed."""
        poll_s = self.poll_s if poll_s is None else poll_s
        processed = 0
        last_recover = -math.inf
        self.warm_up()
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_recover > 60:
                    self.recover()
                    last_recover = time.monotonic()
                if self.process_one():
                    processed += 1
                    continue
            except Exception as error:
                log.exception("Worker loop error")
                self._set(last_error=describe_error(error))
            if until_idle:
                break
            self._wake.wait(poll_s)
            self._wake.clear()
        return processed

    # -- one run -----------------------------------------------------------------------------

    def process_one(self) -> bool:
        """Claim and train one queued run synchronously; False when none is queued."""
        with _PROCESS_LOCK:
            claimed = retrying(self._claim)
            if claimed is None:
                return False
            run_id, project_id, model = claimed
            self._set(run_id=run_id, project_id=project_id, model=model, step=0, progress=0.0, seconds=0.0)
            try:
                self._execute(run_id)
            finally:
                with self._lock:
                    self._status.update(run_id=None, project_id=None, model=None, last_run_id=run_id)
                    self._status["processed"] += 1
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            return True

    def _claim(self) -> tuple[int, int, str] | None:
        with self.Session.begin() as session:
            run = run_queries.claim_next_run(session, self.name)
            return None if run is None else (run.id, run.project_id, run.model)

    def _execute(self, run_id: int) -> None:
        start = time.monotonic()
        notes: list[str] = []
        last = {"step": 0, "losses": {}}
        beating = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(run_id, beating), name="labeler-heartbeat", daemon=True
        )
        beat.start()
        try:
            job = self._load(run_id)
            model = self._train(job, start, notes, last)
            self._finish_done(job, model, start, notes, last)
        except TrainingCancelled:
            status = INTERRUPTED if self._stop.is_set() else CANCELLED
            message = "The worker was stopped; start training again." if status == INTERRUPTED else None
            self._finish(run_id, status, start, error=message, notes=notes)
        except KeyboardInterrupt:
            self._finish(
                run_id, INTERRUPTED, start, error="The worker was stopped; start training again.", notes=notes
            )
            raise
        except Exception as error:
            detail = getattr(error, "detail", "")  # where a divergence happened
            log.exception("Run %s failed %s", run_id, detail)
            message = describe_error(error)
            self._set(last_error=message)
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            self._finish(run_id, FAILED, start, error=message, notes=notes)
        finally:
            beating.set()
            beat.join()

    def _beat(self, run_id: int, done: threading.Event) -> None:
        """Keep the run's heartbeat fresh while a model computes without calling back (e.g. one
        long closed-form fit), so other workers do not take it for dead."""
        while not done.wait(self.heartbeat_s):
            try:
                self._heartbeat(run_id)
            except Exception:  # a missed beat is harmless; the next one may pass
                log.warning("Could not write the heartbeat of run %s", run_id, exc_info=True)

    def _load(self, run_id: int) -> _Job:
        from db.queries import class_names, current_labels

        with self.Session() as session:
            run = session.get(Run, run_id)
            project = session.get(Project, run.project_id)
            settings = RunSpec.parse({**(run.settings or {}), "model": run.model}, project.settings)
            rows = session.execute(
                select(Item.id, Item.row, Item.split, Item.truth)
                .where(Item.project_id == project.id)
                .order_by(Item.row)
            ).all()
            labels = run_queries.pool_labels(session, project.id)
            everything = current_labels(session, project.id)
            num_classes = len(class_names(session, project.id))
            previous = (
                run_queries.latest_done_run(session, project.id, run.model) if settings.warm_start else None
            )
            warm = previous.checkpoint if previous is not None and previous.checkpoint else None
            model_name = run.model
        if not rows:
            raise ValueError("This project has no images: import some, then train.")
        item_ids = np.array([r[0] for r in rows], dtype=np.int64)
        splits = np.array([r[2] for r in rows])
        audit_ids = set(item_ids[splits == AUDIT].tolist())
        return _Job(
            run_id=run_id,
            project_id=project.id,
            model=model_name,
            settings=settings,
            num_classes=num_classes,
            item_ids=item_ids,
            rows=np.array([r[1] for r in rows], dtype=np.int64),
            splits=splits,
            truth=np.array([-1 if r[3] is None else r[3] for r in rows], dtype=np.int64),
            labels=labels,
            audit_labels={i: c for i, c in everything.items() if i in audit_ids},
            warm_start=warm,
        )

    def _pixels_of(self, project_id: int) -> np.ndarray:
        if self._pixels is not None:
            return self._pixels(project_id)
        from .projects import pixels

        return pixels(project_id)

    def _checkpoint_of(self, project_id: int, run_id: int) -> Path:
        if self._checkpoint_path is not None:
            return Path(self._checkpoint_path(project_id, run_id))
        from .projects import checkpoint_path

        return checkpoint_path(project_id, run_id)

    def _train(self, job: _Job, start: float, notes: list[str], last: dict) -> SSLModel:
        from .train import train_model

        pixels = self._pixels_of(job.project_id)
        pool = job.splits == POOL
        x = np.asarray(pixels[job.rows[pool]], dtype=np.float32) / 255.0  # (P, C, H, W)
        position = {item_id: i for i, item_id in enumerate(job.item_ids[pool].tolist())}
        labeled = [(position[i], c) for i, c in job.labels.items() if i in position]
        labeled_idx = np.array([p for p, _ in labeled], dtype=np.int64)
        labels = np.array([c for _, c in labeled], dtype=np.int64)

        def begin(session: Session) -> None:
            session.execute(
                update(Run).where(Run.id == job.run_id).values(labels_used=len(labeled), worker=self.name)
            )

        self._write(begin)
        last_write = [0.0]

        def on_progress(p: Progress) -> bool:
            check_finite(p.losses, p.step)
            if "fit_started" not in last:
                # The model's own clock starts when fitting does: what came before is set-up.
                last["fit_started"] = time.monotonic() - p.seconds
            last.update(step=p.step, losses=dict(p.losses))
            self._set(step=p.step, progress=p.fraction, seconds=p.seconds)
            if self._stop.is_set():
                return True
            now = time.monotonic()
            if now - last_write[0] < self.write_every_s:
                return False
            last_write[0] = now
            return self._write_progress(job.run_id, p, time.monotonic() - start)

        model = train_model(
            job.settings,
            x,
            labeled_idx,
            labels,
            job.num_classes,
            device=self.device,
            progress=on_progress,
            warm_start=job.warm_start,
            notes=notes,
        )
        last["fit_ended"] = time.monotonic()
        return model

    def _write(self, fn: Callable[[Session], Any]) -> Any:
        def work():
            with self.Session.begin() as session:
                return fn(session)

        return retrying(work)

    def _write_progress(self, run_id: int, p: Progress, seconds: float) -> bool:
        """Store progress and loss points; return True when a cancel was requested."""

        def work(session: Session) -> bool:
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    step=int(p.step),
                    progress=float(p.fraction),
                    seconds=float(seconds),
                    heartbeat_at=utcnow(),
                )
            )
            run_queries.add_metrics(
                session, run_id, p.step, seconds, {k: float(v) for k, v in p.losses.items()}
            )
            cancel = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
            return cancel is None or bool(cancel)  # a deleted run counts as cancelled

        return self._write(work)

    def _predict(self, job: _Job, model: SSLModel) -> dict[str, np.ndarray]:
        """Probabilities, embeddings (and MC samples for BALD) of every item, in row order."""
        pixels = self._pixels_of(job.project_id)
        probs, embeds, mc = [], [], []
        want_mc = job.settings.strategy == "bald"
        for i in range(0, len(job.rows), PREDICT_CHUNK):
            x = np.asarray(pixels[job.rows[i : i + PREDICT_CHUNK]], dtype=np.float32) / 255.0
            probs.append(np.asarray(model.predict_proba(x), dtype=np.float64))
            embeds.append(np.asarray(model.embed(x), dtype=np.float32).reshape(len(x), -1))
            if want_mc:
                mc.append(np.asarray(model.mc_proba(x, samples=job.settings.mc_samples), dtype=np.float64))
            self._heartbeat(job.run_id)
        out = {"probs": np.concatenate(probs), "embed": np.concatenate(embeds)}
        if want_mc:
            out["mc"] = np.concatenate(mc, axis=1)  # (S, N, K)
        check_finite(out["probs"], what="predictions")
        return out

    def _heartbeat(self, run_id: int) -> None:
        self._write(
            lambda session: session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))
        )

    def _finish_done(self, job: _Job, model: SSLModel, start: float, notes: list[str], last: dict) -> None:
        from .latent import project_2d

        out = self._predict(job, model)
        probs, embed = out["probs"], out["embed"]  # (N, K), (N, D)
        predicted = probs.argmax(axis=1)
        top2 = -np.partition(-probs, 1, axis=1)[:, :2] if probs.shape[1] > 1 else np.c_[probs, probs * 0]
        xy = project_2d(embed, seed=job.settings.seed)
        labeled_ids = set(job.labels) | set(job.audit_labels)
        labeled_mask = np.isin(job.item_ids, list(labeled_ids))
        score = active.queue_scores(
            job.settings.strategy,
            probs,
            embed,
            labeled_mask,
            job.splits == POOL,
            mc_probs=out.get("mc"),
            diverse_batch=job.settings.diverse_batch,
            seed=job.settings.seed,
        )
        entropy = active.entropy(probs)

        test = (job.splits == TEST) & (job.truth >= 0)
        test_accuracy = float(np.mean(predicted[test] == job.truth[test])) if test.any() else None
        audit_pos = {item_id: i for i, item_id in enumerate(job.item_ids.tolist())}
        audit_pairs = [(predicted[audit_pos[i]], c) for i, c in job.audit_labels.items()]
        audit_n = len(audit_pairs)
        audit_correct = sum(int(p == c) for p, c in audit_pairs)
        audit_low, audit_high = wilson_interval(audit_correct, audit_n) if audit_n else (None, None)

        checkpoint = save_checkpoint(model, self._checkpoint_of(job.project_id, job.run_id))
        from .projects import publish

        publish(
            checkpoint
        )  # before the run is DONE: app servers and workers elsewhere load it from the store
        store_started = time.monotonic()
        columns = {
            "item_id": job.item_ids,
            "predicted": predicted,
            "confidence": top2[:, 0],
            "entropy": entropy,
            "margin": top2[:, 0] - top2[:, 1],
            "score": score,
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
        seconds = time.monotonic() - start

        def commit(session: Session) -> str:
            run = session.get(Run, job.run_id)
            if run is None:
                return "deleted"
            if run.cancel_requested:
                run.status, run.finished_at, run.seconds = CANCELLED, utcnow(), seconds
                return CANCELLED
            run_queries.store_predictions(session, job.run_id, columns)
            now = time.monotonic()
            fit_started = last.get("fit_started", start)
            fit_ended = last.get("fit_ended", now)
            timing = {
                "before_training_s": round(fit_started - start, 3),
                "training_s": round(fit_ended - fit_started, 3),
                "after_training_s": round(now - fit_ended, 3),
                "store_s": round(now - store_started, 3),
            }
            run.status = DONE
            run.finished_at = run.heartbeat_at = utcnow()
            run.progress, run.step, run.seconds = 1.0, int(last["step"]), seconds
            run.checkpoint = str(checkpoint)
            run.test_accuracy = test_accuracy
            run.audit_n = audit_n or None
            run.audit_accuracy = audit_correct / audit_n if audit_n else None
            run.audit_low, run.audit_high = audit_low, audit_high
            run.metrics = {
                "losses": last["losses"],
                "notes": notes,
                "labels": len(job.labels),
                "strategy": job.settings.strategy,
                "device": self.device,
                "timing": timing,
            }
            return DONE

        result = self._write(commit)
        if result != DONE:
            checkpoint.unlink(missing_ok=True)
        else:
            try:
                self._write(
                    lambda session: run_queries.prune_predictions(
                        session, job.project_id, self.keep_predictions
                    )
                )
            except Exception:
                log.exception("Could not prune old predictions of project %s", job.project_id)
        log.info("Run %s %s in %.1f s (test accuracy %s)", job.run_id, result, seconds, test_accuracy)

    def _finish(
        self, run_id: int, status: str, start: float, error: str | None = None, notes: list[str] | None = None
    ) -> None:
        seconds = time.monotonic() - start

        def work(session: Session) -> None:
            run = session.get(Run, run_id)
            if run is None or run.status != RUNNING:
                return
            run.status, run.finished_at, run.seconds, run.error = status, utcnow(), seconds, error
            if notes:
                run.metrics = {**(run.metrics or {}), "notes": list(notes)}

        try:
            self._write(work)
        except Exception:
            log.exception("Could not record the end of run %s", run_id)


def process_gone(worker: str) -> bool:
    """True when `worker` ("name@host:pid", the default worker name) ran on this host in a
    process that no longer exists. Names of other hosts, or of another form, are never gone here:
    their runs wait for the heartbeat to go stale. A reused pid only delays the same way."""
    _, at, where = worker.rpartition("@")
    host, colon, pid = where.rpartition(":")
    if not (at and colon and host == socket.gethostname() and pid.isdigit()):
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process, or not a real pid
        return False
    return False
