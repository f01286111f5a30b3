"""The Label page: the most informative unlabeled image, keys 1-9/0 to label, u undo, s skip;
or a grid of a diverse batch with the model's guesses pre-filled, accepted as one page.

The sidebar shows the labels per class, the labels since the last run and what the trainer is
doing; the Classes panel adds and renames classes.
"""

from __future__ import annotations

import streamlit as st

import db
from db import queries
from db import runs as run_queries
from db.models import AUDIT, POOL, Item, Project

from .. import projects
from . import common, parts

KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]


def shortcut_keys(names: list[str]) -> list[str | None]:
    """Keys 1-9, 0 for the first ten classes, except when the classes are themselves digits
    (as in the digits and MNIST data sets): then each digit's own key labels it, since pressing
    3 for the class "2" is a mistake waiting to happen."""
    if names and len(names) <= 10 and all(len(n) == 1 and n.isdigit() for n in names) and len(set(names)) == len(names):
        return list(names)
    return [KEYS[i] if i < len(KEYS) else None for i in range(len(names))]


def _label(project_id: int, item_id: int, class_index: int, annotator: str) -> None:
    """Commit one answer before anything else is drawn; the page then shows the next image."""
    Session = common.session_factory()

    def commit() -> None:
        with Session.begin() as session:
            queries.add_label(session, item_id, class_index, annotator=annotator)

    try:
        db.retrying(commit)
        st.session_state["last_message"] = ("success", "Saved.")
    except Exception as error:  # noqa: BLE001 - shown to the user, nothing is lost
        st.session_state["last_message"] = ("error", f"The label was not saved: {error}")
        return
    _auto_retrain(project_id)


def _auto_retrain(project_id: int) -> None:
    try:
        run_id = parts.maybe_auto_retrain(project_id)
    except Exception as error:  # noqa: BLE001 - labeling goes on; the Train page can start one
        st.session_state["train_message"] = f"Automatic retraining could not start: {error}"
        return
    if run_id is not None:
        st.session_state["train_message"] = f"Enough new labels: retraining started (run {run_id})."


def _undo(project_id: int, annotator: str) -> None:
    Session = common.session_factory()

    def commit():
        with Session.begin() as session:
            event = queries.undo_last(session, project_id, annotator)
            return None if event is None else (event.item_id, event.class_index)

    undone = db.retrying(commit)
    if undone is None:
        st.session_state["last_message"] = ("info", "Nothing to undo.")
    else:
        st.session_state["last_message"] = ("info", "Undone: that image is back in the queue.")
        st.session_state.setdefault("skipped", set()).discard(undone[0])
        st.session_state["undone_item"] = undone[0]


def _skip(item_id: int) -> None:
    st.session_state.setdefault("skipped", set()).add(item_id)
    st.session_state["last_message"] = ("info", "Skipped: it comes back after the others.")


GRID_SIZE = 12
AUDIT_NOTE = (
    "Audit images (a random sample kept out of training) come without the model's guess, so "
    "your answers measure the model fairly; choose their labels yourself."
)


def _shown_prediction(item: Item, prediction):
    """The model's guess to show, or None for audit images: a shown guess would pull the answer
    towards it and make the audit accuracy look better than it is."""
    return None if item.split == AUDIT else prediction

MODES = ["One image", "Grid"]


def _accept_grid(project_id: int, item_ids: list[int], annotator: str) -> None:
    """Commit every answer of the grid page in one transaction (the pre-filled guesses that
    the person left alone count as confirmed; tiles set to "skip" stay unlabeled)."""
    answers = [(i, st.session_state.get(f"grid-{i}", -1)) for i in item_ids]
    answers = [(i, c) for i, c in answers if c is not None and c >= 0]
    skipped = [i for i in item_ids if i not in {a for a, _ in answers}]
    Session = common.session_factory()

    def commit() -> None:
        with Session.begin() as session:
            for item_id, class_index in answers:
                queries.add_label(session, item_id, class_index, annotator=annotator, kind="grid")

    try:
        db.retrying(commit)
    except Exception as error:  # noqa: BLE001 - shown to the user, nothing is lost
        st.session_state["last_message"] = ("error", f"The page was not saved: {error}")
        return
    st.session_state.setdefault("skipped", set()).update(skipped)
    for item_id in item_ids:
        st.session_state.pop(f"grid-{item_id}", None)
    st.session_state["last_message"] = ("success", f"Saved {len(answers)} labels.")
    _auto_retrain(project_id)


def _edit_classes(change, success: str, clear: str) -> None:
    """Run `change(session)` in one committed transaction; show `success` and clear the input
    `clear`, or show why the change was refused (an empty or duplicate name)."""
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


def _add_class(project_id: int) -> None:
    name = st.session_state.get("new_class", "")
    _edit_classes(
        lambda session: queries.add_class(session, project_id, name),
        f"Added the class {name.strip()!r}.",
        "new_class",
    )


def _rename_class(project_id: int) -> None:
    index = st.session_state.get("rename_which", 0)
    name = st.session_state.get("rename_to", "")
    _edit_classes(
        lambda session: queries.rename_class(session, project_id, index, name),
        f"Renamed class {index + 1} to {name.strip()!r}.",
        "rename_to",
    )


