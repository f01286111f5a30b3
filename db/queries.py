"""Queries on projects, items and labels.

Each function takes the session first and never commits: the caller owns the transaction
(`with Session.begin():`), so one answer is one committed transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from .models import (
    AUDIT,
    DONE,
    POOL,
    ImportIssue,
    Item,
    LabelClass,
    LabelEvent,
    Prediction,
    Project,
    Run,
    utcnow,
)


# Projects and classes -----------------------------------------------------------------------


def get_project(session: Session, name: str) -> Project | None:
    return session.scalars(select(Project).where(Project.name == name)).first()


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))


def class_names(session: Session, project_id: int) -> list[str]:
    rows = session.scalars(
        select(LabelClass.name).where(LabelClass.project_id == project_id).order_by(LabelClass.index)
    )
    return list(rows)


def add_class(session: Session, project_id: int, name: str) -> LabelClass:
    name = name.strip()
    if not name:
        raise ValueError("A class name cannot be empty.")
    if name in class_names(session, project_id):
        raise ValueError(f"There is already a class named {name!r}.")
    index = session.scalar(
        select(func.coalesce(func.max(LabelClass.index) + 1, 0)).where(LabelClass.project_id == project_id)
    )
    label_class = LabelClass(project_id=project_id, index=index, name=name)
    session.add(label_class)
    session.flush()
    return label_class


def rename_class(session: Session, project_id: int, index: int, new_name: str) -> None:
    new_name = new_name.strip()
    if not new_name:
        raise ValueError("A class name cannot be empty.")
    others = [n for i, n in enumerate(class_names(session, project_id)) if i != index]
    if new_name in others:
        raise ValueError(f"There is already a class named {new_name!r}.")
    session.execute(
        update(LabelClass)
        .where(LabelClass.project_id == project_id, LabelClass.index == index)
        .values(name=new_name)
    )


def import_issues(session: Session, project_id: int) -> list[ImportIssue]:
    return list(session.scalars(select(ImportIssue).where(ImportIssue.project_id == project_id)))


# Labels --------------------------------------------------------------------------------------


def _current_event_ids(project_id: int):
    """Subquery: the newest not-undone event id per item of the project."""
    return (
        select(func.max(LabelEvent.id).label("event_id"))
        .where(LabelEvent.project_id == project_id, LabelEvent.undone.is_(False))
        .group_by(LabelEvent.item_id)
        .subquery()
    )


def current_labels(session: Session, project_id: int) -> dict[int, int]:
    """{item_id: class_index} of every currently labeled item."""
    newest = _current_event_ids(project_id)
    rows = session.execute(
        select(LabelEvent.item_id, LabelEvent.class_index).join(newest, LabelEvent.id == newest.c.event_id)
    )
    return {item_id: class_index for item_id, class_index in rows}


def label_count(session: Session, project_id: int) -> int:
    newest = _current_event_ids(project_id)
    return session.scalar(select(func.count()).select_from(newest)) or 0


def add_label(
    session: Session,
    item: Item | int,
    class_index: int,
    annotator: str = "anonymous",
    kind: str = "single",
) -> LabelEvent:
    """Append a label event for one item, recording what the newest model predicted."""
    item = session.get(Item, item) if isinstance(item, int) else item
    if item is None:
        raise ValueError("That image does not exist any more.")
    n_classes = session.scalar(select(func.count()).where(LabelClass.project_id == item.project_id))
    if not 0 <= int(class_index) < n_classes:
        raise ValueError(f"Class {class_index} does not exist: this project has {n_classes} classes.")
    run_id = latest_done_run_id(session, item.project_id)
    predicted = None
    if run_id is not None:
        predicted = session.scalar(
            select(Prediction.predicted).where(Prediction.run_id == run_id, Prediction.item_id == item.id)
        )
    event = LabelEvent(
        project_id=item.project_id,
        item_id=item.id,
        class_index=int(class_index),
        annotator=annotator,
        kind=kind,
        predicted_index=predicted,
        predicted_run_id=run_id if predicted is not None else None,
    )
    session.add(event)
    session.flush()
    return event


def add_labels(
    session: Session, item_ids: Iterable[int], class_index: int, annotator: str = "anonymous", kind: str = "bulk"
) -> int:
    count = 0
    for item_id in item_ids:
        add_label(session, int(item_id), class_index, annotator=annotator, kind=kind)
        count += 1
    return count


def undo_last(session: Session, project_id: int, annotator: str) -> LabelEvent | None:
    """Mark this annotator's newest not-undone event as undone; return it (None if nothing)."""
    event = session.scalars(
        select(LabelEvent)
        .where(
            LabelEvent.project_id == project_id,
            LabelEvent.annotator == annotator,
            LabelEvent.undone.is_(False),
        )
        .order_by(LabelEvent.id.desc())
        .limit(1)
    ).first()
    if event is not None:
        event.undone = True
        event.undone_at = utcnow()
        session.flush()
    return event


