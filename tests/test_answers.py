"""The rules between the labeling screen and the database (`labeler.answers`)."""

import pytest

from db import queries
from db.models import IGNORED
from labeler import answers


def _pool(Session, project):
    with Session() as session:
        return [item.id for item in queries.items(session, project.id, "pool")]


def _label(i, item, cls):
    return {"id": f"m-{i}", "type": "label", "item": item, "class": cls}


def test_every_answer_lands_on_the_image_it_names(Session, tiny_project):
    """Thirty answers sent as a growing list, as fast typing does: each applied once, on its image."""
    items = _pool(Session, tiny_project)[:30]
    ledger = answers.Ledger()
    sent = []
    for i, item in enumerate(items):
        sent.append(_label(i, item, i % 2))
        if i % 7 == 6 or i == len(items) - 1:  # the page reruns now and then, with all unacknowledged answers
            answers.apply_actions(Session, tiny_project.id, "ann", sent, ledger)
    answers.apply_actions(Session, tiny_project.id, "ann", sent, ledger)  # a repeat changes nothing
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {
            item: i % 2 for i, item in enumerate(items)
        }
        assert queries.label_count(session, tiny_project.id) == 30
        assert all(len(queries.history(session, item)) == 1 for item in items)


def test_a_late_key_never_replaces_an_answer(Session, tiny_project):
    a = _pool(Session, tiny_project)[0]
    ledger = answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0)], ledger)
    # A second key for the same image (pressed before the screen moved on) is dropped, with a notice.
    outcome = answers.apply_actions(
        Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, a, 1)], ledger
    )
    assert outcome.labeled == 0 and "arrived after it was answered" in outcome.notices[0]
    # Somebody else's answer is never replaced either.
    b = _pool(Session, tiny_project)[1]
    with Session.begin() as session:
        queries.add_label(session, b, 1, annotator="bob")
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_label(2, b, 0)], ledger)
    assert "by bob" in outcome.notices[0]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0, b: 1}


def test_undo_takes_back_only_this_sessions_own_answer(Session, tiny_project):
    a, b = _pool(Session, tiny_project)[:2]
    mine, other_tab = answers.Ledger(), answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0)], mine)
    answers.apply_actions(
        Session, tiny_project.id, "ann", [_label(0, b, 1)], other_tab
    )  # same name, other tab
    undo_b = {"id": "m-9", "type": "undo", "item": b}
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [undo_b], mine)
    assert outcome.undone_items == [] and "did not answer it" in outcome.notices[0]
    outcome = answers.apply_actions(
        Session, tiny_project.id, "ann", [{"id": "m-10", "type": "undo", "item": a}], mine
    )
    assert outcome.undone_items == [a]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b: 1}
    # Undone, the image can be answered again.
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(11, a, 1)], mine)
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 1, b: 1}


def test_undo_last_takes_back_this_sessions_newest_box_answers_one_by_one(Session, tiny_project):
    """A box drawn anew (after another mode or page) has no undo history of its own: its U
    (`undo_last`) takes back this session's newest answer from the box, then the one before,
    never a grid page, another tab's answer or another person's, and then says nothing is left."""
    a, b, c, d = _pool(Session, tiny_project)[:4]
    mine, other_tab = answers.Ledger(), answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, b, 1)], mine)
    with Session.begin() as session:  # a grid page of this session, newer than both
        mine.record([queries.add_label(session, c, 0, annotator="ann", kind="grid")])
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(2, d, 1)], other_tab)

    def undo_last(n):
        return answers.apply_actions(
            Session, tiny_project.id, "ann", [{"id": f"u-{n}", "type": "undo_last"}], mine
        )

    first = undo_last(0)
    assert first.undone_items == [b] and first.undone_last == [("u-0", b)] and not first.notices
    assert undo_last(0).undone_items == []  # the same action again changes nothing
    assert undo_last(1).undone_last == [("u-1", a)]
    last = undo_last(2)
    assert last.undone_items == [] and last.notices == ["Nothing to undo in this session."]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {c: 0, d: 1}


