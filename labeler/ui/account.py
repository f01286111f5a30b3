"""The login gate app.py draws before the navigation, and the account box in the sidebar.

With no account in the database nothing is asked: the app is single-user and local. As soon as
one exists (`python -m labeler users add NAME --role admin`), a browser session sees only the
login form until it logs in. The session keeps the account's name and role, checked against the
database on every script run, so removing an account, changing its role or resetting its
password takes effect at that session's next click.

Organisations with an identity provider can use Streamlit's own OIDC login instead of passwords:
with an `[auth]` section in `.streamlit/secrets.toml`, the form becomes a "Log in with ..."
button (`st.login`) and the provider's e-mail address must name an account here, which gives
its role.
"""

from __future__ import annotations

import logging
import re

import streamlit as st

import db
from db import queries, users
from labeler import auth

from . import common

logger = logging.getLogger(__name__)

LOGOUT_ASKED = "logout_asked"  # Log out was clicked while History changes wait (`sidebar`)

# Session keys that belong to one person's work: cleared at login and logout, so the next person
# in the same tab starts clean (claims, the undo target, a prepared export).
_PERSONAL_KEYS = (
    "claim_token",
    "skipped",
    "undone_item",
    "show_first",
    "box_notices",
    "unsent_notices",
    "export_files",
    "annotator",
    "annotator_input",
    "annotator_named",
    LOGOUT_ASKED,
    # The grid's lost pages (label.py `_restored_page`: tried, keys replaced, the note about
    # them; the guesses they showed are per project, "grid-prefilled-ID") and the page an Undo
    # said it would drop the tiles of (`_undo_page`).
    "grid-restored",
    "grid-replaced",
    "grid-restore-note",
    "grid-undo-asked",
)


# Prefixes of per-project personal keys: ledgers ("ledger-ID", the answers this person may
# undo), the held grid page and the grid pages accepted ("grid-page-ID", "grid-accepted-ID": the
# next person would get the held page, claimed under the new name), the grid tiles chosen with
# the mouse and the keys pressed on them, and the names a refused page was shown under
# ("grid-choices-ID", "grid-keyed-ID", "grid-names-seen-ID"), the box's refused answers, its
# answers the server took back for a U it could not name, and the images sent to it
# ("box-refused-ID", "box-undone-ID", "box-sent-ID"), and the History tiles on screen, changed and the names they were drawn under
# ("hist-seen-ID", "hist-chosen-ID", "hist-names-ID"), and the class last chosen for a bulk label
# ("bulk-chosen-ID").
_PERSONAL_PREFIXES = (
    "ledger-",
    "grid-page-",
    "grid-shared-",
    "grid-guesses-",
    "grid-accepted-",
    "grid-accepting-",  # an accept cut short: finished onto the next person's undo list otherwise
    "grid-choices-",
    "grid-keyed-",
    "grid-names-seen-",
    "grid-prefilled-",
    "box-refused-",
    "box-undone-",
    "box-sent-",
    "hist-seen-",
    "hist-chosen-",
    "hist-correcting-",  # a save whose answer was lost: finished onto the next person's undo list otherwise
    "hist-names-",
    "hist-renamed-note-",
    "bulk-chosen-",
)


# The Label page's widgets that hold a person's choices: the History tiles ("hist-ITEM-EVENT")
# and the grid's ("grid-ITEM-VIEW"), the grid's key list, the History's page. Streamlit keeps a
# widget's value through runs that do not draw it only when such a run ends early, and every
# run between a logout and the next login ends in st.stop(): the next person in the tab got the
# last one's tiles as they were set, and a Save or an A stored them under the new name (review).
# The answers the box held back in an outage ("outage-missed", replayed at the next run) go
# too: they wait unacknowledged in the tab, sent again under their owner's name (unsent_guard.js).
# The latent-space page's lasso selection, its "relabel" tick and class selector, and the run
# pinned there go the same way (a click on Apply labelled the last person's selection).
_PERSONAL_WIDGET = re.compile(
    rf"^(hist|grid)-\d+-|^grid-keys$|^hist_page-|^{common.MISSED}$"
    r"|^latent$|^bulk_relabel$|^bulk_class-|^latent-run-|^latent-frame-"
)


# The Label page's view choices (its mode, the History's filters, file names shown, the grid's
# pre-fill threshold): the next person starts on the defaults. Kept through the login page's
# runs, they reached the server's next page while the browser, which had drawn the login form
# meanwhile, showed the widgets' defaults: the switch said One image over the last person's grid,
# whose keys then went nowhere, and a click on it flipped to the box (exploratory, 5 of 5).
_VIEW_CHOICES = (*common.KEPT_THROUGH_OUTAGE, "grid_threshold")


