"""The Label page, in three modes:

- **One image**: the most informative unlabeled image, large, in a small custom component
  (`label_box.js`) that owns the image, the keys and a local queue of answers: a key labels the
  image that was on screen when it went down and the next prefetched image shows at once, so
  fast typing never lands on the wrong image and never waits for the server (`labeler.answers`).
- **Grid**: a diverse page of images; the model's guesses above a confidence the person sets are
  pre-filled; the page stays until it is accepted or undone; accepting it never overwrites an
  answer given meanwhile; one undo per page.
- **History**: every current answer, filtered by class, annotator or disagreement with the
  model, and corrected in place; a tile changed and not saved yet stays on the page, also when
  the person looks at another mode or page and comes back.

The buttons that store what a page shows (Accept, Save corrections) are keyed by it: see
`common.tag`.

The sidebar shows the labels per class, the labels since the last run and what the trainer is
doing; the Classes panel (admins) adds and renames classes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import logging
import re
import time
import uuid
from pathlib import Path

import streamlit as st
from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

import db
from db import queries
from db import runs as run_queries
from db.models import AUDIT, IGNORED, Item, LabelEvent, Project, Run

from .. import answers, projects, queue
from ..data import prepare
from . import account, common, parts

log = logging.getLogger(__name__)

# Keys a class can get, in the order they are handed out. Letters with a meaning of their own
# are left out: A accept the guess, I ignore, S skip, U undo, Z zoom.
KEY_POOL = [*"1234567890", *"qwertyopdfghjklxcvbnm"]
BATCH = 20  # images sent to the browser at a time: the next ones are on screen before the server answers
SENT_KEPT = 200  # images sent to the box that are checked for answers given elsewhere (_closed_since)
# Undone images shown first, at most (the rest are back in the queue): every page run looks them
# up, and after the undo of a bulk label of 60,000 that was every one of them (review).
SHOW_FIRST_MAX = 240
REFUSED_KEPT = 200  # box answers refused or undone for it, listed to the box on every run (_newest_kept)
GRID_SIZE = 12
HISTORY_ROWS = 48  # answers per History page, newest first
MODES = ["One image", "Grid", "History"]
# How often the open Label box or grid page renews its claims (`_keep_claims`; queue.keep_claims
# writes once less than half of queue.CLAIM_SECONDS is left), and for how long after the page's
# last run (an answer, a key, a click): a tab left open overnight held its images for ever.
CLAIMS_EVERY_S = 60.0
KEEP_CLAIMS_IDLE_S = 30 * 60.0
_ACTIVE_AT = "claims-active-at"  # time.monotonic() of the Label page's last run in this session
STATUS_EVERY_S = 5.0  # how often the sidebar's training status is redrawn in Grid and History
AUDIT_NOTE = (
    "Audit image (a random sample kept out of training): no guess is shown, so your answer "
    "measures the model fairly."
)
NO_MODEL_NOTE = "No model yet: images come in random order until the first training run."


# Keys -----------------------------------------------------------------------------------------


def assign_keys(names: list[str], keys: dict[str, str]) -> dict[str, str]:
    """{class index (as text): key}, keeping every key already given and handing new classes the
    next free key: a class named by a single digit gets that digit if it is free. So adding or
    renaming a class never moves another class's key."""
    keys = {i: k for i, k in keys.items() if i.isdigit() and int(i) < len(names)}
    taken = set(keys.values())
    for index, name in enumerate(names):
        if str(index) in keys:
            continue
        wanted = name if len(name) == 1 and name.isdigit() and name not in taken else None
        free = wanted or next((k for k in KEY_POOL if k not in taken), None)
        if free is not None:
            keys[str(index)] = free
            taken.add(free)
    return keys


def class_keys(project_id: int, names: list[str]) -> list[str | None]:
    """Each class's key, stored with the project so it stays when classes change."""
    Session = common.session_factory()
    with Session() as session:
        settings = dict(session.get(Project, project_id).settings or {})
    stored = {str(i): str(k) for i, k in (settings.get("keys") or {}).items()}
    keys = assign_keys(names, stored)
    if keys != stored:

        def commit() -> None:
            with Session.begin() as session:
                project = session.get(Project, project_id)
                project.settings = {**(project.settings or {}), "keys": keys}

        db.retrying(commit)
    return [keys.get(str(i)) for i in range(len(names))]