def test_undo_last_of_an_answer_corrected_since_leaves_the_correction(Session, tiny_project):
    """The newest box answer was corrected since (a History correction, here by bob): taken back,
    the correction stands and nothing comes back to answer; an answer taken back another way is
    passed over for the one before."""
    a, b = _pool(Session, tiny_project)[:2]
    mine = answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, b, 0)], mine)
    with Session() as session:
        shown = queries.current_event(session, b).id
    answers.correct(Session, tiny_project.id, "bob", [(b, shown, 1)])
    outcome = answers.apply_actions(
        Session, tiny_project.id, "ann", [{"id": "u-0", "type": "undo_last"}], mine
    )
    assert outcome.undone_last == [] and "answered again since" in outcome.notices[0]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0, b: 1}
    # a's answer, taken back meanwhile some other way (another tab's undo, say): passed over.
    with Session.begin() as session:
        queries.undo_events(session, [queries.current_event(session, a).id], "ann")
    outcome = answers.apply_actions(
        Session, tiny_project.id, "ann", [{"id": "u-1", "type": "undo_last"}], mine
    )
    assert outcome.undone_items == [] and outcome.notices == ["Nothing to undo in this session."]
    assert mine.entries == []


def test_undo_last_sent_again_after_its_commits_answer_was_lost_takes_back_one_answer(
    Session, tiny_project, monkeypatch
):
    """The database commits an undo_last, then the connection drops before it answers: the
    page keeps the action and sends it again. It finds its own answer taken back and reports
    it then; it does not go on to take back the answer before it."""
    from sqlalchemy.exc import OperationalError

    a, b = _pool(Session, tiny_project)[:2]
    mine = answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, b, 1)], mine)
    real = answers.db.retrying

    def committed_then_lost(fn):
        real(fn)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    undo = [{"id": "u-0", "type": "undo_last"}]
    monkeypatch.setattr(answers.db, "retrying", committed_then_lost)
    assert answers.apply_actions(Session, tiny_project.id, "ann", undo, mine).stopped_by is not None
    monkeypatch.setattr(answers.db, "retrying", real)
    again = answers.apply_actions(Session, tiny_project.id, "ann", undo, mine)
    assert again.undone_last == [("u-0", b)] and again.undone_items == [b] and not again.notices
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0}
    assert answers.apply_actions(Session, tiny_project.id, "ann", undo, mine).undone_items == []


def test_undo_last_sent_again_to_a_new_session_takes_back_nothing_more(Session, tiny_project):
    """The tab kept an undo_last applied before (the answer to its send was lost), with the labels
    before it, and sent them all again after a reload: the new session's ledger held the labels
    still in effect, so the undo_last took back the one before too (2 of 2 tries in an
    exploratory session). Its image shows first again; nothing else changes."""
    a, b = _pool(Session, tiny_project)[:2]
    sent = [_label(0, a, 0), _label(1, b, 1), {"id": "u-0", "type": "undo_last"}]
    first = answers.apply_actions(Session, tiny_project.id, "ann", sent, answers.Ledger())
    assert first.undone_last == [("u-0", b)]
    again = [{**action, "again": True} for action in sent]
    reloaded = answers.apply_actions(Session, tiny_project.id, "ann", again, answers.Ledger())
    assert reloaded.undone_last == [("u-0", b)] and not reloaded.notices
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0}


def test_an_action_id_longer_than_the_box_ever_makes_is_dropped(Session, tiny_project):
    a = _pool(Session, tiny_project)[0]
    long_id = {**_label(0, a, 1), "id": "x" * (answers.ID_LENGTH + 1)}
    outcome = answers.apply_actions(
        Session, tiny_project.id, "ann", [long_id, _label(1, a, 0)], answers.Ledger()
    )
    assert outcome.labeled == 1  # the next answer is not blocked
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0}


def test_ignore_and_skip(Session, tiny_project):
    a, b = _pool(Session, tiny_project)[:2]
    ledger = answers.Ledger()
    actions = [_label(0, a, IGNORED), {"id": "m-1", "type": "skip", "item": b}]
    answers.apply_actions(Session, tiny_project.id, "ann", actions, ledger)
    assert ledger.skipped == {b}
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id, ignored=True) == {a: IGNORED}


def test_a_wrong_class_or_item_is_refused_with_a_sentence(Session, tiny_project):
    a = _pool(Session, tiny_project)[0]
    ledger = answers.Ledger()
    outcome = answers.apply_actions(
        Session,
        tiny_project.id,
        "ann",
        [_label(0, a, 7), _label(1, 10**6, 0), {"id": "x", "type": "label"}],
        ledger,
    )
    assert "does not exist" in outcome.notices[0] and "no longer in this project" in outcome.notices[1]
    with Session() as session:
        assert queries.label_count(session, tiny_project.id) == 0


