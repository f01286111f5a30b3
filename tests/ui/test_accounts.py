"""AppTest runs of app.py and the pages with accounts: the login gate, the logged-in name on
every label, and admin-only pages and actions refused to annotators on the server."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from ui_helpers import PAGES, app_run, button, log_in, signed_in_as

from db import queries, users
from labeler import auth
from labeler.ui import common


def _on_label_page(at: AppTest) -> bool:
    return any(t.value.startswith("Label") for t in at.title)


def test_without_accounts_the_app_opens_without_login(tiny_project):
    at = app_run(tiny_project.id)
    assert not at.exception
    assert "login_name" not in [t.key for t in at.text_input]
    assert _on_label_page(at)


def test_once_an_account_exists_only_the_login_form_shows(Session, tiny_project, accounts):
    at = app_run(tiny_project.id)
    assert not at.exception
    assert [t.key for t in at.text_input] == ["login_name", "login_password"]
    assert not _on_label_page(at)

    log_in(at, "ann", "wrong password")
    assert "Wrong name or password" in at.error[0].value
    assert common.USER_KEY not in at.session_state
    assert not _on_label_page(at)

    log_in(at, "ann")
    assert not at.exception
    assert at.session_state[common.USER_KEY]["name"] == "ann"
    assert _on_label_page(at)
    assert "login_name" not in [t.key for t in at.text_input]

    at.button(key="logout").click().run()
    assert common.USER_KEY not in at.session_state
    assert [t.key for t in at.text_input] == ["login_name", "login_password"]
    assert not _on_label_page(at)


def _identity() -> None:
    import streamlit as st

    from labeler.ui import common

    st.text(f"annotator={common.annotator()} admin={common.is_admin()}")


def test_the_logged_in_account_is_the_annotator(Session, tiny_project, accounts):
    at = AppTest.from_function(_identity, default_timeout=60)
    at.session_state["annotator"] = "someone typed this"
    at.session_state[common.USER_KEY] = {"name": "ann", "role": "annotator", "hash_id": ""}
    at.run()
    assert at.text[0].value == "annotator=ann admin=False"
    # With accounts, nobody without a login gets a name (nor the OS user's): the run stops.
    anonymous = AppTest.from_function(_identity, default_timeout=60)
    anonymous.session_state["annotator"] = "someone typed this"
    anonymous.run()
    assert not anonymous.text and "Log in first" in anonymous.error[0].value


def test_without_accounts_the_typed_name_is_the_annotator(tiny_project):
    at = AppTest.from_function(_identity, default_timeout=60)
    at.session_state["annotator"] = "bob"
    at.run()
    assert at.text[0].value == "annotator=bob admin=True"


def test_a_removed_account_is_logged_out_at_the_next_run(Session, tiny_project, accounts):
    at = log_in(app_run(tiny_project.id), "ann")
    assert at.session_state[common.USER_KEY]["name"] == "ann"
    with Session.begin() as session:
        users.set_password(session, "ann", auth.hash_password("another password"))
    at.run()
    assert common.USER_KEY not in at.session_state
    assert "login_name" in [t.key for t in at.text_input]


def _page_as(module: str, project_id: int, user: dict | None) -> AppTest:
    """One page run directly, without app.py's gate: the page must protect itself."""
    at = AppTest.from_string(
        f"from labeler.ui.{module} import {PAGES[module]}\n{PAGES[module]}()", default_timeout=60
    )
    at.session_state["project_id"] = project_id
    if user is not None:
        at.session_state[common.USER_KEY] = _as_logged_in(user)
    return at.run()


def _as_logged_in(user: dict) -> dict:
    """`user` as a login through the form keeps it: with its password hash's fingerprint."""
    with common.session_factory()() as session:
        stored = users.get_user(session, user["name"])
        return {**user, "hash_id": common.fingerprint(stored.password_hash)}


ANN = {"name": "ann", "role": "annotator", "hash_id": ""}
ADA = {"name": "ada", "role": "admin", "hash_id": ""}


def test_an_annotator_cannot_export(tiny_project, accounts):
    at = _page_as("export", tiny_project.id, ANN)
    assert not at.exception
    assert "Only an admin can export" in at.error[0].value
    assert not [b for b in at.button if b.key == "export_prepare"]
    assert not at.get("download_button")
    admin = _page_as("export", tiny_project.id, ADA)
    assert not admin.error and admin.button(key="export_prepare")


