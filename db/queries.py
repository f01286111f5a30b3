"""Queries on projects, items and labels.

Each function takes the session first and never commits: the caller owns the transaction
(`with Session.begin():`), so one answer is one committed transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import and_, case, delete, exists, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import (
    AUDIT,
    DONE,
    IGNORED,
    POOL,
    AppliedAnswer,
    Claim,
    ImportIssue,
    Item,
    LabelClass,
    LabelEvent,
    Prediction,
    Project,
    QueuePosition,
    Run,
    utcnow,
)

log = logging.getLogger(__name__)


def now(session: Session):
    """The time for stamps that several machines compare (claims' ends, runs' heartbeats and
    finishes), naive UTC: on PostgreSQL the database server's clock, one for every app server
    and worker (each used its own: a server whose clock ran 5 minutes ahead saw every claim the
    others wrote as run out, and took the images on their screens; review); on SQLite, which
    serves one machine, this one's."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(text("SELECT CAST(clock_timestamp() AT TIME ZONE 'UTC' AS timestamp)"))
    return utcnow()


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


MAX_CLASS_NAME = 200  # LabelClass.name is String(200); PostgreSQL enforces it, SQLite would not


def check_text_name(name: str, what: str, max_length: int) -> str:
    """`name` without surrounding spaces, or a ValueError saying what is allowed, in one
    sentence that starts with `what` ("A class name"). Any other character is kept as typed:
    names are data, shown escaped and bound as SQL parameters."""
    name = (name or "").strip()
    if not name:
        raise ValueError(f"{what} cannot be empty.")
    if len(name) > max_length:
        raise ValueError(f"{what} can be at most {max_length} characters long; this one has {len(name)}.")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} cannot contain line breaks, tabs or other control characters.")
    return name


def check_class_name(name: str) -> str:
    return check_text_name(name, "A class name", MAX_CLASS_NAME)


def case_twin(name: str, others: Sequence[str]) -> str | None:
    """Another class name that differs from `name` only in case ("star" beside "Star"), or None:
    allowed ("a" and "A" are two classes of letters), and said where a class is added, renamed
    or imported, since it is more often a slip (an exploratory session added both)."""
    return next((other for other in others if other != name and other.casefold() == name.casefold()), None)


def _check_new_name(name: str, others: Sequence[str]) -> None:
    if name in others:
        raise ValueError(f"There is already a class named {name!r}.")


def add_class(session: Session, project_id: int, name: str) -> LabelClass:
    name = check_class_name(name)
    _check_new_name(name, class_names(session, project_id))
    index = session.scalar(
        select(func.coalesce(func.max(LabelClass.index) + 1, 0)).where(LabelClass.project_id == project_id)
    )
    label_class = LabelClass(project_id=project_id, index=index, name=name)
    session.add(label_class)
    session.flush()
    return label_class


def rename_class(session: Session, project_id: int, index: int, new_name: str) -> None:
    new_name = check_class_name(new_name)
    _check_new_name(new_name, [n for i, n in enumerate(class_names(session, project_id)) if i != index])
    session.execute(
        update(LabelClass)
        .where(LabelClass.project_id == project_id, LabelClass.index == index)
        .values(name=new_name)
    )


def analyze(session: Session, *tables: str) -> None:
    """After a bulk write, refresh PostgreSQL's planner statistics of `tables` in the same
    transaction. Until autovacuum gets round to it, a freshly loaded table looks empty to the
    planner, which then picks row-by-row plans that made one queue read take 2 s on 70,000
    images. SQLite plans without statistics: nothing to do."""
    if session.get_bind().dialect.name == "postgresql":
        for table in tables:
            session.execute(text(f"ANALYZE {table}"))


def import_issues(session: Session, project_id: int, limit: int | None = None) -> list[ImportIssue]:
    """The files and folders the project's import skipped, in the order it met them (the first
    `limit` of them: a folder with a sidecar file per image can have a million)."""
    query = select(ImportIssue).where(ImportIssue.project_id == project_id).order_by(ImportIssue.id)
    return list(session.scalars(query.limit(limit)))


def import_issue_counts(session: Session, project_id: int) -> tuple[int, int]:
    """(files, folders) the project's import skipped: a path ending in "/" is a folder (a class
    folder with no image imported, a hidden folder)."""
    folder = case((ImportIssue.path.like("%/"), 1), else_=0)
    total, folders = session.execute(
        select(func.count(), func.coalesce(func.sum(folder), 0)).where(ImportIssue.project_id == project_id)
    ).one()
    return int(total) - int(folders), int(folders)


# Labels --------------------------------------------------------------------------------------


def _current_event_ids(project_id: int):
    """Subquery: the newest not-undone event id per item of the project."""
    return (
        select(func.max(LabelEvent.id).label("event_id"))
        .where(LabelEvent.project_id == project_id, LabelEvent.undone.is_(False))
        .group_by(LabelEvent.item_id)
        .subquery()
    )