def test_undo_entry_takes_back_a_whole_page(Session, tiny_project):
    items = _pool(Session, tiny_project)[:3]
    ledger = answers.Ledger()
    with Session.begin() as session:
        ledger.record([queries.add_label(session, i, 0, annotator="ann", kind="grid") for i in items])
    assert sorted(answers.undo_entry(Session, "ann", ledger)) == sorted(items)
    with Session() as session:
        assert queries.label_count(session, tiny_project.id) == 0
    assert answers.undo_entry(Session, "ann", ledger) == []


def test_the_grids_undo_takes_back_the_newest_page_not_a_correction_or_box_answer_made_since(
    Session, tiny_project
):
    """The grid's "Undo last page" undid the session's newest entry whatever it was: a History
    correction saved after the page was reverted, silently. It takes back the newest grid page or
    bulk label; a box answer and a correction made since stay."""
    a, b, c = _pool(Session, tiny_project)[:3]
    ledger = answers.Ledger()
    with Session.begin() as session:
        ledger.record([queries.add_label(session, i, 0, annotator="ann", kind="grid") for i in (a, b)])
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, c, 1)], ledger)
    with Session() as session:
        shown = queries.current_event(session, a).id
    events, _ = answers.correct(Session, tiny_project.id, "ann", [(a, shown, 1)])
    ledger.record(events)
    assert sorted(answers.undo_entry(Session, "ann", ledger, kinds=("grid", "bulk"))) == [a, b]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 1, c: 1}  # the correction stays
    outcome = answers.Outcome()
    assert answers.undo_entry(Session, "ann", ledger, outcome=outcome, kinds=("grid", "bulk")) == []
    assert outcome.notices == ["Nothing to undo."]


def test_a_malformed_answer_is_dropped_and_the_next_ones_still_apply(Session, tiny_project):
    a = _pool(Session, tiny_project)[0]
    ledger = answers.Ledger()
    bad = {"id": "m-0", "type": "label", "item": a, "class": "abc"}
    answers.apply_actions(Session, tiny_project.id, "ann", [bad, _label(1, a, 1)], ledger)
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 1}


def test_an_answer_sent_again_after_a_reload_changes_nothing_and_says_nothing(Session, tiny_project):
    """The tab keeps answers until acknowledged; one applied just before a reload (its
    acknowledgement lost) comes again from the new page: it stands once, with no notice."""
    a = _pool(Session, tiny_project)[0]
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 1)], answers.Ledger())
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 1)], answers.Ledger())
    assert outcome.notices == [] and outcome.labeled == 0
    with Session() as session:
        assert len(queries.history(session, a)) == 1
    # Another class, or another person's answer, is still refused with a notice.
    outcome = answers.apply_actions(Session, tiny_project.id, "bob", [_label(1, a, 1)], answers.Ledger())
    assert "by ann" in outcome.notices[0]
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_label(2, a, 0)], answers.Ledger())
    assert "by you" in outcome.notices[0]


def _undo(i, item, of, again=True):
    return {"id": f"u-{i}", "type": "undo", "item": item, "of": of, **({"again": True} if again else {})}


def test_an_undo_kept_across_a_reload_takes_back_that_answer_only(Session, tiny_project):
    """A wrong key, then U, then a reload before the undo was sent: the new page sends it, marked
    as kept by the tab and naming the label action it takes back; that answer is taken back,
    though this server session never gave it, and nothing else."""
    a, b, c = _pool(Session, tiny_project)[:3]
    answers.apply_actions(
        Session, tiny_project.id, "ann", [_label(0, a, 1), _label(1, c, 0)], answers.Ledger()
    )
    bobs = {"id": "b-0", "type": "label", "item": b, "class": 1}
    answers.apply_actions(Session, tiny_project.id, "bob", [bobs], answers.Ledger())
    reloaded = answers.Ledger()

    def undo(i, item, of, again=True):
        return answers.apply_actions(Session, tiny_project.id, "ann", [_undo(i, item, of, again)], reloaded)

    assert (
        undo(0, a, "m-0", again=False).undone_items == []
    )  # not sent again: only this server session's own answers
    assert undo(1, b, "b-0").undone_items == []  # bob's answer, even named by its action: never
    outcome = undo(2, c, "m-0")  # an action of this tab, but for another image
    assert outcome.undone_items == [] and "Nothing to undo" in outcome.notices[0]
    assert undo(3, a, "m-9").undone_items == []  # an action that never wrote anything
    assert undo(4, a, "m-0").undone_items == [a]
    with Session.begin() as session:  # ann's answer to c corrected by bob
        queries.add_label(session, c, 1, annotator="bob", kind="correction")
    outcome = undo(5, c, "m-1")
    assert outcome.undone_items == [] and "answered again since" in outcome.notices[0]
    assert outcome.answered_since == [c]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b: 1, c: 1}