def test_a_download_is_refused_once_its_admin_is_an_admin_no_more(
    Session, tiny_project, accounts, monkeypatch
):
    """A download button's file is made when it is clicked, which runs no script and so no page
    check: an admin demoted with the Export page open downloaded every file (an exploratory
    session). Each file is made only while the person shown the button is an admin."""
    import streamlit as st

    from labeler.ui import export as export_ui
    from tests.ui.ui_helpers import label_items

    label_items(Session, tiny_project.id, 6)
    made = []
    real = st.download_button
    clicks = []

    def recorded(*args, **kwargs):
        made.append(kwargs["data"])
        clicks.append(kwargs.get("on_click"))
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "download_button", recorded)
    at = _page_as("export", tiny_project.id, ADA)
    at.button(key="export_prepare").click().run()
    assert not at.exception and len(made) >= 3
    assert all(isinstance(make(), bytes) for make in made)
    with Session.begin() as session:
        users.set_role(session, "ann", "admin")  # ada may not be the last admin
        users.set_role(session, "ada", "annotator")
    for make in made:
        with pytest.raises(export_ui.NotAdmin, match="Only an admin can download exports"):
            make()
    # No rerun at a click: with one, the browser's download of the file lost the race with the
    # page drawn anew (its buttons' files registered again) and nothing was downloaded.
    assert set(clicks) == {"ignore"}


def test_an_annotator_cannot_create_or_import_projects(Session, tiny_project, accounts):
    at = _page_as("project", tiny_project.id, ANN)
    assert not at.exception
    assert "new_project_name" not in [t.key for t in at.text_input]
    assert "annotator_input" not in [t.key for t in at.text_input]  # no free-text name either
    admin = _page_as("project", tiny_project.id, ADA)
    assert "new_project_name" in [t.key for t in admin.text_input]


def test_a_forged_create_by_an_annotator_is_refused(Session, tiny_project, accounts):
    """The form drawn for an admin, then the role changes before the submit arrives."""
    at = _page_as("project", tiny_project.id, ADA)
    at.text_input(key="new_project_name").input("sneaky")
    at.session_state[common.USER_KEY] = _as_logged_in(ANN)
    at.button[-1].click().run()
    assert not at.exception
    with Session() as session:
        assert queries.get_project(session, "sneaky") is None


def test_navigation_leaves_out_admin_pages_for_annotators():
    from labeler.ui import PAGES as APP_PAGES
    from labeler.ui import account

    assert "export" not in [path for path, *_ in account.visible_pages(APP_PAGES, admin=False)]
    assert "export" in [path for path, *_ in account.visible_pages(APP_PAGES, admin=True)]


def test_no_server_folder_without_an_import_root(tiny_project, monkeypatch, tmp_path):
    monkeypatch.delenv("LABELER_IMPORT_ROOT", raising=False)
    at = _page_as("project", tiny_project.id, None)
    assert not [o for o in at.radio(key="new_project_kind").options if "Folder" in o]
    monkeypatch.setenv("LABELER_IMPORT_ROOT", str(tmp_path))
    at = _page_as("project", tiny_project.id, None)
    assert [o for o in at.radio(key="new_project_kind").options if "Folder" in o]
    at.radio(key="new_project_kind").set_value("folder").run()  # the form shows the folder field
    at.text_input(key="new_project_name").input("etc")
    at.text_input(key="new_project_folder").input("/etc")
    at.button[-1].click().run()
    assert "Only folders under" in at.error[0].value


class _OidcUser(dict):
    """What `st.user` gives after Streamlit's OIDC login (`st.login`): the provider's claims."""

    @property
    def is_logged_in(self) -> bool:
        return bool(self)


@pytest.fixture
def oidc(monkeypatch):
    """Streamlit's OIDC login switched on, with the provider's answer set by the test."""
    import streamlit

    from labeler.ui import account

    monkeypatch.setattr(account, "oidc_configured", lambda: True)
    user = _OidcUser()
    monkeypatch.setattr(streamlit, "user", user)
    return user