def current_answers_query(project_id: int, *columns):
    """SELECT `columns` of every item's current answer (its newest event not undone), to refine
    with more joins and conditions (evaluate.py's agreement with the guesses does)."""
    newest = _current_event_ids(project_id)
    return select(*columns).join(newest, LabelEvent.id == newest.c.event_id)


def current_labels(session: Session, project_id: int, ignored: bool = False) -> dict[int, int]:
    """{item_id: class_index} of every currently labeled item. Images answered "ignore" are left
    out (they are in no class), unless `ignored`, which keeps them with class IGNORED."""
    query = current_answers_query(project_id, LabelEvent.item_id, LabelEvent.class_index)
    if not ignored:
        query = query.where(LabelEvent.class_index != IGNORED)
    return {item_id: class_index for item_id, class_index in session.execute(query)}


def current_answers(session: Session, project_id: int) -> dict[int, tuple[int, int]]:
    """{item_id: (event id, class index)} of every item's current answer, "ignore" answers
    (IGNORED) included: what a page shows, so a later write can check it is still the same."""
    query = current_answers_query(project_id, LabelEvent.item_id, LabelEvent.id, LabelEvent.class_index)
    return {item_id: (event_id, class_index) for item_id, event_id, class_index in session.execute(query)}


def current_event(session: Session, item_id: int) -> LabelEvent | None:
    """The item's newest event that is not undone (its current answer), or None."""
    return session.scalars(
        select(LabelEvent)
        .where(LabelEvent.item_id == item_id, LabelEvent.undone.is_(False))
        .order_by(LabelEvent.id.desc())
        .limit(1)
    ).first()


def applied_event(session: Session, item_id: int, action: str) -> LabelEvent | None:
    """The event the labeling box's action `action` wrote for the item, or None (`AppliedAnswer`)."""
    return session.scalar(
        select(LabelEvent)
        .join(AppliedAnswer, AppliedAnswer.event_id == LabelEvent.id)
        .where(AppliedAnswer.item_id == item_id, AppliedAnswer.action == action)
    )


def record_applied(session: Session, event: LabelEvent, action: str) -> None:
    """Keep that the box's action `action` wrote `event` (a label), or took it back (an undo
    that names no image, so that sent again after a reload it takes back nothing more)."""
    session.add(AppliedAnswer(item_id=event.item_id, action=action, event_id=event.id))


def applied_events(session: Session, action: str, item_ids: Sequence[int]) -> list[LabelEvent]:
    """The events written under `action` (`record_applied`) for these images, e.g. by one grid
    page's accept (by image too: the table's index starts with the image)."""
    return list(
        session.scalars(
            select(LabelEvent)
            .join(AppliedAnswer, AppliedAnswer.event_id == LabelEvent.id)
            .where(AppliedAnswer.item_id.in_(list(item_ids)), AppliedAnswer.action == action)
            .order_by(LabelEvent.id)
        )
    )


def applied_by(session: Session, action: str) -> tuple[int, int] | None:
    """(image, event) of the box's action `action` (`record_applied`), for an action that names
    no image; None when it was never applied."""
    row = session.execute(
        select(AppliedAnswer.item_id, AppliedAnswer.event_id).where(AppliedAnswer.action == action).limit(1)
    ).first()
    return None if row is None else (row.item_id, row.event_id)


def label_count(session: Session, project_id: int) -> int:
    """The images with a current answer ("ignore" answers included)."""
    newest = _current_event_ids(project_id)
    return session.scalar(select(func.count()).select_from(newest)) or 0


def ignored_count(session: Session, project_id: int) -> int:
    """The images whose current answer is "ignore" (answered, in no class: no label)."""
    newest = _current_event_ids(project_id)
    query = (
        select(func.count())
        .select_from(LabelEvent)
        .join(newest, LabelEvent.id == newest.c.event_id)
        .where(LabelEvent.class_index == IGNORED)
    )
    return session.scalar(query) or 0


NEWEST = "newest"  # add_label's guess: the newest finished run's prediction for the image


