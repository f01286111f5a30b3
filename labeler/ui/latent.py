"""The Latent space page: every image's 2-D latent point from the newest finished run.

Coloured by the label, the model's prediction or its uncertainty (entropy); labeled images are
drawn as crosses. A lasso or box selection shows those images and can label them all at once
(`queries.add_labels`, kind "bulk"). Below, images the model generates: one row per class for
the conditional VAEs, samples of the generator for the GANs.

Big projects: the scatter is WebGL (`go.Scattergl`), so 70,000 points draw in well under a
second, and a finished run's predictions are read once per server process (they never change);
thumbnails are made only for a selection. Above `MAX_POINTS` a fixed random sample is drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy import select

import db
from db import queries
from db import runs as run_queries
from db.models import AUDIT, POOL, LabelClass, Run

from .. import projects
from . import common

MAX_POINTS = 100_000
MAX_THUMBNAILS = 48
THUMBNAILS_PER_ROW = 8
COLOUR_BY = {"label": "Label", "prediction": "Prediction", "uncertainty": "Uncertainty (entropy)"}


def points_frame(
    session, project_id: int, run_id: int, names: list[str], max_points: int = MAX_POINTS, seed: int = 0
) -> pd.DataFrame:
    """One row per shown item (pool and audit; the test split is never shown), with its label.

    Above `max_points` every labeled item is kept and the rest is a fixed random sample.
    """
    frame = _shown_predictions(session, run_id)
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


@st.cache_data(show_spinner=False, max_entries=4)
def _cached_predictions(url: str, run_id: int) -> pd.DataFrame:
    with common.session_factory()() as session:
        frame = run_queries.predictions_frame(session, run_id)
    return frame[frame["split"].isin([POOL, AUDIT])].reset_index(drop=True)


def _shown_predictions(session, run_id: int) -> pd.DataFrame:
    """The run's pool and audit predictions; inside the app read once per run and process (a
    finished run's predictions never change), elsewhere read with `session`."""
    from streamlit.runtime import exists

    if exists():
        from ..config import db_url

        return _cached_predictions(db_url(), run_id)
    frame = run_queries.predictions_frame(session, run_id)
    return frame[frame["split"].isin([POOL, AUDIT])].reset_index(drop=True)


# The categorical colours of plotly express, so the map looks as it did before WebGL.
PALETTE = [
    "#636efa",
    "#EF553B",
    "#00cc96",
    "#ab63fa",
    "#FFA15A",
    "#19d3f3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
]
UNLABELED_COLOUR = "#c8c8c8"