def test_oidc_login_maps_the_email_to_an_account(Session, tiny_project, accounts, oidc):
    with Session.begin() as session:
        users.add_user(session, "erin@example.org", "!", "annotator")  # `users add --no-password`
    at = app_run(tiny_project.id)
    assert at.button(key="login_oidc") and not _on_label_page(at)

    oidc.update(email="mallory@example.org")
    at.run()
    assert "has no account here" in at.error[0].value and not _on_label_page(at)
    assert common.USER_KEY not in at.session_state

    oidc.clear()
    oidc.update(email="erin@example.org", email_verified=False)  # signed up with it, unproven
    at.run()
    assert "has not verified this address" in at.error[0].value and not _on_label_page(at)
    assert common.USER_KEY not in at.session_state

    oidc.clear()
    oidc.update(email="erin@example.org")  # no such claim: the provider verifies addresses itself
    at.run()
    assert at.session_state[common.USER_KEY]["name"] == "erin@example.org"
    assert _on_label_page(at)
    oidc.update(email_verified=True)
    at.run()
    assert _on_label_page(at)


def test_undo_across_two_logged_in_sessions_takes_back_only_ones_own_answer(Session, tiny_project, accounts):
    """Ann and Ada, each logged in through the real login form, each accept a grid page; Ada's
    undo takes back her page only, and Ann's answers stand."""
    sessions = {}
    for name in ("ann", "ada"):
        at = log_in(app_run(tiny_project.id), name)
        assert _on_label_page(at)
        at.radio(key="label_mode").set_value("Grid").run()
        tiles = [box for box in at.selectbox if box.key.startswith("grid-")]
        for box in tiles[:2]:
            box.set_value(0)
        button(at, "accept_grid").click().run()
        assert not at.exception
        sessions[name] = at
    with Session() as session:
        by = {
            e.item_id: e.annotator
            for i in queries.current_labels(session, tiny_project.id)
            for e in queries.history(session, i)
        }
    assert sorted(by.values()) == ["ada", "ada", "ann", "ann"]
    ada = sessions["ada"]
    ada.radio(key="label_mode").set_value("Grid").run()
    ada.button(key="undo").click().run()
    ada.button(key="undo").click().run()  # a second undo finds nothing more of Ada's
    with Session() as session:
        labels = queries.current_labels(session, tiny_project.id)
    assert sorted(by[i] for i in labels) == ["ann", "ann"]


def test_the_next_person_in_the_tab_does_not_get_the_held_grid_page(Session, tiny_project, accounts):
    """Ann opens a grid page and logs out without accepting it; Ada logs in in the same tab. The
    page held for Ann (and the pages she accepted) are gone with the rest of Ann's work, and the
    images the tab held for Ann are given back at once (they were kept from everyone until the
    claims ran out); Ann's other tabs keep theirs. Ada's page is drawn and claimed for her."""
    from datetime import timedelta

    from db.models import Claim, utcnow

    at = app_run(tiny_project.id)
    # Ann, logged in, on Grid before the box was ever drawn (the box's images stay held: the test
    # below); a login through the form starts on the default mode, One image.
    signed_in_as(Session, at, "ann")
    at.session_state["label_mode"] = "Grid"
    at.run()
    assert f"box-sent-{tiny_project.id}" not in at.session_state
    held = f"grid-page-{tiny_project.id}"
    anns = list(at.session_state[held])
    at.session_state[f"grid-accepted-{tiny_project.id}"] = {"1,2,3"}
    at.session_state[f"hist-seen-{tiny_project.id}"] = {(1, 2): 0}
    at.session_state[f"grid-choices-{tiny_project.id}"] = {
        1: {"page": "1,2", "presses": 0, "value": 0, "name": "0"}
    }
    tab = f"ann#{at.session_state['claim_token']}"
    with Session.begin() as session:  # Ann's other tab
        claimed = {c.item_id for c in session.query(Claim)}
        other = next(i.id for i in queries.items(session, tiny_project.id, "pool") if i.id not in claimed)
        session.add(
            Claim(
                item_id=other,
                project_id=tiny_project.id,
                annotator="ann#0ther",
                expires_at=utcnow() + timedelta(minutes=5),
            )
        )
    with Session() as session:
        assert {c.item_id for c in session.query(Claim).filter_by(annotator=tab)} >= set(anns)
    at.button(key="logout").click().run()
    with Session() as session:
        assert not session.query(Claim).filter_by(annotator=tab).count()
        assert [c.annotator for c in session.query(Claim).filter_by(item_id=other)] == ["ann#0ther"]
    personal = ("grid-accepted", "hist-seen", "grid-choices")
    for key in (held, *(f"{prefix}-{tiny_project.id}" for prefix in personal)):
        assert key not in at.session_state
    log_in(at, "ada")
    assert not at.exception
    at.radio(key="label_mode").set_value("Grid").run()
    adas = list(at.session_state[held])
    ada = f"ada#{at.session_state['claim_token']}"
    with Session() as session:
        assert adas and {c.item_id for c in session.query(Claim).filter_by(annotator=ada)} >= set(adas)