def add_label(
    session: Session,
    item: Item | int,
    class_index: int,
    annotator: str = "anonymous",
    kind: str = "single",
    guess: tuple[int, int] | str | None = NEWEST,
) -> LabelEvent:
    """Append a label event for one item, recording the model's guess for it: `guess` (run id,
    class) is the one the page showed with the image (kept only if that run did predict that
    class for it), None that no guess was shown, NEWEST the newest finished run's prediction
    (where the caller does not know what was shown). `class_index` IGNORED answers "not any
    class": kept in the history, never trained on."""
    item = session.get(Item, item) if isinstance(item, int) else item
    if item is None:
        raise ValueError("That image does not exist any more.")
    n_classes = session.scalar(select(func.count()).where(LabelClass.project_id == item.project_id))
    if int(class_index) != IGNORED and not 0 <= int(class_index) < n_classes:
        raise ValueError(f"Class {class_index} does not exist: this project has {n_classes} classes.")
    if isinstance(guess, tuple):
        run_id = guess[0]
    elif guess == NEWEST:
        run_id = latest_done_run_id(session, item.project_id)
    else:
        run_id = None
    predicted = None
    if run_id is not None:
        predicted = session.scalar(
            select(Prediction.predicted).where(Prediction.run_id == run_id, Prediction.item_id == item.id)
        )
    if isinstance(guess, tuple) and predicted != guess[1]:
        predicted = None  # not what that run guessed for this image: no guess is known
    event = LabelEvent(
        project_id=item.project_id,
        item_id=item.id,
        class_index=int(class_index),
        annotator=annotator,
        kind=kind,
        predicted_index=predicted,
        predicted_run_id=run_id if predicted is not None else None,
        created_at=now(session),  # compared with runs' starts (`runs.labels_since_last_run`)
    )
    session.add(event)
    # Answered: the image no longer needs to be kept from other annotators.
    session.execute(delete(Claim).where(Claim.item_id == item.id))
    session.flush()
    return event


def lock_for_write(session: Session) -> None:
    """On SQLite, take the database's write lock now (BEGIN IMMEDIATE), so that what this
    transaction reads next stays true until it commits. Python's sqlite3 driver begins a
    transaction only at the first write: the reads before it hold no lock, so two sessions could
    both read "no answer yet" and both write one, the second silently replacing the first.
    Nothing elsewhere: on PostgreSQL the row locks of `lock_item` do this per image. Call it
    before the transaction's first read: once the driver is in a transaction (a write, which holds
    the lock already, or a SAVEPOINT, which does not) nothing is taken here."""
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits for another writer (busy timeout)


def lock_item(session: Session, item_id: int) -> Item | None:
    """The item, locked until the transaction ends (None if it is gone): a check such as "it has
    no answer" or "its answer is still the one shown" then holds for the write that follows.
    SELECT ... FOR UPDATE on PostgreSQL, the database's write lock on SQLite (`lock_for_write`)."""
    lock_for_write(session)
    return session.get(Item, item_id, with_for_update=True)


def add_label_if_unlabeled(session: Session, item: Item | int, class_index: int, **how) -> LabelEvent | None:
    """`add_label` (`how`: its annotator, kind and guess), unless the item has a current answer
    already (given by anyone, e.g. after this person's page was drawn): then nothing is written
    and None is returned, so an answer meant for an unlabeled image never replaces somebody's
    label."""
    item_id = item if isinstance(item, int) else item.id
    # Locked first: two transactions could otherwise both see no answer and both write one.
    locked = lock_item(session, item_id)
    if locked is None or current_event(session, item_id) is not None:
        return None
    return add_label(session, locked, class_index, **how)


# What `relabel_as_shown` did with one item.
LABELED, REPLACED, SAME, CHANGED = "labeled", "replaced", "same", "changed"


def relabel_as_shown(
    session: Session,
    item_id: int,
    class_index: int,
    shown_event: int | None,
    annotator: str = "anonymous",
    kind: str = "bulk",
) -> tuple[LabelEvent | None, str, LabelEvent | None]:
    """Give the item `class_index` over whatever answer it has, as long as that answer is still
    the one a page showed (`shown_event`: its event id, None for no answer). Returns (the event
    written or None, what happened, the answer it found): LABELED (it had none), REPLACED,
    SAME (it has this class already: nothing written, so the answer stays its giver's) or
    CHANGED (answered, undone or corrected since the page was drawn, or gone: left alone)."""
    events, done = label_many(session, [item_id], class_index, annotator, kind, {int(item_id): shown_event})
    what, found = done[int(item_id)]
    return (events[0] if events else None), what, found


def add_labels(
    session: Session,
    item_ids: Iterable[int],
    class_index: int,
    annotator: str = "anonymous",
    kind: str = "bulk",
    relabel: bool = False,
) -> list[LabelEvent]:
    """Label many items at once; items that have an answer already are left as they are unless
    `relabel`. Returns the events written (`label_many`, in bulk)."""
    ids = [int(i) for i in item_ids]
    shown = None
    if relabel:  # whatever answer each has now (read under the write lock)
        lock_for_write(session)
        shown = {
            item_id: (event.id if event else None) for item_id, event in _current_events(session, ids).items()
        }
        shown.update({i: None for i in ids if i not in shown})
    events, _ = label_many(session, ids, class_index, annotator, kind, shown)
    return events


