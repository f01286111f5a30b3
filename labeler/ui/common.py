"""What every page shares: the database session factory, the current project, the worker.

Widgets only: computation lives in `labeler/` and SQL in `db/`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import getpass
import hashlib
import html
import secrets
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

import db
from db import queries, users
from db.models import Project
from labeler import answers, projects


@st.cache_resource(show_spinner=False)
def _session_factory(url: str) -> sessionmaker[Session]:
    return db.session_factory(db.get_engine(url))


@functools.cache
def _unsent_guard():
    return st.components.v2.component(
        "labeler_unsent_guard", js=(Path(__file__).parent / "unsent_guard.js").read_text()
    )


def unsent_guard(sidebar: bool = True, data: dict | None = None, on_change=None) -> None:
    """On every page and the login form: the browser asks before the tab closes while answers
    the Label box has not sent wait in the tab (unsent_guard.js). It draws nothing. With `data`
    ({"name", "acked"}) and `on_change` (label.unsent_guard), it also sends them."""
    sends = {"default": {"actions": []}, "on_actions_change": on_change} if on_change else {}
    with st.sidebar if sidebar else st.container():
        _unsent_guard()(key="unsent-guard", data=data, **sends)


def by_count(n: int, one: str, many: str) -> str:
    """`one` or `many`, by the count n ("1 label", "2 labels")."""
    return one if n == 1 else many


def session_factory() -> sessionmaker[Session]:
    from labeler.config import db_url

    return _session_factory(db_url())


# How often a page that could not reach the database tries again (`database_unreachable`).
RETRY_DATABASE_S = 10


# Choices a person made on a page that a run cut short by an outage may not have drawn yet:
# Streamlit drops the state of widgets a run did not draw, so the Label page came back on
# One image after an outage met in Grid, with the History's filters reset.
KEPT_THROUGH_OUTAGE = ("label_mode", "hist_class", "hist_who", "hist_disagree", "show_names")


def keep_choices() -> None:
    """In a run an outage cut short: the choices of KEPT_THROUGH_OUTAGE kept for the next run.
    (One drawn in this run is kept anyway, and Streamlit refuses a value set after its widget.)"""
    from streamlit.errors import StreamlitAPIException

    for key in KEPT_THROUGH_OUTAGE:
        if key in st.session_state:
            with contextlib.suppress(StreamlitAPIException):
                st.session_state[key] = st.session_state[key]


def database_unreachable(error: Exception, reason: str | None = None) -> None:
    """What a page shows instead of a traceback when the database stopped answering (a restart,
    a network cut) or, with `reason` (what to check), could not be opened when the server started:
    one sentence, and a look every RETRY_DATABASE_S seconds that redraws the page once it answers
    again. The traceback named the database's host and port, and the page stayed broken after the
    database came back, until the person clicked elsewhere (found by an exploratory session)."""
    import logging

    logging.getLogger(__name__).warning("The database cannot be reached: %s", error)
    kept = "Answers you gave are kept in this tab and sent once it is back"
    retry_note = f"this page tries again every {RETRY_DATABASE_S} seconds."
    if reason is None:
        st.error(
            f"The database cannot be reached just now, so nothing can be shown or saved. {kept}; {retry_note}"
        )
    else:  # one sentence still
        st.error(
            f"{reason.rstrip('.')}; {retry_note[:-1]}, and answers you gave wait in this tab until then."
        )

    @st.fragment(run_every=RETRY_DATABASE_S)
    def retry() -> None:
        # Not in the page run that draws it, only on the timer's: a database that answers but
        # cannot be written (a full disk) reran the page at once, over and over.
        if st.session_state.get("retry-drawing"):
            return
        if database_answers():
            st.rerun(scope="app")

    st.session_state["retry-drawing"] = True
    try:
        retry()
    finally:
        st.session_state["retry-drawing"] = False


def drawn_through_outage(draw, project_id: int, say) -> None:
    """`draw(project_id)` in a fragment that reruns on its own (outside app.py's handler): while
    the database cannot be reached, `say()` draws one line instead of a traceback with the
    database's host and port, until it answers again."""
    from sqlalchemy.exc import OperationalError

    try:
        draw(project_id)
    except OperationalError:
        if database_answers():
            raise
        say()


def cannot_write(error: Exception) -> str | None:
    """One sentence when `error` says the database cannot be written (a full disk, a file made
    read-only), else None. Such a page showed a traceback on every key until the server was
    restarted: SQLite keeps a connection opened read-only so, so the pool is emptied here and
    the next try opens new ones."""
    text = str(getattr(error, "orig", None) or error).lower()
    if "disk is full" in text or "no space left on device" in text:  # SQLite, PostgreSQL
        what = "the disk holding it is full: free some space"
    elif "readonly database" in text or "read-only" in text:
        what = "its file is read-only: make it writable"
    else:
        return None
    from labeler.config import db_url

    try:
        db.get_engine(db_url()).dispose()
    except Exception:  # the message matters more; the next try opens its own
        import logging

        logging.getLogger(__name__).warning("Could not empty the database's pool", exc_info=True)
    return f"The database cannot be written just now ({what})."


def database_answers() -> bool:
    """Whether the database answers a trivial query now."""
    from sqlalchemy import text

    try:
        with session_factory()() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure to answer is "no"
        return False


# Session keys: the callbacks an outage stopped, to call again (`replay_missed`), and the notice
# for a deliberate action it stopped (`outage_notice`).
MISSED = "outage-missed"
OUTAGE_NOTICE = "outage-notice"


def survives_outage(callback=None, *, replay: bool = False):
    """A widget callback that, when the database cannot be reached, returns instead of raising
    (a callback's exception replaced the whole page with a traceback, and nothing redrew it).
    `replay`: the callback is called again in the next page run (`replay_missed`), as for the
    Label box's and the guard's answers, which stay in the tab until stored (else a blip with the
    page itself fine left them waiting until the next key). Otherwise (a deliberate click) the
    page says that it was not saved (`outage_notice`)."""
    from sqlalchemy.exc import OperationalError

    def wrap(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OperationalError as error:
                import logging

                logging.getLogger(__name__).warning("%s: database unreachable: %s", fn.__name__, error)
                unwritable = cannot_write(error)  # also empties the pool of read-only connections
                if replay:
                    st.session_state.setdefault(MISSED, {})[fn.__qualname__] = (fn, args, kwargs)
                elif unwritable:
                    st.session_state[OUTAGE_NOTICE] = (
                        f"{unwritable[:-1]}, so that was not saved: try again then."
                    )
                else:
                    st.session_state[OUTAGE_NOTICE] = (
                        "The database could not be reached, so that was not saved: try again once it is back."
                    )
                return None

        return guarded

    return wrap(callback) if callback is not None else wrap


def replay_missed() -> None:
    """Call again the callbacks an outage stopped (`survives_outage(replay=True)`), each once it
    passes; while the database is still away this raises, and the page says so."""
    missed = st.session_state.get(MISSED) or {}
    for name, (fn, args, kwargs) in list(missed.items()):
        fn(*args, **kwargs)
        missed.pop(name, None)


def outage_notice() -> None:
    text = st.session_state.pop(OUTAGE_NOTICE, None)
    if text:
        st.error(text)


@st.cache_resource(show_spinner="Starting the background trainer...")
def _worker(url: str):
    import torch

    from labeler.config import train_threads
    from labeler.worker import Worker

    torch.set_num_threads(train_threads())  # the process' intra-op pool: training's share of the cores
    worker = Worker(_session_factory(url))
    worker.start()
    # Streamlit ends its server on SIGTERM or Ctrl-C and Python then exits: the run in progress
    # is marked interrupted first (it read "running", and the process aborted mid-run).
    atexit.register(worker.shutdown)
    return worker


class _NoWorker:
    """With LABELER_WORKER=off this process never trains: worker processes elsewhere take the
    queued runs from the database, so waking it does nothing."""

    def wake(self) -> None:
        pass


def worker():
    """The one background trainer of this process, shared by every session and tab (a stand-in
    that never trains when LABELER_WORKER=off)."""
    from labeler.config import app_worker, db_url

    if not app_worker():
        return _NoWorker()
    return _worker(db_url())


def current_project() -> Project:
    """The project chosen in this browser session; else the one in the address (?project=ID);
    else the one this person answered in last; else the built-in digits project."""
    Session = session_factory()
    project_id = st.session_state.get("project_id")
    if project_id is None:
        # A reload starts a new session: the URL (?project=ID) remembers the choice.
        wanted = st.query_params.get("project", "")
        project_id = int(wanted) if wanted.isdigit() else None
    project = None
    if project_id is not None:
        with Session() as session:
            project = session.get(Project, project_id)
    if project is None:
        # An address without it (a bookmark of ?annotator=NAME), or with one that is gone, opened
        # the digits project, where the next keys labeled the wrong project (exploratory session).
        with Session() as session:
            last = queries.last_project_of(session, annotator())
            project = session.get(Project, last) if last is not None else None
    if project is None:
        with st.spinner("Preparing the built-in digits project..."):
            project = projects.ensure_default_project(Session)
    st.session_state["project_id"] = project.id
    if st.query_params.get("project") != str(project.id):
        st.query_params["project"] = str(project.id)
    return project


USER_KEY = "auth_user"  # {"name", "role", "hash_id"} of the logged-in account
ADMIN_PAGES = {"export"}  # url paths of the pages only admins see


def accounts_enabled() -> bool:
    """True as soon as one account exists: then every page needs a login."""
    from labeler import auth

    with session_factory()() as session:
        return auth.accounts_exist(session)


def signed_in() -> dict | None:
    """The logged-in account ({"name", "role"}) of this browser session, or None."""
    return st.session_state.get(USER_KEY)


def fingerprint(password_hash: str) -> str:
    """What a session keeps of its account's password hash: a changed password ends the session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def tag(*parts) -> str:
    """A short name for what a button acts on, put in the button's key.

    Streamlit runs a click's callback with the arguments of the newest run that drew the
    button, and the browser may still show an older run's page when the click comes (a second
    press of a key, a click right after another change). A button whose arguments are the
    images it labels is therefore keyed by those images: a click on the button of the page on
    screen runs with that page's arguments, never with those of a page not shown yet."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def account_now() -> dict | None:
    """This session's account as the database has it at this moment ({"name", "role"}), or None
    when nobody is logged in here, or the account was removed or its password changed since.

    Callbacks run before app.py's gate re-checks the login, so whatever a callback may do is
    decided here, not by what the session remembers from its last run."""
    return _as_stored(signed_in())


def _as_stored(user: dict | None) -> dict | None:
    """`user` (a session's login) as the database has that account now, or None (see account_now)."""
    if user is None:
        return None
    with session_factory()() as session:
        stored = users.get_user(session, user["name"])
    if stored is None or fingerprint(stored.password_hash) != user.get("hash_id"):
        return None
    return {"name": stored.name, "role": stored.role}


def is_admin() -> bool:
    """Admins create and import projects, export, and add or rename classes. Without accounts
    the app is single-user and local, and whoever opens it may do everything."""
    return admin_now(signed_in())


def admin_now(user: dict | None) -> bool:
    """`is_admin` for the login `user` (`signed_in()` as a page had it), outside a script run:
    a download button's file is made when it is clicked, without one."""
    if not accounts_enabled():
        return True
    user = _as_stored(user)
    return user is not None and user["role"] == "admin"


def require_admin(what: str = "do this") -> None:
    """Refuse an admin-only page or action on the server: a message, then stop the script run.
    Pages call it themselves, so hiding a button is never the only protection."""
    if not is_admin():
        st.error(f"Only an admin can {what}; ask an admin of this app.")
        st.stop()


def annotator() -> str:
    """Who is labeling: the logged-in account when accounts exist (no free-text name then),
    else the name typed on the Project page, by default the operating-system user."""
    user = signed_in()
    if user is not None:
        return user["name"]
    if accounts_enabled():
        st.error("Log in first: open the app's address again to get the login form.")
        st.stop()
    if "annotator" not in st.session_state and st.query_params.get("annotator", "").strip():
        st.session_state["annotator"] = st.query_params["annotator"].strip()[:200]
        st.session_state[NAMED] = True
    if "annotator" not in st.session_state:
        try:
            st.session_state["annotator"] = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name on this system
            st.session_state["annotator"] = "anonymous"
    return st.session_state["annotator"]


NAMED = "annotator_named"  # the name was chosen (Project page, or ?annotator= in the address)


def keep_annotator_in_address() -> None:
    """Without accounts: a name chosen on the Project page or given in the address
    (?annotator=NAME) is put back in the address on every page. Switching pages drops the query,
    and a reload there started a new session under the operating-system user's name, so the
    person's next answers went in under another name."""
    if "annotator" not in st.session_state and st.query_params.get("annotator", "").strip():
        annotator()  # read it now, before a page could switch and drop it
    name = st.session_state.get("annotator")
    if name is None or not st.session_state.get(NAMED) or st.query_params.get("annotator") == name:
        return
    wanted = {"annotator": name}
    project_id = st.session_state.get("project_id")
    if project_id is not None:  # with the project in one change: one entry in the browser's history
        wanted["project"] = str(project_id)
    st.query_params.update(wanted)


def claimant() -> str:
    """Who holds the images this browser session is shown: the annotator's name plus a token
    of this session, so two tabs or two people with the same name never get the same image."""
    if "claim_token" not in st.session_state:
        st.session_state["claim_token"] = secrets.token_hex(16)  # a logout gives back its claims
    # At most 160 + 1 + 32 characters: the claims' column holds 200 (PostgreSQL enforces it),
    # and the token alone tells tabs apart.
    return f"{annotator()[:160]}#{st.session_state['claim_token']}"


def enlarge(array: np.ndarray, size: int = 280) -> Image.Image:
    """Scale an image up with nearest-neighbour so small images keep crisp pixels."""
    img = Image.fromarray(array)
    scale = max(1, size // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def class_names(project_id: int) -> list[str]:
    with session_factory()() as session:
        return queries.class_names(session, project_id)


_MARKDOWN_SPECIALS = set("\\`*_{}[]()#+-.!|~<>$:")


def as_typed(text: str) -> str:
    """Text for widget labels, which Streamlit renders as Markdown: every Markdown character
    backslash-escaped, and a word joiner between hyphens so "--" does not become a dash, so a
    class named "**x**" shows as typed."""
    escaped = "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in text)
    while "\\-\\-" in escaped:
        escaped = escaped.replace("\\-\\-", "\\-\u2060\\-")
    return escaped


def for_chart(text) -> str:
    """Text for plotly labels, legends and hovers, which read <b>, <a href=...> and entities
    as markup: &, < and > escaped, so a name shows as typed."""
    return html.escape(str(text), quote=False)


def ledger(project_id: int) -> answers.Ledger:
    """This browser session's answers in one project, the ones its undo may take back (an undo
    never reaches into another project). A personal key (account._PERSONAL_PREFIXES)."""
    return st.session_state.setdefault(f"ledger-{project_id}", answers.Ledger())
