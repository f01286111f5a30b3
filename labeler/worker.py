"""The one background worker: takes queued runs from the database and trains them, one at a time.

The Streamlit process starts one `Worker` thread (`labeler.ui.common.worker()`, cached with
st.cache_resource); the same loop runs in the foreground with `python -m labeler worker`, e.g.
on a GPU machine against a shared database. Everything the UI needs (progress, loss points,
errors, predictions) goes through the database; `Worker.status()` is a snapshot for this
process only.

A run is claim -> load -> round -> store:

1. claim the oldest QUEUED run (an UPDATE guarded by status, so two workers never share one);
2. load the project's items, pixels and current answers (`db.runs.round_inputs`) and the run's
   settings as a RunSpec (the run's over the project's); the test split's truth and the audit
   labels are never trained on, and the audit and test images are not even shown to the model
   as unlabeled data;
3. run one round (`labeler.round.run_round`): warm-start from the project's newest DONE
   checkpoint of the same model (fresh, with a note, when it does not fit or will not load;
   always fresh for a model that never warm-starts, such as M2),
   fit within the budget while progress, heartbeat and loss points are written about once a
   second and a cancel stops it within a second, then predict, score the queue and measure;
4. save the checkpoint, then store the round in one transaction (`db.runs.store_round`). Any
   error marks the run FAILED with a readable message and the worker carries on.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import runs as run_queries
from db.engine import consistent_read, retrying
from db.models import (
    CANCELLED,
    DONE,
    FAILED,
    INTERRUPTED,
    POOL,
)

from .config import SettingError, Terminated, database_trouble, default_device
from .evaluate import wilson_interval
from .models import Progress, TrainingCancelled, TrainingDiverged, save_checkpoint
from .round import RoundResult, run_round
from .runspec import RunSpec

log = logging.getLogger(__name__)

# One run at a time per process, whatever number of Worker objects exists: they share a GPU.
_PROCESS_LOCK = threading.Lock()


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
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" ({error.filename})" if error.filename else ""
        return f"The disk is full{where}: free some space, then start training again."
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
        keep_predictions: int = run_queries.KEPT_PREDICTIONS,
        heartbeat_s: float = 30.0,
        outage_patience_s: float = 300.0,
        outage_retry_s: float = 5.0,
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
        # A database that stops answering for a while (a restart, a network cut): progress is
        # not recorded meanwhile and training goes on; the writes a run cannot do without (its
        # start, its results, its end) are tried every outage_retry_s for outage_patience_s.
        self.outage_patience_s = outage_patience_s
        self.outage_retry_s = outage_retry_s
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

    def shutdown(self, timeout: float = 5.0) -> None:
        """At the process' exit (the app server's `atexit`: a SIGTERM from systemd, docker or
        `kill`, or Ctrl-C): stop as `stop` does; a run still going after `timeout` (a model that
        computes without reporting, or predicting a large pool) is marked INTERRUPTED here.
        Without this the daemon thread died with the interpreter, mid-run, and the run read
        "running" until another worker noticed."""
        self.stop(timeout)
        if not self.alive:
            return

        def mark(session):
            return run_queries.mark_interrupted(session, self.stale_after_s, worker=self.name)

        try:
            log.warning("Marked interrupted at exit: %s", self._write(mark))
        except Exception:  # the process is going: say so, nothing more to do
            log.warning("Could not mark this worker's run interrupted at exit", exc_info=True)

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
            with _sigterm_after(), self.Session.begin() as session:
                running = run_queries.running_workers(session)
                gone = [name for name in running if name != self.name and process_gone(name)]
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
        with _sigterm_after(), self.Session.begin() as session:
            run = run_queries.claim_next_run(session, self.name)
            return None if run is None else (run.id, run.project_id, run.model)

    def _execute(self, run_id: int) -> None:
        start = time.monotonic()
        notes: list[str] = []
        beating = threading.Event()
        beat = threading.Thread(
            target=self._beat, args=(run_id, beating), name="labeler-heartbeat", daemon=True
        )
        beat.start()
        try:
            inputs, spec = self._load(run_id)
            result = self._round(inputs, spec, start, notes)
            self._store(inputs, spec, result, start)
        except TrainingCancelled:
            status = INTERRUPTED if self._stop.is_set() else CANCELLED
            message = "The worker was stopped; start training again." if status == INTERRUPTED else None
            self._end(run_id, status, start, error=message, notes=notes)
        except KeyboardInterrupt:
            self._end(
                run_id, INTERRUPTED, start, error="The worker was stopped; start training again.", notes=notes
            )
            raise
        except Exception as error:
            detail = error.detail if isinstance(error, TrainingDiverged) else ""  # where it diverged
            if isinstance(error, SettingError):  # the person's to fix (no labels yet), said on the page
                log.warning("Run %s failed: %s", run_id, error)
            else:
                log.exception("Run %s failed %s", run_id, detail)
            message = describe_error(error)
            self._set(last_error=message)
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            self._end(run_id, FAILED, start, error=message, notes=notes)
        finally:
            beating.set()
            # Not for ever: a beat waiting on a lock (a transaction left open by an interrupt)
            # held the worker here, and `labeler worker` hung after SIGTERM (a test, once).
            beat.join(timeout=max(5.0, 2 * self.heartbeat_s))

    def _beat(self, run_id: int, done: threading.Event) -> None:
        """Keep the run's heartbeat fresh while a model computes without calling back (e.g. one
        long closed-form fit, or predicting a large pool), so other workers do not take it for
        dead."""
        while not done.wait(self.heartbeat_s):
            try:
                self._write(lambda session: run_queries.beat(session, run_id))
            except Exception:  # a missed beat is harmless; the next one may pass
                log.warning("Could not write the heartbeat of run %s", run_id, exc_info=True)

    def _load(self, run_id: int) -> tuple[run_queries.RoundInputs, RunSpec]:
        # One snapshot: the labels and the newest answer event read with them (`labels_upto`)
        # agree, whatever commits meanwhile (review).
        with _sigterm_after(), consistent_read(self.Session) as session:
            inputs = run_queries.round_inputs(session, run_id)
        if inputs is None:
            raise ValueError(f"Run {run_id} was deleted before it started.")
        if not inputs.item_ids:
            raise ValueError("This project has no images: import some, then train.")
        spec = RunSpec.parse({**inputs.run_settings, "model": inputs.model}, inputs.project_settings)
        return inputs, spec

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

    def _round(
        self, inputs: run_queries.RoundInputs, spec: RunSpec, start: float, notes: list[str]
    ) -> RoundResult:
        split, labels = np.array(inputs.splits), np.array(inputs.labels, dtype=np.int64)
        labels_used = int(np.sum((split == POOL) & (labels >= 0)))
        self._write_through_outage(
            lambda session: run_queries.start_training(
                session, inputs.run_id, labels_used, self.name, inputs.labels_upto
            )
        )
        last_write = -math.inf

        def on_progress(p: Progress) -> bool:
            nonlocal last_write
            self._set(step=p.step, progress=p.fraction, seconds=p.seconds)
            if self._stop.is_set():
                return True
            now = time.monotonic()
            if now - last_write < self.write_every_s and p.fraction < 1.0:  # the end is always written
                return False
            last_write = now
            try:
                return self._write(
                    lambda session: run_queries.record_progress(
                        session, inputs.run_id, p.step, p.fraction, now - start, p.losses
                    )
                )
            except OperationalError as error:
                # The database went away for a moment: training goes on, the next write catches
                # up (a run failed at the first missed progress write, its minutes lost).
                log.warning("Run %s: progress not recorded, training goes on: %s", inputs.run_id, error)
                return False

        result = run_round(
            spec,
            self._pixels_of(inputs.project_id),
            split,
            labels,
            np.array(inputs.truth, dtype=np.int64),
            inputs.num_classes,
            rows=np.array(inputs.rows, dtype=np.int64),
            device=self.device,
            warm_start=inputs.previous_checkpoint if spec.warm_start else None,
            progress=on_progress,
            with_map=True,
            notes=notes,
        )
        return result

    def _store(
        self, inputs: run_queries.RoundInputs, spec: RunSpec, result: RoundResult, start: float
    ) -> None:
        checkpoint = save_checkpoint(result.model, self._checkpoint_of(inputs.project_id, inputs.run_id))
        from .projects import publish

        publish(
            checkpoint
        )  # before the run is DONE: app servers and workers elsewhere load it from the store
        columns = {"item_id": np.array(inputs.item_ids), **result.prediction_columns()}
        seconds = time.monotonic() - start
        metrics = {
            "classes": inputs.num_classes,  # the classes it knows: one added later it cannot predict
            "labels_upto": inputs.labels_upto,  # the newest answer event it read
            "losses": result.losses,
            "notes": result.notes,
            "labels": result.labels_used,
            "strategy": spec.strategy,
            "device": self.device,
            "timing": result.timing,
        }

        def store(session: Session) -> str:
            # The audit answers standing now, not those the run started with (`audit_now`).
            n, right = run_queries.audit_now(
                session, inputs.project_id, inputs.item_ids, columns["predicted"]
            )
            return run_queries.store_round(
                session,
                inputs.run_id,
                columns,
                checkpoint=str(checkpoint),
                step=result.steps,
                seconds=seconds,
                test_accuracy=result.test_accuracy,
                audit_n=n,
                audit_accuracy=right / n if n else None,
                audit_interval=wilson_interval(right, n) if n else (None, None),
                metrics=metrics,
            )

        outcome = self._write_through_outage(store)
        if outcome != DONE:
            checkpoint.unlink(missing_ok=True)
        else:
            try:
                self._write(
                    lambda session: run_queries.prune_predictions(
                        session, inputs.project_id, self.keep_predictions
                    )
                )
            except Exception:
                log.exception("Could not prune old predictions of project %s", inputs.project_id)
        log.info(
            "Run %s %s in %.1f s (test accuracy %s)", inputs.run_id, outcome, seconds, result.test_accuracy
        )

    def _write(self, fn: Callable[[Session], Any]) -> Any:
        def work():
            with _sigterm_after(), self.Session.begin() as session:
                return fn(session)

        return retrying(work)

    def _write_through_outage(self, fn: Callable[[Session], Any]) -> Any:
        """`_write`, tried again every outage_retry_s while the database cannot be reached, for
        up to outage_patience_s (not once the worker is told to stop)."""
        deadline = time.monotonic() + self.outage_patience_s
        while True:
            try:
                return self._write(fn)
            except OperationalError as error:
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise
                # A full disk under SQLite is an OperationalError too: not "cannot be reached".
                what = (
                    "cannot write (its disk is full)"
                    if database_trouble(error) == "full"
                    else "cannot be reached"
                )
                log.warning("The database %s, trying again in %g s: %s", what, self.outage_retry_s, error)
                self._stop.wait(self.outage_retry_s)

    def _end(
        self, run_id: int, status: str, start: float, error: str | None = None, notes: list[str] | None = None
    ) -> None:
        seconds = time.monotonic() - start
        try:
            self._write_through_outage(
                lambda session: run_queries.end_run(session, run_id, status, seconds, error, notes or ())
            )
        except Exception:
            log.exception("Could not record the end of run %s", run_id)


# SIGTERM's KeyboardInterrupt, raised in the middle of a database transaction of the main thread
# (inside SQLAlchemy's commit, say), could leave the transaction open and SQLite's write lock
# held: every later write waited on it, the heartbeat's too, and the worker hung instead of
# stopping (a test, once in many runs). It waits for the transaction's end.
_DEFERRED = {"depth": 0, "pending": False}


@contextlib.contextmanager
def _sigterm_after() -> Iterator[None]:
    """A database transaction SIGTERM does not interrupt (main thread, `stopped_by_sigterm`):
    raised as it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers run in the main thread only
        return
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        if not _DEFERRED["depth"] and _DEFERRED["pending"]:
            _DEFERRED["pending"] = False
            raise Terminated()


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """While inside (main thread only): SIGTERM, what systemd, docker and a plain `kill` send to
    stop a service, raises KeyboardInterrupt (`Terminated`, so the command ends with SIGTERM's
    143), as Ctrl-C does, so a run in progress is marked interrupted and the worker stops (a
    Python handler that only raises: no lock taken inside the signal handler). Without it the
    process died with its run left "running" (a Cancel button that did nothing, later runs
    waiting) until another worker on that machine started or the heartbeat went stale (found by
    an exploratory session)."""

    def terminate(signum, frame):
        if _DEFERRED["depth"]:  # inside a transaction: raised as it ends (`_sigterm_after`)
            _DEFERRED["pending"] = True
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