def clear_personal(keep: tuple[str, ...] = ()) -> None:
    """Forget the person's work in this tab (a login, a logout, a new name without accounts),
    and give back the images the tab held for them, so others get them now rather than when
    the claims run out (queue.CLAIM_SECONDS); but not the images sent to the Label box: answers
    to them may still wait in the tab (the box sends one batch at a time) and are sent when the
    person logs in here again. Given back at once, they went to the next person in the tab,
    who answered first, and the first person's answers were refused (an exploratory session,
    3 of 4 logouts right after a few quick keys)."""
    token = st.session_state.get("claim_token")
    if token and "claim_token" not in keep:
        in_box = {
            int(item_id)
            for key, sent in st.session_state.items()
            if str(key).startswith("box-sent-")
            for item_id in sent or ()
        }
        try:
            with common.session_factory().begin() as session:
                queries.release_claims(session, str(token), keep=in_box)
        except Exception:  # the claims run out by themselves; the logout goes on
            logger.warning("could not give back the claims of a tab", exc_info=True)
    personal = [
        k for k in st.session_state if str(k).startswith(_PERSONAL_PREFIXES) or _PERSONAL_WIDGET.match(str(k))
    ]
    for key in personal + list(_PERSONAL_KEYS) + list(_VIEW_CHOICES):
        if key not in keep:
            st.session_state.pop(key, None)


def oidc_configured() -> bool:
    """True when `.streamlit/secrets.toml` has an `[auth]` section for `st.login`."""
    if not hasattr(st, "login"):
        return False
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def _sign_in(name: str, role: str, password_hash: str) -> None:
    clear_personal()
    st.session_state[common.USER_KEY] = {
        "name": name,
        "role": role,
        "hash_id": common.fingerprint(password_hash),
    }


def sign_out() -> None:
    clear_personal()
    st.session_state.pop(common.USER_KEY, None)


def _provider_says(name: str) -> bool:
    """True while the identity provider's login (st.login) is still the account `name`."""
    return bool(st.user.is_logged_in) and str(st.user.get("email") or "") == name


class NotAllowed(Exception):
    """This browser session may not do that now; the message is one sentence saying what to do."""


def acting_user(admin: bool = False) -> dict:
    """The person a callback that writes acts for, as the database has the account now:
    {"name", "role"}. Raises NotAllowed when nobody is logged in, the account was removed, its
    password changed (the session is signed out, as the gate would) or its role may not label;
    with `admin`, when it is not an admin.

    Streamlit runs callbacks at the start of a script run, before app.py's gate, so a callback
    cannot rely on the gate, nor on the name a page was drawn for."""
    if not common.accounts_enabled():
        user = common.signed_in()  # every account removed since the login: the same person
        return {"name": user["name"] if user else common.annotator(), "role": "admin"}
    if common.signed_in() is None:
        raise NotAllowed("You are not logged in, so this was not saved; log in and do it again.")
    user = common.account_now()
    if user is not None and oidc_configured() and not _provider_says(user["name"]):
        user = None
    if user is None:
        sign_out()
        st.session_state["login_error"] = (
            "Your session ended (the account was changed or removed); log in again."
        )
        raise NotAllowed(
            "Your session ended (the account was changed or removed), so this was not saved; log in again."
        )
    if not auth.may_label(user["role"]):
        raise NotAllowed(
            f"The role {user['role']!r} may not label, so this was not saved; ask an admin for the annotator role."
        )
    if admin and not auth.is_admin_role(user["role"]):
        raise NotAllowed("Only an admin can do this, so it was not saved; ask an admin of this app.")
    return user


def _login_submitted() -> None:
    name = st.session_state.get("login_name", "")
    password = st.session_state.get("login_password", "")
    st.session_state["login_password"] = ""
    Session = common.session_factory()

    def check():
        with Session.begin() as session:  # a login may store a rehashed password
            user = auth.log_in(session, name, password)
            return None if user is None else (user.name, user.role, user.password_hash)

    try:
        found = db.retrying(check)
    except auth.TooManyFailures as error:
        st.session_state["login_error"] = str(error)
        return
    if found is None:
        st.session_state["login_error"] = (
            "Wrong name or password; try again, or ask an admin to reset it with "
            "`python -m labeler users passwd NAME`."
        )
        return
    st.session_state.pop("login_error", None)
    _sign_in(*found)


