"""The Latent space page: every pool image's 2-D latent point from the newest finished run (audit
images are left off: they are answered without the model's guess).

Coloured by the label, the model's prediction or its uncertainty (entropy); labeled images are
drawn as crosses. A lasso or box selection shows those images and can label them all at once
(`queries.add_labels`, kind "bulk"). Below, images the model generates: one row per class for
the conditional VAEs, samples of the generator for the GANs.

Big projects: above `SAMPLE_POINTS` every point is drawn into one PNG under the axes and a
bounded sample on top as plotly points (for the hover); a lasso or a box selects every point
inside it, computed here from the drawn area, so bulk labels cover points outside the sample
too. A finished run's predictions are read once per server process (they never change);
thumbnails are made only for a selection. Above `MAX_POINTS` a fixed random sample is shown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy import select

import db
from db import queries
from db import runs as run_queries
from db.models import AUDIT, DONE, IGNORED, POOL, LabelClass, Run

from .. import projects
from . import common

MAX_POINTS = 100_000
# Above this many points the map is one PNG of all of them, with this many drawn on top as plotly
# points for the hover (see `scatter`); the PNG is about twice the plot's size on a wide page.
SAMPLE_POINTS = 2_000
RASTER_SIZE = (1800, 1040)
MAX_THUMBNAILS = 48
THUMBNAILS_PER_ROW = 8
COLOUR_BY = {"label": "Label", "prediction": "Prediction", "uncertainty": "Uncertainty (entropy)"}


def points_frame(
    session, project_id: int, run_id: int, names: list[str], max_points: int = MAX_POINTS, seed: int = 0
) -> pd.DataFrame:
    """One row per shown item (the pool: the test split is never shown, nor the audit set, whose
    images are answered without the model's guess), with its label.

    Above `max_points` every labeled item is kept and the rest is a fixed random sample.
    """
    frame = _shown_predictions(session, run_id)
    answers = queries.current_answers(session, project_id)
    frame["label_index"] = frame["item_id"].map({item: k for item, (_, k) in answers.items()})
    # The answer each image has as the page is drawn ("ignore" ones too), which a relabel checks.
    frame["answer_event"] = frame["item_id"].map({item: event for item, (event, _) in answers.items()})
    frame["ignored"] = frame["label_index"] == IGNORED
    frame.loc[frame["ignored"], "label_index"] = np.nan  # in no class: drawn as unlabeled
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
    frame["answer"] = np.where(
        frame["ignored"], "ignored", np.where(frame["label_index"].notna(), frame["label"], "-")
    )
    return frame


@st.cache_data(show_spinner=False, max_entries=4)
def _cached_predictions(url: str, run_id: int) -> pd.DataFrame:
    with common.session_factory()() as session:
        frame = run_queries.predictions_frame(session, run_id)
    return frame[frame["split"] == POOL].reset_index(drop=True)


def _shown_predictions(session, run_id: int) -> pd.DataFrame:
    """The run's pool predictions; inside the app read once per run and process (a finished
    run's predictions never change), elsewhere read with `session`. Audit images are left off
    the map: it shows the model's guesses, and a cluster labeled at once is not the independent
    sample the audit accuracy needs (an exploratory session bulk-labeled 5 audit images)."""
    from streamlit.runtime import exists

    if exists():
        from ..config import db_url

        return _cached_predictions(db_url(), run_id)
    frame = run_queries.predictions_frame(session, run_id)
    return frame[frame["split"] == POOL].reset_index(drop=True)


# The categorical colours of plotly express, so the map looks as it did before WebGL.
PALETTE = list(plotly.colors.qualitative.Plotly)
UNLABELED_COLOUR = "#c8c8c8"
VIRIDIS = list(plotly.colors.sequential.Viridis)  # the scale the colour bar shows


def sample_rows(frame: pd.DataFrame, n: int = SAMPLE_POINTS, seed: int = 0) -> np.ndarray:
    """Positions of the rows drawn as interactive points: all when there are at most `n`, else the
    labeled ones first (as many as fit) and a fixed random sample of the rest, in frame order."""
    if len(frame) <= n:
        return np.arange(len(frame))
    rng = np.random.default_rng(seed)
    labeled = np.flatnonzero(frame["labeled"].to_numpy() == "labeled")
    rest = np.flatnonzero(frame["labeled"].to_numpy() != "labeled")
    if len(labeled) >= n:
        return np.sort(rng.choice(labeled, size=n, replace=False))
    return np.sort(np.concatenate([labeled, rng.choice(rest, size=n - len(labeled), replace=False)]))


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


ENTROPY_SHADES = 64


def point_colours(frame: pd.DataFrame, colour: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(palette (M, 3) uint8, each point's row in it (N,)): the colours the legend or colour bar
    shows; entropy in `ENTROPY_SHADES` steps of plotly's Viridis scale, so the PNG stays small."""
    if colour == "uncertainty":
        entropy = frame["entropy"].to_numpy(np.float64)
        low, high = (float(entropy.min()), float(entropy.max())) if len(entropy) else (0.0, 1.0)
        t = np.clip((entropy - low) / (high - low), 0, 1) if high > low else np.zeros(len(entropy))
        stops = np.array([_hex_rgb(c) for c in VIRIDIS], dtype=np.float64)
        steps = np.linspace(0, 1, ENTROPY_SHADES)
        grid = np.linspace(0, 1, len(stops))
        palette = np.stack([np.interp(steps, grid, stops[:, c]) for c in range(3)], axis=1)
        return palette.round().astype(np.uint8), np.round(t * (ENTROPY_SHADES - 1)).astype(np.int64)
    # Class k has PALETTE[k % 10], as in the traces; the last row is for unlabeled points.
    palette = np.array([_hex_rgb(c) for c in [*PALETTE, UNLABELED_COLOUR]], dtype=np.uint8)
    first = {}
    for k, name in enumerate(names):
        first.setdefault(name, k)
    index = frame[colour].map(first).fillna(-1).to_numpy(np.int64)
    return palette, np.where(index < 0, len(PALETTE), index % len(PALETTE))


# Offsets of a filled disc (unlabeled points) and of an x (labeled ones), in raster pixels: about
# the size of the WebGL markers once the PNG is scaled to the plot.
_DISC = [(dx, dy) for dx in range(-5, 6) for dy in range(-5, 6) if dx * dx + dy * dy <= 22]
_CROSS = sorted({(d + t, s * d) for d in range(-6, 7) for s in (1, -1) for t in (-1, 0, 1)})


def raster_png(
    frame: pd.DataFrame,
    colours: tuple[np.ndarray, np.ndarray],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    size: tuple[int, int] = RASTER_SIZE,
) -> bytes:
    """Every point drawn into one PNG (white where there is none) covering x_range by y_range:
    unlabeled points as discs, labeled ones as crosses, at the map's 80 % opacity on white."""
    from io import BytesIO

    from PIL import Image

    width, height = size
    x = frame["x"].to_numpy(np.float64)
    y = frame["y"].to_numpy(np.float64)
    px = np.round((x - x_range[0]) / (x_range[1] - x_range[0]) * (width - 1)).astype(np.int64)
    py = np.round((y_range[1] - y) / (y_range[1] - y_range[0]) * (height - 1)).astype(np.int64)
    palette, codes = colours
    # A palette image (white last): one byte a pixel, and a PNG a few times smaller.
    shades = np.vstack([0.8 * palette.astype(np.float64) + 0.2 * 255, [[255, 255, 255]]]).round()
    image = np.full((height, width), len(palette), dtype=np.uint8)
    labeled = frame["labeled"].to_numpy() == "labeled"
    for mask, stamp in ((~labeled, _DISC), (labeled, _CROSS)):  # crosses on top
        mx, my, colour = px[mask], py[mask], codes[mask].astype(np.uint8)
        for dx, dy in stamp:
            cx, cy = mx + dx, my + dy
            inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            image[cy[inside], cx[inside]] = colour[inside]
    buffer = BytesIO()
    picture = Image.fromarray(image, mode="P")
    picture.putpalette(shades.astype(np.uint8).ravel().tolist())
    picture.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def map_ranges(frame: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    """The axes' ranges: every point inside, with a margin of 4 % on each side."""

    def padded(values: np.ndarray) -> tuple[float, float]:
        low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        pad = 0.04 * (high - low) if high > low else 1.0
        return low - pad, high + pad

    return padded(frame["x"].to_numpy(np.float64)), padded(frame["y"].to_numpy(np.float64))


def scatter(frame: pd.DataFrame, colour: str, names: list[str], sample: int = SAMPLE_POINTS) -> go.Figure:
    """The latent map. Up to `sample` points: SVG traces, one per class (or one coloured by
    entropy; names escaped, since plotly reads HTML in them); labeled points are crosses;
    customdata holds each point's item id and the model's confidence, for the hover.

    More points: all of them are drawn into one PNG under the axes (`raster_png`) and only
    `sample_rows` of them as points on top, for the hover. Measured in headless Chromium without
    a GPU: 60,000 WebGL points took 2-3.5 s to show, a PNG with 5,000 WebGL points 1.6-2.2 s
    (the WebGL context alone costs about 0.6 s), with 2,000 SVG points 0.6-0.9 s. A lasso or a
    box still selects every point inside it, drawn as a trace or not: `selected_item_ids` reads
    the drawn area, not the points plotly marks."""
    rows = sample_rows(frame, sample)
    raster = len(rows) < len(frame)
    colours = point_colours(frame, colour, names) if raster else None
    part_frame = frame.iloc[rows]
    # Numbers only, one typed array each, so many points cost no per-point Python work: the
    # hover names the image by its opaque id (as the thumbnails do) and its class by the trace.
    x, y = part_frame["x"].to_numpy(np.float32), part_frame["y"].to_numpy(np.float32)
    custom = np.stack(
        [part_frame["item_id"].to_numpy(np.float64), part_frame["confidence"].to_numpy(np.float64)], axis=1
    )
    labeled = part_frame["labeled"].to_numpy() == "labeled"

    def traces_of(mask: np.ndarray, name: str, marker: dict, legend: bool = True) -> list[dict]:
        """Unlabeled points as circles, labeled ones as crosses, one symbol per trace."""
        out = []
        for symbol, part in (("circle", mask & ~labeled), ("x", mask & labeled)):
            if not part.any():
                continue
            colour = marker.get("color")
            out.append(
                {
                    "type": "scatter",
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
        everything = frame["entropy"].to_numpy(np.float32)
        marker = {
            "color": part_frame["entropy"].to_numpy(np.float32),
            "colorscale": "Viridis",
            "cmin": float(everything.min()) if len(everything) else 0.0,
            "cmax": float(everything.max()) if len(everything) else 1.0,
            "colorbar": {"title": {"text": "entropy"}},
        }
        traces += traces_of(np.ones(len(part_frame), dtype=bool), "entropy", marker, legend=False)
    else:
        values = part_frame[colour].to_numpy()
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
    if raster:
        import base64

        x_range, y_range = map_ranges(frame)
        png = raster_png(frame, colours, x_range, y_range)
        fig.update_layout(
            images=[
                {
                    "source": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                    "xref": "x",
                    "yref": "y",
                    "x": x_range[0],
                    "y": y_range[1],
                    "sizex": x_range[1] - x_range[0],
                    "sizey": y_range[1] - y_range[0],
                    "sizing": "stretch",
                    "layer": "below",
                }
            ],
            xaxis={"range": list(x_range), "showgrid": False, "zeroline": False},
            yaxis={"range": list(y_range), "showgrid": False, "zeroline": False},
            # Hiding a class would hide only its drawn sample, and a lasso selects every point
            # inside anyway: the legend names the colours and is not a filter here.
            legend={"itemclick": False, "itemdoubleclick": False},
        )
    return fig


def inside_polygon(x: np.ndarray, y: np.ndarray, px: list[float], py: list[float]) -> np.ndarray:
    """(N,) bool: the points inside the closed polygon (px, py), by the even-odd rule (ray
    casting), the rule plotly's lasso uses."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    inside = np.zeros(len(x), dtype=bool)
    n = len(px)
    if n < 3:
        return inside
    for i in range(n):
        x1, y1, x2, y2 = px[i], py[i], px[(i + 1) % n], py[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < at)
    return inside


def _selection_of(event) -> dict:
    if not event:
        return {}
    return event.get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})


def selected_item_ids(event, frame: pd.DataFrame | None = None) -> list[int]:
    """Item ids of a plotly selection event. With `frame` and a drawn box or lasso: every point
    of `frame` inside them (also those the map shows only in its image), in frame order; else
    the points plotly marked (customdata holds the item id)."""
    selection = _selection_of(event) or {}
    boxes, lassos = selection.get("box") or [], selection.get("lasso") or []
    if frame is not None and (boxes or lassos):
        x, y = frame["x"].to_numpy(np.float64), frame["y"].to_numpy(np.float64)
        chosen = np.zeros(len(frame), dtype=bool)
        for box in boxes:
            bx, by = [float(v) for v in box.get("x", [])], [float(v) for v in box.get("y", [])]
            if len(bx) == 2 and len(by) == 2:
                chosen |= (x >= min(bx)) & (x <= max(bx)) & (y >= min(by)) & (y <= max(by))
        for lasso in lassos:
            chosen |= inside_polygon(
                x, y, [float(v) for v in lasso.get("x", [])], [float(v) for v in lasso.get("y", [])]
            )
        return [int(i) for i in frame["item_id"].to_numpy()[chosen]]
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


def _chosen_key(project_id: int) -> str:
    """Session key of the class name last chosen for a bulk label in this project (personal:
    cleared at login and logout)."""
    return f"bulk-chosen-{project_id}"


def _bulk_key(names: list[str]) -> str:
    """The bulk label's class selector, one per list of class names. A selectbox's value travels
    as the name it shows: after a class was renamed, the browser's old name matched no option and
    Streamlit put the selector back on the first class, silently, ready to label the whole
    selection (with "relabel", over other people's answers) as that class. A new list of names
    makes a new selector, which starts on the class chosen before (`_chosen_key`) while that
    name exists, and otherwise on no class, saying to choose again."""
    return f"bulk_class-{common.tag(list(names))[:8]}"


def _remember_bulk_class(project_id: int, names: list[str]) -> None:
    value = st.session_state.get(_bulk_key(names))
    if isinstance(value, int) and 0 <= value < len(names):
        st.session_state[_chosen_key(project_id)] = names[value]


@common.survives_outage
def _bulk_label(
    project_id: int, item_ids: list[int], names: list[str], frame: pd.DataFrame | None = None
) -> None:
    """Label the selection in one transaction. Images that already have an answer (anyone's) are
    left alone unless the person ticked "relabel"; then an answer is replaced only while it is
    still the one the page showed (in `frame`; "ignore" answers are shown too), and one that has
    this class already is left its giver's; the message says how many of each, and how many
    answers of other people were replaced. A bulk label is one
    undo step on the Label page and counts toward automatic retraining. `names` are the classes
    as the page showed them: the choice is an index, and after a rename it may mean another class,
    so then nothing is saved.

    `item_ids` are the images shown above the button that was clicked (the button is keyed by
    them, see `common.tag`); they are labeled only while the map, as the browser sent it with the
    click, still selects every one of them: a new lasso drawn just before the click, or a map
    redrawn without the selection, stores nothing. `frame`: the map's points, as the page that
    drew the button had them (a box or lasso selects every point inside, drawn or not)."""
    from . import account, parts

    try:
        annotator = account.acting_user()["name"]  # callbacks run before app.py's login gate
    except account.NotAllowed as refused:
        st.session_state["latent_message"] = ("error", str(refused))
        return
    if not set(item_ids) <= set(selected_item_ids(st.session_state.get("latent"), frame)):
        st.session_state["latent_message"] = (
            "error",
            "The selection changed after these images were shown, so nothing was saved; check them and click again.",
        )
        return
    class_index = st.session_state.get(_bulk_key(names))
    if class_index is None:  # the selector of these names was not drawn with the button
        st.session_state["latent_message"] = ("error", "Choose the label first, then click again.")
        return
    relabel = bool(st.session_state.get("bulk_relabel", False))
    # The answers the page showed: a relabel replaces only those (`queries.relabel_as_shown`).
    shown = (
        frame.set_index("item_id")["answer_event"].reindex(item_ids).to_dict()
        if relabel and frame is not None and "answer_event" in frame
        else None
    )
    outcome: dict[str, int] = {}
    Session = common.session_factory()
    ledger = common.ledger(project_id)  # before the commit: see below

    def commit():
        with Session.begin() as session:
            # Read (and lock) the chosen class's row in the labels' transaction, so a rename
            # cannot land between the check and the labels; on SQLite the lock is the database's.
            queries.lock_for_write(session)
            now = session.scalar(
                select(LabelClass.name)
                .where(LabelClass.project_id == project_id, LabelClass.index == int(class_index))
                .with_for_update()
            )
            if now is None or int(class_index) >= len(names) or now != names[int(class_index)]:
                raise _Renamed()
            if shown is None:  # no relabel (or no page to check against): no answer is replaced
                return queries.add_labels(
                    session, item_ids, int(class_index), annotator=annotator, kind="bulk"
                )
            outcome.clear()  # a retried transaction counts afresh
            before = {i: None if pd.isna(shown.get(i)) else int(shown.get(i)) for i in item_ids}
            events, done = queries.label_many(session, item_ids, int(class_index), annotator, "bulk", before)
            for what, found in done.values():
                if what == queries.REPLACED and found.annotator != annotator:
                    what = "others"
                outcome[what] = outcome.get(what, 0) + 1
            return events

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
    # On the undo list at once, before any look at the session state, where a rerun (a click just
    # after this one) stops the callback: the grid's U then took back the page or bulk label before.
    ledger.record(events)
    st.session_state.pop(_frame_key(project_id), None)  # the map shows the new labels (`_map_frame`)
    text = f"Labeled {len(events)} {common.by_count(len(events), 'image', 'images')} at once."
    if outcome:
        text += _relabel_report(outcome)
    elif left := len(item_ids) - len(events):
        had = common.by_count(
            left, "already had a label and was left as it is", "already had a label and were left as they are"
        )
        text += f' {left} {had} (tick "relabel" to change them).'
    st.session_state["latent_message"] = ("success", text)
    try:
        parts.maybe_auto_retrain(project_id)
    except Exception as error:  # noqa: BLE001 - labeling goes on; the Train page can start a run
        st.session_state["latent_message"] = (
            "warning",
            f"{text} Automatic retraining could not start: {error}",
        )


def _relabel_report(outcome: dict[str, int]) -> str:
    """What a relabel did, beyond the count labeled (`_bulk_label`)."""
    replaced, others = outcome.get(queries.REPLACED, 0), outcome.get("others", 0)
    parts = []
    if replaced + others:
        parts.append(
            f" {replaced + others} of them replaced an earlier answer"
            + (f", {others} of those given by someone else" if others else "")
            + " (Undo last page on the Label page takes them all back)."
        )
    if same := outcome.get(queries.SAME, 0):
        left = common.by_count(same, "was left as it is", "were left as they are")
        parts.append(f" {same} had this label already and {left}.")
    if changed := outcome.get(queries.CHANGED, 0):
        were, left = (
            common.by_count(changed, "was", "were"),
            common.by_count(changed, "was left as it is", "were left as they are"),
        )
        parts.append(
            f" {changed} {were} answered or changed after this page was drawn and {left};"
            " check and label again if needed."
        )
    return "".join(parts)


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
        newest = run_queries.latest_done_run(session, project.id)
        if newest is None:
            st.info("No finished run yet: train a model (Train page) to see its latent space.")
            return
        run = _map_run(session, project.id, newest)
        frame = _map_frame(session, project.id, run.id, names)
        n_audit = queries.count_items(session, project.id, AUDIT)
    kind, text = st.session_state.pop("latent_message", (None, None))
    if kind:
        getattr(st, kind)(common.as_typed(text))
    if run.id != newest.id:
        note, show = st.columns([4, 1])
        note.info(f"Run {newest.id} has finished: the map stays on run {run.id} while you have a selection.")
        show.button(f"Show run {newest.id}", key="latent_newest", on_click=_pin, args=(project.id, newest.id))

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
        + (
            f" The {n_audit} audit {common.by_count(n_audit, 'image is', 'images are')} not on the map: "
            "they are answered on the Label page, without the model's guess, so the accuracy "
            "measured on them stays fair."
            if n_audit
            else ""
        )
    )
    event = st.plotly_chart(
        scatter(frame, colour, names),
        key="latent",
        on_select="rerun",
        selection_mode=("lasso", "box"),
    )
    ids = selected_item_ids(event, frame)
    if ids:
        _selection_panel(project.id, ids, frame, names, annotator)
    _samples_panel(run, names)


def _pin_key(project_id: int) -> str:
    return f"latent-run-{project_id}"


def _pin(project_id: int, run_id: int) -> None:
    st.session_state[_pin_key(project_id)] = run_id


def _map_run(session, project_id: int, newest: Run) -> Run:
    """The run whose map the page shows: the newest, but while something is selected the one the
    selection was drawn on (a run finishing under it replaced the map, and the selection, the
    thumbnails and the chosen class were gone without a word; retraining every 10 labels, twice
    in an exploratory session); the page then offers the newer one."""
    pinned = st.session_state.get(_pin_key(project_id))
    selecting = bool(_has_selection(st.session_state.get("latent")))
    if pinned is not None and pinned != newest.id and selecting:
        run = session.get(Run, pinned)
        if run is not None and run.project_id == project_id and run.status == DONE:
            return run
    _pin(project_id, newest.id)
    return newest


def _frame_key(project_id: int) -> str:
    return f"latent-frame-{project_id}"


def _map_frame(session, project_id: int, run_id: int, names: list[str]) -> pd.DataFrame:
    """The map's points: read anew on every page run, but while something is selected the ones
    the selection was drawn on. Streamlit tells a chart by its whole figure, and labeled points
    are crosses, so a label given anywhere, by anyone, made a new chart: the selection, its
    thumbnails and the chosen class vanished at the next click (an exploratory session, 4 of 4
    while another person labeled). A bulk label checks the answers the map showed (`_bulk_label`),
    and then lets the map be read anew."""
    kept = st.session_state.get(_frame_key(project_id))
    if kept is not None and kept[0] == run_id and _has_selection(st.session_state.get("latent")):
        return kept[1]
    frame = points_frame(session, project_id, run_id, names)
    st.session_state[_frame_key(project_id)] = (run_id, frame)
    return frame


def _has_selection(event) -> bool:
    selection = _selection_of(event) or {}
    return any(selection.get(part) for part in ("points", "box", "lasso"))


def _selection_panel(
    project_id: int, ids: list[int], frame: pd.DataFrame, names: list[str], annotator: str
) -> None:
    shown_ids = set(frame["item_id"])  # once: a lasso over a big map selects thousands
    chosen = frame.set_index("item_id").loc[[i for i in ids if i in shown_ids]]
    st.subheader(f"{len(chosen)} selected")
    shown = chosen.head(MAX_THUMBNAILS)
    columns = st.columns(THUMBNAILS_PER_ROW)
    for n, (item_id, row, answer) in enumerate(zip(shown.index, shown["row"], shown["answer"])):
        with columns[n % THUMBNAILS_PER_ROW]:
            # An opaque id, as on the Label page: a file or folder name could give the class away.
            st.image(
                common.enlarge(projects.image(project_id, int(row)), 96),
                width="stretch",
                caption=common.as_typed(f"#{item_id}: {answer}"),
            )
    if len(chosen) > MAX_THUMBNAILS:
        st.caption(f"Showing {MAX_THUMBNAILS} of {len(chosen)}.")
    left, right = st.columns([2, 1])
    last = st.session_state.get(_chosen_key(project_id))
    gone = last is not None and last not in names
    if gone:
        left.warning(f"The class you chose, {last!r}, was renamed since: choose the label again.")
    # No class until one is chosen: it started on the first class, so one click on the button
    # labeled the whole selection as that class (found by an exploratory session).
    chosen_class = left.selectbox(
        "Give them all the label",
        list(range(len(names))),
        index=names.index(last) if last in names else None,
        placeholder="Choose a class",
        format_func=lambda i: names[i],
        key=_bulk_key(names),
        on_change=_remember_bulk_class,
        args=(project_id, list(names)),
    )
    relabel = left.checkbox("Relabel images that already have a label", key="bulk_relabel")
    as_class = (
        f" as {names[chosen_class]}" if isinstance(chosen_class, int) and chosen_class < len(names) else ""
    )
    # What a click labels: without "relabel", the images with no answer yet ("ignore" is one);
    # the button said "Label 46 images" where 13 had an answer and 33 were labeled.
    answered = int(chosen["answer_event"].notna().sum()) if "answer_event" in chosen else 0
    # With "relabel", images that have the chosen class already are left as they are too.
    same = int((chosen["label_index"] == chosen_class).sum()) if isinstance(chosen_class, int) else 0
    count = len(chosen) - same if relabel else len(chosen) - answered
    right.button(
        common.as_typed(f"Label {count} {common.by_count(count, 'image', 'images')}{as_class}"),
        key=f"bulk_apply-{common.tag(sorted(int(i) for i in chosen.index))}",  # see common.tag
        type="primary",
        disabled=count == 0,
        on_click=_bulk_label,
        args=(project_id, [int(i) for i in chosen.index], list(names), frame),
    )
    if answered and not relabel:
        have = common.by_count(
            answered,
            "has an answer already and is left as it is",
            "have an answer already and are left as they are",
        )
        them = common.by_count(answered, "it", "them")
        left.caption(f'{answered} of the {len(chosen)} {have} (tick "relabel" to change {them}).')