def test_the_next_person_in_the_tab_is_not_given_the_images_of_the_label_box(Session, tiny_project, accounts):
    """Answers to the box's images may still wait in the tab at a logout (the box sends one batch
    at a time): given back at once, those images went to the next person in the tab, who answered
    first, and the first person's answers were refused when she logged in again (an exploratory
    session, 3 of 4). They stay held for the claim's minutes; the grid's page is given back."""
    from ui_helpers import box_data

    from db.models import Claim
    from labeler import projects
    from tests.conftest import tiny_image_set

    # Room for two boxes of 20: on a smaller project Ada's would share some of Ann's by design.
    project = projects.create_project(Session, "forty", "test", images=tiny_image_set(n=48, test=0))
    at = log_in(app_run(project.id), "ann")
    anns = [item["id"] for item in box_data(at)["items"]]
    tab = f"ann#{at.session_state['claim_token']}"
    at.button(key="logout").click().run()
    with Session() as session:
        assert {c.item_id for c in session.query(Claim).filter_by(annotator=tab)} == set(anns)
    log_in(at, "ada")
    adas = [item["id"] for item in box_data(at)["items"]]
    assert adas and not set(adas) & set(anns)


def test_a_logout_while_history_changes_wait_asks_first(Session, tiny_project, accounts):
    """A logout drops the History changes not saved yet (they are the person's, kept in the
    session): Log out asks first; Stay keeps them, Log out anyway drops them; once nothing waits,
    Log out logs out at once (the test above)."""
    from ui_helpers import label_items

    (item,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    at = app_run(tiny_project.id)
    log_in(at, "ann")
    at.radio(key="label_mode").set_value("History").run()
    tile = next(box for box in at.selectbox if box.key.startswith(f"hist-{item}-"))
    tile.set_value(1 - tile.value).run()
    at.button(key="logout").click().run()
    assert at.session_state[common.USER_KEY]["name"] == "ann"  # still logged in
    assert "History changes not saved yet (1)" in at.sidebar.warning[-1].value
    at.button(key="logout_stay").click().run()
    assert at.session_state[common.USER_KEY]["name"] == "ann"
    assert [b.key for b in at.sidebar.button if b.key.startswith("logout")] == ["logout"]
    at.button(key="logout").click().run()
    tile = next(box for box in at.selectbox if box.key.startswith(f"hist-{item}-"))
    tile.set_value(1 - tile.value).run()  # back on its saved answer: nothing waits, no question
    assert [b.key for b in at.sidebar.button if b.key.startswith("logout")] == ["logout"]
    assert not at.sidebar.warning
    tile = next(box for box in at.selectbox if box.key.startswith(f"hist-{item}-"))
    tile.set_value(1 - tile.value).run()  # changed again: the question comes only with a click
    assert not [w for w in at.sidebar.warning if "A logout drops" in w.value]
    at.button(key="logout").click().run()
    at.button(key="logout_anyway").click().run()
    assert common.USER_KEY not in at.session_state
    assert [t.key for t in at.text_input] == ["login_name", "login_password"]
    log_in(at, "ann")  # the change went with the logout, and the question with it
    assert [b.key for b in at.sidebar.button if b.key.startswith("logout")] == ["logout"]


def test_a_logout_while_grid_tiles_wait_asks_first(Session, tiny_project, accounts):
    """A grid tile set and not accepted is dropped by a logout too: Log out asks first, and once
    the page is accepted it logs out at once."""
    at = app_run(tiny_project.id)
    log_in(at, "ann")
    at.radio(key="label_mode").set_value("Grid").run()
    tile = next(box for box in at.selectbox if box.key.startswith("grid-"))
    tile.set_value(1 if tile.value != 1 else 0).run()
    at.button(key="logout").click().run()
    assert at.session_state[common.USER_KEY]["name"] == "ann"  # still logged in
    assert at.sidebar.warning[-1].value == "A logout drops the grid tiles set and not accepted (1)."
    at.button(key="logout_stay").click().run()
    next(b for b in at.button if b.key.startswith("accept_grid")).click().run()
    assert not at.exception
    at.button(key="logout").click().run()  # nothing waits: out at once
    assert common.USER_KEY not in at.session_state


def test_an_open_page_of_a_removed_account_renews_no_claims(Session, tiny_project, accounts):
    """The Label page's claims fragment runs outside app.py's login gate: a tab whose account was
    removed (or logged out, or may label no more) leaves its images to run out."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Claim, utcnow
    from labeler.ui import label

    at = log_in(app_run(tiny_project.id), "ann")
    tab = f"ann#{at.session_state['claim_token']}"
    with Session.begin() as session:
        session.execute(update(Claim).values(expires_at=utcnow() + timedelta(seconds=30)))
        users.remove_user(session, "ann")
    fragment = AppTest.from_string(f"from labeler.ui import label\nlabel._keep_claims({tiny_project.id})")
    for key in (
        "project_id",
        "claim_token",
        label._ACTIVE_AT,
        common.USER_KEY,
        f"box-sent-{tiny_project.id}",
    ):
        fragment.session_state[key] = at.session_state[key]
    fragment.run()
    assert not fragment.exception
    with Session() as session:
        claims = session.query(Claim).filter_by(annotator=tab).all()
    assert claims and all(c.expires_at < utcnow() + timedelta(seconds=60) for c in claims)


def test_the_next_person_in_the_tab_gets_none_of_the_last_ones_tiles(Session, tiny_project, accounts):
    """Streamlit keeps a widget's value through runs that do not draw it when they end early,
    and every run between a logout and a login ends in st.stop(): the History tiles and the grid
    tiles the last person set came back as they were for the next one, who lands in the same
    mode, and whose Save or A stored them under the new name (review)."""
    from ui_helpers import label_items

    from labeler.ui import label

    (item,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    at = app_run(tiny_project.id)
    log_in(at, "ann")
    at.radio(key="label_mode").set_value("History").run()
    history = at.selectbox(key=next(b.key for b in at.selectbox if b.key.startswith(f"hist-{item}-")))
    saved = history.value
    history.set_value(1 - saved).run()
    at.selectbox(key="hist_who").set_value("bob").run()
    at.button(key="logout").click().run()
    at.button(key="logout_anyway").click().run()
    # The mode and filters go too: the browser shows the defaults after the login form (the
    # switch said One image over the last person's History, exploratory), so the server must.
    log_in(at, "ada")
    assert at.radio(key="label_mode").value == "One image"
    at.radio(key="label_mode").set_value("History").run()
    assert at.selectbox(key="hist_who").value is None
    assert at.selectbox(key=history.key).value == saved
    assert not label.unsaved_anywhere()

    at.radio(key="label_mode").set_value("Grid").run()
    grid = next(box for box in at.selectbox if box.key.startswith("grid-"))
    shown = grid.value
    grid.set_value(1 if shown != 1 else 0).run()
    at.button(key="logout").click().run()
    at.button(key="logout_anyway").click().run()
    assert grid.key not in at.session_state and "grid-keys" not in at.session_state
    log_in(at, "ann")
    at.radio(key="label_mode").set_value("Grid").run()
    assert grid.key not in [b.key for b in at.selectbox] or at.selectbox(key=grid.key).value == shown


def _clear_after_an_outage() -> None:
    import streamlit as st

    from labeler.ui import account, common

    st.session_state[common.MISSED] = {"_apply_box_actions": (print, ("ann's answers",), {})}
    # The latent-space page's selection, "relabel" tick, class selector, pinned run and frame.
    others = ("latent", "bulk_relabel", "bulk_class-1a2b3c4d", "latent-run-1", "latent-frame-1")
    for key in others:
        st.session_state[key] = True
    account.clear_personal()
    st.text(f"replays kept: {common.MISSED in st.session_state}")
    st.text(f"kept: {[key for key in others if key in st.session_state]}")


def test_the_answers_an_outage_held_back_are_not_replayed_for_the_next_person():
    """They were replayed at the next run under whoever was logged in then; they wait in the tab
    for their owner (unsent_guard.js)."""
    at = AppTest.from_function(_clear_after_an_outage, default_timeout=60).run()
    assert at.text[0].value == "replays kept: False"
    assert at.text[1].value == "kept: []"
