"""The Latent space page: every image's 2-D latent point from the newest finished run.

Coloured by the label, the model's prediction or its uncertainty (entropy); labeled images are
drawn as crosses. A lasso or box selection shows those images and can label them all at once
(`queries.add_labels`, kind "bulk"). Below, images the model generates: one row per class for
the conditional VAEs, samples of the generator for the GANs. Big projects are subsampled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

import db
from db import queries
from db import runs as run_queries
from db.models import AUDIT, POOL, Run

from .. import projects
from . import common

MAX_POINTS = 5000
MAX_THUMBNAILS = 48
THUMBNAILS_PER_ROW = 8
COLOUR_BY = {"label": "Label", "prediction": "Prediction", "uncertainty": "Uncertainty (entropy)"}


def points_frame(
    session, project_id: int, run_id: int, names: list[str], max_points: int = MAX_POINTS, seed: int = 0
) -> pd.DataFrame:
    """One row per shown item (pool and audit; the test split is never shown), with its label.

    Above `max_points` every labeled item is kept and the rest is a fixed random sample.
    """
    frame = run_queries.predictions_frame(session, run_id)
    frame = frame[frame["split"].isin([POOL, AUDIT])].reset_index(drop=True)
    labels = queries.current_labels(session, project_id)
    frame["label_index"] = frame["item_id"].map(labels)
    if len(frame) > max_points:
        labeled = frame[frame["label_index"].notna()]
        rest = frame[frame["label_index"].isna()]
        keep = max(0, max_points - len(labeled))
        rest = rest.sample(n=min(keep, len(rest)), random_state=seed)
        frame = pd.concat([labeled, rest]).sort_values("row").reset_index(drop=True)

    def name(index) -> str:
        return names[int(index)] if pd.notna(index) and int(index) < len(names) else "unlabeled"

    frame["label"] = frame["label_index"].map(name)
    frame["prediction"] = frame["predicted"].map(name)
    frame["labeled"] = np.where(frame["label_index"].notna(), "labeled", "unlabeled")
    return frame


def scatter(frame: pd.DataFrame, colour: str, names: list[str]):
    # Plotly reads HTML in labels and hovers: the names go in escaped, to show as typed.
    frame = frame.assign(**{c: frame[c].map(common.for_chart) for c in ("label", "prediction", "key")})
    names = [common.for_chart(n) for n in names]
    common_args = {
        "x": "x",
        "y": "y",
        "symbol": "labeled",
        "symbol_map": {"labeled": "x", "unlabeled": "circle"},
        "custom_data": ["item_id"],
        "hover_name": "key",
        "hover_data": {"x": False, "y": False, "labeled": False, "prediction": True, "confidence": ":.0%"},
    }
    if colour == "uncertainty":
        fig = px.scatter(frame, color="entropy", color_continuous_scale="Viridis", **common_args)
    else:
        order = {colour: [*names, "unlabeled"], "labeled": ["labeled", "unlabeled"]}
        fig = px.scatter(
            frame,
            color=colour,
            category_orders=order,
            color_discrete_map={"unlabeled": "#c8c8c8"},
            **common_args,
        )
        # One legend entry per class: the marker shape already says labeled (x) or not.
        seen = set()
        for trace in fig.data:
            name = trace.name.split(",")[0]
            trace.update(name=name, legendgroup=name, showlegend=name not in seen)
            seen.add(name)
    fig.update_traces(marker={"size": 6, "opacity": 0.8})
    fig.update_layout(
        height=560, dragmode="lasso", margin={"l": 10, "r": 10, "t": 20, "b": 10}, legend_title=None
    )
    return fig


def selected_item_ids(event) -> list[int]:
    """Item ids of the points in a plotly selection event (customdata holds the item id)."""
    if not event:
        return []
    selection = event.get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})
    ids = []
    for point in selection.get("points", []) or []:
        data = point.get("customdata")
        if data is None:
            continue
        ids.append(int(data[0] if isinstance(data, (list, tuple)) else data))
    return list(dict.fromkeys(ids))


def _bulk_label(project_id: int, item_ids: list[int]) -> None:
    """Label the selection in one transaction. Images that already have an answer (anyone's) are
    left alone unless the person ticked "relabel"; the message says how many. A bulk label is one
    undo step on the Label page and counts toward automatic retraining."""
    from .. import answers
    from . import account, parts

    try:
        annotator = account.acting_user()["name"]  # callbacks run before app.py's login gate
    except account.NotAllowed as refused:
        st.session_state["latent_message"] = ("error", str(refused))
        return
    class_index = st.session_state.get("bulk_class")
    relabel = bool(st.session_state.get("bulk_relabel", False))
    Session = common.session_factory()

    def commit():
        with Session.begin() as session:
            return queries.add_labels(
                session, item_ids, int(class_index), annotator=annotator, kind="bulk", relabel=relabel
            )

    try:
        events = db.retrying(commit)
    except Exception as error:  # noqa: BLE001 - shown as one sentence
        st.session_state["latent_message"] = ("error", f"The labels were not saved: {error}")
        return
    st.session_state.setdefault(f"ledger-{project_id}", answers.Ledger()).record(events)
    left = len(item_ids) - len(events)
    text = f"Labeled {len(events)} images at once."
    if left:
        text += f' {left} already had a label and were left as they are (tick "relabel" to change them).'
    st.session_state["latent_message"] = ("success", text)
    try:
        parts.maybe_auto_retrain(project_id)
    except Exception as error:  # noqa: BLE001 - labeling goes on; the Train page can start a run
        st.session_state["latent_message"] = (
            "warning",
            f"{text} Automatic retraining could not start: {error}",
        )


@st.cache_data(show_spinner="Generating images...", max_entries=8)
def generated_images(checkpoint: str, mtime: float, n: int = 8) -> np.ndarray | None:
    """(K or 1, n, C, H, W) in [0, 1] from the run's model, or None when it cannot generate."""
    from ..train import load_model  # a checkpoint of another version: one CheckpointError sentence

    return load_model(checkpoint, device="cpu").sample_images(n, seed=0)


def to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    array = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _samples_panel(run: Run, names: list[str]) -> None:
    try:
        checkpoint = projects.local_file(run.checkpoint)
        if checkpoint is None:
            return
        samples = generated_images(str(checkpoint), checkpoint.stat().st_mtime)
    except Exception as error:  # noqa: BLE001 - a missing panel must not break the page
        st.caption(common.as_typed(f"Could not generate images from run {run.id}: {error}"))
        return
    if samples is None:
        st.caption(f"The {run.model} model does not generate images.")
        return
    conditional = samples.shape[0] > 1
    st.subheader("What the model generates, per class" if conditional else "Images the model generates")
    for k, row in enumerate(samples):
        if conditional:
            st.text(names[k] if k < len(names) else str(k))
        st.image([common.enlarge(to_display(img), 84) for img in row])


def latent_page() -> None:
    project = common.current_project()
    names = common.class_names(project.id)
    annotator = common.annotator()
    Session = common.session_factory()
    st.title(f"Latent space · {common.as_typed(project.name)}")
    with Session() as session:
        run = run_queries.latest_done_run(session, project.id)
        if run is None:
            st.info("No finished run yet: train a model (Train page) to see its latent space.")
            return
        frame = points_frame(session, project.id, run.id, names)
    kind, text = st.session_state.pop("latent_message", (None, None))
    if kind:
        getattr(st, kind)(common.as_typed(text))

    colour = st.radio(
        "Colour by",
        list(COLOUR_BY),
        format_func=COLOUR_BY.get,
        horizontal=True,
        key="latent_colour",
    )
    st.caption(
        f"Run {run.id} ({run.model}): {len(frame)} images, 2-D projection of the latent codes. "
        "Draw a lasso or a box to select images; crosses are labeled."
    )
    event = st.plotly_chart(
        scatter(frame, colour, names),
        key="latent",
        on_select="rerun",
        selection_mode=("lasso", "box"),
    )
    ids = selected_item_ids(event)
    if ids:
        _selection_panel(project.id, ids, frame, names, annotator)
    _samples_panel(run, names)


def _selection_panel(
    project_id: int, ids: list[int], frame: pd.DataFrame, names: list[str], annotator: str
) -> None:
    chosen = frame.set_index("item_id").loc[[i for i in ids if i in set(frame["item_id"])]]
    st.subheader(f"{len(chosen)} selected")
    shown = chosen.head(MAX_THUMBNAILS)
    columns = st.columns(THUMBNAILS_PER_ROW)
    for n, (item_id, row, label) in enumerate(zip(shown.index, shown["row"], shown["label"])):
        with columns[n % THUMBNAILS_PER_ROW]:
            # An opaque id, as on the Label page: a file or folder name could give the class away.
            st.image(
                common.enlarge(projects.image(project_id, int(row)), 96),
                width="stretch",
                caption=common.as_typed(f"#{item_id}: {'-' if label == 'unlabeled' else label}"),
            )
    if len(chosen) > MAX_THUMBNAILS:
        st.caption(f"Showing {MAX_THUMBNAILS} of {len(chosen)}.")
    left, right = st.columns([2, 1])
    left.selectbox(
        "Give them all the label", list(range(len(names))), format_func=lambda i: names[i], key="bulk_class"
    )
    left.checkbox("Relabel images that already have a label", key="bulk_relabel")
    right.button(
        f"Label {len(chosen)} images",
        key="bulk_apply",
        type="primary",
        on_click=_bulk_label,
        args=(project_id, [int(i) for i in chosen.index]),
    )