def test_an_undo_queued_before_action_ids_were_stored_keeps_the_old_rule(Session, tiny_project):
    """A tab open across the upgrade resends an undo without `of` but with the class it takes
    back: this person's single answer of that class is taken back, as before (not left wrong)."""
    a, b = _pool(Session, tiny_project)[:2]
    answers.apply_actions(
        Session, tiny_project.id, "ann", [_label(0, a, 1), _label(1, b, 1)], answers.Ledger()
    )
    old = [{"id": "u-0", "type": "undo", "item": a, "class": 1, "again": True}]
    assert answers.apply_actions(Session, tiny_project.id, "ann", old, answers.Ledger()).undone_items == [a]
    other_class = [{"id": "u-1", "type": "undo", "item": b, "class": 0, "again": True}]
    assert (
        answers.apply_actions(Session, tiny_project.id, "ann", other_class, answers.Ledger()).undone_items
        == []
    )
    bobs = [{"id": "u-2", "type": "undo", "item": b, "class": 1, "again": True}]  # ann's answer
    assert answers.apply_actions(Session, tiny_project.id, "bob", bobs, answers.Ledger()).undone_items == []
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b: 1}


def test_a_label_and_undo_sent_again_leave_the_same_answer_given_since_in_another_tab(Session, tiny_project):
    """Two tabs under one name (without accounts, everyone on a server has its user's name by
    default). The first tab answers image a, takes it back, and reloads before either was
    acknowledged; meanwhile the other tab gives a the same answer. The first tab's resent label
    and undo name the answer they wrote and took back: the other tab's answer stands."""
    a = _pool(Session, tiny_project)[0]
    answers.apply_actions(
        Session, tiny_project.id, "ann", [_label(0, a, 1), _undo(1, a, "m-0", False)], answers.Ledger()
    )
    other_tab = answers.apply_actions(Session, tiny_project.id, "ann", [_label(7, a, 1)], answers.Ledger())
    assert other_tab.labeled == 1
    resent = [{**_label(0, a, 1), "again": True}, _undo(1, a, "m-0")]
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", resent, answers.Ledger())
    assert outcome.undone_items == [] and outcome.labeled == 0
    assert outcome.notices == []  # both were applied before the reload: nothing to say
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 1}
        assert [e.undone for e in queries.history(session, a)] == [True, False]  # oldest first


def test_an_undo_takes_back_the_answer_it_names_and_not_a_correction_made_since(Session, tiny_project):
    """The box's U names its label action. A History correction of that image (and another)
    saved in the same session since is the newest ledger entry covering it: the undo used to take
    back the whole correction, both images, and leave the box's answer. Now it takes back only
    the answer it names, while that is the image's answer: here the correction stands, with a
    notice."""
    a, b = _pool(Session, tiny_project)[:2]
    ledger = answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, b, 0)], ledger)
    with Session() as session:
        shown = {i: queries.current_event(session, i).id for i in (a, b)}
    events, stale = answers.correct(Session, tiny_project.id, "ann", [(a, shown[a], 1), (b, shown[b], 1)])
    ledger.record(events)
    assert stale == 0
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_undo(2, a, "m-0", False)], ledger)
    assert outcome.undone_items == [] and "answered again since" in outcome.notices[0]
    assert shown[a] not in {e for entry in ledger.entries for e in entry}  # taken back: not in the undo list
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 1, b: 1}
    # The correction undone later (say a bulk label of another person's, by its giver): the box's
    # answer of a, taken back above, does not come back; b's, never taken back, does.
    with Session.begin() as session:
        queries.undo_events(session, [e.id for e in events], "ann")
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b: 0}


