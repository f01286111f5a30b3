"""Queries on training runs: the job queue, progress, metrics and predictions.

Each function takes the session first and never commits: the caller owns the transaction.

Queue rules: a project has at most one QUEUED run. Asking for another while one waits updates
that one (it has not started, so the newest request wins) instead of stacking jobs, so there is
at most one follow-up behind a RUNNING run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from .models import (
    AUDIT,
    CANCELLED,
    DONE,
    IGNORED,
    INTERRUPTED,
    POOL,
    QUEUED,
    RUNNING,
    Item,
    LabelEvent,
    Prediction,
    Project,
    QueuePosition,
    Run,
    RunMetric,
)
from .queries import (
    _chunks,
    _current_event_ids,
    analyze,
    current_answers_query,
    done_runs_newest_first,
    lock_for_write,
)
from .queries import now as queries_now

FINISHED_STATUSES = (DONE, "failed", CANCELLED, INTERRUPTED)


def request_run(session: Session, project_id: int, model: str, settings: dict[str, Any] | None = None) -> Run:
    """Queue a training run for the project, or return (updated) the one already queued."""
    settings = dict(settings or {})
    queued = session.scalars(
        select(Run).where(Run.project_id == project_id, Run.status == QUEUED).order_by(Run.id).limit(1)
    ).first()
    if queued is not None:
        queued.model = model
        queued.settings = settings
        queued.cancel_requested = False
        session.flush()
        return queued
    run = Run(project_id=project_id, model=model, settings=settings, status=QUEUED)
    session.add(run)
    session.flush()
    return run


def claim_next_run(session: Session, worker_name: str) -> Run | None:
    """Take the oldest QUEUED run of a project with no RUNNING run, for this worker, or None.

    One run per project at a time, whatever the number of workers: two app servers on one data
    folder, or GPU workers beside an app, each took a run of the same project (the run and the
    follow-up queued behind it) and trained both at once, each at half speed. The project's row
    is locked first (PostgreSQL; on SQLite the database's write lock), so two workers cannot
    both see it idle. The UPDATE only succeeds while the row is still QUEUED and the project
    still idle, so when two workers race for the same run exactly one sees rowcount 1; the other
    moves on to the next candidate. With nothing queued it returns before taking any lock: every
    worker polls every second, and an idle poll took SQLite's write lock each time (waiting behind
    any long writer, and making the app's answers wait behind it).
    """
    if session.scalar(select(Run.id).where(Run.status == QUEUED).limit(1)) is None:
        return None
    lock_for_write(session)
    busy = select(Run.project_id).where(Run.status == RUNNING)
    for _ in range(5):
        found = session.execute(
            select(Run.id, Run.project_id)
            .where(Run.status == QUEUED, Run.project_id.not_in(busy))
            .order_by(Run.id)
            .limit(1)
        ).first()
        if found is None:
            return None
        run_id, project_id = found
        # FOR NO KEY UPDATE on PostgreSQL: claimers wait for each other; a run or class added to
        # the project meanwhile (a foreign key's lighter lock) does not wait.
        session.get(Project, project_id, with_for_update={"key_share": True})
        now = queries_now(session)
        result = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == QUEUED, Run.project_id.not_in(busy))
            .values(status=RUNNING, worker=worker_name, started_at=now, heartbeat_at=now, error=None)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            run = session.get(Run, run_id)
            session.refresh(run)
            return run
    return None


def cancel_run(session: Session, run_id: int) -> Run | None:
    """Cancel a queued run at once; ask a running one to stop (the worker honours it within a
    second). Finished runs are left as they are."""
    run = session.get(Run, run_id)
    if run is None:
        return None
    # Only while it is still queued: a worker may claim it between the read and the write, and an
    # unconditional write marked a run cancelled while it trained (and let the project's next run
    # be claimed beside it).
    cancelled = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED)
        .values(status=CANCELLED, finished_at=queries_now(session))
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(run)
    if not cancelled and run.status == RUNNING:
        run.cancel_requested = True
    session.flush()
    return run


def get_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def list_runs(session: Session, project_id: int) -> list[Run]:
    """All runs of the project, newest first."""
    return list(session.scalars(select(Run).where(Run.project_id == project_id).order_by(Run.id.desc())))


def active_runs(session: Session, project_id: int | None = None) -> list[Run]:
    """QUEUED and RUNNING runs (of one project, or all), oldest first."""
    query = select(Run).where(Run.status.in_((QUEUED, RUNNING)))
    if project_id is not None:
        query = query.where(Run.project_id == project_id)
    return list(session.scalars(query.order_by(Run.id)))


def running_with_undone(session: Session, project_id: int, item_ids: Sequence[int]) -> list[int]:
    """Ids of the project's RUNNING runs that read the answers just taken back from `item_ids`
    (each item's newest undone answer) with their labels: they train with them; the next run
    leaves them out. By event id against the newest one each run read (`start_training`), not
    by clock: a worker's clock on another machine, and a run claimed before the answers and
    reading its labels after them, made a time test wrong (review)."""
    if not item_ids:
        return []
    firsts = []
    for chunk in _chunks(list(item_ids)):  # PostgreSQL takes at most 65,535 parameters
        newest = (
            select(func.max(LabelEvent.id))
            .where(LabelEvent.item_id.in_(chunk), LabelEvent.undone.is_(True))
            .group_by(LabelEvent.item_id)
        )
        firsts.append(session.scalar(select(func.min(LabelEvent.id)).where(LabelEvent.id.in_(newest))))
    firsts = [f for f in firsts if f is not None]
    if not firsts:
        return []
    first = min(firsts)
    running = session.execute(
        select(Run.id, Run.metrics)
        .where(Run.project_id == project_id, Run.status == RUNNING)
        .order_by(Run.id)
    )
    return [run_id for run_id, metrics in running if (metrics or {}).get("labels_upto", 0) >= first]


def last_run_started(session: Session, project_id: int):
    """When the newest run that trained (or is training) started, or None: a run killed with its
    server (INTERRUPTED) trained nothing, so it does not count."""
    return session.scalar(
        select(Run.started_at)
        .where(Run.project_id == project_id, Run.started_at.is_not(None), Run.status != INTERRUPTED)
        .order_by(Run.started_at.desc(), Run.id.desc())
        .limit(1)
    )


def labels_since_last_run(session: Session, project_id: int) -> int:
    """The current pool labels given after the newest run that started (what auto-retrain
    counts): a run killed with its server (INTERRUPTED) trained no model on its labels, so the
    one before it counts; a failed or cancelled one counts (or a failing model would be queued
    again at every label, and a person's cancel undone by the next). Counted by when each answer
    was given, not as labels now minus the run's: after an undo of a bulk label that run had
    used, that difference stayed below zero for hundreds of labels, and nothing retrained."""
    started = last_run_started(session, project_id)
    query = _current_pool_labels(project_id, func.count())
    if started is not None:
        query = query.where(LabelEvent.created_at > started)
    return int(session.scalar(query) or 0)


def latest_done_run(session: Session, project_id: int, model: str | None = None) -> Run | None:
    query = done_runs_newest_first(project_id)
    if model is not None:
        query = query.where(Run.model == model)
    return session.scalars(query.limit(1)).first()


def add_metrics(session: Session, run_id: int, step: int, seconds: float, values: dict[str, float]) -> None:
    session.add_all(
        RunMetric(run_id=run_id, step=int(step), seconds=float(seconds), name=str(name), value=float(value))
        for name, value in values.items()
    )


def run_metrics(session: Session, run_id: int) -> list[RunMetric]:
    """The loss curve points of a run, in the order they were written."""
    return list(session.scalars(select(RunMetric).where(RunMetric.run_id == run_id).order_by(RunMetric.id)))


def running_workers(session: Session) -> list[str]:
    """The names of the workers that have a RUNNING run (each once)."""
    return [
        name for name in session.scalars(select(Run.worker).where(Run.status == RUNNING).distinct()) if name
    ]


def mark_interrupted(
    session: Session, stale_after_s: float | None = 600.0, worker: str | Sequence[str] | None = None
) -> list[int]:
    """Mark RUNNING runs whose worker is gone as INTERRUPTED; return their ids.

    A run counts as gone when its heartbeat is older than `stale_after_s` (None: every RUNNING
    run), or when it belongs to `worker` (one name or several: workers known to be gone, such
    as this worker restarting, whose runs died with the previous process).
    """
    conditions = []
    if stale_after_s is None:
        conditions.append(Run.id.is_not(None))
    else:
        cutoff = queries_now(session) - timedelta(seconds=stale_after_s)
        conditions.append(func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at) < cutoff)
    if worker is not None:
        names = [worker] if isinstance(worker, str) else list(worker)
        if names:
            conditions.append(Run.worker.in_(names))
    runs = list(session.scalars(select(Run).where(Run.status == RUNNING, or_(*conditions))))
    now = queries_now(session)
    for run in runs:
        run.status = INTERRUPTED
        run.finished_at = now
        run.error = run.error or "The worker stopped before this run finished; start training again."
    session.flush()
    return [run.id for run in runs]


def pool_labels(session: Session, project_id: int) -> dict[int, int]:
    """{item_id: class_index} of the current labels on pool items: what training may use.
    Audit labels are left out (they measure accuracy), and test items are never labeled."""
    rows = session.execute(_current_pool_labels(project_id, LabelEvent.item_id, LabelEvent.class_index))
    return {item_id: class_index for item_id, class_index in rows}


def pool_label_count(session: Session, project_id: int) -> int:
    """How many pool images have a label training may use (`pool_labels`, counted)."""
    return int(session.scalar(_current_pool_labels(project_id, func.count())) or 0)


def _current_pool_labels(project_id: int, *columns):
    """SELECT `columns` of each pool image's current answer that names a class (no "ignore")."""
    newest = _current_event_ids(project_id)
    return (
        select(*columns)
        .select_from(LabelEvent)
        .join(newest, LabelEvent.id == newest.c.event_id)
        .join(Item, Item.id == LabelEvent.item_id)
        .where(Item.split == POOL, LabelEvent.class_index >= 0)
    )


def predictions(session: Session, run_id: int) -> list[Prediction]:
    """The run's prediction rows, by item id."""
    return list(
        session.scalars(select(Prediction).where(Prediction.run_id == run_id).order_by(Prediction.item_id))
    )


def guesses(session: Session, run_id: int, item_ids: Sequence[int]) -> dict[int, tuple[int, float]]:
    """{item_id: (predicted class, confidence)} of the run for those items."""
    rows = session.execute(
        select(Prediction.item_id, Prediction.predicted, Prediction.confidence).where(
            Prediction.run_id == run_id, Prediction.item_id.in_(list(item_ids))
        )
    )
    return {item_id: (predicted, confidence) for item_id, predicted, confidence in rows}


def predictions_frame(session: Session, run_id: int):
    """The run's predictions joined with their items (row, key, split, truth) as a DataFrame."""
    import pandas as pd

    rows = session.execute(
        select(
            Item.id.label("item_id"),
            Item.row,
            Item.key,
            Item.split,
            Item.truth,
            Prediction.predicted,
            Prediction.confidence,
            Prediction.entropy,
            Prediction.margin,
            Prediction.score,
            Prediction.x,
            Prediction.y,
        )
        .join(Prediction, and_(Prediction.item_id == Item.id, Prediction.run_id == run_id))
        .order_by(Item.row)
    ).all()
    columns = [
        "item_id",
        "row",
        "key",
        "split",
        "truth",
        "predicted",
        "confidence",
        "entropy",
        "margin",
        "score",
        "x",
        "y",
    ]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


KEPT_PREDICTIONS = 5  # finished runs per project whose prediction rows are kept (prune_predictions)


def newest_done_runs(session: Session, project_id: int, n: int = KEPT_PREDICTIONS) -> list[Run]:
    """The project's newest `n` finished runs, newest first: those whose predictions are kept, so
    whose model and predictions can be exported."""
    return list(session.scalars(done_runs_newest_first(project_id).limit(n)))


def prune_predictions(session: Session, project_id: int, keep: int = KEPT_PREDICTIONS) -> int:
    """Delete the prediction rows of all but the newest `keep` DONE runs (each run stores one
    row per item, which adds up on large sets); the runs themselves and their accuracies stay.
    Returns the number of runs pruned."""
    old = list(session.scalars(done_runs_newest_first(project_id, Run.id)))[keep:]
    if old:
        session.execute(delete(QueuePosition).where(QueuePosition.run_id.in_(old)))
        session.execute(delete(Prediction).where(Prediction.run_id.in_(old)))
    return len(old)


PREDICTION_COLUMNS = ("item_id", "predicted", "confidence", "entropy", "margin", "score", "x", "y")


def store_predictions(session: Session, run_id: int, columns: Mapping[str, Sequence]) -> int:
    """Write a run's prediction rows in bulk, then its queue (`store_queue`); return the count.

    `columns` maps each name in PREDICTION_COLUMNS to one value per item (lists or numpy
    arrays of equal length). PostgreSQL through psycopg gets one COPY, other databases one
    executemany: at 70,000 rows, 1 to 2 s where SQLAlchemy's insert with a dict per row took
    4 to 8 s (mostly PostgreSQL's row-by-row foreign key checks now).
    """
    values = [_plain(columns[name]) for name in PREDICTION_COLUMNS]
    n = len(values[0])
    if any(len(v) != n for v in values):
        raise ValueError("Every prediction column needs one value per item.")
    connection = session.connection()
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        names = ", ".join(("run_id", *PREDICTION_COLUMNS))
        # COPY's text format, built in one go: psycopg's write_row per row took 1.4 s here.
        # Python's str() of a float round-trips, and PostgreSQL reads nan and inf.
        lines = "".join(f"{run_id}\t" + "\t".join(map(str, row)) + "\n" for row in zip(*values, strict=True))
        cursor = connection.connection.driver_connection.cursor()
        with cursor, cursor.copy(f"COPY {Prediction.__tablename__} ({names}) FROM STDIN") as copy:
            copy.write(lines)
    elif connection.dialect.name == "sqlite":
        # The driver's executemany with plain tuples: building a dict per row for SQLAlchemy
        # took most of the 4 s that 70,000 rows cost through insert(Prediction).
        names = ", ".join(("run_id", *PREDICTION_COLUMNS))
        marks = ", ".join("?" * (1 + len(PREDICTION_COLUMNS)))
        connection.exec_driver_sql(
            f"INSERT INTO {Prediction.__tablename__} ({names}) VALUES ({marks})",
            [(run_id, *row) for row in zip(*values, strict=True)],
        )
    elif n:
        rows = [
            dict(zip(PREDICTION_COLUMNS, row, strict=True), run_id=run_id)
            for row in zip(*values, strict=True)
        ]
        session.execute(insert(Prediction), rows)
    store_queue(session, run_id)
    return n


def _plain(values: Sequence) -> list:
    """Python ints and floats (numpy scalars are not what every driver adapts)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def store_queue(session: Session, run_id: int) -> None:
    """Write the run's queue order (`QueuePosition`) from its stored predictions, in one
    INSERT ... SELECT: pool and audit items by score, highest first, then by row, which is the
    order `labeler.queue.next_items` used to sort on every call."""
    position = func.row_number().over(order_by=(Prediction.score.desc(), Item.row))
    ranked = (
        select(Prediction.run_id, position, Prediction.item_id)
        .join(Item, Item.id == Prediction.item_id)
        .where(Prediction.run_id == run_id, Item.split.in_((POOL, AUDIT)))
    )
    session.execute(delete(QueuePosition).where(QueuePosition.run_id == run_id))
    session.execute(insert(QueuePosition).from_select(["run_id", "position", "item_id"], ranked))
    analyze(session, QueuePosition.__tablename__)


# -- what one worker run reads and writes ---------------------------------------------------------


@dataclass
class RoundInputs:
    """What a worker needs from the database to train run `run_id` (items in row order)."""

    run_id: int
    project_id: int
    model: str
    run_settings: dict[str, Any]
    project_settings: dict[str, Any]
    num_classes: int
    item_ids: list[int]
    rows: list[int]
    splits: list[str]
    truth: list[int]  # -1 unknown
    labels: list[int]  # each item's current answer usable here: pool labels and audit labels, -1 none
    previous_checkpoint: str | None  # of the project's newest DONE run of the same model
    labels_upto: int = 0  # the project's newest answer event when the labels were read (0: none)


def round_inputs(session: Session, run_id: int) -> RoundInputs | None:
    """The run's project, items, labels and previous checkpoint; None when the run is gone.
    Pool labels (`pool_labels`) are what training may use; audit labels only measure."""
    from .queries import class_names, current_labels

    run = session.get(Run, run_id)
    if run is None:
        return None
    project = session.get(Project, run.project_id)
    items = session.execute(
        select(Item.id, Item.row, Item.split, Item.truth)
        .where(Item.project_id == project.id)
        .order_by(Item.row)
    ).all()
    upto = session.scalar(select(func.max(LabelEvent.id)).where(LabelEvent.project_id == project.id)) or 0
    trained, answered = pool_labels(session, project.id), current_labels(session, project.id)
    previous = latest_done_run(session, project.id, run.model)
    return RoundInputs(
        run_id=run.id,
        project_id=project.id,
        model=run.model,
        run_settings=dict(run.settings or {}),
        project_settings=dict(project.settings or {}),
        num_classes=len(class_names(session, project.id)),
        item_ids=[item.id for item in items],
        rows=[item.row for item in items],
        splits=[item.split for item in items],
        truth=[-1 if item.truth is None else item.truth for item in items],
        labels=[
            trained.get(item.id, -1)
            if item.split == POOL
            else answered.get(item.id, -1)
            if item.split == AUDIT
            else -1
            for item in items
        ],
        previous_checkpoint=previous.checkpoint if previous is not None and previous.checkpoint else None,
        labels_upto=int(upto),
    )


def start_training(
    session: Session, run_id: int, labels_used: int, worker: str, labels_upto: int = 0
) -> None:
    """The run's labels are read: how many it trains on, its worker, and (in its metrics until it
    ends) the newest answer event it read, for `running_with_undone`."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(labels_used=labels_used, worker=worker, metrics={"labels_upto": labels_upto})
    )


def beat(session: Session, run_id: int) -> None:
    """Refresh the run's heartbeat: its worker is alive."""
    session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=queries_now(session)))


