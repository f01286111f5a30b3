"""What a person's answers do: the rules between the labeling screen and the database.

The Label page sends its answers as *actions*, each naming the image it was given for (the one
on screen when the key went down), so an answer can never land on another image however fast
the keys come and however late the page is redrawn:

- ``{"id": "...", "type": "label", "item": 17, "class": 3, "name": "cat", "guess": [5, 2]}``: label
  image 17 (class -1: ignore), given with run 5's guess of class 2 on screen (null: no guess;
  kept with the answer, for the Progress page's agreement). Applied only while the image has no answer; if somebody (or this person, a
  moment ago) has answered it since, nothing changes and a notice says so (no notice for the same
  answer sent again, below). `name` is the class's name as the page showed it: if the class was
  renamed since, the answer is refused, since the key may now mean something else.
- ``{"id": "...", "type": "undo", "item": 17, "of": "..."}``: take back this person's own answer
  to image 17 that the label action `of` wrote in this browser session, while it is still the
  image's answer; nothing else (not a correction or bulk label of the image made since). Never
  anyone else's.
- ``{"id": "...", "type": "undo_last"}``: take back this person's newest answer from the box in
  this browser session (the server's ledger), from a box drawn anew (after another mode or page
  and back) whose own undo history starts empty; its image comes back first (`Outcome.undone_last`).
  Sent again because the database's answer to its commit was lost, it takes back nothing more.
- ``{"id": "...", "type": "skip", "item": 17}``: show image 17 after the others.

`apply_actions` runs each new action in a committed transaction of its own and says what it
did; the page keeps the ids it has applied, so sending the same list again changes nothing.

The browser keeps answers it has not seen acknowledged in the tab and sends them again after a
reload (marked ``"again": true``), to a new server session that never saw them. Every label
applied is stored with its action id (`AppliedAnswer`), so a label applied before is taken as
given, without a notice (even if its class was renamed since), and an undo takes back the event
its label action wrote, if that is still the image's answer, though this server session never
saw it, and nothing else: not an identical answer given meanwhile in another tab under the same
name. A label this person gave in another tab, with the same class, is also taken as given. (An
undo from a page made before undos named their answer takes back this session's newest answer
entry covering the image; kept across a reload it names a class: this person's single answer of
that class is taken back, the rule then.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import db
from db import queries
from db.models import IGNORED, LabelClass, LabelEvent

ID_LENGTH = 100  # the longest action id kept (`AppliedAnswer.action`); the box's are about 20


@dataclass
class Ledger:
    """What one browser session has done: the action ids applied, and the events it wrote, one
    entry per answer (a grid page or a bulk label is one entry), newest last, for undo."""

    applied: set[str] = field(default_factory=set)
    entries: list[list[int]] = field(default_factory=list)
    item_of_event: dict[int, int] = field(default_factory=dict)
    kind_of_event: dict[int, str] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)
    # Streamlit's fast reruns start a new script run before the old one has stopped, so two
    # runs of one browser session can apply the same list at once: one at a time, then.
    # Reentrant: `record` takes it too, also when called under it (the box's answers).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def record(self, events) -> None:
        # Under the lock: an undo replaces `entries` with a new list under it, and a grid page,
        # History correction or bulk label recorded at that moment by another run of the
        # session was lost from the undo list (review).
        with self.lock:
            if events:
                self.entries.append([e.id for e in events])
                self.item_of_event.update({e.id: e.item_id for e in events})
                self.kind_of_event.update({e.id: e.kind for e in events})


@dataclass
class Outcome:
    labeled: int = 0
    notices: list[str] = field(default_factory=list)
    undone_items: list[int] = field(default_factory=list)  # to show again, first
    # Answers refused that may be given again (a class renamed since the page showed it, or no
    # longer there): their images, to show again first, and the refused actions' ids.
    refused_items: list[int] = field(default_factory=list)
    refused_actions: list[str] = field(default_factory=list)
    # (undo_last action id, the image it opened again): the box shows that image at once.
    undone_last: list[tuple[str, int]] = field(default_factory=list)
    # Images whose undo found a newer answer standing: the box, which shows an image it undid at
    # once, is told they are answered (a key for one was refused as "arrived after it was answered").
    answered_since: list[int] = field(default_factory=list)
    # The database stopped answering before every action was applied: the ones before it are
    # applied (and reported above), the rest wait for the next try (the caller re-raises this).
    stopped_by: OperationalError | None = None


def _check_class(session, project_id: int, class_index: int, shown_name: str | None = None) -> None:
    n_classes = session.scalar(select(func.count()).where(LabelClass.project_id == project_id))
    if class_index != IGNORED and not 0 <= class_index < n_classes:
        raise ValueError(f"Class {class_index} does not exist: this project has {n_classes} classes.")
    if class_index == IGNORED or shown_name is None:
        return
    name = session.scalar(
        select(LabelClass.name).where(LabelClass.project_id == project_id, LabelClass.index == class_index)
    )
    if name != shown_name:
        raise ValueError(
            f"The class {shown_name!r} was renamed to {name!r} after the page showed it; give that answer again."
        )


def apply_actions(Session, project_id: int, annotator: str, actions, ledger: Ledger) -> Outcome:
    """Apply the actions not applied yet, in order; `ledger` is updated as each one commits. When
    the database stops answering partway, the outcome of those applied is returned with
    `stopped_by` set, so their refusals and undos still reach the person."""
    with ledger.lock:
        outcome = Outcome()
        try:
            _apply(Session, project_id, annotator, actions, ledger, outcome)
        except OperationalError as error:
            outcome.stopped_by = error
        return outcome


def _apply(Session, project_id: int, annotator: str, actions, ledger: Ledger, outcome: Outcome) -> None:
    for action in actions or []:
        action_id = str(action.get("id", ""))
        if not action_id or action_id in ledger.applied:
            continue
        if len(action_id) > ID_LENGTH:
            ledger.applied.add(action_id)  # not one of the box's ids: dropped, like a malformed one
            continue
        kind = action.get("type")
        if kind == "undo_last":  # names no image: the ledger knows which
            _undo_last(Session, annotator, action_id, ledger, outcome)
            ledger.applied.add(action_id)
            continue
        try:
            item_id = int(action["item"])
            class_index = int(action.get("class", -2))
        except (KeyError, TypeError, ValueError):
            ledger.applied.add(action_id)  # malformed: dropped, so it cannot block the answers after it
            continue
        if kind == "label":
            name = action.get("name")
            name = name if isinstance(name, str) else None
            answer = (class_index, name, action_id, _shown_guess(action))
            _label(Session, project_id, annotator, item_id, answer, ledger, outcome)
        elif kind == "undo":
            of, again = action.get("of"), action.get("again") is True
            if isinstance(of, str):
                _undo_named(Session, annotator, item_id, of, again, ledger, outcome)
            else:  # from a page made before undos named their answer
                kept = class_index if again and class_index != -2 else None
                _undo_item(Session, annotator, item_id, ledger, outcome, kept)
        elif kind == "skip":
            ledger.skipped.add(item_id)
        # Marked only after its transaction committed: no st.* call lies in between, so a rerun
        # cannot interrupt the page here and apply the same action twice.
        ledger.applied.add(action_id)


def _shown_guess(action: dict):
    """The guess the box showed with the image: (run id, class), None (none shown), or
    `queries.NEWEST` from a page made before answers named it."""
    if "guess" not in action:
        return queries.NEWEST
    guess = action["guess"]
    if isinstance(guess, list) and len(guess) == 2 and all(type(v) is int and 0 <= v < 2**31 for v in guess):
        return tuple(guess)
    return None  # none shown, or not ids a page sends (too large for the database's integers)


def _label(Session, project_id, annotator, item_id, answer, ledger: Ledger, outcome: Outcome) -> None:
    class_index, shown_name, action_id, guess = answer

    def commit():
        with Session.begin() as session:
            # The lock makes "only while unanswered" hold: two transactions could otherwise both
            # see no answer and both write (PostgreSQL's READ COMMITTED, SQLite's reads before
            # its driver begins the transaction at the first write).
            item = queries.lock_item(session, item_id)
            if item is None or item.project_id != project_id:
                return "gone", None
            applied = queries.applied_event(session, item_id, action_id)
            if applied is not None:  # applied before its acknowledgement was lost: it stands
                return "applied", applied
            _check_class(session, project_id, class_index, shown_name)
            current = queries.current_event(session, item_id)
            if current is not None and (current.annotator, current.class_index) == (annotator, class_index):
                return "same", None  # the same answer from this person's other tab: it stands
            if current is not None:
                return "answered", current.annotator
            event = queries.add_label(session, item, class_index, annotator=annotator, guess=guess)
            queries.record_applied(session, event, action_id)
            return "ok", event

    try:
        status, detail = db.retrying(commit)
    except ValueError as error:
        # Named: the box has moved on to the next image by now (an exploratory session could not
        # tell which answer it was, and pressed U, which took back an older one).
        outcome.notices.append(f"Your answer for image #{item_id} was not saved (it is shown again): {error}")
        outcome.refused_items.append(item_id)
        outcome.refused_actions.append(action_id)
        return
    if status == "ok":
        ledger.record([detail])
        ledger.skipped.discard(item_id)
        outcome.labeled += 1
    elif status == "applied" and not detail.undone and detail.annotator == annotator:
        # Sent again (by this page, or by a box drawn anew after the outage page, which marks its
        # kept answers `again`): the database committed it, then its answer was lost, so the
        # ledger never heard of it; U in the box then said "you did not answer it", and a U from
        # a box drawn anew passed over it and took back the answer before it.
        if all(detail.id not in entry for entry in ledger.entries):
            ledger.record([detail])
    elif status == "answered":
        who = "you" if detail == annotator else detail
        outcome.notices.append(
            f"A key for image #{item_id} arrived after it was answered (by {who}); that answer stands."
        )
    elif status == "gone":
        outcome.notices.append(f"Image #{item_id} is no longer in this project; its answer was dropped.")


def _undo_named(
    Session, annotator: str, item_id: int, of: str, again: bool, ledger: Ledger, outcome: Outcome
) -> None:
    """An undo from the box names the label action it takes back (`of`): the event that action
    wrote is taken back, while it is still the image's answer, and nothing else (not a History
    correction or bulk label of the image made since, which the newest ledger entry covering the
    image would be). It must be this session's own answer (in the ledger) unless the tab kept the
    undo across a reload (`again`: this server session never saw the answer). Quietly nothing when
    it was undone already (before the reload, or by the grid's "Undo last page"); when the image
    was answered again since, the answer is taken back all the same (so undoing the newer one
    later does not bring it back), the newer one stands, and a notice says so."""
    mine = {event_id for entry in ledger.entries for event_id in entry}
    status = _take_back(
        Session,
        annotator,
        item_id,
        lambda session: queries.applied_event(session, item_id, of),
        lambda event: again or event.id in mine,
        ledger,
        outcome,
    )
    if status == "none":
        outcome.notices.append(
            f"Nothing to undo for image #{item_id}: you did not answer it in this session."
        )


def _undo_last(Session, annotator: str, action_id: str, ledger: Ledger, outcome: Outcome) -> None:
    """U in a box that has no undo history of its own (drawn anew after another mode or page):
    this session's newest answer from the box (one event per ledger entry; never a grid page, bulk
    label or History correction, which the box's own undo never takes back either), by the same
    rule as `_undo_named`. An entry already taken back some other way is passed over. What it took
    back is kept in the database (`AppliedAnswer`): sent again to a new server session (the tab
    kept it across a reload because the answer to its commit was lost), it took back the answer
    before that one too, silently (2 of 2 tries in an exploratory session); sent again to this
    session (the database's answer to its commit was lost) it took back the answer before it."""

    def take_back(item_id: int, event_id: int, **how) -> str:
        status = _take_back(
            Session,
            annotator,
            item_id,
            lambda session: session.get(LabelEvent, event_id),
            lambda event: True,
            ledger,
            outcome,
            **how,
        )
        if status == "undone":
            outcome.undone_last.append((action_id, item_id))
        return status

    done = db.retrying(lambda: _applied_by(Session, action_id))
    if done is not None:  # applied before: its own answer is found taken back, reported as done now
        take_back(*done, taken_by_this_action=True)
        return
    while True:
        position = _newest_entry(
            ledger, lambda entry: [ledger.kind_of_event.get(e) for e in entry] == ["single"]
        )
        if position is None:
            outcome.notices.append("Nothing to undo in this session.")
            return
        (event_id,) = ledger.entries[position]
        if take_back(ledger.item_of_event[event_id], event_id, record_as=action_id) in (
            "undone",
            "answered since",
        ):
            return
        ledger.entries.pop(position)  # not this person's any more, or undone already: the one before


def _applied_by(Session, action_id: str) -> tuple[int, int] | None:
    with Session() as session:
        return queries.applied_by(session, action_id)


def _take_back(
    Session,
    annotator: str,
    item_id: int,
    event_of,
    allowed,
    ledger: Ledger,
    outcome: Outcome,
    taken_by_this_action: bool = False,
    record_as: str | None = None,
) -> str:
    """Take back this person's answer `event_of(session)` to `item_id` if `allowed(event)`; the
    ledger forgets it. Returns "undone" (the image is open again, listed in the outcome),
    "answered since" (taken back, the newer answer stands, a notice says so), "undone already" or
    "none" (nothing changed). `taken_by_this_action`: the action was sent before and its commit's
    answer lost, so an answer found taken back is this action's doing, reported as if done now.
    `record_as`: the action id kept with the event taken back, in the same transaction."""

    def commit():
        with Session.begin() as session:
            queries.lock_item(session, item_id)
            event = event_of(session)
            if event is None or event.item_id != item_id or event.annotator != annotator:
                return "none", None
            current = queries.current_event(session, item_id)
            if event.undone and taken_by_this_action:
                return ("undone" if current is None else "answered since"), event.id
            if event.undone:
                return "undone already", None
            if not allowed(event):
                return "none", None
            # Taken back either way; when a newer answer stands it stays, and should that one be
            # undone later, this answer (which its giver took back) does not come back with it.
            queries.undo_events(session, [event.id], annotator)
            if record_as is not None:
                queries.record_applied(session, event, record_as)
            if current is None or current.id != event.id:
                return "answered since", event.id
            return "undone", event.id

    status, undone = db.retrying(commit)
    if undone is not None:
        ledger.entries = [
            kept for kept in ([e for e in entry if e != undone] for entry in ledger.entries) if kept
        ]
    if status == "undone":
        outcome.undone_items.append(item_id)
    elif status == "answered since":
        outcome.answered_since.append(item_id)
        outcome.notices.append(
            f"Image #{item_id} was answered again since: your answer is taken back, and the newer one stands."
        )
    return status


def _undo_item(
    Session, annotator: str, item_id: int, ledger: Ledger, outcome: Outcome, kept: int | None = None
) -> None:
    """An undo from a page made before undos named their answer (a tab open across the
    upgrade): this session's newest answer entry that covers `item_id`; sent again after a reload
    (`kept`: the class it names), the image's current answer if it is this person's single answer
    of that class, the rule then."""
    position = _newest_entry(ledger, lambda entry: any(ledger.item_of_event.get(e) == item_id for e in entry))
    if position is not None:
        _undo_entry(Session, annotator, ledger, position, outcome)
        return
    if kept is not None:

        def commit():
            with Session.begin() as session:
                queries.lock_item(session, item_id)
                current = queries.current_event(session, item_id)
                if current is None or (current.annotator, current.class_index, current.kind) != (
                    annotator,
                    kept,
                    "single",
                ):
                    return []
                return [e.item_id for e in queries.undo_events(session, [current.id], annotator)]

        undone = db.retrying(commit)
        outcome.undone_items.extend(undone)
        if undone:
            return
    outcome.notices.append(f"Nothing to undo for image #{item_id}: you did not answer it in this session.")


def undo_entry(
    Session,
    annotator: str,
    ledger: Ledger,
    position: int = -1,
    outcome: Outcome | None = None,
    kinds: tuple[str, ...] | None = None,
) -> list[int]:
    """Undo one entry of the ledger (default: the newest): one answer, or a whole grid page or
    bulk label. `kinds`: the newest entry whose answers are all of these kinds (the grid's "Undo
    last page": grid pages and bulk labels, never a box answer or a History correction made
    since). Returns the items whose answers were taken back."""
    outcome = outcome or Outcome()
    with ledger.lock:  # two runs of one session (a double click) must not undo one entry twice
        if kinds is not None:
            position = _newest_entry(
                ledger, lambda entry: all(ledger.kind_of_event.get(e) in kinds for e in entry)
            )
            if position is None:
                outcome.notices.append("Nothing to undo.")
                return []
        return _undo_entry(Session, annotator, ledger, position, outcome)


def _newest_entry(ledger: Ledger, test) -> int | None:
    """The position of the newest ledger entry (a list of event ids) for which `test` holds."""
    for position in range(len(ledger.entries) - 1, -1, -1):
        if test(ledger.entries[position]):
            return position
    return None


def _undo_entry(Session, annotator: str, ledger: Ledger, position: int, outcome: Outcome) -> list[int]:
    if not ledger.entries:
        outcome.notices.append("Nothing to undo.")
        return []
    event_ids = ledger.entries[position]

    def commit():
        with Session.begin() as session:
            return [e.item_id for e in queries.undo_events(session, event_ids, annotator)]

    items = db.retrying(commit)
    ledger.entries.remove(event_ids)  # only once the undo is committed
    outcome.undone_items.extend(items)
    return items


def correct(Session, project_id: int, annotator: str, changes, action: str | None = None) -> tuple[list, int]:
    """Corrections from the History view, in one transaction: `changes` is (item, event the
    view showed, new class). An answer that changed since the view was drawn is left as it is.
    `action`: the click's id, kept with each event written (`queries.record_applied`), so a
    commit whose answer was lost can be found. Returns (the events written, how many were left)."""

    def commit():
        with Session.begin() as session:
            events, stale = [], 0
            for item_id, event_id, value in changes:
                # Locked first, so two corrections of one answer cannot both see it unchanged
                # and both write (see `_label`).
                item = queries.lock_item(session, item_id)
                current = queries.current_event(session, item_id)
                if item is None or current is None or current.id != event_id or item.project_id != project_id:
                    stale += 1
                    continue
                event = queries.add_label(session, item, value, annotator=annotator, kind="correction")
                if action is not None:
                    queries.record_applied(session, event, action)
                events.append(event)
            return events, stale

    return db.retrying(commit)