def test_an_undo_of_an_older_answer_takes_back_that_one_and_leaves_the_ledger_without_it(
    Session, tiny_project
):
    """U for image a after b was answered (the box's history after an undo of b was refused, or a
    kept tab): a's answer goes, b's stays, and the grid's "Undo last page" (the newest ledger
    entry) then takes back b, never a's again. An undo naming an action of another session (not
    kept across a reload) takes back nothing; one for an answer the grid's undo took back says
    nothing."""
    a, b, c = _pool(Session, tiny_project)[:3]
    ledger, other = answers.Ledger(), answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, b, 1)], ledger)
    answers.apply_actions(Session, tiny_project.id, "ann", [{**_label(0, c, 1), "id": "o-0"}], other)
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_undo(2, a, "m-0", False)], ledger)
    assert outcome.undone_items == [a] and outcome.notices == []
    assert len(ledger.entries) == 1
    assert answers.undo_entry(Session, "ann", ledger) == [b]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {c: 1}
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_undo(3, c, "o-0", False)], ledger)
    assert outcome.undone_items == [] and "did not answer it" in outcome.notices[0]
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [_undo(4, b, "m-1", False)], ledger)
    assert outcome.undone_items == [] and outcome.notices == []
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {c: 1}


def test_a_label_applied_before_a_rename_and_sent_again_is_taken_as_given(Session, tiny_project):
    """Applied, its acknowledgement lost, the class renamed, the tab reloaded: the resent answer
    was stored before the rename, so it is not refused (and its image not asked again)."""
    a = _pool(Session, tiny_project)[0]
    with Session() as session:
        shown = {**_label(0, a, 1), "name": queries.class_names(session, tiny_project.id)[1]}
    answers.apply_actions(Session, tiny_project.id, "ann", [shown], answers.Ledger())
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 1, "renamed")
    outcome = answers.apply_actions(
        Session, tiny_project.id, "ann", [{**shown, "again": True}], answers.Ledger()
    )
    assert outcome.notices == [] and outcome.refused_items == outcome.refused_actions == []
    with Session() as session:
        assert len(queries.history(session, a)) == 1 and queries.current_labels(session, tiny_project.id) == {
            a: 1
        }
    # A label never applied under the old name is still refused.
    b = _pool(Session, tiny_project)[1]
    fresh = {**_label(1, b, 1), "name": shown["name"], "again": True}
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [fresh], answers.Ledger())
    assert outcome.refused_items == [b]