def record_progress(
    session: Session, run_id: int, step: int, fraction: float, seconds: float, losses: Mapping[str, float]
) -> bool:
    """Store progress and loss points (and a heartbeat); True when a cancel was requested or the
    run is gone."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(
            step=int(step),
            progress=float(fraction),
            seconds=float(seconds),
            heartbeat_at=queries_now(session),
        )
    )
    add_metrics(session, run_id, step, seconds, {k: float(v) for k, v in losses.items()})
    cancel = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
    return cancel is None or bool(cancel)


def audit_now(
    session: Session, project_id: int, item_ids: Sequence[int], predicted: Sequence[int]
) -> tuple[int, int]:
    """(answered, right): the project's audit images as they are answered now ("ignore" answers
    left out) against `predicted` (one class per item of `item_ids`). A run's audit accuracy is
    measured on these when it is stored, so answers given or corrected while it trained count
    (the README's "labeled when it finished"; it used the answers of its start)."""
    answers = dict(
        session.execute(
            current_answers_query(project_id, LabelEvent.item_id, LabelEvent.class_index)
            .join(Item, Item.id == LabelEvent.item_id)
            .where(Item.split == AUDIT, LabelEvent.class_index != IGNORED)
        ).all()
    )
    pairs = [(answers[item], int(guess)) for item, guess in zip(item_ids, predicted) if item in answers]
    return len(pairs), sum(answer == guess for answer, guess in pairs)


def store_round(
    session: Session,
    run_id: int,
    columns: Mapping[str, Sequence],
    *,
    checkpoint: str,
    step: int,
    seconds: float,
    test_accuracy: float | None,
    audit_n: int,
    audit_accuracy: float | None,
    audit_interval: tuple[float | None, float | None],
    metrics: dict[str, Any],
) -> str:
    """Store a finished round: its predictions and queue, accuracies and metrics, and mark the
    run DONE. Returns DONE, CANCELLED (a cancel arrived meanwhile: nothing stored) or "deleted";
    for a run no longer RUNNING, its status, storing nothing: a retry after a commit whose answer
    was lost (the worker tries again through a database outage) found it DONE and stored the
    predictions twice, and a run marked interrupted meanwhile was turned DONE."""
    run = session.get(Run, run_id)
    if run is None:
        return "deleted"
    if run.status != RUNNING:
        return run.status
    if run.cancel_requested:
        run.status, run.finished_at, run.seconds = CANCELLED, queries_now(session), seconds
        return CANCELLED
    started = time.monotonic()
    store_predictions(session, run_id, columns)
    metrics = {
        **metrics,
        "timing": {**metrics.get("timing", {}), "store_s": round(time.monotonic() - started, 3)},
    }
    run.status = DONE
    run.finished_at = run.heartbeat_at = queries_now(session)
    run.progress, run.step, run.seconds = 1.0, int(step), seconds
    run.checkpoint = checkpoint
    run.test_accuracy = test_accuracy
    run.audit_n = audit_n or None
    run.audit_accuracy = audit_accuracy
    run.audit_low, run.audit_high = audit_interval
    run.metrics = metrics
    return DONE


def end_run(
    session: Session, run_id: int, status: str, seconds: float, error: str | None, notes: Sequence[str] = ()
) -> None:
    """Mark a RUNNING run failed, cancelled or interrupted, with its cause and notes."""
    run = session.get(Run, run_id)
    if run is None or run.status != RUNNING:
        return
    run.status, run.finished_at, run.seconds, run.error = status, queries_now(session), seconds, error
    if notes:
        run.metrics = {**(run.metrics or {}), "notes": list(notes)}