BULK_CHUNK = 5_000  # ids per IN (...) list: below SQLite's and PostgreSQL's parameter limits


def _chunks(rows: Sequence) -> Iterator[list]:
    """`rows` (ids, or rows to insert) BULK_CHUNK at a time."""
    for start in range(0, len(rows), BULK_CHUNK):
        yield list(rows[start : start + BULK_CHUNK])


def _current_events(session: Session, item_ids: Sequence[int]) -> dict[int, LabelEvent]:
    """{item: its current answer (newest event not undone)} for those of `item_ids` that have one."""
    found: dict[int, LabelEvent] = {}
    for chunk in _chunks(item_ids):
        newest = (
            select(func.max(LabelEvent.id))
            .where(LabelEvent.item_id.in_(chunk), LabelEvent.undone.is_(False))
            .group_by(LabelEvent.item_id)
        )
        found.update(
            {e.item_id: e for e in session.scalars(select(LabelEvent).where(LabelEvent.id.in_(newest)))}
        )
    return found


def label_many(
    session: Session,
    item_ids: Sequence[int],
    class_index: int,
    annotator: str,
    kind: str = "bulk",
    shown: dict[int, int | None] | None = None,
) -> tuple[list[LabelEvent], dict[int, tuple[str, LabelEvent | None]]]:
    """Give the items (of one project) `class_index` in a few statements per 5,000 images, where
    one at a time (`add_label`) took 17 minutes for 60,000 (an exploratory session; its cost grew
    with the square of the count) and held the database's write lock all that time.

    shown None: only items with no answer are labeled (`add_label_if_unlabeled`). Else
    {item: the event id of the answer a page showed, None for none}: an item is labeled only
    while that is still its answer, as `relabel_as_shown` does. Returns (the events written, in
    the order of `item_ids`; {item: (LABELED, REPLACED, SAME or CHANGED, the answer found)}).
    Rows locked as `lock_item` locks them (every item's row on PostgreSQL, in id order)."""
    ids = list(dict.fromkeys(int(i) for i in item_ids))
    if not ids:
        return [], {}
    lock_for_write(session)
    project_ids: dict[int, int] = {}
    for chunk in _chunks(sorted(ids)):
        query = select(Item.id, Item.project_id).where(Item.id.in_(chunk)).order_by(Item.id)
        if session.get_bind().dialect.name == "postgresql":
            # FOR NO KEY UPDATE: a claim inserted meanwhile (its foreign key takes a key-share lock
            # on the item) does not wait for the bulk label, nor deadlock with it (review).
            query = query.with_for_update(key_share=True)
        project_ids.update(dict(session.execute(query).all()))
    current = _current_events(session, [i for i in ids if i in project_ids])
    what: dict[int, tuple[str, LabelEvent | None]] = {}
    wanted = []
    for item_id in ids:
        found = current.get(item_id)
        if item_id not in project_ids:
            what[item_id] = (CHANGED, None)
        elif shown is None:
            what[item_id] = (LABELED, None) if found is None else (CHANGED, found)
        elif (found.id if found is not None else None) != shown.get(item_id):
            what[item_id] = (CHANGED, found)
        elif found is not None and found.class_index == int(class_index):
            what[item_id] = (SAME, found)
        else:
            what[item_id] = (REPLACED if found is not None else LABELED, found)
        if what[item_id][0] in (LABELED, REPLACED):
            wanted.append(item_id)
    if not wanted:
        return [], what
    projects = {project_ids[i] for i in wanted}
    for pid in projects:
        n_classes = session.scalar(select(func.count()).where(LabelClass.project_id == pid))
        if int(class_index) != IGNORED and not 0 <= int(class_index) < n_classes:
            raise ValueError(f"Class {class_index} does not exist: this project has {n_classes} classes.")
    guesses: dict[int, tuple[int, int]] = {}  # item: (run, class) of its project's newest run
    for pid in projects:
        run_id = latest_done_run_id(session, pid)
        if run_id is None:
            continue
        mine = [i for i in wanted if project_ids[i] == pid]
        for chunk in _chunks(mine):
            rows = session.execute(
                select(Prediction.item_id, Prediction.predicted).where(
                    Prediction.run_id == run_id, Prediction.item_id.in_(chunk)
                )
            )
            guesses.update({item_id: (run_id, predicted) for item_id, predicted in rows})
    stamp = now(session)
    session.flush()
    before = session.scalar(select(func.max(LabelEvent.id))) or 0
    rows = [
        {
            "project_id": project_ids[i],
            "item_id": i,
            "class_index": int(class_index),
            "annotator": annotator,
            "kind": kind,
            "predicted_index": guesses[i][1] if i in guesses else None,
            "predicted_run_id": guesses[i][0] if i in guesses else None,
            "created_at": stamp,
            "undone": False,
        }
        for i in wanted
    ]
    written: dict[int, LabelEvent] = {}
    for chunk in _chunks(rows):
        # One executemany: the ORM's flush of new objects sent one INSERT per row on SQLite.
        session.execute(insert(LabelEvent), chunk)
        items = [row["item_id"] for row in chunk]
        # The rows just written (the items' rows are locked, so no other writer adds to them).
        query = select(LabelEvent).where(
            LabelEvent.id > before,
            LabelEvent.item_id.in_(items),
            LabelEvent.annotator == annotator,
            LabelEvent.kind == kind,
            LabelEvent.created_at == stamp,
        )
        written.update({e.item_id: e for e in session.scalars(query.order_by(LabelEvent.id))})
        session.execute(delete(Claim).where(Claim.item_id.in_(items)))  # answered: no longer kept
    return [written[i] for i in wanted], what


