"""Callbacks run at the start of a script run, before app.py's login gate: every callback that
writes an answer checks who is logged in at that moment, and stores the answer under that name.

Each test draws a page for ann through the real login form, changes her account in the database
the way an admin's `python -m labeler users ...` would, then sends the widget event: nothing
may be stored under her name afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from db import queries, users
from db.models import User
from labeler import auth
from labeler.ui import common
from tests.ui.ui_helpers import PASSWORD, app_run, button, log_in


def _logged_in(project_id: int, name: str = "ann") -> AppTest:
    at = log_in(app_run(project_id), name)
    assert at.session_state[common.USER_KEY]["name"] == name
    return at


def _remove(Session):
    with Session.begin() as session:
        users.remove_user(session, "ann")


def _new_password(Session):
    with Session.begin() as session:
        users.set_password(session, "ann", auth.hash_password("another password"))


def _role_that_may_not_label(Session):
    # No such role exists yet; one stored by a later version (or by hand) must not label.
    with Session.begin() as session:
        session.execute(update(User).where(User.name == "ann").values(role="viewer"))


CHANGES = {"removed": _remove, "password reset": _new_password, "role": _role_that_may_not_label}


def _labels(Session, project_id: int) -> dict[int, int]:
    with Session() as session:
        return queries.current_labels(session, project_id, ignored=True)


@pytest.mark.parametrize("change", CHANGES)
def test_a_grid_page_is_not_stored_once_the_account_changed(Session, tiny_project, accounts, change):
    at = _logged_in(tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    for box in [box for box in at.selectbox if box.key.startswith("grid-")][:3]:
        box.set_value(0)
    CHANGES[change](Session)
    button(at, "accept_grid").click().run()
    assert not at.exception
    assert _labels(Session, tiny_project.id) == {}


@pytest.mark.parametrize("change", CHANGES)
def test_a_history_correction_is_not_stored_once_the_account_changed(Session, tiny_project, accounts, change):
    from tests.ui.ui_helpers import label_items

    (item,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    before = _labels(Session, tiny_project.id)
    at = _logged_in(tiny_project.id)
    at.radio(key="label_mode").set_value("History").run()
    (tile,) = [box for box in at.selectbox if box.key.startswith("hist-")]
    tile.set_value(1 - before[item])
    CHANGES[change](Session)
    button(at, "hist_save").click().run()
    assert not at.exception
    assert _labels(Session, tiny_project.id) == before


def test_logged_out_in_between_nothing_is_stored(Session, tiny_project, accounts):
    """The page drawn while logged in, the login gone from the session before the click (another
    run's logout): the click's callback finds nobody logged in."""
    at = _logged_in(tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    for box in [box for box in at.selectbox if box.key.startswith("grid-")][:3]:
        box.set_value(0)
    del at.session_state[common.USER_KEY]
    button(at, "accept_grid").click().run()
    assert _labels(Session, tiny_project.id) == {}


# The one-image box and the Latent page's bulk label are components AppTest cannot drive: their
# callbacks are called as Streamlit calls them, inside a script run of a session whose login was
# made for a page drawn earlier.
_CALL = """
import streamlit as st
from labeler.ui import common, label, latent
pid, item, what = st.session_state["project_id"], st.session_state["item"], st.session_state["what"]
if what == "box":
    st.session_state[label._box_key(pid)] = {"actions": [{"id": "x1", "type": "label", "item": item, "class": 0}]}
    label._apply_box_actions(pid)
elif what == "unsent":  # a key ann pressed just before leaving the Label page, sent by the guard
    owner = f"ann@{pid}"
    st.session_state[label.UNSENT_KEY] = {"actions": [{"id": "x1", "type": "label", "item": item, "class": 0, "owner": owner}]}
    label._apply_unsent()
    st.session_state["box_notices"] = st.session_state.pop("unsent_notices", None)
else:
    names = st.session_state.get("names") or common.class_names(pid)
    st.session_state[latent._bulk_key(names)] = 0
    st.session_state["latent"] = {"selection": {"points": [{"customdata": [item, 0.9]}]}}  # the map's lasso
    latent._bulk_label(pid, [item], names)
st.text(repr(st.session_state.get("box_notices") or st.session_state.get("latent_message")))
"""


def _call(Session, project_id: int, what: str, user: dict | None) -> AppTest:
    with Session() as session:
        item = queries.items(session, project_id, "pool")[0].id
    at = AppTest.from_string(_CALL, default_timeout=60)
    at.session_state["project_id"] = project_id
    at.session_state["item"] = item
    at.session_state["what"] = what
    if user is not None:
        at.session_state[common.USER_KEY] = user
    return at.run()


def _session_user(Session, name: str) -> dict:
    """What a login through the form keeps in the session."""
    with Session() as session:
        stored = users.get_user(session, name)
        return {"name": stored.name, "role": stored.role, "hash_id": common.fingerprint(stored.password_hash)}


@pytest.mark.parametrize("what", ["box", "bulk", "unsent"])
@pytest.mark.parametrize("change", [None, *CHANGES])
def test_box_and_bulk_answers_need_the_account_as_it_is_now(Session, tiny_project, accounts, what, change):
    ann = _session_user(Session, "ann")
    if change is not None:
        CHANGES[change](Session)
    at = _call(Session, tiny_project.id, what, ann)
    assert not at.exception
    labels = _labels(Session, tiny_project.id)
    if change is None:
        assert len(labels) == 1
        with Session() as session:
            assert [e.annotator for e in queries.history(session, next(iter(labels)))] == ["ann"]
    else:
        assert labels == {}
        assert "not saved" in at.text[0].value


@pytest.mark.parametrize("what", ["box", "bulk", "unsent"])
def test_box_and_bulk_answers_need_a_login(Session, tiny_project, accounts, what):
    at = _call(Session, tiny_project.id, what, None)
    assert not at.exception
    assert _labels(Session, tiny_project.id) == {}


@pytest.mark.parametrize("what", ["box", "bulk"])
def test_an_answer_is_stored_under_who_is_logged_in_now(Session, tiny_project, accounts, what):
    """Whatever name a page was drawn for, the answer is stored under the account logged in now."""
    at = _call(Session, tiny_project.id, what, _session_user(Session, "ada"))
    assert not at.exception
    (item,) = _labels(Session, tiny_project.id)
    with Session() as session:
        assert [e.annotator for e in queries.history(session, item)] == ["ada"]


_UNSENT = """
import streamlit as st
from labeler.ui import label
st.session_state[label.UNSENT_KEY] = {"actions": st.session_state["sent"]}
label._apply_unsent()
st.text(repr(label._unsent_acked("ann")))
"""


def test_answers_left_in_the_tab_are_stored_only_for_whoever_gave_them(Session, tiny_project, accounts):
    """The guard on every page sends what Label boxes left in the tab (unsent_guard.js), with the
    box's owner: ann's are stored as ann's, in their own project; bob's (he logged out in this
    tab, ann logged in) and a name that only starts like ann's are not stored at all, nor listed
    as done, so the tab keeps them for their giver. A project that is not there: dropped."""
    pid = tiny_project.id
    with Session() as session:
        a, b, c, d = (i.id for i in queries.items(session, pid, "pool")[:4])
    sent = [
        {"id": "ann-1", "type": "label", "item": a, "class": 1, "owner": f"ann@{pid}", "again": True},
        {"id": "bob-1", "type": "label", "item": b, "class": 0, "owner": f"bob@{pid}"},
        {"id": "ann-2", "type": "label", "item": c, "class": 0, "owner": f"ann@x@{pid}"},
        {"id": "ann-3", "type": "label", "item": d, "class": 0, "owner": f"ann@{pid + 1000}"},
        {"id": "ann-4", "type": "label", "item": d, "class": 0, "owner": f"ann@-{pid}"},
    ]
    at = AppTest.from_string(_UNSENT, default_timeout=60)
    at.session_state[common.USER_KEY] = _session_user(Session, "ann")
    at.session_state["sent"] = sent
    at.run()
    assert not at.exception
    assert _labels(Session, pid) == {a: 1}
    with Session() as session:
        assert [e.annotator for e in queries.history(session, a)] == ["ann"]
    assert at.text[0].value == repr(["ann-1", "ann-3"])  # ann-3's image is not in that project
    at.run()  # sent again (the tab had not heard): stored once
    with Session() as session:
        assert len(queries.history(session, a)) == 1


_GUARD_THEN_BOX = """
import streamlit as st
from labeler.ui import common, label
pid, answer = st.session_state["pid"], st.session_state["answer"]
st.session_state[label.UNSENT_KEY] = {"actions": [{**answer, "owner": f"ann@{pid}", "again": True}]}
label._apply_unsent()
st.session_state[label._box_key(pid)] = {"actions": [{**answer, "again": True}]}  # the box, back on Label
label._apply_box_actions(pid)
applied = common.ledger(pid).applied
st.text(repr([a["id"] for a in label._box_actions(pid) if a.get("id") in applied]))  # the box's data.acked
st.text(repr(st.session_state.get("box_notices")))
"""


def test_an_answer_sent_by_the_guard_and_then_by_the_box_stands_once(Session, tiny_project):
    """Back on the Label page, the box loads the answers left in the tab and sends them too (the
    guard may have sent them already): one answer, and the box hears it was applied."""
    pid = tiny_project.id
    with Session() as session:
        item = queries.items(session, pid, "pool")[0].id
    at = AppTest.from_string(_GUARD_THEN_BOX, default_timeout=60)
    at.session_state["annotator"] = "ann"
    at.session_state["pid"] = pid
    at.session_state["answer"] = {"id": "ann-9", "type": "label", "item": item, "class": 1}
    at.run()
    assert not at.exception and at.text[0].value == repr(["ann-9"])
    assert at.text[1].value == repr([])  # no "arrived after it was answered (by you)"
    with Session() as session:
        assert [(e.class_index, e.annotator) for e in queries.history(session, item)] == [(1, "ann")]


def test_adding_a_class_needs_an_admin_as_the_account_is_now(Session, tiny_project, accounts):
    """Ada, an admin when the Classes panel was drawn, is an annotator when her click arrives."""
    at = _logged_in(tiny_project.id, "ada")
    at.text_input(key="new_class").input("other")
    with Session.begin() as session:
        users.add_user(session, "eve", auth.hash_password(PASSWORD), "admin")
        users.set_role(session, "ada", "annotator")
    at.button(key="add_class").click().run()
    assert not at.exception
    with Session() as session:
        assert "other" not in queries.class_names(session, tiny_project.id)


def test_logging_out_forgets_what_this_person_may_undo(Session, tiny_project, accounts):
    at = _logged_in(tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    next(box for box in at.selectbox if box.key.startswith("grid-")).set_value(0)
    button(at, "accept_grid").click().run()
    assert _labels(Session, tiny_project.id) and f"ledger-{tiny_project.id}" in at.session_state
    at.button(key="logout").click().run()
    assert not [key for key in at.session_state if str(key).startswith("ledger-")]


def test_with_single_sign_on_the_providers_login_must_still_be_that_account(
    Session, tiny_project, accounts, monkeypatch
):
    """The session was signed in as erin through the identity provider; once the provider's login
    is gone (logged out in another tab of the browser), a callback stores nothing."""
    import streamlit

    from labeler.ui import account

    class OidcUser(dict):
        @property
        def is_logged_in(self) -> bool:
            return bool(self)

    with Session.begin() as session:
        users.add_user(session, "erin@example.org", "!", "annotator")  # `users add --no-password`
    monkeypatch.setattr(account, "oidc_configured", lambda: True)
    provider = OidcUser(email="erin@example.org")
    monkeypatch.setattr(streamlit, "user", provider)
    erin = _session_user(Session, "erin@example.org")
    _call(Session, tiny_project.id, "box", erin)
    assert len(_labels(Session, tiny_project.id)) == 1
    provider.clear()
    at = _call(Session, tiny_project.id, "bulk", erin)
    assert "not saved" in at.text[0].value
    assert len(_labels(Session, tiny_project.id)) == 1


def test_a_bulk_label_chosen_before_a_class_was_renamed_is_not_saved(Session, tiny_project, accounts):
    """The Latent page's class choice is an index: after a rename it may mean another class, so
    the selection drawn with the old names stores nothing and the page says why."""
    with Session() as session:
        drawn = queries.class_names(session, tiny_project.id)
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 0, "renamed")
    with Session() as session:
        item = queries.items(session, tiny_project.id, "pool")[0].id
    at = AppTest.from_string(_CALL, default_timeout=60)
    for key, value in {"project_id": tiny_project.id, "item": item, "what": "bulk", "names": drawn}.items():
        at.session_state[key] = value
    at.session_state[common.USER_KEY] = _session_user(Session, "ann")
    at.run()
    assert not at.exception
    assert _labels(Session, tiny_project.id) == {}
    assert "renamed" in at.text[0].value


def _train_page_of_ann(Session, project_id: int) -> AppTest:
    """The Train page, drawn for ann logged in (her session as the login form leaves it)."""
    from tests.ui.ui_helpers import page_app, signed_in_as

    at = page_app("train", project_id, annotator="ann")
    return signed_in_as(Session, at, "ann").run()


@pytest.mark.parametrize("change", [None, *CHANGES])
def test_training_is_not_started_or_cancelled_once_the_account_changed(
    Session, tiny_project, accounts, change
):
    """Start training and Cancel run wrote without asking who was logged in: a tab whose session
    an admin had ended (a new password, a removed account) queued a run, stored its settings as
    the project's, and cancelled another person's run. They are refused like every other write
    (`None`: the account unchanged, both work)."""
    from db import runs as run_queries
    from db.models import Project, Run
    from tests.ui.ui_helpers import label_items, running_run

    label_items(Session, tiny_project.id, 6)
    run_id = running_run(Session, tiny_project.id)
    with Session() as session:
        settings_before = dict(session.get(Project, tiny_project.id).settings or {})
    start, cancel = _train_page_of_ann(Session, tiny_project.id), _train_page_of_ann(Session, tiny_project.id)
    start.selectbox(key="train_model").set_value("labelspread")
    start.number_input(key="train_budget_s").set_value(5)
    if change:
        CHANGES[change](Session)
    start.button(key="train_start").click().run()
    cancel.button(key=f"cancel-{run_id}").click().run()
    assert not start.exception and not cancel.exception
    with Session() as session:
        runs = [r.model for r in run_queries.list_runs(session, tiny_project.id)]
        cancelled = session.get(Run, run_id).cancel_requested
        settings = session.get(Project, tiny_project.id).settings or {}
    if change is None:
        assert sorted(runs) == ["labelspread", "m2"] and cancelled and settings["model"] == "labelspread"
    else:
        assert runs == ["m2"] and not cancelled and settings == settings_before
        assert "so this was not saved" in start.error[0].value