# Images ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _data_url(project_id: int, row: int, path: str | None, max_side: int = 720) -> str:
    """The image as the person knows it, as a data URL: the original file (EXIF-rotated, scaled
    down to `max_side`), else the model's pixels; small images are enlarged with crisp pixels."""
    image = None
    try:
        local = projects.local_file(path)  # imported on another app server: fetched from the shared store
        if local is not None and local.is_file():
            with Image.open(local) as opened:
                image = ImageOps.exif_transpose(opened)
                image.load()
    except Exception:  # noqa: BLE001 - a file gone bad or a store out of reach: show the stored pixels instead
        image = None
    if image is None:
        image = Image.fromarray(projects.image(project_id, row))
    if prepare.is_deep(image):  # as the model sees it (PIL's convert clips 16-bit values at 255)
        image = prepare.eight_bit(image)
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((max_side, max_side))
    if max(image.size) < 256:
        scale = max(1, 320 // max(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    if image.mode == "RGB" and max(image.size) > 256:
        image.save(buffer, format="JPEG", quality=90)
        kind = "jpeg"
    else:
        image.save(buffer, format="PNG")
        kind = "png"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def caption(item: Item) -> str:
    """An opaque id; the file name only when the person turned names on, never on audit images
    (a folder name would give the answer away)."""
    if st.session_state.get("show_names") and item.split != AUDIT:
        return f"#{item.id} · {item.key}"
    return f"#{item.id}"


def _shown_prediction(item: Item, prediction):
    """The model's guess to show, or None for audit images: a shown guess would pull the answer
    towards it and make the audit accuracy look better than it is."""
    return None if item.split == AUDIT else prediction


# One image ------------------------------------------------------------------------------------


@functools.cache
def _label_box():
    here = Path(__file__).parent
    return st.components.v2.component(
        "labeler_label_box",
        html='<div class="lb"></div>',
        css=(here / "label_box.css").read_text(),
        js=(here / "label_box.js").read_text(),
    )


@functools.cache
def _grid_keys():
    return st.components.v2.component(
        "labeler_grid_keys", js=(Path(__file__).parent / "label_grid.js").read_text()
    )


# Session keys of a project's grid: the page held, its key list, its mouse choices.
_PAGE_PREFIX, _KEYED_PREFIX, _CHOICES_PREFIX = "grid-page-", "grid-keyed-", "grid-choices-"
_SHARED_PREFIX = "grid-shared-"  # per project (account._PERSONAL_PREFIXES): see _shared_key
_GUESSES_PREFIX = "grid-guesses-"  # per project (account._PERSONAL_PREFIXES): see _guesses_key
_UNCLAIMED = "grid-batch-unclaimed"  # the batch just drawn is unclaimed (`_next_batch`)


def _keyed_key(project_id: int) -> str:
    """Session key of the newest grid key list (`_grid_presses`), kept beside the component's own
    value, which Streamlit drops as soon as a run does not draw the grid."""
    return f"{_KEYED_PREFIX}{project_id}"


def _live_grid_keys():
    """The key list label_grid.js sent last ({"page", "token", "list"}), None if none."""
    value = st.session_state.get("grid-keys")
    return value.get("edits") if hasattr(value, "get") else getattr(value, "edits", None)


def _grid_presses(
    project_id: int, page: str, n_classes: int
) -> tuple[str, dict[int, tuple[int, int]], list[dict]]:
    """The keys pressed on the grid page `page` (its item ids): the list's token, per item how
    many keys it got and the class of the last (-1: skip), and the list itself.

    label_grid.js sends every key of the page as one growing list, so keys pressed faster than
    the page reruns are all here. A tile that got keys is drawn as a new selectbox (its key
    counts the presses) that starts on the last key's class: a value the browser still holds
    for the tile's older selectbox, sent with a rerun that overtook the key, then has nothing
    to overwrite. The page hands the list back to label_grid.js when it draws the page again
    (after an undo, say), so the next key carries on this list instead of starting one that
    would turn every tile keyed before back to its default.

    The list is also kept under `_keyed_key`: the component's value is gone once a run leaves the
    grid out (One image, History, another page), and the page held on return would have drawn its
    keyed tiles back on their pre-filled guesses, which `A` would then store."""
    edits = _live_grid_keys()
    kept = st.session_state.get(_keyed_key(project_id))
    restored = bool(kept and kept.get("restored") and kept["page"] == page)
    # A page given back after its session ended (`_restored_page`): its list holds the mouse
    # choices too, which the tab's list of the same token lacks until a new key extends it; a list
    # of another token is from before the page came back (the same page drawn anew, keys pressed
    # in that moment), and label_grid.js takes the page's list from the server.
    if (
        restored
        and hasattr(edits, "get")
        and (
            str(edits.get("token", "")) != kept["token"] or len(edits.get("list") or []) <= len(kept["list"])
        )
    ):
        edits = None
    if hasattr(edits, "get") and (page, str(edits.get("token", ""))) in st.session_state.get(_REPLACED, ()):
        edits = None  # keys of the moment this page was on screen before a lost page came back
    if hasattr(edits, "get") and str(edits.get("page", "")) == page:
        st.session_state[_keyed_key(project_id)] = {
            "page": page,
            "token": edits.get("token", ""),
            "list": [dict(edit) for edit in edits.get("list") or [] if hasattr(edit, "get")],
        }
    else:
        edits = st.session_state.get(_keyed_key(project_id))
        if not edits or edits["page"] != page:
            return "", {}, []
    token = _list_token(edits.get("token", ""))
    pressed: dict[int, tuple[int, int]] = {}
    listed: list[dict] = []
    for edit in edits.get("list") or []:
        item, cls = (edit.get("item"), edit.get("class")) if hasattr(edit, "get") else (None, None)
        if isinstance(item, int) and isinstance(cls, int) and -1 <= cls < n_classes:
            pressed[item] = (pressed.get(item, (0, -1))[0] + 1, cls)
            name = edit.get("name")
            listed.append({"item": item, "class": cls, **({"name": name} if isinstance(name, str) else {})})
    return token, pressed, listed


def _list_token(value) -> str:
    """A key list's token as the page uses it (in tile keys, and sent back to label_grid.js):
    letters and digits only, at most 24."""
    return re.sub(r"[^0-9a-z]", "", str(value))[:24]


def _key_names(listed: list[dict]) -> dict[int, str | None]:
    """Per tile, the class name its last key showed (from `_grid_presses`' list)."""
    return {edit["item"]: edit.get("name") for edit in listed}


def _box_key(project_id: int) -> str:
    # One box per project: answers given in one project are never sent with another's.
    return f"label-box-{project_id}"


def _actions_of(key: str) -> list:
    """The "actions" state value of the component under `key` (the box's or the guard's)."""
    value = st.session_state.get(key)
    if value is None:
        return []
    actions = value.get("actions") if hasattr(value, "get") else getattr(value, "actions", None)
    return list(actions or [])


def _box_actions(project_id: int) -> list[dict]:
    return _actions_of(_box_key(project_id))


@common.survives_outage(replay=True)
def _apply_box_actions(project_id: int) -> None:
    """Callback: runs before the page, so the next images are chosen with these answers saved."""
    try:
        annotator = account.acting_user()["name"]
    except account.NotAllowed as refused:
        # Not acknowledged: the box keeps these answers and sends them again after a new login.
        st.session_state["box_notices"] = [*st.session_state.get("box_notices", []), str(refused)]
        return
    _apply_answers(project_id, annotator, _box_actions(project_id), "box_notices")


def _apply_answers(project_id: int, annotator: str, actions: list[dict], notices_key: str) -> None:
    """Store the box's answers (from the box, or sent for it by the guard) and add the notices
    for the person to the session list `notices_key`; the images refused or undone come first in
    the queue. When the database stops answering partway, what was applied is reported all the
    same, then the error is raised (the rest wait in the tab)."""
    outcome = answers.apply_actions(
        common.session_factory(), project_id, annotator, actions, common.ledger(project_id)
    )
    refused = f"box-refused-{project_id}"
    st.session_state[refused] = st.session_state.get(refused, []) + outcome.refused_actions
    undone = _undone_key(project_id)
    st.session_state[undone] = st.session_state.get(undone, []) + [list(pair) for pair in outcome.undone_last]
    shown_again = outcome.refused_items + outcome.undone_items
    _show_first(shown_again)
    _forget_accepted(project_id, outcome.undone_items)  # U in the box may undo a grid page
    if outcome.answered_since:  # `_closed_since` tells the box, which showed them again at U
        sent = f"box-sent-{project_id}"
        # At the front: the box's last batch (the end of the list) keeps its claims (`_next_batch`).
        st.session_state[sent] = outcome.answered_since + st.session_state.get(sent, [])
    st.session_state[notices_key] = st.session_state.get(notices_key, []) + outcome.notices
    if outcome.stopped_by is not None:  # the rest wait in the tab; the page says why
        raise outcome.stopped_by
    if outcome.labeled:
        _auto_retrain(project_id)


# Answers the box had no time to send (unsent_guard.js, on every page) ---------------------------

UNSENT_KEY = "unsent-guard"


def _unsent_actions() -> list[dict]:
    return [dict(a) for a in _actions_of(UNSENT_KEY) if hasattr(a, "get")]


def _owned(action: dict, annotator: str) -> int | None:
    """The project of an answer sent by the guard, if it was given by `annotator` (its "owner" is
    the box's data.owner, name@project id); None otherwise: never stored under another name."""
    name, _, project = str(action.get("owner", "")).rpartition("@")
    return int(project) if name == annotator and re.fullmatch(r"[0-9]{1,18}", project) else None


@common.survives_outage(replay=True)
def _apply_unsent() -> None:
    """Callback of the guard: the answers a Label box left in the tab, stored as the box would
    have, for the person acting now (a person's answers are never stored under another's name;
    not logged in: not acknowledged, they wait in the tab)."""
    try:
        annotator = account.acting_user()["name"]
    except account.NotAllowed as refused:
        st.session_state["unsent_notices"] = [*st.session_state.get("unsent_notices", []), str(refused)]
        return
    by_project: dict[int, list[dict]] = {}
    for action in _unsent_actions():
        project_id = _owned(action, annotator)
        if project_id is not None:
            by_project.setdefault(project_id, []).append(action)
    for project_id, actions in by_project.items():
        _apply_answers(project_id, annotator, actions, "unsent_notices")


def _unsent_acked(annotator: str) -> list[str]:
    """The ids of the guard's answers stored (or dropped for good) for `annotator`: the tab
    forgets them."""
    done = []
    for action in _unsent_actions():
        project_id = _owned(action, annotator)
        if project_id is not None and str(action.get("id")) in common.ledger(project_id).applied:
            done.append(str(action.get("id")))
    return done


def unsent_guard(unsaved: int) -> None:
    """On every page but the login form (app.py): closing or reloading the tab while answers wait
    in it, or while `unsaved` History changes or grid tiles wait to be saved (`unsaved_anywhere`,
    `grid_choices_anywhere`), asks first;
    where no Label box is drawn the guard sends the person's waiting answers, which
    `_apply_unsent` stores. `acked` lists those stored, so the tab can forget them."""
    annotator = common.annotator()
    data = {"name": annotator, "acked": _unsent_acked(annotator), "unsaved": unsaved}
    common.unsent_guard(data=data, on_change=_apply_unsent)
    for notice in st.session_state.pop("unsent_notices", []):
        st.toast(notice)


def _show_first(item_ids: list[int]) -> None:
    """Images shown again (undone, refused) come first in the next batch, each once."""
    again = list(dict.fromkeys([*item_ids, *st.session_state.get("show_first", [])]))
    st.session_state["show_first"] = again[:SHOW_FIRST_MAX]


def _next_batch(project_id: int, k: int, box: bool = False) -> list[tuple[Item, object]]:
    """The next k images for the box (`box`) or the grid. The box keeps the image on screen
    whatever the new batch holds, so the last batch it was sent (unanswered; `_closed_since`)
    keeps its claims; the grid replaces its whole page, and keeps none."""
    ledger = common.ledger(project_id)
    Session = common.session_factory()
    in_browser = st.session_state.get(f"box-sent-{project_id}", [])[-BATCH:] if box else []
    turn = queue.BOX_TURN if box else None  # the box's audit turns come every few answers
    last = set(ledger.skipped)  # come last (`queue.next_items`)
    if box:
        # The person's own grid page, waiting in Grid: the box showed its images (the same person
        # claims them), and a tile answered so came back "answered meanwhile" (exploratory). Last,
        # and its claims kept: released, they went to the next person (review).
        grid_page = list(st.session_state.get(_page_key(project_id)) or ())
        last |= set(grid_page)
        in_browser = [*in_browser, *grid_page]
    # Once each: an image undone twice (A then U, twice, quickly) was listed twice, and the grid
    # drew it twice, which Streamlit refused with a traceback (duplicate widget key; exploratory).
    wanted = list(dict.fromkeys(st.session_state.get("show_first", [])))[:SHOW_FIRST_MAX]
    st.session_state.pop(_UNCLAIMED, None)
    try:
        rest = db.retrying(
            lambda: _queue_page(
                # The ones shown now are claimed (review: all of a bulk label's were, held for nothing).
                Session,
                project_id,
                k,
                last,
                common.claimant(),
                in_browser,
                turn,
                wanted[:k],
            )
        )
    except OperationalError:
        # The database stayed locked through every retry: show images unclaimed rather than
        # fail the page; the worst case is two people answering one image, both kept.
        log.warning("Could not claim images; showing them unclaimed.", exc_info=True)
        st.session_state[_UNCLAIMED] = True  # `_note_shared`
        rest = _queue_page(Session, project_id, k, last, None, (), turn)
    with Session() as session:
        # Undone images come back first, unanswered ones only, with the model's guesses (the
        # grid pre-fills them again as before the undo), claimed with the page (`_queue_page`).
        open_ids = queries.unanswered(session, project_id, wanted) if wanted else set()
        here = queries.page_items(session, project_id, wanted) if wanted else []
        first = [pair for pair in here if pair[0].id in open_ids]
        # Another project's stay for its own page (the guard stores answers of any project).
        elsewhere = set(wanted) - {item.id for item, _ in here}
        kept = [item.id for item, _ in first] + [i for i in wanted if i in elsewhere][:SENT_KEPT]
        st.session_state["show_first"] = kept
    seen = {item.id for item, _ in first}
    return (first + [pair for pair in rest if pair[0].id not in seen])[:k]


def _queue_page(
    Session,
    project_id: int,
    k: int,
    skipped,
    claimant: str | None,
    keep=(),
    turn: int | None = None,
    first=(),
) -> list[tuple[Item, object]]:
    """The next k images, claimed for `claimant` (None: unclaimed) in a transaction of their own;
    the claims on `keep` (images still in the browser) are kept, and the images shown `first`
    (undone) are claimed too (`queue.next_items`)."""
    with Session.begin() as session:  # the claims count once committed
        return queue.next_items(
            session, project_id, k=k, exclude=skipped, annotator=claimant, keep=keep, turn=turn, first=first
        )


def _newest_kept(key: str) -> list:
    """The newest REFUSED_KEPT entries of the box list under `key` (the rest forgotten)."""
    kept = st.session_state.get(key, [])[-REFUSED_KEPT:]
    st.session_state[key] = kept
    return kept


def _refused_actions(project_id: int) -> list[str]:
    """The ids of the box's answers refused so that they can be given again (the newest
    REFUSED_KEPT). Listed on every run, like `acked`, not once: a run can be stopped before its
    page reaches the browser (by the next key's rerun), and the box, told by a later run that the
    answer was acknowledged, would drop it without showing its image again. The box acts on a
    refusal once (label_box.js restoreRefused), so hearing of it again changes nothing."""
    return _newest_kept(f"box-refused-{project_id}")


def _undone_key(project_id: int) -> str:
    return f"box-undone-{project_id}"


def _undone_last(project_id: int, batch) -> list[list]:
    """[action id, image] for each U the box could not name itself (`answers._undo_last`: a box
    drawn anew has no undo history of its own) whose image is open again and first in `batch`:
    the box shows it at once, as for an undo of its own. Listed on every run while it is (the newest
    REFUSED_KEPT), for the reason `_refused_actions` gives; the box acts on each once."""
    sent = {item.id for item, _ in batch}
    return [pair for pair in _newest_kept(_undone_key(project_id)) if pair[1] in sent]


def _closed_since(project_id: int, batch) -> list[int]:
    """The images sent to this box before (the newest SENT_KEPT) that are answered now, by anyone,
    or gone. The box keeps the image on screen whatever a new page holds, unless it is among these:
    then a key for it could only be refused."""
    key = f"box-sent-{project_id}"
    sent = st.session_state.get(key, [])
    with common.session_factory()() as session:
        still = queries.unanswered(session, project_id, sent) if sent else set()
    fresh = [item.id for item, _ in batch]
    now_sent = set(fresh)
    kept = [i for i in sent if i in still and i not in now_sent] + fresh
    st.session_state[key] = kept[-SENT_KEPT:]
    return [i for i in sent if i not in still]


def _one_image(project: Project, names: list[str], annotator: str, has_model: bool) -> None:
    batch = _next_batch(project.id, BATCH, box=True)
    keys = class_keys(project.id, names)
    items = []
    for item, prediction in batch:
        prediction = _shown_prediction(item, prediction)
        guess = prediction.predicted if prediction is not None and prediction.predicted < len(names) else None
        items.append(
            {
                "id": item.id,
                "src": _data_url(project.id, item.row, item.path),
                "caption": caption(item),
                "guess": guess,
                "run": prediction.run_id if guess is not None else None,  # sent back with the answer
                "confidence": float(prediction.confidence) if guess is not None else None,
                "audit": item.split == AUDIT,
            }
        )
    applied = common.ledger(project.id).applied
    data = {
        "session": f"{common.claimant()}@{project.id}",
        # Whose unsent answers this box may send again (kept in the tab across reloads).
        "owner": f"{annotator}@{project.id}",
        "items": items,
        "classes": [{"index": i, "name": n, "key": keys[i]} for i, n in enumerate(names)],
        "acked": [a["id"] for a in _box_actions(project.id) if a.get("id") in applied],
        "notices": st.session_state.pop("box_notices", []),
        "closed": _closed_since(project.id, batch),
        # The ids of answers refused so that they can be given again: the box shows their images again.
        "refused": _refused_actions(project.id),
        # U from a box drawn anew, taken back by the server: the box shows those images first.
        "undone": _undone_last(project.id, batch),
        "done": not batch,
        "audit_note": AUDIT_NOTE,
        "no_model_note": "" if has_model else NO_MODEL_NOTE,
    }
    _label_box()(
        data=data,
        key=_box_key(project.id),
        default={"actions": []},
        on_actions_change=functools.partial(_apply_box_actions, project.id),
    )
    st.caption(
        "Keys: the key on each class · Enter or A accepts the model's guess · I ignore (no class) · "
        "U undo · S skip · Z zoom. A key always labels the image that was on screen when it was pressed."
    )
    if batch:  # drawn last: the elements above keep their places
        st.session_state[_ACTIVE_AT] = time.monotonic()
        st.fragment(run_every=CLAIMS_EVERY_S)(_keep_claims)(project.id)


# Grid -----------------------------------------------------------------------------------------


def _page_key(project_id: int) -> str:
    return f"{_PAGE_PREFIX}{project_id}"


def _page_name(item_ids) -> str:
    """A grid page's name: its item ids, in order, joined by commas (as label_grid.js gets it)."""
    return ",".join(map(str, item_ids))


def _accepted_key(project_id: int) -> str:
    """Session key of the grid pages accepted in this session and not undone since (their ids
    joined by commas): a second A on one says so rather than "answered meanwhile"."""
    return f"grid-accepted-{project_id}"


def _forget_accepted(project_id: int, undone: list[int]) -> None:
    """The accepted grid pages with an image among `undone` are accepted no longer."""
    accepted = st.session_state.get(_accepted_key(project_id), set())
    accepted -= {page for page in accepted if set(map(int, page.split(","))) & set(undone)}


def _grid_page(project_id: int) -> list[tuple[Item, object]]:
    """The grid page: the one drawn last, until it is accepted or undone, else the next images.
    A run that finishes meanwhile re-orders the queue, and a new page at the next rerun (a key,
    a tile chosen) would drop the choices made on this one. A held page another annotator was
    given meanwhile (this person was away longer than the claim lasts) is dropped for a new one."""
    pinned = st.session_state.get(_page_key(project_id))
    restored = _restored_page(project_id, pinned)
    if restored:
        return restored
    taken = False
    if pinned:
        Session = common.session_factory()

        shared = _shared_of(project_id, pinned)

        def read():
            with Session.begin() as session:
                return queue.held_page(session, project_id, pinned, common.claimant(), shared)

        try:
            batch = db.retrying(read)
        except OperationalError:  # claims out of reach, as in _next_batch: the page unclaimed
            with Session() as session:
                batch = queue.held_page(session, project_id, pinned, None)
        if batch:
            return batch
        taken = batch is None
    batch = _next_batch(project_id, GRID_SIZE)
    if taken and {item.id for item, _ in batch} == set(pinned):
        # The same images, shared because all that is left is held by others: the same page.
        place = {item_id: n for n, item_id in enumerate(pinned)}
        return sorted(batch, key=lambda pair: place[pair[0].id])
    st.session_state[_page_key(project_id)] = [item.id for item, _ in batch]
    _note_shared(project_id, [item.id for item, _ in batch])
    if taken:
        st.warning("Someone else took over images of this page while you were away; here is a new page.")
    return batch


def _guesses_key(project_id: int) -> str:
    """Session key of (page name, {item: (run, class, confidence)}): see `_page_guesses`."""
    return f"{_GUESSES_PREFIX}{project_id}"


def _page_guesses(project_id: int, page: str, batch) -> dict[int, tuple[int, int, float]]:
    """The model's guesses the grid page `page` shows, {item: (run, class, confidence)}, as
    when the page was first drawn (audit images get none). A run that finished while the page
    was open changed the confidence shown and not the tile (Streamlit keeps a widget's value),
    so a tile showed one run's guess beside another's confidence, and A stored it as the new
    run's guess; a reload then gave back the new run's guesses, which nobody had seen
    (exploratory). The page keeps the guesses of the model it was drawn with."""
    pinned = st.session_state.get(_guesses_key(project_id))
    if pinned and pinned[0] == page:
        return pinned[1]
    guesses = {
        item.id: (shown.run_id, shown.predicted, shown.confidence)
        for item, prediction in batch
        if (shown := _shown_prediction(item, prediction)) is not None
    }
    st.session_state[_guesses_key(project_id)] = (page, guesses)
    return guesses


def _shared_key(project_id: int) -> str:
    """Session key of (page name, ids): the images of the grid page drawn last that another
    annotator held when it was drawn (shared, as nothing free was left; `held_page`)."""
    return f"{_SHARED_PREFIX}{project_id}"


def _note_shared(project_id: int, item_ids: list[int]) -> None:
    """Remember which images of the new grid page `item_ids` this session did not get a claim on
    because others held them (none on a page drawn unclaimed, the database locked: its images
    given to others later take the page away, as for any page; review)."""
    if st.session_state.pop(_UNCLAIMED, False):
        st.session_state[_shared_key(project_id)] = (_page_name(item_ids), [])
        return
    claimant = common.claimant()
    with common.session_factory()() as session:
        mine = queries.claimed_by(session, project_id, claimant, queries.now(session))
    st.session_state[_shared_key(project_id)] = (_page_name(item_ids), [i for i in item_ids if i not in mine])


def _shared_of(project_id: int, pinned: list[int]) -> list[int]:
    page, shared = st.session_state.get(_shared_key(project_id)) or ("", [])
    return list(shared) if page == _page_name(pinned) else []


# Personal (account._PERSONAL_KEYS: cleared at a login or logout, like the page they are about).
_RESTORED = "grid-restored"  # names of the lost pages this session tried to give back
_REPLACED = "grid-replaced"  # (page, key list token) of the keys a page given back replaced
_RESTORE_NOTE = "grid-restore-note"  # (kind, text, page it shows above): what became of a lost page
_PREFILLED_PREFIX = "grid-prefilled-"  # per project (account._PERSONAL_PREFIXES): see _prefilled_key


def _prefilled_key(project_id: int) -> str:
    """Session key of (page, {item: (class, name, confidence)}): the guesses a page given back
    showed pre-filled before its session ended (`_restored_page`, `_grid`)."""
    return f"{_PREFILLED_PREFIX}{project_id}"


def _lost_grid_page():
    """What label_grid.js sent for a page set under another session ({"page", "token", "owner",
    "who", "session", "asker", "list", "prefilled"}), None if nothing. Its own state, apart from
    the keys' list: a key pressed on the page drawn meanwhile would overwrite it there."""
    value = st.session_state.get("grid-keys")
    return value.get("lost") if hasattr(value, "get") else getattr(value, "lost", None)


# Claim-token tags of the browser sessions that drew a grid in this server process, with their
# Streamlit session ids (`_still_connected`).
_SESSION_OF_TAG: dict[str, str] = {}


def _session_tag() -> str:
    """This browser session's claim token, hashed: what label_grid.js keeps for a page and sends
    back with it, so that only that session's claims pass to a new one (`_restored_page`)."""
    common.claimant()  # makes the token
    tag = queries.token_tag(st.session_state["claim_token"])
    ctx = get_script_run_ctx()
    if ctx is not None and _SESSION_OF_TAG.get(tag) != ctx.session_id:
        if len(_SESSION_OF_TAG) > 10_000:  # forget the sessions not connected (this one's too)
            for gone in [t for t, _ in list(_SESSION_OF_TAG.items()) if not _still_connected(t)]:
                _SESSION_OF_TAG.pop(gone, None)
        _SESSION_OF_TAG[tag] = ctx.session_id
    return tag


# Claim-token tags of sessions whose grid page another session of this process took over
# (`_restored_page`), with the tags of the sessions that took one over (`_lost_sessions`).
_TAKEN_OVER_BY: dict[str, set[str]] = {}


def _lost_sessions(tag: str) -> set[str] | None:
    """The tags whose claims a page set under `tag` may be held under now: `tag` and the sessions
    that took the page over since, in this process (a reload in the moment a page given back took
    to reach the tab left the tab naming the first session, while the claims had passed to the
    second: the page was refused as another tab's, and its tiles lost; exploratory); None while
    one of them is another session still connected (a copy of the tab holds the page)."""
    tags: set[str] = set()
    todo = [tag] if tag else []
    while todo:
        tag = todo.pop()
        if tag in tags:
            continue
        if _still_connected(tag):
            return None
        tags.add(tag)
        todo.extend(_TAKEN_OVER_BY.get(tag, ()))
    return tags


def _still_connected(tag: str) -> bool:
    """Whether the browser session whose claim tag is `tag` is another session still connected
    to this server process: a tab duplicated in the browser gets a copy of the original's
    sessionStorage, and with it the page the original still shows, which stays the original's.
    (This session under an earlier tag, before a logout and a login in the tab, is not.)"""
    session_id = _SESSION_OF_TAG.get(tag)
    ctx = get_script_run_ctx()
    if session_id is None or not runtime.exists() or (ctx is not None and ctx.session_id == session_id):
        return False
    # `is True`: Streamlit's AppTest runs the page with a mock for the runtime, whose answer is
    # a mock too.
    return runtime.get_instance().is_active_session(session_id) is True


def _lost_page(project_id: int) -> tuple[list[int], dict] | None:
    """The grid page with tiles set on it that this tab showed under another session: the server
    lost that session (a restart, a reload of the tab, a disconnect longer than Streamlit keeps
    sessions: 5 of 5 pages of set tiles were replaced by a new page without a word after a
    restart, exploratory; or this session had another claim token before a logout and a login),
    and label_grid.js sent the page back (from the tab's sessionStorage where the grid was
    mounted anew). (its item ids, what was sent), or None unless the tiles were set under this
    name, the page was not tried before and no other tab still connected holds it."""
    lost = _lost_grid_page()
    if not hasattr(lost, "get") or lost.get("asker") != _session_tag():
        return None  # sent to an earlier session (the value stays in the tab): answered there
    if lost.get("who") != common.annotator():
        return None  # tiles set under another name (a logout, then a login in this tab) stay theirs
    if lost.get("owner") != f"{common.annotator()}@{project_id}":
        return None  # another project's page, sent as the person switched: for that project's grid
    page = str(lost.get("page", ""))
    tried = st.session_state.setdefault(_RESTORED, set())
    if page in tried or len(page) > 2000:  # label_grid.js sends none longer (a page of GRID_SIZE)
        return None
    # Tried (but after a database error, `_restored_page`): label_grid.js keeps the page in the
    # tab until the server lists it as tried (`tried` in the grid's data). The page drawn now may
    # be the same one (its claims had run out): it then gets the tiles set on it.
    tried.add(page)
    sessions = _lost_sessions(str(lost.get("session", "")))
    if sessions is None:  # the page of a tab still open (this one is its copy): it stays there
        text = "Your last grid page is open in another tab, so it stays there; here is another one."
        st.session_state[_RESTORE_NOTE] = ("warning", text, "")  # shown above the page drawn
        return None
    entries = lost.get("list")
    listed = [dict(edit) for edit in entries if hasattr(edit, "get")] if isinstance(entries, list) else []
    listed = [e for e in listed if isinstance(e.get("item"), int) and isinstance(e.get("class"), int)]
    if not listed:
        return None
    try:
        ids = [int(part) for part in page.split(",")]
    except ValueError:
        return None
    if not 0 < len(ids) <= GRID_SIZE or len(set(ids)) != len(ids):
        return None
    if not {edit["item"] for edit in listed} <= set(ids):
        return None
    shown = lost.get("prefilled")
    prefilled = {
        edit["item"]: (edit["class"], str(edit.get("name", "")), _fraction(edit.get("confidence")))
        for edit in (shown if isinstance(shown, list) else [])
        if hasattr(edit, "get") and edit.get("item") in ids and isinstance(edit.get("class"), int)
    }
    return ids, {
        "page": page,
        "token": _list_token(lost.get("token", "")),
        "list": listed,
        "session": str(lost.get("session", "")),
        "sessions": sessions,
        "prefilled": prefilled,
    }


def _fraction(value) -> float | None:
    """`value` if it is a number from 0 to 1 (a confidence sent by the tab), else None."""
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


def _accepted_tiles(lost: dict) -> dict[int, int]:
    """{item: class} an accept of the lost page would store: the guesses it showed pre-filled,
    then each tile's last key or mouse choice (skip: not stored)."""
    tiles = {item: shown[0] for item, shown in lost["prefilled"].items()}
    for edit in lost["list"]:  # in order: the last per tile wins
        tiles[edit["item"]] = edit["class"]
    return {item: cls for item, cls in tiles.items() if cls >= 0}


class _NotGivenBack(Exception):
    """Raised inside the restore's transaction so that its claim take-over is rolled back; with
    the number of the page's images this person's grid answers hold (it was accepted), else 0."""


def _restored_page(project_id: int, pinned: list[int] | None) -> list[tuple[Item, object]] | None:
    """`_lost_page` again, with its images and guesses, unless another person holds one of its
    images now; else None (the page drawn stays). Images answered meanwhile come back closed, as
    on any held page."""
    found = _lost_page(project_id)
    if found is None:
        return None
    ids, lost = found
    Session = common.session_factory()

    def restore():
        with Session.begin() as session:
            # Accepted before the session ended (the tab had not been told): not open work. An
            # accept stores the whole page at once: every tile it would store (`_accepted_tiles`)
            # is answered, and those holding this person's grid answer hold that tile's class
            # (an answer given first, by somebody else or elsewhere, is left standing; one grid
            # answer from another tab of theirs, the rest open, is no accept).
            events = {item_id: queries.current_event(session, item_id) for item_id in ids}
            tiles = _accepted_tiles(lost)
            hers = {
                item
                for item in tiles
                if events[item] is not None
                and events[item].annotator == common.annotator()
                and events[item].kind == "grid"
            }
            if (
                hers
                and all(events[item] is not None for item in tiles)
                and all(events[item].class_index == tiles[item] for item in hers)
            ):
                raise _NotGivenBack(len(hers))
            batch = queue.restored_page(session, project_id, ids, common.claimant(), lost["sessions"])
            if batch is None:
                raise _NotGivenBack(0)  # rolls back the take-over: those images stay free for others
            return batch

    try:
        batch = db.retrying(restore)
    except OperationalError:
        st.session_state[_RESTORED].discard(lost["page"])
        return None  # the database away: tried again at the next run
    except _NotGivenBack as refused:
        batch, saved = None, refused.args[0]
    ended = "this tab's session ended (a reload, a server restart or a new login)"
    if batch is None and saved:
        labels = common.by_count(saved, "1 label", f"{saved} labels")
        note = ("info", f"Your last grid page was saved ({labels}) before {ended}; here is the next one.")
    elif batch is None:
        note = (
            "warning",
            (
                f"Your last grid page could not be given back after {ended}: another tab or person "
                "holds some of its images now."
            ),
        )
    elif not batch:
        note = (
            "info",
            (
                "Every image of your last grid page was answered meanwhile, so it was not given back "
                f"after {ended}; here is the next one."
            ),
        )
    else:
        note = None
    if note is not None:
        # Shown above the page drawn until it changes: a note gone at the next run moved the
        # grid's keys component, which the browser then made anew, dropping a key (exploratory).
        st.session_state[_RESTORE_NOTE] = (*note, _page_name(pinned or []))
        return None
    st.session_state[_RESTORE_NOTE] = (
        "info",
        (
            f"Here is the page you were working on before {ended}, with the tiles you set and the "
            "guesses it showed: accept it when done."
        ),
        lost["page"],
    )
    # Keys pressed on the page drawn meanwhile (on screen for a moment) do not carry over to it
    # when it comes up again; keys pressed on it then (a list of a new token) do.
    live = _live_grid_keys()
    if hasattr(live, "get") and str(live.get("page", "")) != lost["page"]:
        st.session_state.setdefault(_REPLACED, set()).add(
            (str(live.get("page", "")), str(live.get("token", "")))
        )
    if len(_TAKEN_OVER_BY) > 10_000:  # needed for the moment after a restore: forget old ones
        _TAKEN_OVER_BY.clear()
    _TAKEN_OVER_BY.setdefault(lost["session"], set()).add(_session_tag())
    st.session_state[_page_key(project_id)] = ids
    st.session_state[_prefilled_key(project_id)] = (lost["page"], lost["prefilled"])
    st.session_state[_keyed_key(project_id)] = {
        **{k: lost[k] for k in ("page", "token", "list")},
        "restored": True,
    }
    return batch


def _restored_note(page: str) -> None:
    """What became of the page a lost session held (`_restored_page`), while this page shows."""
    note = st.session_state.get(_RESTORE_NOTE)
    if note is not None and note[2] in (page, ""):
        st.session_state[_RESTORE_NOTE] = (note[0], note[1], page)  # kept while this page shows
        (st.info if note[0] == "info" else st.warning)(note[1])
    elif note is not None:
        del st.session_state[_RESTORE_NOTE]


def _apart(label: str) -> str:
    """`label` for an option that is no class ("skip", "ignored", "all"), made unlike every class
    name: a selectbox's value travels as the label it shows, so with a class of the same name
    the option would come back as that class (every tile on skip stored as a class "skip").
    A trailing no-break space does it whatever the classes are now or later: names are stored
    stripped of surrounding (Unicode) whitespace, so no class name ends in one."""
    return f"{label}\u00a0"


def _grid_view(threshold: float, names: list[str]) -> str:
    """What the grid's tiles are drawn for: the threshold and the class names. Part of every
    tile's key, so a new threshold makes new tiles with the new guesses, and after a class is
    added or renamed a value the browser sends for an older tile (a class name, as it showed
    it) has no tile to land on."""
    return f"{round(threshold * 100)}-{common.tag(list(names))[:8]}"


def _page_view(project_id: int, page: str, threshold: float, names: list[str]) -> str:
    """`_grid_view`, marked for a page given back (`_prefilled_key`): its tiles are new ones, drawn
    on the guesses it showed then (the same page drawn anew a moment before had made its tiles on
    the newest guesses, and a tile keeps its value whatever it is drawn with: a review)."""
    view = _grid_view(threshold, names)
    restored = st.session_state.get(_prefilled_key(project_id))
    return f"{view}-back" if restored and restored[0] == page else view


def _tile_key(item_id: int, view: str, token: str = "", presses: int = 0) -> str:
    # Each key pressed on a tile makes a new one too (see _grid_presses).
    key = f"grid-{item_id}-{view}"
    return f"{key}-{token}-{presses}" if presses else key


def _choices_key(project_id: int) -> str:
    return f"{_CHOICES_PREFIX}{project_id}"


def _remember_choice(
    project_id: int, page: str, item_id: int, key: str, presses: int, names: list[str]
) -> None:
    """Callback of a tile's selectbox: keep the person's choice (and the class name it showed),
    so a tile drawn anew keeps it. Tiles are drawn anew when the classes change (another person
    adds or renames one) or the threshold moves; a key pressed on the tile later wins."""
    value = st.session_state.get(key)
    if value is None:
        return
    name = names[value] if 0 <= value < len(names) else None
    chosen = st.session_state.setdefault(_choices_key(project_id), {})
    chosen[item_id] = {"page": page, "presses": presses, "value": int(value), "name": name}


def _names_seen_key(project_id: int) -> str:
    """Session key of (page, class names) shown after a refusal for a rename: see _accept_grid."""
    return f"grid-names-seen-{project_id}"


def _own_choice(project_id: int, page: str, item_id: int, presses: int) -> dict | None:
    """The choice the person made with the mouse on this tile, unless a key came after it."""
    chosen = st.session_state.get(_choices_key(project_id), {}).get(item_id)
    return chosen if chosen and chosen["page"] == page and chosen["presses"] == presses else None


def _carried_choice(
    project_id: int, page: str, item_id: int, pressed: dict[int, tuple[int, int]], key_names: dict, n: int
) -> tuple[int, str | None] | None:
    """The choice a tile drawn anew starts on, and the class name it was made under: the
    person's mouse choice unless a key came after it, else the last key's class (`key_names`:
    the name each tile's last key showed); None when the tile got neither. `n`: the classes."""
    presses, last = pressed.get(item_id, (0, -1))
    own = _own_choice(project_id, page, item_id, presses)
    if own and -1 <= own["value"] < n:
        return own["value"], own["name"]
    return (last, key_names.get(item_id)) if presses else None


def _tile_choice(item_id: int, view: str, token: str, pressed: dict[int, tuple[int, int]]) -> int:
    """What a grid tile shows: its selectbox's value, or the last key's class before the
    selectbox for that key has been drawn."""
    presses, last = pressed.get(item_id, (0, -1))
    value = st.session_state.get(_tile_key(item_id, view, token, presses))
    return (last if presses else -1) if value is None else value


def _renamed(project_id: int, names: list[str], classes: list[int], chosen_as=()) -> bool:
    """True (and a message) when one of `classes` has another name now than the page showed: a
    tile's choice is an index, and after a rename it may mean another class. `chosen_as`: (class,
    the name it had when the person chose it) of choices carried onto tiles drawn since."""
    now = common.class_names(project_id)
    if all(c == IGNORED or (c < len(now) and c < len(names) and now[c] == names[c]) for c in classes) and all(
        name is None or (c < len(now) and now[c] == name) for c, name in chosen_as
    ):
        return False
    _renamed_note()
    return True


def _renamed_note() -> None:
    st.session_state["last_message"] = (
        "error",
        "A class was renamed since these choices were made, so nothing was saved; check the page (it shows the names now) and save it again.",
    )


@common.survives_outage
def _accept_grid(
    project_id: int, item_ids: list[int], threshold: float, names: list[str], closed: list[int] = ()
) -> None:
    """Commit the page in one transaction: the pre-filled guesses the person left alone count as
    confirmed, tiles set to "skip" stay unlabeled, and an image answered meanwhile (by anyone) is
    left as it is: also one the page showed so (`closed`), should that answer be undone by now,
    since its tile was never the person's to check. The page is one undo step. `names`: the
    classes as the page showed them."""
    try:
        annotator = account.acting_user()["name"]
    except account.NotAllowed as refused:
        st.session_state["last_message"] = ("error", str(refused))
        return
    if _grid_left("A", "The grid page was not accepted; its tiles wait in Grid."):
        return
    page = _page_name(item_ids)
    if _saved_after_all(project_id) == page:
        return  # this page's accept, cut short: finished now
    token, pressed, listed = _grid_presses(project_id, page, len(names))
    view = _page_view(project_id, page, threshold, names)
    closed = set(closed)
    chosen = [(i, _tile_choice(i, view, token, pressed)) for i in item_ids if i not in closed]
    chosen = [(i, c) for i, c in chosen if c is not None and c >= 0]
    key_names = _key_names(listed)
    carried = {i: _carried_choice(project_id, page, i, pressed, key_names, len(names)) for i, _ in chosen}
    chosen_as = [carried[i] for i, c in chosen if carried[i] and carried[i][0] == c]
    # After one refusal the page is drawn under the names of now: A on it saves what it shows.
    seen = st.session_state.get(_names_seen_key(project_id)) == (page, tuple(names))
    if _renamed(project_id, names, [c for _, c in chosen], [] if seen else chosen_as):
        st.session_state[_names_seen_key(project_id)] = (page, tuple(common.class_names(project_id)))
        return
    taken = {i for i, _ in chosen} | closed
    skipped = [i for i in item_ids if i not in taken]
    Session = common.session_factory()
    kept = _accepting(project_id, page, item_ids, skipped)
    accept = kept["id"]
    ledger, accepted = common.ledger(project_id), _accepted_pages(project_id)  # before the commit
    pinned = st.session_state.get(_guesses_key(project_id))
    guesses = pinned[1] if pinned and pinned[0] == page else {}
    # The guess each tile showed: its page's (`_page_guesses`; none where it had none), not the
    # newest run's; the newest run's only for a page whose guesses this session did not keep.
    if pinned and pinned[0] == page:
        shown = {i: guesses[i][:2] if i in guesses else None for i, _ in chosen}
    else:
        shown = {i: queries.NEWEST for i, _ in chosen}

    def commit():
        with Session.begin() as session:
            mine = set(
                session.scalars(
                    select(Item.id).where(Item.project_id == project_id, Item.id.in_([i for i, _ in chosen]))
                )
            )
            events = []
            for i, c in chosen:
                if i not in mine:  # a page drawn for another project (a switch in between) writes nothing
                    continue
                event = queries.add_label_if_unlabeled(
                    session, i, c, annotator=annotator, kind="grid", guess=shown[i]
                )
                if event is not None:
                    session.flush()
                    queries.record_applied(session, event, accept)  # see _accepting
                    events.append(event)
            return events

    kept["sent"] = True  # from here the labels may land (`_await_accept`)
    try:
        events = db.retrying(commit)
    except OperationalError:
        with contextlib.suppress(OperationalError):
            if _saved_after_all(project_id) == page:
                return  # it landed, only the database's answer was lost
        raise  # the database is away: survives_outage says so, without its host and port
    except Exception as error:  # noqa: BLE001 - shown to the user, nothing is lost
        st.session_state.pop(_accepting_key(project_id), None)  # rolled back: nothing to look for
        st.session_state["last_message"] = ("error", f"The page was not saved: {error}")
        return
    again = _page_saved(kept, events, ledger, accepted)
    # From here a rerun may stop this callback at any look at the session state (a key pressed
    # just after A): the next page run finishes it (`_saved_after_all`).
    _next_page(project_id, kept)
    for item_id in item_ids:
        st.session_state.pop(_tile_key(item_id, view), None)
    text = f"Saved {len(events)} {common.by_count(len(events), 'label', 'labels')}."
    if not events and again:
        text = "This page was saved already (A pressed again); nothing changed."
    elif len(events) < len(chosen) + len(closed):
        left = len(chosen) - len(events) + len(closed)
        text += " " + common.by_count(
            left,
            "1 image had been answered meanwhile and was left as it is.",
            f"{left} images had been answered meanwhile and were left as they are.",
        )
    st.session_state["last_message"] = ("success", text)
    _auto_retrain(project_id)
    st.session_state.pop(_accepting_key(project_id), None)


def _grid_left(key: str, what: str) -> bool:
    """True, with a note, when the grid's Accept or Undo comes after a switch to another mode:
    the grid stays on screen, greyed, until the new mode is drawn, and a key meant for the box
    (A, U) pressed its buttons, through Streamlit's shortcut or label_grid.js; A saved the page
    left behind, U undid a grid page (review, in Chromium: A 100 ms after the click)."""
    mode = st.session_state.get("label_mode", MODES[0])
    if mode == "Grid":
        return False
    st.session_state["last_message"] = (
        "info",
        f"{key} was pressed while {mode} opened and reached the grid leaving the page: {what}",
    )
    return True


_ACCEPTING = "grid-accepting-"  # per project: the accept whose commit has not been seen to land


def _accepting_key(project_id: int) -> str:
    return f"{_ACCEPTING}{project_id}"


def _accepting(project_id: int, page: str, item_ids: list[int], skipped: list[int]) -> dict:
    """The accept of `page` under way, kept in the session until it is done with: its id, which it
    writes with each of its labels (`queries.record_applied`), and, once the labels are on the
    undo list, how many it saved ("done"). `_saved_after_all` finishes an accept cut short.

    A commit can land while the database's answer to it is lost (PostgreSQL's connection cut
    during COMMIT): the page then said "not saved", A again found every image answered ("Saved 0
    labels. 12 images had been answered meanwhile"), and U took back the page before, as the undo
    list never heard of this one (review). And a key pressed just after A reruns the page, which
    stops the callback at its next look at the session state: after the commit, the page stayed
    with no message, U could not undo it and no run was queued (exploratory, 4 of 4 accepts with
    keys 30 ms after A on a busy machine). A page accepted again after an undo gets a new id."""
    key = _accepting_key(project_id)
    kept = st.session_state.get(key)
    if not kept or kept["page"] != page or "done" in kept:
        kept = {"page": page, "id": f"grid-{uuid.uuid4().hex}", "items": list(item_ids)}
        st.session_state[key] = kept
    kept["skipped"] = list(skipped)
    return kept


def _saved_after_all(project_id: int) -> str | None:
    """An accept cut short (`_accepting`): its page, taken as saved, with its message and
    auto-retrain's look, when its labels are in the database; None when nothing of it landed, and
    when no such accept waits. Runs of one session can overlap (Streamlit's fast reruns): the
    undo list gets the page once (`_page_saved`)."""
    kept = st.session_state.get(_accepting_key(project_id))
    if not kept:
        return None
    ledger = common.ledger(project_id)
    lost = False
    if "done" not in kept:  # else only what follows the undo list was cut short
        with common.session_factory()() as session:
            events = queries.applied_events(session, kept["id"], kept["items"])
        if not events:
            return None
        with ledger.lock:
            lost = "done" not in kept  # not the accept itself, finishing meanwhile
            _page_saved(kept, events, ledger, _accepted_pages(project_id))
    _next_page(project_id, kept)
    n = kept["done"]
    text = f"Saved {n} {common.by_count(n, 'label', 'labels')}"
    text += ": the page was saved after all." if lost else "."  # (its answer lost, or its run slow)
    st.session_state["last_message"] = ("success", text)
    if lost:  # the click's "not saved" is wrong: the page says what became of it instead
        st.session_state.pop(common.OUTAGE_NOTICE, None)
    _auto_retrain(project_id)
    st.session_state.pop(_accepting_key(project_id), None)
    return kept["page"]


def finish_accepts() -> None:
    """Every page run, before the outage notice (app.py): a grid accept or History save whose
    commit landed unanswered is finished."""
    project_id = st.session_state.get("project_id")
    if isinstance(project_id, int):
        _saved_after_all(project_id)
        _corrected_after_all(project_id)


ACCEPT_WAIT_S = 5.0  # how long an undo waits for an accept another run is committing


def _await_accept(project_id: int) -> None:
    """Before an undo: an accept another run of the session is committing (U pressed just after
    A; Streamlit runs the new run beside the one it stops) goes on the undo list first, else U
    took back the page before it. An accept whose commit never came is dropped."""
    kept = st.session_state.get(_accepting_key(project_id))
    if not kept:
        return
    deadline = time.monotonic() + ACCEPT_WAIT_S
    while kept.get("sent") and "done" not in kept and time.monotonic() < deadline:
        time.sleep(0.05)
    if "done" not in kept:
        with common.session_factory()() as session:
            events = queries.applied_events(session, kept["id"], kept["items"])
        if events:
            _page_saved(kept, events, common.ledger(project_id), _accepted_pages(project_id))
    if "done" in kept:
        _next_page(project_id, kept)
    st.session_state.pop(_accepting_key(project_id), None)  # the undo's message stands


def _accepted_pages(project_id: int) -> set[str]:
    return st.session_state.setdefault(_accepted_key(project_id), set())  # pages accepted, not undone


def _page_saved(kept: dict, events: list[LabelEvent], ledger: answers.Ledger, accepted: set[str]) -> bool:
    """An accepted page's labels (`events`) go on the session's undo list: plain objects only,
    no look at the session state, where a rerun could stop the callback (`_accepting`). True
    when this session had accepted the page before (and not undone it)."""
    with ledger.lock:
        if "done" in kept:  # recorded by another run of the session (`_saved_after_all`)
            return False
        again = kept["page"] in accepted
        accepted.add(kept["page"])
        ledger.record(events)
        ledger.skipped.update(kept["skipped"])
        kept["done"] = len(events)
    return again


def _next_page(project_id: int, kept: dict) -> None:
    """The accepted page gives way to the next. (A click from an older page, still on screen,
    keeps the page shown.)"""
    if set(st.session_state.get(_page_key(project_id)) or ()) & set(kept["items"]):
        st.session_state.pop(_page_key(project_id))


_UNDO_ASKED = "grid-undo-asked"  # the page whose set tiles an Undo would drop, said once


@common.survives_outage
def _undo_page(project_id: int) -> None:
    try:
        annotator = account.acting_user()["name"]
    except account.NotAllowed as refused:
        st.session_state["last_message"] = ("error", str(refused))
        return
    if _grid_left("U", "Nothing was undone."):
        return
    _await_accept(project_id)
    # The undone images replace the page shown: tiles set on it went with it, without a word
    # (exploratory). Said first; a second Undo on the same page goes ahead.
    pinned = st.session_state.get(_page_key(project_id)) or []
    waiting = _tiles_set(project_id, pinned) if pinned else 0
    if waiting and st.session_state.get(_UNDO_ASKED) != _page_name(pinned):
        st.session_state[_UNDO_ASKED] = _page_name(pinned)
        tiles = common.by_count(waiting, "1 tile", f"{waiting} tiles")
        st.session_state["last_message"] = (
            "warning",
            f"Undo would drop the {tiles} you set on this page: accept it first, or press Undo (U) again.",
        )
        return
    st.session_state.pop(_UNDO_ASKED, None)
    # The newest grid page or bulk label: a box answer or History correction made since stays.
    undone = answers.undo_entry(
        common.session_factory(), annotator, common.ledger(project_id), kinds=("grid", "bulk")
    )
    if undone:
        with common.session_factory()() as session:
            back = queries.unanswered(session, project_id, undone)
            training = run_queries.running_with_undone(session, project_id, undone)
        # A run that started with them trains on them still, without a word (exploratory).
        still = ""
        if training:
            *rest, last = map(str, training)
            runs = f"{', '.join(rest)} and {last}" if rest else last
            still = (
                f"; {common.by_count(len(training), 'run', 'runs')} {runs}, training now, started with "
                "them (the next run leaves them out)"
            )
        st.session_state["last_message"] = (
            "info",
            (
                f"Undone: your last grid page or bulk label ({len(undone)} "
                f"{common.by_count(len(undone), 'answer', 'answers')}); {len(back)} "
                f"{common.by_count(len(back), 'image is', 'images are')} back in the queue{still}."
            ),
        )
        _show_first(undone)
        common.ledger(project_id).skipped.difference_update(undone)
        st.session_state.pop(_page_key(project_id), None)  # the undone images come next
        _forget_accepted(project_id, undone)
    else:
        st.session_state["last_message"] = ("info", "No grid page or bulk label of this session to undo.")


# Pre-filled grid guesses from a model measured below this on the audit images (or, for a built-in
# set without them, its test split) get a warning.
TRUSTED_AUDIT_ACCURACY = 0.9


def _guess_warning(project_id: int, guesses: dict, threshold: float) -> str | None:
    """A warning over a grid page whose pre-filled guesses (`_page_guesses`) come from a model
    not measured to be right often: early models are sure of wrong guesses (an exploratory
    session: 4 of 8 pre-filled tiles wrong, 127 of 198 guesses at 90 % or more right, 58 % on the
    audit images), and A accepts them all. None when nothing is pre-filled or the model measured
    well."""
    sure = [run_id for run_id, _, confidence in guesses.values() if confidence >= threshold]
    if not sure:
        return None
    with common.session_factory()() as session:
        run = session.get(Run, max(sure)) or run_queries.latest_done_run(session, project_id)
    if run is None:
        return None
    if not run.audit_n and run.test_accuracy is not None:  # a built-in set: its test split measures it
        if run.test_accuracy >= TRUSTED_AUDIT_ACCURACY:
            return None
        return (
            f"The model got {run.test_accuracy:.0%} of the test images right, and it can be sure of a "
            "wrong guess: check every pre-filled guess before you accept."
        )
    if not run.audit_n:
        return (
            "How often the model is right is not measured yet (no audit image answered): "
            "check every pre-filled guess before you accept."
        )
    if run.audit_accuracy is not None and run.audit_accuracy < TRUSTED_AUDIT_ACCURACY:
        return (
            f"The model got {run.audit_accuracy:.0%} of {run.audit_n} audit images right, and it can "
            "be sure of a wrong guess: check every pre-filled guess before you accept."
        )
    return None


def _answered_meanwhile(project_id: int, item_ids: list[int], names: list[str]) -> dict[int, str]:
    """{image: a note} for the images of a held grid page answered since it was drawn (in the
    one-image box, another tab, by another person): the page showed them as open, pre-filled with
    other classes (9 of 12 tiles in an exploratory session); A leaves them as they are."""
    with common.session_factory()() as session:
        still = queries.unanswered(session, project_id, item_ids)
        events = {i: queries.current_event(session, i) for i in item_ids if i not in still}
    notes = {}
    for item_id, event in events.items():
        if event is None:  # gone from the project meanwhile
            continue
        answer = (
            "ignore"
            if event.class_index == IGNORED
            else names[event.class_index]
            if event.class_index < len(names)
            else "?"
        )
        notes[item_id] = f"Answered meanwhile as {answer} by {event.annotator}: left as it is."
    return notes


def _keep_claims(project_id: int) -> None:
    """While the box or a grid page is open in the tab (a fragment, every CLAIMS_EVERY_S): the
    images it holds stay this person's. Only page runs renewed the claims, so a page left open
    for longer than the claim time went to the next person who asked, ahead of images nobody
    held; whoever accepted first was stored and the other's page was refused (an exploratory
    session, 12 of 12 grid images). A closed tab renews nothing: its claims run out. An image
    another person was given meanwhile stays theirs (`_grid_page` then draws a new page)."""
    active = st.session_state.get(_ACTIVE_AT)
    if active is None or time.monotonic() - active > KEEP_CLAIMS_IDLE_S:
        return  # left open and unused: its claims run out
    try:
        account.acting_user()  # logged out, removed or no longer allowed to label: they run out
        with common.session_factory().begin() as session:
            queue.keep_claims(session, project_id, common.claimant())
    except account.NotAllowed:
        return
    except OperationalError as error:  # the claims run out by themselves; the next run tries again
        log.warning("Could not renew the claims of a page: %s", error.__class__.__name__)


def _grid(project_id: int, names: list[str]) -> None:
    threshold = st.slider(
        "Pre-fill the model's guess when it is at least this sure",
        0.0,
        1.0,
        0.9,
        0.05,
        key="grid_threshold",
        help="Lower guesses are left for you to choose; one key (A) accepts the page.",
    )
    # Every note this page may or may not draw goes in here, so the keys' component after it
    # keeps its place: one that moved (a warning shown on one page and not the next) was built
    # anew by the browser, its focus back on tile 0 and a held key's repeats unguarded (review).
    notes = st.container()
    with notes:
        batch = _grid_page(project_id)
    if not batch:
        notes.success("Every image is labeled. Train a model or export the data set.")
        return
    if any(item.split == AUDIT for item, _ in batch):
        notes.caption(AUDIT_NOTE)
    page = _page_name(item.id for item, _ in batch)
    guesses = _page_guesses(project_id, page, batch)
    warning = _guess_warning(project_id, guesses, threshold)
    if warning:
        notes.warning(warning)
    with notes:
        _restored_note(page)
    st.caption(
        "Check the pre-filled guesses, choose the rest (or leave them on skip), then accept the page. "
        "Keys: arrows move between tiles, a class's key sets the tile in focus and moves to the next, "
        "Backspace sets it to skip, A accepts the page, U undoes it."
    )
    options = [-1, *range(len(names))]
    skip = _apart("skip")
    token, pressed, listed = _grid_presses(project_id, page, len(names))
    key_names = _key_names(listed)
    kept = st.session_state.get(_choices_key(project_id), {})
    st.session_state[_choices_key(project_id)] = {i: c for i, c in kept.items() if c["page"] == page}
    closed = _answered_meanwhile(project_id, [item.id for item, _ in batch], names)
    # A page given back after its session ended shows the guesses it showed then (the threshold
    # and the model may have changed since: tiles left on skip came back pre-filled, and A stored
    # guesses nobody had seen, exploratory), as long as their classes keep their names.
    restored = st.session_state.get(_prefilled_key(project_id))
    if restored and restored[0] != page:
        del st.session_state[_prefilled_key(project_id)]  # the page given back is done with
    shown_then = restored[1] if restored and restored[0] == page else None
    view = _page_view(project_id, page, threshold, names)
    prefilled = []  # the guesses shown pre-filled, kept by label_grid.js with the page
    tile_keys = []
    chosen = []  # tiles chosen with the mouse since their last key, for label_grid.js
    shown = []  # per tile: its item, the class it shows, its guess's confidence
    for item, _ in batch:
        _, predicted, confidence = guesses.get(item.id, (None, -1, None))
        sure = confidence is not None and predicted < len(names) and confidence >= threshold
        guess = predicted if sure else -1
        if shown_then is not None:
            # The guess shown then, with its confidence (the newest model's said another).
            cls, name, confidence = shown_then.get(item.id, (-1, "", None))
            guess = cls if 0 <= cls < len(names) and names[cls] == name else -1
            confidence = confidence if guess >= 0 else None
        if guess >= 0:
            prefilled.append(
                {"item": item.id, "class": guess, "name": names[guess], "confidence": confidence}
            )
        presses = pressed.get(item.id, (0, -1))[0]
        own = _own_choice(project_id, page, item.id, presses)
        if own:
            chosen.append(
                {"item": item.id, "class": own["value"], **({"name": own["name"]} if own["name"] else {})}
            )
        carried = _carried_choice(project_id, page, item.id, pressed, key_names, len(names))
        last = carried[0] if carried else guess  # a choice made before these tiles were drawn
        tile_keys.append({"item": item.id, "key": _tile_key(item.id, view, token, presses)})
        shown.append((item, last, confidence, presses))
    keys = class_keys(project_id, names)
    # The keys' component goes before the tiles: it knows a new page (or a tile drawn anew) by
    # the time the page shows it, so a key pressed on what is shown lands (label_grid.js).
    _grid_keys()(
        data={
            "page": page,
            "tiles": tile_keys,
            "edits": {"token": token, "list": listed} if token else None,
            "classes": [{"index": i, "key": k, "name": names[i]} for i, k in enumerate(keys) if k],
            "columns": 4,
            "who": common.annotator(),  # sent back with a lost page (`_lost_page`)
            "owner": f"{common.annotator()}@{project_id}",  # whose page the tab keeps (sessionStorage)
            "session": _session_tag(),
            "chosen": chosen,
            "prefilled": prefilled,
            # The lost pages this session has tried to give back (label_grid.js keeps one until then).
            "tried": sorted(st.session_state.get(_RESTORED, ())),
        },
        key="grid-keys",
        on_edits_change=lambda: None,  # read by _grid_presses
    )
    columns = st.columns(4)
    for n, ((item, last, confidence, presses), tile) in enumerate(zip(shown, tile_keys)):
        with columns[n % len(columns)]:
            st.image(
                _data_url(project_id, item.row, item.path),
                caption=common.as_typed(caption(item)),
                width="stretch",
            )
            note = f" (guess {confidence:.0%} sure)" if confidence is not None else ""
            st.selectbox(
                f"Label{note}",
                options,
                index=options.index(last),
                key=tile["key"],
                format_func=lambda c: skip if c < 0 else names[c],
                on_change=_remember_choice,
                args=(project_id, page, item.id, tile["key"], presses, list(names)),
                disabled=item.id in closed,
            )
            if item.id in closed:
                st.caption(common.as_typed(closed[item.id]))
    left, right = st.columns(2)
    left.button(
        "Accept page",
        key=f"accept_grid-{common.tag(page, threshold, list(names))}",  # see common.tag
        shortcut="A",
        type="primary",
        width="stretch",
        on_click=_accept_grid,
        args=(project_id, [item.id for item, _ in batch], threshold, names, sorted(closed)),
    )
    right.button(
        "Undo last page",
        key="undo",
        shortcut="U",
        width="stretch",
        on_click=_undo_page,
        args=(project_id,),
    )
    # Drawn last: the elements above keep their places.
    st.session_state[_ACTIVE_AT] = time.monotonic()
    st.fragment(run_every=CLAIMS_EVERY_S)(_keep_claims)(project_id)


# History --------------------------------------------------------------------------------------


@common.survives_outage
def _correct(project_id: int, shown: list[tuple[int, int, int]], names: list[str]) -> None:
    """Save the tiles the person changed. `shown` is (item, event, class) as drawn, `names` the
    classes as drawn; an answer that changed since (somebody else's correction) is left as it
    is, and the message says so."""
    try:
        annotator = account.acting_user()["name"]
    except account.NotAllowed as refused:
        st.session_state["last_message"] = ("error", str(refused))
        return
    st.session_state.pop(_renamed_note_key(project_id), None)
    # An earlier save not finished yet (Save clicked twice, the first still committing in the run
    # this click stopped): finished first, and its tiles left out here, where they read as
    # "changed by someone else meanwhile" (their answers are its own now; review).
    earlier = st.session_state.get(_correcting_key(project_id))
    finished = _corrected_after_all(project_id) and earlier is not None and "done" in earlier
    covered = dict(zip(map(tuple, earlier["changes"]), earlier.get("values", []))) if finished else {}
    changes, unknown = [], False
    for item_id, event_id, was in shown:
        value = st.session_state.get(_tile_of(item_id, event_id))
        if covered.get((item_id, event_id), ...) == value:  # saved by it as it shows now
            continue
        if isinstance(value, str):  # a name no class has now: renamed since the browser drew it
            unknown = True
        elif value is not None and value != was:
            changes.append((item_id, event_id, int(value)))
    if unknown:
        _renamed_note()
        return
    if not changes:
        if not finished:  # else the earlier save's message says what became of these
            st.session_state["last_message"] = ("info", "Nothing changed.")
        return
    if _renamed(project_id, names, [value for _, _, value in changes]):
        return
    ledger = common.ledger(project_id)  # before the commit: see _corrections_saved
    Session = common.session_factory()
    kept = {
        "id": f"hist-{uuid.uuid4().hex}",
        "changes": [(i, e) for i, e, _ in changes],
        "values": [v for _, _, v in changes],
    }
    st.session_state[_correcting_key(project_id)] = kept
    kept["sent"] = True  # from here the corrections may land (`_corrected_after_all` waits)
    try:
        events, _ = answers.correct(Session, project_id, annotator, changes, kept["id"])
    except OperationalError:
        kept["over"] = True  # landed or not, this click's commit is over: later looks are sure
        with contextlib.suppress(OperationalError):
            if _finish_correction(project_id, kept):
                return  # it landed, only the database's answer was lost
        raise  # the database is away: survives_outage says so; a later page run looks again
    except BaseException:
        kept["over"] = True  # first: the look below may be stopped by a rerun (StopException)
        st.session_state.pop(_correcting_key(project_id), None)  # rolled back: nothing to look for
        raise
    _corrections_saved(kept, events, ledger)
    _corrections_done(project_id, kept, after_all=False)


_CORRECTING = "hist-correcting-"  # per project: the History save whose commit has not been seen to land


def _correcting_key(project_id: int) -> str:
    return f"{_CORRECTING}{project_id}"


def _corrections_saved(kept: dict, events: list[LabelEvent], ledger: answers.Ledger) -> bool:
    """A save's corrections (`events`) go on the undo list, once (runs of one session overlap),
    and at once after the commit: plain objects only, no look at the session state, where a rerun
    (a click just after Save) stops the callback (such a stop, or a commit whose answer was lost,
    left them off the session's list)."""
    with ledger.lock:
        if "done" in kept:
            return False
        ledger.record(events)
        kept["done"] = len(events)
    return True


def _corrections_done(project_id: int, kept: dict, after_all: bool) -> None:
    """The saved changes leave the page's memory (left as someone else's too); the message."""
    seen = st.session_state.get(_seen_key(project_id), {})
    chosen = st.session_state.get(_chosen_key(project_id), {})
    for pair in kept["changes"]:  # saved, or left as someone else's: no longer kept on the page
        seen.pop(tuple(pair), None)
        chosen.pop(tuple(pair), None)
    n, stale = kept["done"], len(kept["changes"]) - kept["done"]
    text = f"Corrected {n} {common.by_count(n, 'label', 'labels')} (kept in the history)"
    text += ": the changes were saved after all." if after_all else "."
    if stale:
        text += " " + common.by_count(
            stale,
            "1 had been changed by someone else meanwhile and was left as it is.",
            f"{stale} had been changed by someone else meanwhile and were left as they are.",
        )
    st.session_state["last_message"] = ("success", text)
    if after_all:  # the click's "not saved" is wrong
        st.session_state.pop(common.OUTAGE_NOTICE, None)
    _forget_correction(project_id, kept)


def _forget_correction(project_id: int, kept: dict) -> None:
    """The pending save `kept` done with (not a newer one another click put in its place)."""
    if st.session_state.get(_correcting_key(project_id)) is kept:
        st.session_state.pop(_correcting_key(project_id))


def _corrected_after_all(project_id: int) -> bool:
    """A History save whose commit landed while the database's answer was lost (the page said
    "not saved" and went on listing the changes as waiting), or whose click a rerun stopped after
    the commit (no message, the changes listed as waiting): finished now, with its message. A
    commit still going in another run of the session (a click just after Save: Streamlit starts
    the next run beside the one it stops) is waited for, as `_await_accept` does. True when one
    was finished; a save that stored nothing is forgotten once its click is over."""
    kept = st.session_state.get(_correcting_key(project_id))
    if not kept:
        return False
    deadline = time.monotonic() + ACCEPT_WAIT_S
    while kept.get("sent") and not ("over" in kept or "done" in kept) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ("over" in kept or "done" in kept):
        if not kept.get("sent"):  # its click was stopped before the commit: nothing was saved
            st.session_state.pop(_correcting_key(project_id), None)
        return False  # still committing after the wait (`db.retrying` backs off for seconds)
    return _finish_correction(project_id, kept)


def _finish_correction(project_id: int, kept: dict) -> bool:
    if "done" not in kept:
        items = [item for item, _ in kept["changes"]]
        with common.session_factory()() as session:
            events = queries.applied_events(session, kept["id"], items)
        if not events:
            _forget_correction(project_id, kept)  # nothing landed: "not saved" stands
            return False
        _corrections_saved(kept, events, common.ledger(project_id))
    _corrections_done(project_id, kept, after_all="over" in kept)  # else a rerun stopped it
    return True


def _seen_key(project_id: int) -> str:
    return f"hist-seen-{project_id}"


def _tile_of(item_id: int, event_id: int) -> str:
    """A History tile's selectbox key: a new answer makes a new tile."""
    return f"hist-{item_id}-{event_id}"


_SET_NOW = "hist-set-this-run"  # the tiles `_set_tile` set in this page run


def _set_tile(pair: tuple[int, int], value: int) -> int:
    """Put a History tile on `value` through the session state, noted for `_history`, which draws
    such a tile with no default of its own (Streamlit logs a conflict, with a stack, otherwise)."""
    st.session_state[_tile_of(*pair)] = value
    st.session_state.setdefault(_SET_NOW, set()).add(_tile_of(*pair))
    return value


_CHOSEN_PREFIX = "hist-chosen-"  # `_chosen_key`'s prefix


def _chosen_key(project_id: int) -> str:
    """Session key of the History tiles changed and not saved yet: (item, event) -> the class
    name chosen (None: ignored). See `_keep_chosen_through_renames`."""
    return f"{_CHOSEN_PREFIX}{project_id}"


def _remember_correction(project_id: int, pair: tuple[int, int], names: list[str], was: int) -> None:
    """Callback of a History tile: keep the class name it was set to, until saved; a tile set
    back to its saved answer holds no change."""
    st.session_state.pop(_renamed_note_key(project_id), None)  # chosen again: the note is old news
    value = st.session_state.get(_tile_of(*pair))
    chosen = st.session_state.setdefault(_chosen_key(project_id), {})
    if not isinstance(value, int) or value == was or not (value == IGNORED or 0 <= value < len(names)):
        chosen.pop(pair, None)
        return
    chosen[pair] = None if value == IGNORED else names[value]


def _chosen_value(name: str | None, names: list[str]) -> int | None:
    """A History tile's value for the class name kept in `_chosen_key` (None: ignored), or None
    when no class in `names` has that name any more (it was renamed)."""
    if name is None:
        return IGNORED
    return names.index(name) if name in names else None


def _names_drawn_key(project_id: int) -> str:
    """Session key of the class names the History tiles were last drawn with (whole: `_history`
    writes it after the last tile, so a run stopped halfway by a click sets them all again)."""
    return f"hist-names-{project_id}"


_RENAMED_NOTE = "hist-renamed-note-"  # per project: changes a rename undid (`_keep_chosen_through_renames`)


def _renamed_note_key(project_id: int) -> str:
    return f"{_RENAMED_NOTE}{project_id}"


def _keep_chosen_through_renames(project_id: int, rows: list, names: list[str]) -> None:
    """After a class was renamed, put each changed tile on screen back on the class it was set
    to, by name. A selectbox's value travels as the name it shows: the browser's old name matched
    no option and Streamlit put the tile back on its saved answer, silently, so Save left that
    correction out. A tile whose class is gone under its old name goes back to its saved answer,
    and a note says to choose again. Unchanged tiles are set to their saved answer, so the
    browser shows the names now (it kept the old name, and sent it with the next click)."""
    if st.session_state.get(_names_drawn_key(project_id), names) == names:
        return
    chosen: dict = st.session_state.get(_chosen_key(project_id), {})
    lost = []
    for event, item in rows:
        pair = (item.id, event.id)
        if pair not in chosen:
            # Unchanged: its saved answer, set here so the browser shows the name it has now (it
            # would go on showing the old one, and send it back with the next click).
            if event.class_index == IGNORED or 0 <= event.class_index < len(names):
                _set_tile(pair, event.class_index)
            continue
        value = _chosen_value(chosen[pair], names)
        if value is None:
            _set_tile(pair, event.class_index)
            del chosen[pair]
            lost.append(f"#{item.id}")
        else:
            _set_tile(pair, value)
            if value == event.class_index:  # renames traded names
                del chosen[pair]  # it shows its saved answer: no change waits
    if lost:
        # Kept until the next change or Save: said once, it was gone when a rerun stopped this
        # run before its page reached the browser (CI, once), and the tile's change with it.
        st.session_state[_renamed_note_key(project_id)] = (
            f"A class was renamed while you changed {', '.join(lost)}: those tiles show their saved answer again; choose again."
        )


def _with_unsaved(session, project_id: int, rows: list, names: list[str]) -> list:
    """`rows` and, after them, every tile that holds a change not saved yet but is no longer
    among `rows`. The History shows the newest answers, so answers coming in while a person
    corrects would push a changed tile off the page at the next rerun (the change itself makes
    one) and the change would be lost; so would every change when the person looked at another
    mode or page before saving (Streamlit forgets a widget that is not drawn). A tile on screen
    keeps the value the browser sent with this run; one that was not on screen is drawn again on
    the class it was set to (`_chosen_key`, by name: a class renamed meanwhile is
    `_keep_chosen_through_renames`'s). `_correct` forgets a tile once its change is saved."""
    seen: dict = st.session_state.setdefault(_seen_key(project_id), {})
    chosen: dict = st.session_state.get(_chosen_key(project_id), {})
    values = {pair: st.session_state.get(_tile_of(*pair)) for pair in seen}
    for pair in [pair for pair, value in values.items() if value is None]:
        if pair not in chosen:
            del seen[pair]  # not on screen any more and never changed: nothing to keep
            del values[pair]
            continue
        value = _chosen_value(chosen[pair], names)
        if value is None:
            values[pair] = seen[pair]  # its class was renamed: `_keep_chosen_through_renames` says so
        else:
            values[pair] = _set_tile(pair, value)
    drawn = {(item.id, event.id) for event, item in rows}
    kept = []
    for (item_id, event_id), was in seen.items():
        pair = (item_id, event_id)
        if pair in drawn or (values[pair] == was and pair not in chosen):
            continue
        event, item = session.get(LabelEvent, event_id), session.get(Item, item_id)
        if event is not None and item is not None and item.project_id == project_id:
            kept.append((event, item))
    rows = rows + kept
    seen.update({(item.id, event.id): event.class_index for event, item in rows})
    return rows


def unsaved_corrections(project_id: int | None) -> int:
    """How many History changes of the project wait to be saved in this session (`_chosen_key`)."""
    return len(st.session_state.get(_chosen_key(project_id), {})) if project_id is not None else 0


def unsaved_anywhere() -> int:
    """How many History changes wait to be saved in this session, in every project."""
    return sum(
        len(v)
        for k, v in st.session_state.items()
        if str(k).startswith(_CHOSEN_PREFIX) and isinstance(v, dict)
    )


def grid_choices_anywhere() -> int:
    """How many tiles of the grid pages held in this session (one per project) the person set, by
    key or mouse, and has not accepted: a reload or a closed tab ends the session and drops them
    (the guard asks first, as for History changes)."""
    return sum(
        _tiles_set(str(key)[len(_PAGE_PREFIX) :], pinned)
        for key, pinned in list(st.session_state.items())
        if str(key).startswith(_PAGE_PREFIX) and pinned
    )


def _tiles_set(project_id, pinned: list[int]) -> int:
    """How many tiles of the grid page `pinned` held for the project the person set, by key or
    mouse (not accepted)."""
    page = _page_name(pinned)
    set_here = set()
    # The list kept at the last grid run, and the one just sent (this run's page reads it
    # after the guard is drawn).
    for keyed in (st.session_state.get(f"{_KEYED_PREFIX}{project_id}"), _live_grid_keys()):
        if hasattr(keyed, "get") and str(keyed.get("page", "")) == page:
            set_here |= {e.get("item") for e in keyed.get("list") or [] if hasattr(e, "get")}
    choices = st.session_state.get(f"{_CHOICES_PREFIX}{project_id}") or {}
    set_here |= {item for item, choice in choices.items() if choice.get("page") == page}
    return len(set_here & set(pinned))


def unsaved_words(count: int) -> str:
    """What the other modes and pages (and the Project page) say while History changes wait."""
    return f"History changes not saved yet: {count}."


def unsaved_note(current: bool, anywhere: int) -> None:
    """A sidebar line while History changes wait to be saved, so the person goes back before a
    logout or a reload drops them: those of the current project (`current`: app.py leaves them to
    the Label page, which says it beside its History), and on every page those of the session's
    other projects, which nothing else shows while another project is open (`anywhere`: the count
    in every project, `unsaved_anywhere`)."""
    here = unsaved_corrections(st.session_state.get("project_id"))
    if here and current:
        st.sidebar.warning(f"{unsaved_words(here)} Label, History saves them.")
    elsewhere = anywhere - here
    if elsewhere:
        st.sidebar.warning(
            f"History changes not saved yet in another project: {elsewhere}. "
            "Open it on the Project page, then Label, History saves them."
        )


def _names_changed(key: str, names: list[str]) -> bool:
    """Whether the class names differ from those a widget was last drawn with (kept under `key`,
    now `names`): after a rename its browser would go on showing an old name and send it back."""
    changed = st.session_state.get(key, names) != names
    st.session_state[key] = list(names)
    return changed


def _keep_class_filter_through_renames(names: list[str]) -> None:
    """After a class was renamed (by anyone), set the History's class filter to the class it
    holds, so the browser shows the name that class has now: it went on showing the old one and
    sent it with the next click, which matched no option, and the server fell back to every class
    while the filter still read the old name."""
    if not _names_changed("hist_class_names", names) or "hist_class" not in st.session_state:
        return
    value = st.session_state["hist_class"]
    if not (value is None or value == IGNORED or (isinstance(value, int) and 0 <= value < len(names))):
        value = None  # not a class of these names: every class, as Streamlit would
    st.session_state["hist_class"] = value


def _history_page_key(project_id: int) -> str:
    return f"hist_page-{project_id}"


def _history_page_to(project_id: int, filters: tuple, starts: list[int]) -> None:
    st.session_state[_history_page_key(project_id)] = (filters, starts)


def _history(project_id: int, names: list[str]) -> None:
    Session = common.session_factory()
    with Session() as session:
        people = sorted(queries.annotator_counts(session, project_id))
    everything, ignored, everyone = _apart("all"), _apart("ignored"), _apart("everyone")
    _keep_class_filter_through_renames(names)
    a, b, c = st.columns(3)
    which = a.selectbox(
        "Class",
        [None, IGNORED, *range(len(names))],
        key="hist_class",
        format_func=lambda i: everything if i is None else (ignored if i == IGNORED else names[i]),
    )
    who = b.selectbox(
        "Annotator", [None, *people], key="hist_who", format_func=lambda p: everyone if p is None else p
    )
    disagree = c.checkbox(
        "Only answers the newest model disagrees with",
        key="hist_disagree",
        help="Answers to pool images that the newest finished run puts in another class (its guess "
        "is under each): likely mistakes. Audit answers are left out: correcting only those the "
        "model disputes would flatter its audit accuracy.",
    )
    # Pages of HISTORY_ROWS, newest first, each starting below the last answer of the one before
    # (`starts`); other filters start on the first page again.
    filters = (which, who, disagree)
    at = st.session_state.get(_history_page_key(project_id))
    starts = list(at[1]) if at and at[0] == filters and isinstance(at[1], list) else []
    st.session_state[_history_page_key(project_id)] = (filters, starts)
    with Session() as session:
        # One run for the filter and the guesses shown (a run finishing between two lookups
        # captioned tiles with another run's guess; review).
        newest_run = queries.latest_done_run_id(session, project_id) if disagree else None
        rows = []
        while not (disagree and newest_run is None):  # no run yet: no model to disagree with
            rows = queries.label_history(
                session,
                project_id,
                class_index=which,
                annotator=who,
                disagree_with=newest_run,
                limit=HISTORY_ROWS + 1,
                before=starts[-1] if starts else None,
            )
            if rows or not starts:
                break
            starts.pop()  # this page's answers went meanwhile (undone, corrected away): the one before
        older = len(rows) > HISTORY_ROWS
        rows = rows[:HISTORY_ROWS]
        newest = len(rows)
        last_shown = rows[-1][0].id if rows else None
        st.session_state[_SET_NOW] = set()
        rows = _with_unsaved(session, project_id, rows, names)
        guessed = (
            run_queries.guesses(session, newest_run, [item.id for _, item in rows]) if newest_run else {}
        )
    page = len(starts)
    if not rows:
        st.info(
            "No answers match."
            if not disagree or newest_run is not None
            else "No answers match: no run has finished yet, so there is no model to disagree with."
        )
        return
    kept = f", and {len(rows) - newest} you changed that are not saved yet" if len(rows) > newest else ""
    shown_words = (
        f"The newest {newest} matching answers"
        if not page
        else f"Page {page + 1} of the matching answers: {newest}, newest first"
    )
    st.caption(f"{shown_words}{kept}. Change a label, then save the corrections.")
    if page or older:
        back, on = st.columns(2)
        back.button(
            "Newer answers",
            key="hist_newer",
            disabled=not page,
            on_click=_history_page_to,
            args=(project_id, filters, starts[:-1]),
        )
        on.button(
            "Older answers",
            key="hist_older",
            disabled=not older,
            on_click=_history_page_to,
            args=(project_id, filters, [*starts, last_shown]),
        )
    options = [IGNORED, *range(len(names))]
    _keep_chosen_through_renames(project_id, rows, names)
    if st.session_state.get(_renamed_note_key(project_id)):
        st.warning(st.session_state[_renamed_note_key(project_id)])
    columns = st.columns(6)
    for n, (event, item) in enumerate(rows):
        with columns[n % len(columns)]:
            guess = guessed.get(item.id)
            model_says = (
                f" · model: {names[guess[0]]} ({guess[1]:.0%})" if guess and guess[0] < len(names) else ""
            )
            st.image(
                _data_url(project_id, item.row, item.path, 240),
                caption=common.as_typed(caption(item) + model_says),
                width="stretch",
            )
            tile = _tile_of(item.id, event.id)
            saved = options.index(event.class_index) if event.class_index in options else 0
            st.selectbox(
                f"by {common.as_typed(event.annotator)}",
                options,
                # A tile set in this run (`_set_tile`) is drawn on that value: no default then,
                # which Streamlit logs as a conflict, with a stack. Any other keeps its saved
                # answer as the default: Streamlit puts a tile back on it when the browser sends
                # a value no option has (a class name from before a rename).
                index=0 if tile in st.session_state.get(_SET_NOW, ()) else saved,
                key=tile,
                format_func=lambda i: ignored if i == IGNORED else names[i],
                on_change=_remember_correction,
                args=(project_id, (item.id, event.id), list(names), event.class_index),
            )
    st.session_state[_names_drawn_key(project_id)] = list(names)
    shown = [(item.id, event.id, event.class_index) for event, item in rows]
    st.button(
        "Save corrections",
        key=f"hist_save-{common.tag(shown, names)}",  # see common.tag
        type="primary",
        on_click=_correct,
        args=(project_id, shown, names),
    )


# Shared ---------------------------------------------------------------------------------------


def _auto_retrain(project_id: int) -> None:
    try:
        run_id = parts.maybe_auto_retrain(project_id)
    except Exception as error:  # noqa: BLE001 - labeling goes on; the Train page can start one
        st.session_state["train_message"] = f"Automatic retraining could not start: {error}"
        return
    if run_id is not None:
        st.session_state["train_message"] = f"Enough new labels: retraining started (run {run_id})."


def _edit_classes(change, success: str, clear: str) -> None:
    """Run `change(session)` in one committed transaction; show `success` and clear the input
    `clear`, or show why the change was refused (an empty or duplicate name)."""
    try:
        account.acting_user(admin=True)
    except account.NotAllowed as refused:
        st.session_state["last_message"] = ("error", str(refused))
        return
    Session = common.session_factory()

    def commit() -> None:
        with Session.begin() as session:
            change(session)

    try:
        db.retrying(commit)
        st.session_state["last_message"] = ("success", success)
        st.session_state[clear] = ""
    except ValueError as error:
        st.session_state["last_message"] = ("error", str(error))


def _twin_words(name: str, others: list[str]) -> str:
    """ "; it differs from 'star' only in case, ..." when it does (`queries.case_twin`), else ""."""
    twin = queries.case_twin(name.strip(), others)
    if twin is None:
        return ""
    return f"; it differs from {twin!r} only in case, so these are two classes (rename one if they are one)"


def _add_class(project_id: int) -> None:
    name = st.session_state.get("new_class", "")
    twin = _twin_words(name, common.class_names(project_id))
    _edit_classes(
        lambda session: queries.add_class(session, project_id, name),
        f"Added the class {name.strip()!r}{twin}.",
        "new_class",
    )


def _rename_choice(value) -> int | None:
    """The class index the rename selector holds: an int, or the label a browser still showing
    names from before a rename sends ("N: old name", which matches no option; N counts from 1)."""
    if isinstance(value, int):
        return value
    match = re.match(r"([1-9][0-9]{0,8}): ", str(value)) if value is not None else None
    return int(match.group(1)) - 1 if match else None


def _rename_option(i: int, names: list[str], keys: list[str | None]) -> str:
    """The rename selector's label of class i: "N: name (key K)", N counting from 1 (read back by
    `_rename_choice`)."""
    if i >= len(names):
        return str(i)
    key = keys[i] if i < len(keys) else None
    return f"{i + 1}: {names[i]}" + (f" (key {key.upper()})" if key else "")


def _rename_class(project_id: int) -> None:
    index = _rename_choice(st.session_state.get("rename_which", 0))
    name = st.session_state.get("rename_to", "")
    names = common.class_names(project_id)
    if index is None or not 0 <= index < len(names):
        st.session_state["last_message"] = ("error", "Choose the class to rename again.")
        return
    twin = _twin_words(name, [n for i, n in enumerate(names) if i != index])
    _edit_classes(
        lambda session: queries.rename_class(session, project_id, index, name),
        f"Renamed class {names[index]!r} to {name.strip()!r}{twin}.",
        "rename_to",
    )


def _training_status(project_id: int) -> None:
    """The sidebar's labels since the last run and what the trainer does now; while the database
    cannot be reached, one line (in Grid and History this reruns on its own, outside app.py's
    handler: a traceback with the database's host and port every 5 s)."""
    common.drawn_through_outage(
        _training_status_lines, project_id, lambda: st.caption("The database cannot be reached just now.")
    )


def _training_status_lines(project_id: int) -> None:
    with common.session_factory()() as session:
        since = parts.since_last_run_words(session, project_id)
        active = run_queries.active_runs(session, project_id)
        project = session.get(Project, project_id)
    every = int((project.settings or {}).get("auto_retrain_every", 0) or 0)
    parts.ensure_worker_for_active(active)
    auto = f" (retrains every {every})" if every else " (automatic retraining is off)"
    st.caption(f"{since}{auto}.")
    st.caption(parts.status_line(active))


def _sidebar(project_id: int, names: list[str]) -> None:
    Session = common.session_factory()
    with Session() as session:
        counts = parts.class_counts(session, project_id, names)
    # Each key in the one-image box redraws the page; the grid and the History can stay a while
    # without a run, and the status went stale there ("running" long after the run ended).
    idle_mode = st.session_state.get("label_mode", MODES[0]) != MODES[0]
    with st.sidebar:
        st.subheader("Labels per class")
        st.dataframe(counts, hide_index=True, width="stretch", height=min(400, 36 + 35 * len(counts)))
        st.fragment(run_every=STATUS_EVERY_S if idle_mode else None)(_training_status)(project_id)
        st.toggle(
            "Show file names",
            key="show_names",
            help="Off by default: a folder name can give the answer away.",
        )
        message = st.session_state.pop("train_message", None)
        if message:
            st.info(common.as_typed(message))


def _classes_panel(project_id: int, names: list[str]) -> None:
    if not common.is_admin():
        return
    keys = class_keys(project_id, names)
    with st.expander("Classes: keys, add or rename"):
        st.dataframe(
            {"key": [(k or "-").upper() for k in keys], "class": names}, hide_index=True, width="content"
        )
        add_col, rename_col = st.columns(2)
        with add_col:
            st.text_input("New class", key="new_class", placeholder="e.g. other")
            st.button("Add class", key="add_class", on_click=_add_class, args=(project_id,))
        with rename_col:
            # After a rename (by anyone) the browser would go on showing the old name and send it
            # with the next click, which matches no option: set the choice, so it shows the new one.
            which = _rename_choice(st.session_state.get("rename_which"))
            if _names_changed("rename_names", names) and which is not None and 0 <= which < len(names):
                st.session_state["rename_which"] = which
            st.selectbox(
                "Class",
                list(range(len(names))),
                key="rename_which",
                # With its key: "2: 1" alone (digits: class "1" second) read as key 2, or class 2.
                format_func=lambda i: _rename_option(i, names, keys),
            )
            st.text_input("New name", key="rename_to")
            st.button("Rename", key="rename_class", on_click=_rename_class, args=(project_id,))


def label_page() -> None:
    project = common.current_project()
    annotator = common.annotator()
    names = common.class_names(project.id)
    _sidebar(project.id, names)

    st.title(f"Label · {common.as_typed(project.name)}", anchor=False)
    mode = st.radio("Mode", MODES, key="label_mode", horizontal=True, label_visibility="collapsed")
    Session = common.session_factory()
    with Session() as session:
        n_answered = queries.label_count(session, project.id)
        n_labeled = n_answered - queries.ignored_count(session, project.id)  # "ignore" is no label
        n_total = queries.labelable_count(session, project.id)
        has_model = queries.latest_done_run_id(session, project.id) is not None
    ignored = f" + {n_answered - n_labeled} ignored" if n_answered > n_labeled else ""
    st.progress(
        min(1.0, n_answered / max(1, n_total)), text=f"{n_labeled} labeled{ignored} / {n_total} images"
    )
    # The notes go in a container that is always there: a note drawn in the page itself moved
    # everything below it down one place, and the browser drew the Classes panel anew, closed.
    notes = st.container()
    _saved_after_all(project.id)  # a grid accept cut short (app.py asks first; tests call this page alone)
    _corrected_after_all(project.id)  # and a History save
    kind, text = st.session_state.pop("last_message", (None, None))
    if kind:
        getattr(notes, kind)(common.as_typed(text))

    # The History's note on changes a rename undid is old news once the person looked elsewhere.
    for key in [str(k) for k in st.session_state if str(k).startswith(_RENAMED_NOTE)]:
        if mode != "History" or key != _renamed_note_key(project.id):
            st.session_state.pop(key, None)
    unsaved = unsaved_corrections(project.id)
    if unsaved and mode != "History":  # kept for the History (`_with_unsaved`): say they wait
        notes.info(f"{unsaved_words(unsaved)} Open History to save them.")
    with st.container():  # whatever a mode draws, the Classes panel after it keeps its place
        if mode == "Grid":
            _grid(project.id, names)
        elif mode == "History":
            _history(project.id, names)
        else:
            _one_image(project, names, annotator, has_model)
    _classes_panel(project.id, names)