def undo_events(session: Session, event_ids: Iterable[int], annotator: str) -> list[LabelEvent]:
    """Mark the given events as undone, those of `annotator` that are not undone yet; return them.
    Callers pass the events one person gave (in this browser session), so an undo can never
    take back another person's answer."""
    ids = [int(i) for i in event_ids]
    if not ids:
        return []
    events = [
        event
        for chunk in _chunks(ids)  # PostgreSQL takes at most 65,535 parameters (`unanswered`)
        for event in session.scalars(
            select(LabelEvent).where(
                LabelEvent.id.in_(chunk), LabelEvent.annotator == annotator, LabelEvent.undone.is_(False)
            )
        )
    ]
    undone_at = now(session)
    for event in events:
        event.undone = True
        event.undone_at = undone_at
    session.flush()
    return events


def label_history(
    session: Session,
    project_id: int,
    class_index: int | None = None,
    annotator: str | None = None,
    disagree_with: int | None = None,
    limit: int = 200,
    before: int | None = None,
) -> list[tuple[LabelEvent, Item]]:
    """Current answers, newest first (older than the event `before`, for the next page: an
    answer corrected or undone on a newer page does not shift one past the person), for browsing
    and correcting: optionally one class, one annotator, or only answers to pool images whose
    class the finished run `disagree_with` (the newest, on the History page) does not predict:
    likely mistakes, whatever the answer was given with (the guess shown then left out answers
    given before any run, in bulk or to audit images). Audit answers are left out there:
    correcting only those the model disputes would flatter the audit accuracy. So are answers
    in a class added after that run trained, which it cannot predict (where the run recorded
    its classes)."""
    newest = _current_event_ids(project_id)
    query = (
        select(LabelEvent, Item)
        .join(newest, LabelEvent.id == newest.c.event_id)
        .join(Item, Item.id == LabelEvent.item_id)
        .order_by(LabelEvent.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(LabelEvent.id < before)
    if class_index is not None:
        query = query.where(LabelEvent.class_index == class_index)
    if annotator is not None:
        query = query.where(LabelEvent.annotator == annotator)
    if disagree_with is not None:
        query = query.join(
            Prediction, and_(Prediction.run_id == disagree_with, Prediction.item_id == LabelEvent.item_id)
        ).where(
            Item.split == POOL,
            LabelEvent.class_index != IGNORED,
            Prediction.predicted != LabelEvent.class_index,
        )
        run = session.get(Run, disagree_with)
        known = (run.metrics or {}).get("classes") if run is not None else None
        if isinstance(known, int):
            query = query.where(LabelEvent.class_index < known)
    return [(event, item) for event, item in session.execute(query)]


def last_project_of(session: Session, annotator: str) -> int | None:
    """The project of `annotator`'s newest answer (undone ones too), or None."""
    return session.scalar(
        select(LabelEvent.project_id)
        .where(LabelEvent.annotator == annotator)
        .order_by(LabelEvent.id.desc())
        .limit(1)
    )


def annotator_counts(session: Session, project_id: int) -> dict[str, int]:
    """{annotator: number of current answers they gave} (ignored images included)."""
    newest = _current_event_ids(project_id)
    rows = session.execute(
        select(LabelEvent.annotator, func.count())
        .join(newest, LabelEvent.id == newest.c.event_id)
        .group_by(LabelEvent.annotator)
    )
    return {name: count for name, count in rows}


def history(session: Session, item_id: int) -> Sequence[LabelEvent]:
    return list(
        session.scalars(select(LabelEvent).where(LabelEvent.item_id == item_id).order_by(LabelEvent.id))
    )


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


def labelable_count(session: Session, project_id: int) -> int:
    """The images a person can label (pool and audit; a built-in set's test split is never shown)."""
    return (
        session.scalar(
            select(func.count()).where(Item.project_id == project_id, Item.split.in_((POOL, AUDIT)))
        )
        or 0
    )


def done_runs_newest_first(project_id: int, *columns):
    """SELECT `columns` (default: the Run) of the project's finished runs, newest first: the one
    order that "the newest run" and "the newest five keep their predictions" both mean."""
    return (
        select(*(columns or (Run,)))
        .where(Run.project_id == project_id, Run.status == DONE)
        .order_by(Run.finished_at.desc(), Run.id.desc())
    )


def latest_done_run_id(session: Session, project_id: int) -> int | None:
    return session.scalar(done_runs_newest_first(project_id, Run.id).limit(1))


def unlabeled_candidates(
    session: Session, project_id: int, splits: tuple[str, ...] = (POOL, AUDIT)
) -> select:
    """A select of unlabeled items that may be shown to a person (never the test split)."""
    labeled = select(LabelEvent.item_id).where(
        LabelEvent.project_id == project_id, LabelEvent.undone.is_(False)
    )
    return select(Item).where(Item.project_id == project_id, Item.split.in_(splits), Item.id.not_in(labeled))


def count_unlabeled(session: Session, project_id: int, splits: tuple[str, ...]) -> int:
    return session.scalar(
        select(func.count()).select_from(unlabeled_candidates(session, project_id, splits).subquery())
    )


def held_by_others(project_id: int, annotator: str, now) -> select:
    """A select of the item ids another annotator holds an unexpired claim on."""
    return select(Claim.item_id).where(
        Claim.project_id == project_id, Claim.annotator != annotator, Claim.expires_at > now
    )


def held_by_others_of(session: Session, project_id: int, annotator: str, now, item_ids) -> set[int]:
    """Which of `item_ids` another annotator holds an unexpired claim on."""
    if not item_ids:
        return set()
    return set(session.scalars(held_by_others(project_id, annotator, now).where(Claim.item_id.in_(item_ids))))


def token_tag(token: str) -> str:
    """A claim token ("name#token", labeler.ui.common.claimant), hashed: what a browser tab is
    given to name its session's claims without holding the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def take_over_claims(session: Session, project_id: int, item_ids, claimant: str, lost_tags) -> int:
    """Give `claimant` ("name#token") the claims on `item_ids` that the same name holds under
    a token whose `token_tag` is among `lost_tags` (browser sessions the server no longer has);
    return how many. Other sessions' claims, the same person's included, stay theirs."""
    lost_tags = set(lost_tags)
    name = claimant.rpartition("#")[0]
    lost = {
        claim.item_id: claim.annotator
        for claim in session.scalars(
            select(Claim).where(Claim.project_id == project_id, Claim.item_id.in_(list(item_ids)))
        )
        if claim.annotator != claimant
        and claim.annotator.rpartition("#")[0] == name
        and token_tag(claim.annotator.rpartition("#")[2]) in lost_tags
    }
    if not lost:
        return 0
    # Only while still the lost session's (PostgreSQL re-checks the WHERE on a row another
    # session claimed between the read and this write).
    return session.execute(
        update(Claim)
        .where(Claim.item_id.in_(list(lost)), Claim.annotator.in_(set(lost.values())))
        .values(annotator=claimant)
    ).rowcount


def claimed_by(session: Session, project_id: int, annotator: str, valid_until) -> set[int]:
    """The items `annotator` holds claims on that last at least until `valid_until`."""
    return set(
        session.scalars(
            select(Claim.item_id).where(
                Claim.project_id == project_id, Claim.annotator == annotator, Claim.expires_at > valid_until
            )
        )
    )


def queue_page(
    session: Session,
    project_id: int,
    splits: tuple[str, ...],
    limit: int,
    exclude: Iterable[int] = (),
    unclaimed_for: tuple[str, object] | None = None,
) -> list[tuple[Item, Prediction | None]]:
    """Up to `limit` unlabeled items of `splits` in queue order (`queue_selects`), those in
    `exclude` moved to the back; with `unclaimed_for` = (annotator, now), items another
    annotator holds are left out."""
    parts = queue_selects(session, project_id, splits)
    if unclaimed_for is not None:
        held = held_by_others(project_id, *unclaimed_for)
        parts = [part.where(Item.id.not_in(held)) for part in parts]
    exclude = set(exclude)
    return _first_k(_read(session, parts, limit + len(exclude)), None, exclude)[:limit]


def queue_selects(session: Session, project_id: int, splits: tuple[str, ...]) -> list:
    """Selects of (Item, Prediction or None) over the unlabeled items of `splits`, whose results
    read one after the other are the queue: the newest finished run's order (highest score
    first, then by row), or a fixed shuffled order while no model exists.

    After a run, the first select walks the run's stored `QueuePosition` rows by position, so a
    page costs an index range scan over the few rows at the head of the queue, not a sort of
    the pool. The second holds the items that have no position (a run stored before queues
    were, or images added after the run) in the same order as the first, and is read only
    when the first runs out.
    """
    # Correlated, so only the rows actually read are looked up (ix_label_events_item).
    unlabeled = ~exists().where(LabelEvent.item_id == Item.id, LabelEvent.undone.is_(False))
    wanted = and_(Item.project_id == project_id, Item.split.in_(splits), unlabeled)
    run_id = latest_done_run_id(session, project_id) if POOL in splits else None
    if run_id is None:
        # A deterministic pseudo-random order (not the file order) keyed by the image hash;
        # the (project_id, sha256) unique index serves it. Prediction is outer-joined on no
        # run at all, so every row has the same shape.
        return [
            select(Item, Prediction)
            .join(Prediction, and_(Prediction.item_id == Item.id, Prediction.run_id == -1), isouter=True)
            .where(wanted)
            .order_by(Item.sha256)
        ]
    with_prediction = and_(Prediction.item_id == Item.id, Prediction.run_id == run_id)
    queued = (
        select(Item, Prediction)
        .select_from(QueuePosition)
        .join(Item, Item.id == QueuePosition.item_id)
        .join(Prediction, with_prediction, isouter=True)
        .where(QueuePosition.run_id == run_id, wanted)
        .order_by(QueuePosition.position)
    )
    positioned = select(QueuePosition.item_id).where(QueuePosition.run_id == run_id)
    rest = (
        select(Item, Prediction)
        .join(Prediction, with_prediction, isouter=True)
        .where(wanted, Item.id.not_in(positioned))
        .order_by(Prediction.score.desc().nulls_last(), Item.row)
    )
    return [queued, rest]


def page_items(
    session: Session, project_id: int, item_ids: list[int]
) -> list[tuple[Item, Prediction | None]]:
    """The items `item_ids` of the project, in that order, each with the newest finished run's
    prediction (None without one)."""
    mine = and_(Item.project_id == project_id, Item.id.in_(item_ids))
    run_id = latest_done_run_id(session, project_id)
    with_prediction = and_(
        Prediction.item_id == Item.id, Prediction.run_id == (run_id if run_id is not None else -1)
    )
    rows = {
        item.id: (item, prediction)
        for item, prediction in session.execute(
            select(Item, Prediction).join(Prediction, with_prediction, isouter=True).where(mine)
        )
    }
    return [rows[i] for i in item_ids if i in rows]


def unanswered(session: Session, project_id: int, item_ids) -> set[int]:
    """Which of `item_ids` (items of the project) have no answer. In chunks: PostgreSQL takes at
    most 65,535 parameters, and an undone bulk label of 70,000 images failed (review)."""
    unlabeled = ~exists().where(LabelEvent.item_id == Item.id, LabelEvent.undone.is_(False))
    found: set[int] = set()
    for chunk in _chunks(list(item_ids)):
        found.update(
            session.scalars(
                select(Item.id).where(Item.project_id == project_id, Item.id.in_(chunk), unlabeled)
            )
        )
    return found


def _read(session: Session, parts: list, limit: int) -> list[tuple[Item, Prediction | None]]:
    """The first `limit` rows of the selects in `parts`, read one after the other."""
    rows: list[tuple[Item, Prediction | None]] = []
    for part in parts:
        if len(rows) >= limit:
            break
        rows += [(item, prediction) for item, prediction in session.execute(part.limit(limit - len(rows)))]
    return rows


def _first_k(rows, k: int | None, exclude: set[int]) -> list[tuple[Item, Prediction | None]]:
    """Rows in order, those in `exclude` moved to the back; the first k (all when k is None)."""
    picked: list[tuple[Item, Prediction | None]] = []
    deferred: list[tuple[Item, Prediction | None]] = []
    for item, prediction in rows:
        (deferred if item.id in exclude else picked).append((item, prediction))
        if k is not None and len(picked) >= k:
            break
    result = picked + deferred
    return result if k is None else result[:k]


def claim_items(
    session: Session,
    project_id: int,
    item_ids: list[int],
    annotator: str,
    k: int,
    now,
    expires,
    keep: Iterable[int] = (),
) -> set[int]:
    """Claim up to k of `item_ids` (in order) for `annotator` until `expires`; return the ids
    won. The annotator's other claims in the project are released (including any just taken on
    an item that turned out to be labeled meanwhile), but for those on `keep` (images still in
    this annotator's browser), which run to their own end. Written in the caller's transaction."""
    connection = session.connection()
    if connection.dialect.name in ("sqlite", "postgresql"):
        won = _claim_at_once(connection, project_id, item_ids, annotator, k, now, expires)
    else:
        won = _claim_one_by_one(connection, project_id, item_ids, annotator, k, now, expires)
    release_claims_but(session, project_id, annotator, set(won) | set(keep))
    return won


def renew_claims(session: Session, project_id: int, annotator: str, renew_before, expires) -> int:
    """Extend the annotator's claims in the project that end before `renew_before` to `expires`
    (an expired one too: it is still theirs until somebody else claims it); return how many.
    Read first: an UPDATE of no row takes SQLite's write lock all the same (every open tab asks
    every minute)."""
    due = (Claim.project_id == project_id, Claim.annotator == annotator, Claim.expires_at < renew_before)
    if session.scalar(select(Claim.item_id).where(*due).limit(1)) is None:
        return 0
    return session.execute(
        update(Claim).where(*due).values(expires_at=expires).execution_options(synchronize_session=False)
    ).rowcount


def release_claims_but(session: Session, project_id: int, annotator: str, held: set[int]) -> None:
    """Release the annotator's claims in the project but for those on `held`."""
    release = delete(Claim).where(Claim.project_id == project_id, Claim.annotator == annotator)
    if held:
        release = release.where(Claim.item_id.not_in(held))
    session.connection().execute(release)