def test_two_corrections_of_one_answer_at_once_leave_one(pg_url):
    """PostgreSQL: a correction waits for another one in flight on the same image, then finds the
    answer changed and leaves it; without the row lock both would be written."""
    import threading

    from sqlalchemy import text

    import db
    from labeler import projects
    from tests.conftest import tiny_image_set, wait_for

    engine = db.make_engine(pg_url)
    Session = db.session_factory(engine)
    try:
        project = projects.create_project(Session, "p", "test", images=tiny_image_set())
        a = _pool(Session, project)[0]
        with Session.begin() as session:
            shown = queries.add_label(session, a, 0, annotator="bob").id
        done = []
        with Session.begin() as first:
            first.get(queries.Item, a, with_for_update=True)
            queries.add_label(first, a, 1, annotator="carl", kind="correction")
            later = threading.Thread(
                target=lambda: done.append(answers.correct(Session, project.id, "ann", [(a, shown, IGNORED)]))
            )
            later.start()
            waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")

            def blocked() -> (
                int
            ):  # a new transaction each time: pg_stat_activity is read once per transaction
                with engine.connect() as watch:
                    return watch.scalar(waiting)

            wait_for(lambda: done or blocked())  # the later one waits on the lock (or, unlocked, is done)
        later.join(timeout=60)
        (events, stale) = done[0]
        assert (len(events), stale) == (0, 1)
        with Session() as session:
            assert [e.annotator for e in queries.history(session, a)] == ["bob", "carl"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("writer", ["box", "grid", "correction"])
def test_an_answer_given_while_another_commits_leaves_that_one_on_sqlite(
    Session, tiny_project, monkeypatch, writer
):
    """SQLite: Python's sqlite3 driver begins a transaction only at the first write, so the check
    "no answer yet" (or "still the answer shown") held no lock. An answer given while another
    person's was being committed saw none, was written after it and silently replaced it. Now the
    check waits for the write lock, then finds the other answer and leaves it."""
    import threading

    a = _pool(Session, tiny_project)[0]
    shown = None
    if writer == "correction":
        with Session.begin() as session:
            shown = queries.add_label(session, a, 0, annotator="bob").id
    checked = threading.Event()  # set when the second writer reads the image's answer
    real = queries.current_event

    def spy(session, item_id):
        if threading.current_thread() is not threading.main_thread():
            checked.set()
        return real(session, item_id)

    monkeypatch.setattr(queries, "current_event", spy)

    def second() -> int:
        """How many answers the second writer stored."""
        if writer == "box":
            return answers.apply_actions(
                Session, tiny_project.id, "ann", [_label(0, a, 1)], answers.Ledger()
            ).labeled
        if writer == "grid":
            with Session.begin() as session:
                return int(
                    queries.add_label_if_unlabeled(session, a, 1, annotator="ann", kind="grid") is not None
                )
        return len(answers.correct(Session, tiny_project.id, "ann", [(a, shown, 1)])[0])

    done = []
    with Session.begin() as first:  # carl's answer, written and not committed yet
        queries.add_label(first, a, IGNORED, annotator="carl", kind="correction" if shown else "single")
        later = threading.Thread(target=lambda: done.append(second()))
        later.start()
        # Unlocked, the second writer reads at once (no answer yet) and then waits to write;
        # locked, it waits before reading. Either way carl's answer commits now.
        checked.wait(timeout=2)
    later.join(timeout=60)
    assert done == [0]
    with Session() as session:
        current = queries.current_event(session, a)
        assert (current.annotator, current.class_index) == ("carl", IGNORED)
        assert [e.annotator for e in queries.history(session, a)] == (["bob", "carl"] if shown else ["carl"])


def test_an_answer_for_a_class_renamed_since_the_page_showed_it_is_refused(Session, tiny_project):
    """The key meant the class by the name on screen; after a rename it may mean another."""
    a, b = _pool(Session, tiny_project)[:2]
    with Session.begin() as session:
        names = queries.class_names(session, tiny_project.id)
        queries.rename_class(session, tiny_project.id, 0, "renamed")
    ledger = answers.Ledger()
    stale = {**_label(0, a, 0), "name": names[0]}
    fresh = {**_label(1, b, 0), "name": "renamed"}
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", [stale, fresh], ledger)
    assert "was renamed to 'renamed'" in outcome.notices[0] and outcome.labeled == 1
    assert f"image #{a} was not saved" in outcome.notices[0]  # the box is on the next image by now
    assert outcome.refused_items == [a] and outcome.refused_actions == [
        "m-0"
    ]  # shown again, to be answered again
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b: 0}


def test_two_undos_of_one_session_at_once_undo_the_newest_entry_once(Session, tiny_project, monkeypatch):
    """Streamlit can run two script runs of one session at once (a double click on Undo): the
    second undo waits for the first, then finds the next entry, never the same one again."""
    import threading

    a, b = _pool(Session, tiny_project)[:2]
    ledger = answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0), _label(1, b, 1)], ledger)
    first_inside, release = threading.Event(), threading.Event()
    real = queries.undo_events

    def slow_undo(session, event_ids, annotator):
        if not first_inside.is_set():
            first_inside.set()
            release.wait(30)
        return real(session, event_ids, annotator)

    monkeypatch.setattr(queries, "undo_events", slow_undo)
    results, errors = [], []

    def undo():
        try:
            results.append(answers.undo_entry(Session, "ann", ledger))
        except Exception as error:  # noqa: BLE001 - what the test looks for
            errors.append(error)

    one = threading.Thread(target=undo)
    one.start()
    first_inside.wait(30)
    two = threading.Thread(target=undo)
    two.start()
    two.join(timeout=1)  # without the lock it runs into the same entry now; with it, it waits
    release.set()
    one.join(30)
    two.join(30)
    assert errors == [] and sorted(results) == [[a], [b]]


def _run_guessing(Session, project_id: int, guess: int) -> int:
    """A finished run that guesses `guess` for every image."""
    import numpy as np

    from db import runs as run_queries
    from db.models import DONE, Run, utcnow

    with Session.begin() as session:
        ids = np.array([item.id for item in queries.items(session, project_id)])
        run = Run(project_id=project_id, model="m2", status=DONE, finished_at=utcnow())
        session.add(run)
        session.flush()
        ones = np.ones(len(ids))
        columns = {"item_id": ids, "predicted": np.full(len(ids), guess), "confidence": ones / 2}
        columns |= {"entropy": ones, "margin": ones, "score": ones, "x": ones, "y": ones}
        run_queries.store_predictions(session, run.id, columns)
        return run.id


