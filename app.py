"""labeler: label images in the browser while a semi-supervised model learns. Run:

streamlit run app.py
"""

import streamlit as st
from sqlalchemy.exc import OperationalError

from labeler.ui import PAGES, account, common, label, parts

st.set_page_config(page_title="labeler", page_icon="assets/logo.png", layout="wide")
st.logo("assets/logo.png")
try:
    common.session_factory()  # opens the database: a wrong LABELER_DB_URL or data folder fails here
except Exception as error:
    from labeler.config import user_error

    if user_error(error) is None:
        raise
    if isinstance(error, OperationalError):  # a database server not up yet, or out of reach
        common.unsent_guard()  # closing the tab still asks while answers wait in it
        common.database_unreachable(error, user_error(error))  # tries again (it said so once)
    else:
        st.error(user_error(error))
    st.stop()
guarded = False  # the tab's guard drawn: once per run
try:
    # Before the navigation: with accounts, nothing but the login form runs until a login.
    user = account.gate([path for path, *_ in PAGES])
    if user is None:  # no accounts: the name typed or given in the address stays in it
        common.keep_annotator_in_address()
    common.replay_missed()  # answers an outage kept from being stored: stored now
    # A grid accept or History save cut short, finished: before the count of changes waiting
    # (the tab's guard, the logout) and the notice of a click not saved.
    label.finish_accepts()
    unsaved = label.unsaved_anywhere()  # History changes not saved: closing the tab or a logout asks
    # Every page: answers the Label box left in the tab are sent; closing it asks while answers,
    # History changes or grid tiles set and not accepted wait.
    grid = label.grid_choices_anywhere()
    label.unsent_guard(unsaved + grid)
    guarded = True
    account.sidebar(user, unsaved=unsaved, grid=grid)
    pages = account.visible_pages(PAGES, admin=common.is_admin())
    page = st.navigation(
        [st.Page(fn, title=title, icon=icon, url_path=path) for path, title, icon, fn in pages]
    )
    parts.wake_worker_if_runs_wait()  # a run queued before a restart trains whatever page is open
    # The Label page says the current project's History changes itself, beside its History.
    label.unsaved_note(current=page.title != "Label", anywhere=unsaved)
    with st.container():  # drawn or not, the page below keeps its places (label_grid.js)
        common.outage_notice()  # a click an outage kept from being saved
    page.run()
except OperationalError as error:  # the database stopped answering: one sentence, then retries
    unwritable = common.cannot_write(error)  # a full disk, a read-only file: it may pass too
    if unwritable is None and common.database_answers():
        raise  # it answers: not an outage but a fault (a missing table), shown as one
    common.keep_choices()  # the mode and filters chosen, which this run may not have drawn
    if not guarded:
        common.unsent_guard()  # closing the tab still asks while answers wait in it
    common.database_unreachable(error, unwritable)