def _claim_at_once(
    connection, project_id: int, item_ids: list[int], annotator: str, k: int, now, expires
) -> set[int]:
    """`claim_items`'s work in two statements: claim every candidate in one INSERT ... ON CONFLICT
    (a claim another annotator holds is left alone), then read which of those were answered
    meanwhile; the first k claimed and unanswered win (the caller releases the others)."""
    if connection.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    ids = list(dict.fromkeys(item_ids))  # PostgreSQL refuses to touch one row twice in a statement
    if not ids:
        return set()
    # An executemany of one cached single-row statement (SQLAlchemy sends it as multi-row
    # INSERTs): compiling a fresh 40-row statement cost more than running it.
    statement = insert(Claim).on_conflict_do_update(
        index_elements=[Claim.item_id],
        set_={"annotator": annotator, "expires_at": expires, "project_id": project_id},
        where=or_(Claim.annotator == annotator, Claim.expires_at <= now),
    )
    # In id order, whatever the queue order: two claimers then take the row locks they share
    # in the same order on PostgreSQL (a deadlock that still happens is retried by `retrying`).
    rows = [
        {"item_id": i, "project_id": project_id, "annotator": annotator, "expires_at": expires}
        for i in sorted(ids)
    ]
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT. A claim another
    # annotator holds is not updated and not returned, so concurrent claimers cannot both win.
    taken = set(connection.execute(statement.returning(Claim.item_id), rows).scalars())
    if not taken:
        return set()
    # Read after the claims are written: the candidate list may be older than a label another
    # annotator committed since (and with it the release of their claim).
    answered = set(
        connection.scalars(
            select(LabelEvent.item_id).where(LabelEvent.item_id.in_(taken), LabelEvent.undone.is_(False))
        )
    )
    return set([i for i in ids if i in taken and i not in answered][:k])


