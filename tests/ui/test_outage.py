"""A database that stops answering: one sentence on the page and retries, never a traceback."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError
from ui_helpers import app_run

from db import queries
from labeler.ui import common, label

DOWN = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def _stop_at_next_look(patch, armed: list) -> None:
    """Streamlit stopping a running callback at its next look at the session state once `armed`
    holds something (a rerun a key or click asked for; its fast reruns start the next run beside)."""
    from streamlit.runtime.scriptrunner import StopException
    from streamlit.runtime.state.safe_session_state import SafeSessionState

    def stopping(method):
        def look(self, *args):
            if armed:
                armed.clear()
                raise StopException()
            return method(self, *args)

        return look

    for name in ("__getitem__", "__setitem__", "__delitem__"):
        patch.setattr(SafeSessionState, name, stopping(getattr(SafeSessionState, name)))


def test_a_page_says_the_database_is_unreachable_and_comes_back_on_the_next_run(
    Session, tiny_project, monkeypatch
):
    """The page showed the OperationalError's traceback (host, port and paths in it) and stayed
    so after the database came back, until the person clicked elsewhere."""
    at = app_run(tiny_project.id)
    assert not at.exception and not at.error

    def down(*args, **kwargs):
        raise DOWN

    # Undone on their own: monkeypatch.undo() also undid this test's data folder (conftest's
    # `_isolated`), and the page's next run made a digits project in ./labeler-data.
    with monkeypatch.context() as outage:
        outage.setattr(label, "unsaved_anywhere", down)
        outage.setattr(common, "RETRY_DATABASE_S", None)  # AppTest waits for a timed fragment
        outage.setattr(common, "database_answers", lambda: False)  # the retry's look: still down
        at.run()
        assert not at.exception
        assert [e.value for e in at.error] and "database cannot be reached" in at.error[0].value
    assert common.database_answers()  # what the page's retry asks every RETRY_DATABASE_S
    at.run()  # the retry's rerun
    assert not at.exception and not at.error


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("database or disk is full", "disk holding it is full"),
        ("attempt to write a readonly database", "read-only"),
    ],
)
def test_a_database_that_cannot_be_written_is_one_sentence_and_a_retry(
    Session, tiny_project, monkeypatch, reason, says
):
    """A full disk or a read-only file: the database still answers reads, so the page showed the
    traceback on every key, and after the file was writable again it stayed so until the server
    restarted (SQLite keeps a connection opened read-only so). One sentence, retries, a fresh pool."""
    import sqlite3

    at = app_run(tiny_project.id)
    disposed = []
    engine = common.session_factory().kw["bind"]

    def full(*args, **kwargs):
        raise OperationalError("INSERT INTO label_events", {}, sqlite3.OperationalError(reason))

    with monkeypatch.context() as trouble:  # not monkeypatch.undo(): it undid the data folder too
        trouble.setattr(type(engine), "dispose", lambda self, *a, **k: disposed.append(self))
        trouble.setattr(label, "unsaved_anywhere", full)
        trouble.setattr(common, "RETRY_DATABASE_S", None)  # AppTest waits for a timed fragment
        at.run()
        assert not at.exception
        assert "cannot be written just now" in at.error[0].value and says in at.error[0].value
        assert disposed, "the pool keeps the read-only connections"
    at.run()  # the retry's rerun, once it can write
    assert not at.exception and not at.error


def test_the_first_page_after_a_start_with_the_database_away_tries_again(Session, tiny_project, monkeypatch):
    """The server started while the database was away: the first page said so once and never
    looked again (a reload was needed); it says what to check and retries like any page."""
    real = common.session_factory

    def down():
        raise DOWN

    monkeypatch.setattr(common, "session_factory", down)
    monkeypatch.setattr(common, "RETRY_DATABASE_S", None)  # AppTest waits for a timed fragment
    at = app_run(tiny_project.id)
    assert not at.exception
    assert "Cannot use the database" in at.error[0].value and "tries again" in at.error[0].value
    assert not common.database_answers()  # what the page's retry asks: still away
    monkeypatch.setattr(common, "session_factory", real)
    assert common.database_answers()
    at.run()  # the retry's rerun
    assert not at.exception and not at.error


def test_a_callback_that_meets_an_unreachable_database_stores_nothing_and_does_not_raise():
    calls = []

    @common.survives_outage
    def store(x):
        calls.append(x)
        raise DOWN

    assert store(1) is None and calls == [1]

    @common.survives_outage
    def broken():
        raise ValueError("a bug")

    with pytest.raises(ValueError):  # only an outage is taken in; a bug keeps its traceback
        broken()


def _outage_app():
    """A button whose callback meets an unreachable database the first time it runs, with the
    page-run steps app.py takes: replaying missed callbacks, then the notice."""
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st
        from sqlalchemy.exc import OperationalError

        from labeler.ui import common

        calls = st.session_state.setdefault("calls", [])

        def store(kind):
            calls.append(kind)
            if len(calls) == 1:
                raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

        common.replay_missed()
        common.outage_notice()
        st.button("answers", on_click=common.survives_outage(store, replay=True), args=("box",))
        st.button("click", on_click=common.survives_outage(store), args=("click",))

    return AppTest.from_function(script, default_timeout=60).run()


def test_answers_an_outage_kept_from_being_stored_are_stored_in_the_next_page_run():
    """The box's answers waited, with "saving" on screen, until the next key when the callback
    met the outage and the page itself then ran fine (a blip)."""
    at = _outage_app()
    at.button[0].click().run()
    assert not at.exception and at.session_state["calls"] == ["box", "box"]  # failed, then replayed
    assert not at.session_state[common.MISSED] and not at.error
    at.run()
    assert at.session_state["calls"] == ["box", "box"]  # once stored, not again


def test_a_click_an_outage_kept_from_being_saved_says_so():
    at = _outage_app()
    at.button[1].click().run()
    assert not at.exception and at.session_state["calls"] == ["click"]  # not replayed: a deliberate act
    assert "not saved" in at.error[0].value
    at.run()
    assert not at.error  # said once


def test_answers_applied_before_an_outage_are_reported_and_the_rest_wait(Session, tiny_project, monkeypatch):
    """The database stopped answering partway through a batch: the answers before it were
    acknowledged, but their outcome (a refusal, an undo) never reached the person."""
    from labeler import answers

    with Session() as session:
        a, b = (item.id for item in queries.items(session, tiny_project.id, "pool")[:2])
    real = answers._label
    calls = []

    def label_then_down(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise DOWN
        return real(*args, **kwargs)

    ledger = answers.Ledger()
    sent = [
        {"id": "x1", "type": "label", "item": a, "class": 0},
        {"id": "x2", "type": "label", "item": b, "class": 1},
    ]
    with monkeypatch.context() as outage:  # not monkeypatch.undo(): it undid the data folder too
        outage.setattr(answers, "_label", label_then_down)
        outage_result = answers.apply_actions(Session, tiny_project.id, "ann", sent, ledger)
    assert outage_result.labeled == 1 and outage_result.stopped_by is DOWN
    assert "x1" in ledger.applied and "x2" not in ledger.applied  # waits in the tab, sent again
    answers.apply_actions(Session, tiny_project.id, "ann", sent, ledger)
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: 0, b: 1}


def test_a_click_that_meets_a_full_disk_says_so_and_empties_the_pool(monkeypatch):
    """Grid accept and History save run as callbacks: a full disk or read-only file said the
    database "could not be reached", and the read-only connections stayed in the pool."""
    import sqlite3

    import streamlit as st

    emptied = []
    monkeypatch.setattr(
        common.db, "get_engine", lambda url=None: type("E", (), {"dispose": lambda self: emptied.append(1)})()
    )

    @common.survives_outage
    def save():
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    save()
    assert "cannot be written just now" in st.session_state[common.OUTAGE_NOTICE] and emptied


def _clicked_with_the_answer_lost(at, monkeypatch, key: str, answers_at_once: bool, only: str = "") -> None:
    """Click the button `key`: its commit lands, then the connection drops before the database
    answers (of the transactions whose function's name holds `only`). With `answers_at_once`
    the database answers the look made at once; else it stays away for that look and that page
    run, and the next run finds it back. Either way the page then shows no error: no "not saved"
    beside "saved after all"."""
    from tests.ui.ui_helpers import button

    real = label.db.retrying

    def committed_then_lost(fn, **kwargs):
        result = real(fn, **kwargs)
        if only in fn.__qualname__:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return result

    def away(*args, **kwargs):
        raise DOWN

    with monkeypatch.context() as cut:
        cut.setattr(label.db, "retrying", committed_then_lost)
        if not answers_at_once:  # the look at once, and the page run after, meet the outage
            cut.setattr(queries, "applied_events", away)
            cut.setattr(common, "RETRY_DATABASE_S", None)  # AppTest waits for a timed fragment
            cut.setattr(common, "database_answers", lambda: False)  # the retry's look: still down
        button(at, key).click()
        at.run()
        if not answers_at_once:
            assert not at.exception and not at.success
            assert "database cannot be reached" in at.error[0].value
    if not answers_at_once:
        at.run()  # the next page run, the database back
    assert not at.exception and not at.error


@pytest.mark.parametrize("answers_at_once", [True, False], ids=["answers-at-once", "away-a-while"])
def test_a_grid_page_whose_commit_landed_unanswered_is_saved_after_all_and_undone_by_u(
    Session, tiny_project, monkeypatch, answers_at_once
):
    """PostgreSQL commits a grid page, then the connection drops before it answers: the page said
    "not saved", A again found every image answered ("Saved 0 labels. 12 images had been answered
    meanwhile") and U took back the page before, as the undo list never heard of this one
    (review). The accept looks for the page's labels at once, else the next page run does, and
    takes the page as saved."""
    from tests.ui.ui_helpers import button, fake_done_run

    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: all 12 tiles pre-filled
    at = app_run(tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.85).run()
    button(at, "accept_grid").click().run()
    with Session() as session:
        first = queries.current_labels(session, tiny_project.id)
    assert len(first) == 12
    second = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    _clicked_with_the_answer_lost(at, monkeypatch, "accept_grid", answers_at_once, "_accept_grid")
    with Session() as session:
        assert set(queries.current_labels(session, tiny_project.id)) == set(first) | set(second)
    assert "saved after all" in at.success[0].value and "Saved 12 labels" in at.success[0].value
    assert at.radio(key="label_mode").value == "Grid"  # also after a run that drew only the outage
    shown = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    assert shown and not set(shown) & set(second), "the saved page is still on screen"
    at.button(key="undo").click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == first  # U took back this page


def test_a_grid_accept_stopped_by_a_rerun_after_its_commit_is_finished_by_the_next_run(
    Session, tiny_project, monkeypatch
):
    """A key pressed just after A reruns the page, which stops the callback at its next look at
    the session state: after the commit, the page stayed with no message, U could not undo it and
    no run was queued (exploratory, 4 of 4 accepts with keys 30 ms after A on a busy machine).
    The labels go on the undo list before any such look, and the next run finishes the rest."""

    from tests.ui.ui_helpers import button, fake_done_run, page_app

    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: all 12 tiles pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.85).run()
    page = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    real, armed = label.db.retrying, []

    def committed(fn, **kwargs):
        result = real(fn, **kwargs)
        armed.extend(["stop"] if "_accept_grid" in fn.__qualname__ else [])
        return result

    with monkeypatch.context() as key_after_a:
        key_after_a.setattr(label.db, "retrying", committed)
        _stop_at_next_look(key_after_a, armed)
        button(at, "accept_grid").click().run()
    with Session() as session:
        assert set(queries.current_labels(session, tiny_project.id)) == set(page)
    at.run()  # the key's rerun
    assert not at.exception
    assert at.success and at.success[0].value.startswith("Saved 12 labels")
    assert "after all" not in at.success[0].value  # the database answered; a key stopped the rest
    shown = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    assert shown and not set(shown) & set(page), "the saved page is still on screen"
    at.button(key="undo").click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}  # U took back this page


def test_an_accept_finished_by_two_runs_at_once_goes_on_the_undo_list_once():
    """Runs of one session overlap (Streamlit's fast reruns): the accept itself and the next run
    finishing it (`_saved_after_all`) could both record the page, so the first U took it back and
    the second said there was nothing to undo (review)."""
    from types import SimpleNamespace

    from labeler import answers

    ledger, accepted = answers.Ledger(), set()
    kept = {"page": "1,2", "id": "grid-x", "items": [1, 2], "skipped": []}
    events = [SimpleNamespace(id=7, item_id=1, kind="grid"), SimpleNamespace(id=8, item_id=2, kind="grid")]
    assert label._page_saved(kept, events, ledger, accepted) is False
    assert label._page_saved(kept, events, ledger, accepted) is False
    assert len(ledger.entries) == 1 and kept["done"] == 2 and accepted == {"1,2"}


def test_u_pressed_while_another_run_commits_the_accept_takes_back_that_page(
    Session, tiny_project, monkeypatch
):
    """U just after A: Streamlit runs U's run beside the accept's, which may be committing; U
    took back the page before, from an undo list that did not have this one yet, and the page
    then said "Saved 12 labels" for the page it had just undone (review). U waits for the accept
    (here: its labels are in the database, its run never finishes) and takes this page back."""
    from tests.ui.ui_helpers import button, fake_done_run, page_app

    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: all 12 tiles pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.85).run()
    button(at, "accept_grid").click().run()
    with Session() as session:
        first = queries.current_labels(session, tiny_project.id)
    second = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    with Session.begin() as session:  # the accept's commit, its run still going
        for item in second:
            event = queries.add_label(session, item, 1, annotator="tester", kind="grid")
            session.flush()
            queries.record_applied(session, event, "grid-committing")
    at.session_state[f"{label._ACCEPTING}{tiny_project.id}"] = {
        "page": ",".join(map(str, second)),
        "id": "grid-committing",
        "items": second,
        "skipped": [],
        "sent": True,
    }
    monkeypatch.setattr(label, "ACCEPT_WAIT_S", 0.2)
    at.button(key="undo").click().run()
    assert not at.exception
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == first  # this page, not the first
    assert not at.success and any("Undone" in n.value for n in [*at.info, *at.warning])


def test_an_accept_finishing_another_pages_cut_short_accept_still_saves_its_own_page(Session, tiny_project):
    """A with an accept of another page still to finish (runs of one session overlap): the
    click finished that one, said "Saved 12 labels" and dropped its own page (review)."""
    from tests.ui.ui_helpers import button, fake_done_run, page_app

    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: all 12 tiles pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.85).run()
    page = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    at.session_state[f"{label._ACCEPTING}{tiny_project.id}"] = {  # an earlier page, recorded
        "page": "1,2",
        "id": "grid-earlier",
        "items": [1, 2],
        "skipped": [],
        "sent": True,
        "done": 2,
    }
    button(at, "accept_grid").click().run()
    with Session() as session:
        assert set(queries.current_labels(session, tiny_project.id)) == set(page)


def test_the_mode_and_filters_chosen_come_back_after_an_outage(Session, tiny_project, monkeypatch):
    """A run cut short by an outage drew only its sentence, and Streamlit dropped the state of the
    widgets it did not draw: the Label page came back on One image after an outage met in Grid,
    and the History's filters were reset."""
    at = app_run(tiny_project.id)
    at.radio(key="label_mode").set_value("History").run()
    at.toggle(key="show_names").set_value(True).run()
    at.checkbox(key="hist_disagree").check().run()
    assert not at.exception

    def down(*args, **kwargs):
        raise DOWN

    with monkeypatch.context() as outage:
        outage.setattr(label, "unsaved_anywhere", down)
        outage.setattr(common, "RETRY_DATABASE_S", None)  # AppTest waits for a timed fragment
        outage.setattr(common, "database_answers", lambda: False)
        at.run()
        assert "database cannot be reached" in at.error[0].value
        at.run()  # a second run that draws nothing else either
    at.run()  # the retry's rerun
    assert not at.exception and not at.error
    assert at.radio(key="label_mode").value == "History"
    assert at.toggle(key="show_names").value is True
    assert at.checkbox(key="hist_disagree").value is True


def _history_with_one_change(Session, project_id):
    """One answer, then the History open with it changed: (app, the image)."""
    from tests.ui.ui_helpers import label_items

    (item,) = label_items(Session, project_id, 1, annotator="ann")
    at = app_run(project_id)
    at.session_state["annotator"] = "ann"
    at.radio(key="label_mode").set_value("History").run()
    tile = next(b for b in at.selectbox if b.key.startswith(f"hist-{item}-"))
    with Session() as session:
        was = queries.current_labels(session, project_id)[item]
    tile.set_value(1 - was).run()
    assert _waiting(at, project_id) == 1
    return at, item, 1 - was


def _undo_list(at, Session, project_id: int, item: int) -> bool:
    """The session's undo list holds the correction, once (and nothing else: the answer before it
    was given outside this session)."""
    with Session() as session:
        correction = queries.current_event(session, item)
    return at.session_state[f"ledger-{project_id}"].entries == [[correction.id]]


def _guard_counts(at) -> list[int]:
    """The changes the tab's guard was told wait (closing the tab asks while there are any)."""
    import json

    drawn = [json.loads(c.proto.json) for c in at.get("bidi_component")]
    return [d["unsaved"] for d in drawn if "unsaved" in d and "acked" in d]


def _waiting(at, project_id: int) -> int:
    """How many History changes the page keeps as not saved yet (the sidebar counts them, closing
    the tab asks for them)."""
    return len(at.session_state[label._chosen_key(project_id)])


@pytest.mark.parametrize("answers_at_once", [True, False], ids=["answers-at-once", "away-a-while"])
def test_a_history_save_whose_commit_landed_unanswered_is_saved_after_all(
    Session, tiny_project, monkeypatch, answers_at_once
):
    """The History's Save committed, then the connection dropped before the database answered:
    the page said "not saved", and the change stayed listed as waiting (the sidebar counted it,
    closing the tab asked for it, and Save again said "changed by someone else meanwhile"). The
    save looks for its corrections at once, else the next page run does."""

    at, item, now = _history_with_one_change(Session, tiny_project.id)
    _clicked_with_the_answer_lost(at, monkeypatch, "hist_save", answers_at_once)
    said = at.success[0].value.replace("\\", "")  # as typed: markdown's characters escaped
    assert said == "Corrected 1 label (kept in the history): the changes were saved after all."
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {item: now}
    assert _waiting(at, tiny_project.id) == 0 and _guard_counts(at) == [0]  # nothing asks at a close
    assert _undo_list(at, Session, tiny_project.id, item)
    at.run()
    assert not at.exception and not at.success and _waiting(at, tiny_project.id) == 0


def test_a_history_save_stopped_by_a_rerun_after_its_commit_is_finished_by_the_next_run(
    Session, tiny_project, monkeypatch
):
    """A click just after Save reruns the page, which stops the callback at its next look at the
    session state: after the commit, the page gave no message and went on listing the change as
    not saved. The next run finishes it."""

    from tests.ui.ui_helpers import button

    at, item, now = _history_with_one_change(Session, tiny_project.id)
    real, armed = label.answers.db.retrying, []

    def committed(fn, **kwargs):
        result = real(fn, **kwargs)
        armed.append("stop")
        return result

    save = button(at, "hist_save")
    with monkeypatch.context() as click_after_save:
        click_after_save.setattr(label.answers.db, "retrying", committed)
        _stop_at_next_look(click_after_save, armed)
        save.click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {item: now}
    at.run()  # the click's rerun
    assert not at.exception
    assert at.success and at.success[0].value.replace("\\", "") == "Corrected 1 label (kept in the history)."
    assert _waiting(at, tiny_project.id) == 0
    assert _undo_list(at, Session, tiny_project.id, item)


_BULK_THEN_UNDO = """
import streamlit as st
from labeler.ui import common, label, latent
pid, step = st.session_state["project_id"], st.session_state.pop("step", None)
names = common.class_names(pid)
if step is not None and step[0] == "bulk":  # what the Latent page's button calls
    st.session_state[latent._bulk_key(names)] = 0
    st.session_state["latent"] = {"selection": {"points": [{"customdata": [step[1], 0.9]}]}}
    latent._bulk_label(pid, [step[1]], names)
elif step is not None and step[0] == "undo":  # the grid's U
    st.session_state["label_mode"] = "Grid"
    label._undo_page(pid)
"""


def test_a_bulk_label_stopped_by_a_rerun_after_its_commit_is_what_the_grids_u_takes_back(
    Session, tiny_project, monkeypatch
):
    """A click just after a bulk label reruns the page, which stops the callback at its next look
    at the session state: after the commit, the bulk label was left off the undo list, and the
    grid's U took back the bulk label before it."""
    from streamlit.testing.v1 import AppTest

    from labeler.ui import latent

    with Session() as session:
        first, second = (item.id for item in queries.items(session, tiny_project.id, "pool")[:2])
    at = AppTest.from_string(_BULK_THEN_UNDO, default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "ann"
    at.session_state["step"] = ("bulk", first)
    at.run()
    real, armed = latent.db.retrying, []

    def committed(fn, **kwargs):
        result = real(fn, **kwargs)
        armed.append("stop")
        return result

    with monkeypatch.context() as click_after_bulk:
        click_after_bulk.setattr(latent.db, "retrying", committed)
        _stop_at_next_look(click_after_bulk, armed)
        at.session_state["step"] = ("bulk", second)
        at.run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {first: 0, second: 0}
    at.session_state["step"] = ("undo",)
    at.run()
    assert not at.exception
    with Session() as session:  # the second bulk label taken back; the first stands
        assert queries.current_labels(session, tiny_project.id) == {first: 0}


_FINISHING_WHILE_ANOTHER_RUN_COMMITS = """
import threading
import time

import streamlit as st
from labeler.ui import label

pid = st.session_state["project_id"]
kept = {"id": "hist-x", "changes": [(1, 1)], "sent": True}  # a save whose commit is under way
st.session_state[label._correcting_key(pid)] = kept


def lands():  # in the run the click stopped, 0.3 s later
    time.sleep(0.3)
    kept["done"] = 1


threading.Thread(target=lands).start()
st.text(repr(label._corrected_after_all(pid)))
"""


def test_a_history_save_committing_in_another_run_is_waited_for_and_finished(tiny_project):
    """A click just after Save starts the next run beside the stopped one: when that run looked
    while the commit was still going it passed, and nothing finished the save until the next
    click (no message, the changes listed as waiting; review). It waits, as an undo waits for an
    accept."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string(_FINISHING_WHILE_ANOTHER_RUN_COMMITS, default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.run()
    assert not at.exception
    assert at.text[0].value == "True"
    assert at.session_state["last_message"] == ("success", "Corrected 1 label (kept in the history).")
    assert label._correcting_key(tiny_project.id) not in at.session_state


def test_a_history_save_that_failed_and_was_stopped_is_not_waited_for(Session, tiny_project, monkeypatch):
    """A save whose commit failed, its callback stopped by a rerun as it removed its record, kept
    the record as committing: every later page run waited 5 s for it (review). It is marked over
    first, then looked for once, and forgotten."""
    import time

    from tests.ui.ui_helpers import button

    at, item, now = _history_with_one_change(Session, tiny_project.id)
    armed = []

    def fails(*args, **kwargs):
        armed.append("stop")
        raise RuntimeError("the commit failed")

    with monkeypatch.context() as failing:
        failing.setattr(label.answers, "correct", fails)
        _stop_at_next_look(failing, armed)
        button(at, "hist_save").click().run()
    assert not armed, "the callback was not stopped after the failed commit"
    start = time.monotonic()
    at.run()  # the click's rerun
    assert time.monotonic() - start < label.ACCEPT_WAIT_S
    assert not at.exception and label._correcting_key(tiny_project.id) not in at.session_state
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id)[item] != now  # nothing was saved


_SAVE_AGAIN = """
import streamlit as st
from labeler.ui import common, label

pid = st.session_state["project_id"]
label._correct(pid, st.session_state["shown"], common.class_names(pid))  # Save's callback
st.text(repr(st.session_state.get("last_message")))
"""


@pytest.mark.parametrize("tile", ["as saved", "changed again"])
def test_save_clicked_again_while_the_first_save_is_unfinished_says_what_the_first_saved(
    Session, tiny_project, tile
):
    """A double click on Save, the first click's run stopped after its commit: the second finished
    the first, then found the same tiles "changed by someone else meanwhile" (their answers are
    the first save's now) and said "Corrected 0 labels" over the first's message (review)."""
    from streamlit.testing.v1 import AppTest

    from tests.ui.ui_helpers import label_items

    (item,) = label_items(Session, tiny_project.id, 1, annotator="ann")
    with Session.begin() as session:
        shown = queries.current_event(session, item)
        was = shown.class_index
        correction = queries.add_label(session, item, 1 - was, annotator="ann", kind="correction")
        queries.record_applied(session, correction, "hist-first")  # the first save, landed
    at = AppTest.from_string(_SAVE_AGAIN, default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "ann"
    at.session_state["shown"] = [(item, shown.id, was)]
    from db.models import IGNORED

    # The tile as the first save stored it, or changed again since (not dropped then: review).
    at.session_state[f"hist-{item}-{shown.id}"] = 1 - was if tile == "as saved" else IGNORED
    at.session_state[label._correcting_key(tiny_project.id)] = {
        "id": "hist-first",
        "changes": [(item, shown.id)],
        "values": [1 - was],
        "sent": True,
        "over": True,  # its callback was stopped after the commit, before its message
    }
    at.run()
    assert not at.exception
    if tile == "as saved":
        said = ("success", "Corrected 1 label (kept in the history): the changes were saved after all.")
        assert at.text[0].value == repr(said)
    else:  # looked at, and left: the answer it was drawn on is no longer the current one
        assert "Corrected 0 labels" in at.text[0].value and "changed by someone else" in at.text[0].value
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {item: 1 - was}
