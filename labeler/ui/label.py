"""The Label page: the most informative unlabeled image, keys 1-9/0 to label, u undo, s skip."""

from __future__ import annotations

import streamlit as st

import db
from db import queries
from db.models import POOL, Item

from .. import projects
from . import common

KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]


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


def label_page() -> None:
    project = common.current_project()
    annotator = common.annotator()
    Session = common.session_factory()
    names = common.class_names(project.id)
    skipped = st.session_state.setdefault("skipped", set())

    with Session() as session:
        undone_id = st.session_state.pop("undone_item", None)
        picked = []
        if undone_id is not None:
            item = session.get(Item, undone_id)
            if item is not None:
                picked = [(item, None)]
        if not picked:
            picked = queries.next_items(session, project.id, k=1, exclude=skipped)
        n_labeled = queries.label_count(session, project.id)
        n_total = queries.count_items(session, project.id, POOL) + queries.count_items(
            session, project.id, "audit"
        )
        has_model = queries.latest_done_run_id(session, project.id) is not None

    st.title(f"Label · {project.name}")
    st.progress(min(1.0, n_labeled / max(1, n_total)), text=f"{n_labeled} labeled / {n_total} images")
    kind, text = st.session_state.pop("last_message", (None, None))
    if kind:
        getattr(st, kind)(text)

    if not picked:
        st.success("Every image is labeled. Train a model or export the data set.")
        return
    item, prediction = picked[0]
    left, right = st.columns([3, 2])
    with left:
        st.image(common.enlarge(projects.image(project.id, item.row)), caption=item.key)
    with right:
        if prediction is not None:
            guess = names[prediction.predicted] if prediction.predicted < len(names) else "?"
            st.metric("Model's guess", guess, f"{prediction.confidence:.0%} sure", delta_color="off")
        elif not has_model:
            st.caption("No model yet: images come in random order until the first training run.")
        st.caption("Keys: 1-9, 0 label · U undo · S skip")
        columns = st.columns(min(5, len(names)))
        for index, name in enumerate(names):
            key = KEYS[index] if index < len(KEYS) else None
            with columns[index % len(columns)]:
                st.button(
                    f"{name}",
                    key=f"class-{index}",
                    shortcut=key,
                    on_click=_label,
                    args=(project.id, item.id, index, annotator),
                    use_container_width=True,
                )
        undo_col, skip_col = st.columns(2)
        undo_col.button("Undo", key="undo", shortcut="U", on_click=_undo, args=(project.id, annotator))
        skip_col.button("Skip", key="skip", shortcut="S", on_click=_skip, args=(item.id,))