def test_an_answer_keeps_the_guess_shown_with_its_image_not_a_newer_runs(Session, tiny_project):
    """The Progress page's agreement compares answers with the guesses shown: an answer kept the
    newest finished run's guess instead, so accepting the guess on screen after a run finished
    could count as a disagreement, and an image shown with no guess counted as shown with one."""
    a, b, c, d = _pool(Session, tiny_project)[:4]
    first = _run_guessing(Session, tiny_project.id, 0)
    newer = _run_guessing(Session, tiny_project.id, 1)  # finished while the image was on screen
    sent = [
        {**_label(0, a, 0), "guess": [first, 0]},  # the guess on screen, accepted
        {**_label(1, b, 1), "guess": None},  # no guess on screen
        {**_label(2, c, 0), "guess": [first, 1]},  # not what that run guessed: no guess is known
        _label(3, d, 0),  # from a page made before answers named their guess: the newest run's
    ]
    answers.apply_actions(Session, tiny_project.id, "ann", sent, answers.Ledger())
    with Session() as session:
        kept = {
            i: (e.predicted_run_id, e.predicted_index)
            for i in (a, b, c, d)
            for e in queries.history(session, i)
        }
    assert kept == {a: (first, 0), b: (None, None), c: (None, None), d: (newer, 1)}


def test_a_label_sent_again_after_its_commits_answer_was_lost_can_be_undone(
    Session, tiny_project, monkeypatch
):
    """The database commits a label, then the connection drops before it answers: the page sends
    it again, and it stands (applied before). The ledger never heard of it, so U in the box said
    "you did not answer it" and a U from a box drawn anew took back the answer before it."""
    from sqlalchemy.exc import OperationalError

    a, b = _pool(Session, tiny_project)[:2]
    mine = answers.Ledger()
    answers.apply_actions(Session, tiny_project.id, "ann", [_label(0, a, 0)], mine)
    real = answers.db.retrying

    def committed_then_lost(fn):
        real(fn)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    sent = [_label(0, a, 0), _label(1, b, 1)]
    monkeypatch.setattr(answers.db, "retrying", committed_then_lost)
    assert answers.apply_actions(Session, tiny_project.id, "ann", sent, mine).stopped_by is not None
    monkeypatch.setattr(answers.db, "retrying", real)
    # The box drawn anew after the outage page sends its kept answers marked "again".
    again = answers.apply_actions(Session, tiny_project.id, "ann", [{**a, "again": True} for a in sent], mine)
    assert again.labeled == 0 and not again.notices  # it stands, as given
    undo = answers.apply_actions(Session, tiny_project.id, "ann", [{"id": "u-0", "type": "undo_last"}], mine)
    assert undo.undone_last == [("u-0", b)]  # b's answer, the newest: not a's
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0}


def test_a_guess_naming_a_run_id_no_database_holds_is_no_guess(Session, tiny_project):
    """A run id past the database's integers raised on every rerun, so the answer never landed."""
    a = _pool(Session, tiny_project)[0]
    sent = [{**_label(0, a, 0), "guess": [2**63, 0]}]
    outcome = answers.apply_actions(Session, tiny_project.id, "ann", sent, answers.Ledger())
    assert outcome.labeled == 1 and outcome.stopped_by is None
    with Session() as session:
        assert queries.current_event(session, a).predicted_run_id is None


def test_a_page_recorded_while_another_run_of_the_session_undoes_waits_for_it():
    """`undo_entry` replaces the undo list under the ledger's lock; a grid page, correction or
    bulk label recorded meanwhile by another run of the session (without the lock) could be
    lost from it (review). Recording waits for the lock, and the box's answers, recorded while
    they hold it, still go through."""
    import threading
    from types import SimpleNamespace

    ledger = answers.Ledger()
    page = [SimpleNamespace(id=7, item_id=3, kind="grid")]
    with ledger.lock:
        late = threading.Thread(target=ledger.record, args=(page,))
        late.start()
        late.join(0.5)
        assert late.is_alive() and ledger.entries == []
        ledger.record([SimpleNamespace(id=5, item_id=2, kind="single")])  # under the lock, as the box does
    late.join()
    assert ledger.entries == [[5], [7]]