def _current_account() -> dict | None:
    """This session's account, re-read from the database; None (and signed out) when it is gone
    or its password changed since the login."""
    user = common.signed_in()
    if user is None:
        return None
    with common.session_factory()() as session:
        stored = users.get_user(session, user["name"])
    if stored is None or common.fingerprint(stored.password_hash) != user["hash_id"]:
        sign_out()
        st.session_state["login_error"] = (
            "Your session ended (the account was changed or removed); log in again."
        )
        return None
    if stored.role != user["role"]:
        user["role"] = stored.role
    return user


def _oidc_account() -> dict | None:
    """The account named by the identity provider's e-mail address, when st.login is set up."""
    if not st.user.is_logged_in:
        return None
    email = str(st.user.get("email") or "")
    if str(st.user.get("email_verified", "")).lower() == "false":
        # A provider that lets people sign up or change their address without proving it says
        # so in this claim: taken as is, anyone could log in as the admin's address (review).
        # Providers that leave the claim out (Entra ID) verify the address themselves.
        st.title("labeler")
        st.error(
            common.as_typed(
                f"{email or 'This login'}: the identity provider has not verified this address, so "
                "it cannot log in here; verify it with the provider, then log in again."
            )
        )
        st.button("Log out", on_click=st.logout)
        st.stop()
    with common.session_factory()() as session:
        stored = users.get_user(session, email)
    if stored is None:
        st.title("labeler")
        # Escaped as a whole (no code span, where a backslash would show): the address is the
        # identity provider's, not ours.
        st.error(
            common.as_typed(
                f"{email or 'This login'} has no account here; ask an admin to run: "
                f"python -m labeler users add {email or 'NAME'} --role annotator --no-password"
            )
        )
        st.button("Log out", on_click=st.logout)
        st.stop()
    current = common.signed_in()
    if current is None or current["name"] != stored.name:
        _sign_in(stored.name, stored.role, stored.password_hash)
    common.signed_in()["role"] = stored.role
    return common.signed_in()


def login_page() -> None:
    st.title("labeler")
    common.unsent_guard(sidebar=False)  # the login page has no sidebar
    if oidc_configured():
        st.button("Log in", type="primary", on_click=st.login, key="login_oidc")
        return
    st.caption("Log in with the name and password an admin gave you.")
    with st.form("login"):
        st.text_input("Name", key="login_name", autocomplete="username")
        st.text_input("Password", key="login_password", type="password", autocomplete="current-password")
        st.form_submit_button("Log in", type="primary", on_click=_login_submitted)
    error = st.session_state.get("login_error")
    if error:
        st.error(error)


def gate(paths: list[str]) -> dict | None:
    """Return the logged-in account, or None in single-user mode; otherwise show the login page
    at every page's address (`paths`), with no menu, and stop the script run, so no page runs
    before a login. A link to a page leads there after the login."""
    if not common.accounts_enabled():
        if common.signed_in() is not None:
            sign_out()  # every account was removed: back to single-user mode
        return None
    user = _oidc_account() if oidc_configured() else _current_account()
    if user is not None:
        return user
    login = [
        st.Page(login_page, title="Log in", url_path=path, default=path == "login")
        for path in ["login", *paths]
    ]
    st.navigation(login, position="hidden").run()
    st.stop()


def visible_pages(pages: list, admin: bool) -> list:
    """The (path, title, icon, function) entries this person may open: no admin pages for
    annotators (the pages refuse them too)."""
    return [page for page in pages if admin or page[0] not in common.ADMIN_PAGES]


def sidebar(user: dict | None, unsaved: int = 0, grid: int = 0) -> None:
    """Who is logged in, and the logout button. While `unsaved` History changes wait to be saved
    or `grid` tiles set on a grid page wait to be accepted (a logout drops both), the button asks
    first: log out anyway, or stay."""
    if user is None:
        return
    log_out = (lambda: (sign_out(), st.logout())) if oidc_configured() else sign_out
    waiting = [
        what
        for what, n in (
            (f"the History changes not saved yet ({unsaved})", unsaved),
            (f"the grid tiles set and not accepted ({grid})", grid),
        )
        if n
    ]
    if not waiting:
        st.session_state.pop(LOGOUT_ASKED, None)
    with st.sidebar:
        st.text(f"Logged in as {user['name']} ({user['role']})")
        if not waiting:
            st.button("Log out", key="logout", on_click=log_out)
        elif not st.session_state.get(LOGOUT_ASKED):
            st.button("Log out", key="logout", on_click=lambda: st.session_state.update({LOGOUT_ASKED: True}))
        else:
            st.warning(f"A logout drops {' and '.join(waiting)}.")
            st.button("Log out anyway", key="logout_anyway", on_click=log_out)
            st.button(
                "Stay logged in", key="logout_stay", on_click=lambda: st.session_state.pop(LOGOUT_ASKED, None)
            )