def history(session: Session, item_id: int) -> Sequence[LabelEvent]:
    return list(session.scalars(select(LabelEvent).where(LabelEvent.item_id == item_id).order_by(LabelEvent.id)))


# Items and the queue -------------------------------------------------------------------------


def items(session: Session, project_id: int, split: str | None = None) -> list[Item]:
    query = select(Item).where(Item.project_id == project_id)
    if split is not None:
        query = query.where(Item.split == split)
    return list(session.scalars(query.order_by(Item.row)))


def count_items(session: Session, project_id: int, split: str | None = None) -> int:
    query = select(func.count()).select_from(Item).where(Item.project_id == project_id)
    if split is not None:
        query = query.where(Item.split == split)
    return session.scalar(query) or 0


def latest_done_run_id(session: Session, project_id: int) -> int | None:
    return session.scalar(
        select(Run.id)
        .where(Run.project_id == project_id, Run.status == DONE)
        .order_by(Run.finished_at.desc(), Run.id.desc())
        .limit(1)
    )


def unlabeled_candidates(session: Session, project_id: int, splits: tuple[str, ...] = (POOL, AUDIT)) -> select:
    """A select of unlabeled items that may be shown to a person (never the test split)."""
    labeled = select(LabelEvent.item_id).where(
        LabelEvent.project_id == project_id, LabelEvent.undone.is_(False)
    )
    return select(Item).where(
        Item.project_id == project_id, Item.split.in_(splits), Item.id.not_in(labeled)
    )


def next_items(
    session: Session, project_id: int, k: int = 1, exclude: Iterable[int] = (), seed: int = 0
) -> list[tuple[Item, Prediction | None]]:
    """The next k unlabeled items to show: the newest finished run's queue order (highest score
    first), or a fixed shuffled order while no model exists. Items in `exclude` (skipped, or
    handed to another annotator) come last."""
    exclude = set(exclude)
    candidates = unlabeled_candidates(session, project_id).subquery()
    run_id = latest_done_run_id(session, project_id)
    if run_id is not None:
        query = (
            select(Item, Prediction)
            .join(candidates, candidates.c.id == Item.id)
            .join(Prediction, and_(Prediction.item_id == Item.id, Prediction.run_id == run_id), isouter=True)
            .order_by(Prediction.score.desc().nulls_last(), Item.row)
        )
    else:
        # A deterministic pseudo-random order (not the file order) keyed by the image hash.
        query = select(Item, Prediction).join(candidates, candidates.c.id == Item.id).join(
            Prediction, and_(Prediction.item_id == Item.id, Prediction.run_id == -1), isouter=True
        ).order_by(Item.sha256)
    picked: list[tuple[Item, Prediction | None]] = []
    deferred: list[tuple[Item, Prediction | None]] = []
    for item, prediction in session.execute(query.limit(k + len(exclude))):
        (deferred if item.id in exclude else picked).append((item, prediction))
        if len(picked) >= k:
            break
    return (picked + deferred)[:k]