def _sidebar(project_id: int, names: list[str]) -> None:
    Session = common.session_factory()
    with Session() as session:
        counts = parts.class_counts(session, project_id, names)
        since = parts.labels_since_last_run(session, project_id)
        active = run_queries.active_runs(session, project_id)
        project = session.get(Project, project_id)
    every = int((project.settings or {}).get("auto_retrain_every", 0) or 0)
    parts.ensure_worker_for_active(active)
    with st.sidebar:
        st.subheader("Labels per class")
        st.dataframe(counts, hide_index=True, width="stretch", height=min(400, 36 + 35 * len(counts)))
        auto = f" (retrains every {every})" if every else " (automatic retraining is off)"
        st.caption(f"{since} new labels since the last run{auto}.")
        st.caption(parts.status_line(active))
        message = st.session_state.pop("train_message", None)
        if message:
            st.info(message)


def _classes_panel(project_id: int, names: list[str]) -> None:
    with st.expander("Classes: add or rename"):
        add_col, rename_col = st.columns(2)
        with add_col:
            st.text_input("New class", key="new_class", placeholder="e.g. other")
            st.button("Add class", key="add_class", on_click=_add_class, args=(project_id,))
        with rename_col:
            st.selectbox(
                "Class", list(range(len(names))), key="rename_which",
                format_func=lambda i: f"{i + 1}: {names[i]}" if i < len(names) else str(i),
            )
            st.text_input("New name", key="rename_to")
            st.button("Rename", key="rename_class", on_click=_rename_class, args=(project_id,))


def _grid(project_id: int, names: list[str], annotator: str, skipped: set[int]) -> None:
    Session = common.session_factory()
    with Session() as session:
        batch = queries.next_items(session, project_id, k=GRID_SIZE, exclude=skipped, annotator=common.claimant())
    if not batch:
        st.success("Every image is labeled. Train a model or export the data set.")
        return
    st.caption(
        "The model's guesses are filled in: correct the wrong ones (or set them to skip), "
        "then accept the page. Key A accepts."
    )
    options = [-1, *range(len(names))]
    columns = st.columns(4)
    if any(item.split == AUDIT for item, _ in batch):
        st.caption(AUDIT_NOTE)
    for n, (item, prediction) in enumerate(batch):
        prediction = _shown_prediction(item, prediction)
        guess = prediction.predicted if prediction is not None and prediction.predicted < len(names) else -1
        with columns[n % len(columns)]:
            st.image(common.enlarge(projects.image(project_id, item.row), 140), caption=item.key)
            sure = f" ({prediction.confidence:.0%})" if prediction is not None else ""
            st.selectbox(
                f"Label{sure}", options, index=options.index(guess), key=f"grid-{item.id}",
                format_func=lambda c: "skip" if c < 0 else names[c],
            )
    st.button(
        "Accept page", key="accept_grid", shortcut="A", type="primary",
        on_click=_accept_grid, args=(project_id, [item.id for item, _ in batch], annotator),
    )


def label_page() -> None:
    project = common.current_project()
    annotator = common.annotator()
    Session = common.session_factory()
    names = common.class_names(project.id)
    skipped = st.session_state.setdefault("skipped", set())
    _sidebar(project.id, names)

    st.title(f"Label · {project.name}")
    mode = st.radio("Mode", MODES, key="label_mode", horizontal=True, label_visibility="collapsed")

    with Session() as session:
        undone_id = st.session_state.pop("undone_item", None)
        picked = []
        if undone_id is not None:
            item = session.get(Item, undone_id)
            if item is not None:
                picked = [(item, None)]
        if not picked:
            picked = queries.next_items(session, project.id, k=1, exclude=skipped, annotator=common.claimant())
        n_labeled = queries.label_count(session, project.id)
        n_total = queries.count_items(session, project.id, POOL) + queries.count_items(
            session, project.id, "audit"
        )
        has_model = queries.latest_done_run_id(session, project.id) is not None

    st.progress(min(1.0, n_labeled / max(1, n_total)), text=f"{n_labeled} labeled / {n_total} images")
    kind, text = st.session_state.pop("last_message", (None, None))
    if kind:
        getattr(st, kind)(text)

    if mode == "Grid":
        _grid(project.id, names, annotator, skipped)
        st.button("Undo", key="undo", shortcut="U", on_click=_undo, args=(project.id, annotator))
        _classes_panel(project.id, names)
        return

    if not picked:
        st.success("Every image is labeled. Train a model or export the data set.")
        _classes_panel(project.id, names)
        return
    item, prediction = picked[0]
    prediction = _shown_prediction(item, prediction)
    left, right = st.columns([3, 2])
    with left:
        st.image(common.enlarge(projects.image(project.id, item.row)), caption=item.key)
    with right:
        if prediction is not None:
            guess = names[prediction.predicted] if prediction.predicted < len(names) else "?"
            st.metric("Model's guess", guess, f"{prediction.confidence:.0%} sure", delta_color="off", delta_arrow="off")
        elif item.split == AUDIT:
            st.caption(AUDIT_NOTE)
        elif not has_model:
            st.caption("No model yet: images come in random order until the first training run.")
        st.caption("Keys: the key shown on each class button labels · U undo · S skip")
        columns = st.columns(min(5, len(names)))
        keys = shortcut_keys(names)
        for index, name in enumerate(names):
            key = keys[index]
            with columns[index % len(columns)]:
                st.button(
                    common.as_typed(name),
                    key=f"class-{index}",
                    shortcut=key,
                    on_click=_label,
                    args=(project.id, item.id, index, annotator),
                    width="stretch",
                )
        undo_col, skip_col = st.columns(2)
        undo_col.button("Undo", key="undo", shortcut="U", on_click=_undo, args=(project.id, annotator))
        skip_col.button("Skip", key="skip", shortcut="S", on_click=_skip, args=(item.id,))
    _classes_panel(project.id, names)