def scatter(frame: pd.DataFrame, colour: str, names: list[str]) -> go.Figure:
    """The latent map as WebGL traces: one per class (or one coloured by entropy; names escaped,
    since plotly reads HTML in them); labeled points are crosses. customdata holds each point's
    item id (read back by a selection) and the model's confidence."""
    # Numbers only, one typed array each, so 70,000 points cost no per-point Python work: the
    # hover names the image by its opaque id (as the thumbnails do) and its class by the trace.
    x, y = frame["x"].to_numpy(np.float32), frame["y"].to_numpy(np.float32)
    custom = np.stack(
        [frame["item_id"].to_numpy(np.float64), frame["confidence"].to_numpy(np.float64)], axis=1
    )
    labeled = frame["labeled"].to_numpy() == "labeled"

    def traces_of(mask: np.ndarray, name: str, marker: dict, legend: bool = True) -> list[dict]:
        """Unlabeled points as circles, labeled ones as crosses: one symbol per trace, since a
        per-point symbol array makes WebGL plotly draw every point on its slow path."""
        out = []
        for symbol, part in (("circle", mask & ~labeled), ("x", mask & labeled)):
            if not part.any():
                continue
            colour = marker.get("color")
            out.append(
                {
                    "type": "scattergl",
                    "x": x[part],
                    "y": y[part],
                    "mode": "markers",
                    "name": name,
                    "legendgroup": name,
                    "showlegend": legend and not out,
                    "customdata": custom[part],
                    "hovertemplate": "#%{customdata[0]}, confidence %{customdata[1]:.0%}<extra>%{fullData.name}</extra>",
                    "marker": {
                        "size": 6,
                        "opacity": 0.8,
                        "symbol": symbol,
                        **marker,
                        **({"color": colour[part]} if isinstance(colour, np.ndarray) else {}),
                        **({"showscale": False} if out and "colorscale" in marker else {}),
                    },
                }
            )
        return out

    traces = []
    if colour == "uncertainty":
        entropy = frame["entropy"].to_numpy(np.float32)
        marker = {
            "color": entropy,
            "colorscale": "Viridis",
            "cmin": float(entropy.min()) if len(entropy) else 0.0,
            "cmax": float(entropy.max()) if len(entropy) else 1.0,
            "colorbar": {"title": {"text": "entropy"}},
        }
        traces += traces_of(np.ones(len(frame), dtype=bool), "entropy", marker, legend=False)
    else:
        values = frame[colour].to_numpy()
        for k, name in enumerate([*names, "unlabeled"]):
            mask = values == name
            if mask.any():
                shade = UNLABELED_COLOUR if k == len(names) else PALETTE[k % len(PALETTE)]
                traces += traces_of(mask, common.for_chart(name), {"color": shade})
    # Built without plotly's per-element validation of every array: it alone took 1.3-1.8 s
    # for 60,000 points; the traces above are valid by construction.
    fig = go.Figure(data=traces, _validate=False)
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
        # A row of a 2-D typed array comes back as {"0": id, "1": confidence}; a list as a list.
        if isinstance(data, dict):
            data = data.get("0", data.get(0))
        elif isinstance(data, (list, tuple)):
            data = data[0]
        ids.append(int(data))
    return list(dict.fromkeys(ids))


class _Renamed(Exception):
    """The class chosen by index has another name now than when the page was drawn."""


def _bulk_label(project_id: int, item_ids: list[int], names: list[str]) -> None:
    """Label the selection in one transaction. Images that already have an answer (anyone's) are
    left alone unless the person ticked "relabel"; the message says how many. A bulk label is one
    undo step on the Label page and counts toward automatic retraining. `names` are the classes
    as the page showed them: the choice is an index, and after a rename it may mean another class,
    so then nothing is saved.

    `item_ids` are the images shown above the button that was clicked (the button is keyed by
    them, see `common.tag`); they are labeled only while the map, as the browser sent it with the
    click, still selects every one of them: a new lasso drawn just before the click, or a map
    redrawn without the selection, stores nothing."""
    from .. import answers
    from . import account, parts

    try:
        annotator = account.acting_user()["name"]  # callbacks run before app.py's login gate
    except account.NotAllowed as refused:
        st.session_state["latent_message"] = ("error", str(refused))
        return
    if not set(item_ids) <= set(selected_item_ids(st.session_state.get("latent"))):
        st.session_state["latent_message"] = (
            "error",
            "The selection changed after these images were shown, so nothing was saved; check them and click again.",
        )
        return
    class_index = st.session_state.get("bulk_class")
    relabel = bool(st.session_state.get("bulk_relabel", False))
    Session = common.session_factory()

    def commit():
        with Session.begin() as session:
            # Read (and on PostgreSQL lock) the chosen class's row in the labels' transaction, so
            # a rename cannot land between the check and the labels.
            now = session.scalar(
                select(LabelClass.name)
                .where(LabelClass.project_id == project_id, LabelClass.index == int(class_index))
                .with_for_update()
            )
            if now is None or int(class_index) >= len(names) or now != names[int(class_index)]:
                raise _Renamed()
            return queries.add_labels(
                session, item_ids, int(class_index), annotator=annotator, kind="bulk", relabel=relabel
            )

    try:
        events = db.retrying(commit)
    except _Renamed:
        st.session_state["latent_message"] = (
            "error",
            "A class was renamed after this page was drawn, so nothing was saved; check the class and label them again.",
        )
        return
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
        key=f"bulk_apply-{common.tag(sorted(int(i) for i in chosen.index))}",  # see common.tag
        type="primary",
        on_click=_bulk_label,
        args=(project_id, [int(i) for i in chosen.index], list(names)),
    )
