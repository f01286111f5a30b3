"""Small pieces several pages draw: the training status line, run requests, image grids.

Widgets only; the SQL lives in `db.queries` / `db.runs`, the numbers in `labeler/`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import select

import db
from db import queries
from db import runs as run_queries
from db.models import QUEUED, RUNNING, Project, Run

from .. import queue
from . import common

# Run statuses as the user reads them.
STATUS_TEXT = {
    "queued": "waiting",
    "running": "training",
    "done": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "interrupted": "interrupted",
}


def run_accuracy(run: Run) -> str:
    """A finished run's accuracy as the pages show it: on the test split, else on the audit set."""
    if run.test_accuracy is not None:
        return f"{run.test_accuracy:.1%} (test)"
    if run.audit_accuracy is not None:
        return f"{run.audit_accuracy:.1%} [{run.audit_low:.0%}-{run.audit_high:.0%}] (audit, n={run.audit_n})"
    return ""


def request_training(project_id: int, model: str, settings: dict | None = None) -> int:
    """Queue a run (or update the one already waiting), wake the worker; return the run id."""
    Session = common.session_factory()

    def commit() -> int:
        with Session.begin() as session:
            return run_queries.request_run(session, project_id, model, settings or {}).id

    run_id = db.retrying(commit)
    common.worker().wake()
    return run_id


def maybe_auto_retrain(project_id: int) -> int | None:
    """Queue a run with the project's saved model and settings when `auto_retrain_every` new
    pool labels arrived since the last run; return its id, or None when not due."""
    Session = common.session_factory()

    def commit() -> int | None:
        with Session.begin() as session:
            run = queue.maybe_auto_retrain(session, project_id)
            return None if run is None else run.id

    run_id = db.retrying(commit)
    if run_id is not None:
        common.worker().wake()
    return run_id


def ensure_worker_for_active(active: list[Run]) -> None:
    """Start this process' worker when a run waits (e.g. one queued before a restart) or shows
    as running: if that run's process was killed, the worker marks it interrupted on start."""
    if any(run.status in (QUEUED, RUNNING) for run in active):
        common.worker().wake()


def wake_worker_if_runs_wait() -> None:
    """Every page, before it runs (app.py): start this process' worker when a run of any project
    waits or shows as running. Only the Label and Train pages started it, so after a restart a
    run queued before it stayed queued while only the Latent space page was open (an exploratory
    session, about 2 minutes, until the Train page was opened)."""
    with common.session_factory()() as session:
        waiting = session.scalar(select(Run.id).where(Run.status.in_((QUEUED, RUNNING))).limit(1))
    if waiting is not None:
        common.worker().wake()


def status_line(active: list[Run]) -> str:
    """What training is doing now, in one line, from the database (any worker, any process)."""
    running = [r for r in active if r.status == RUNNING]
    queued = [r for r in active if r.status == QUEUED]
    if running:
        run = running[0]
        text = (
            f"Training run {run.id} ({run.model}): {run.progress:.0%}, step {run.step}, {run.seconds:.0f} s"
        )
        if run.progress >= 1.0:  # the budget is spent: every image is predicted, then stored
            text = (
                f"Run {run.id} ({run.model}) trained ({run.step} steps, {run.seconds:.0f} s); "
                "now predicting every image and storing the results"
            )
        if run.cancel_requested:
            text += " (stopping)"
        if queued:
            text += f"; run {queued[0].id} waits"
        return text
    if queued:
        return f"Run {queued[0].id} ({queued[0].model}) waits for the trainer."
    return "The trainer is idle."


def labels_since_last_run(session, project_id: int) -> int:
    """Pool labels given since the newest run that started (what auto-retrain counts)."""
    return run_queries.labels_since_last_run(session, project_id)


def since_last_run_words(session, project_id: int) -> str:
    """ "N new labels since the last run", or, before any run, how many there are to train on (it
    said "0 new labels since the last run" with no run at all)."""
    since = labels_since_last_run(session, project_id)
    labels = common.by_count(since, "1 label", f"{since} labels")
    if run_queries.last_run_started(session, project_id) is not None:
        return f"{common.by_count(since, '1 new label', f'{since} new labels')} since the last run"
    return f"No run yet, {labels} to train on"


def class_counts(session, project_id: int, names: list[str]) -> pd.DataFrame:
    counts = Counter(queries.current_labels(session, project_id).values())
    return pd.DataFrame({"class": names, "labels": [counts.get(i, 0) for i in range(len(names))]})


def tile(image: np.ndarray, size: int = 96):
    """A small crisp thumbnail of one (H, W) or (H, W, 3) uint8 image."""
    return common.enlarge(image, size)


def show_error(error: Exception) -> None:
    """A user-facing failure: one sentence, never a traceback."""
    text = str(error).strip() or type(error).__name__
    st.error(text if text.endswith((".", "!", "?")) else text + ".")


def current_project_row(project_id: int) -> Project:
    with common.session_factory()() as session:
        return session.get(Project, project_id)