def _claim_one_by_one(
    connection, project_id: int, item_ids: list[int], annotator: str, k: int, now, expires
) -> set[int]:
    """`claim_items`'s work on other databases: claim in order until k are won."""
    won: set[int] = set()
    for item_id in item_ids:
        if len(won) >= k:
            break
        if not _take_claim(connection, project_id, item_id, annotator, now, expires):
            continue
        answered = select(LabelEvent.id).where(LabelEvent.item_id == item_id, LabelEvent.undone.is_(False))
        if connection.execute(answered.limit(1)).first() is None:
            won.add(item_id)
    return won


def _take_claim(connection, project_id: int, item_id: int, annotator: str, now, expires) -> bool:
    """Insert the claim, or take over one that is ours or has expired; False when another
    annotator holds it (databases without INSERT ... ON CONFLICT: see `_claim_at_once`)."""
    values = {"item_id": item_id, "project_id": project_id, "annotator": annotator, "expires_at": expires}
    # Other databases: update-or-insert, the primary key deciding a race.
    taken = connection.execute(
        update(Claim)
        .where(Claim.item_id == item_id, or_(Claim.annotator == annotator, Claim.expires_at <= now))
        .values(annotator=annotator, expires_at=expires, project_id=project_id)
    ).rowcount
    if taken:
        return True
    try:
        with connection.begin_nested():
            connection.execute(Claim.__table__.insert().values(**values))
        return True
    except IntegrityError:
        return False


def release_claims(session: Session, token: str, keep: Iterable[int] = ()) -> int:
    """Give back every image one browser tab holds, in every project: the claims of
    "name#token" (labeler.ui.common.claimant), whatever the name, but those on `keep` (they run
    out by themselves); return how many."""
    if not token:
        return 0
    query = delete(Claim).where(Claim.annotator.endswith(f"#{token}", autoescape=True))
    keep = list(keep)
    if keep:
        query = query.where(Claim.item_id.not_in(keep))
    return session.execute(query).rowcount
