"""The Progress page: the learning curve, agreement with the model, class balance, confusion.

It says where every accuracy comes from: the test split of a built-in data set (never shown
while labeling) or the audit set (a random sample the user labeled and training never saw),
with a 95 % Wilson interval; actively chosen labels are never used as an accuracy estimate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db import queries
from db.models import AUDIT, TEST

from .. import evaluate
from . import common, parts


def accuracy_source(n_test: int, n_audit_labeled: int, n_audit: int) -> tuple[str | None, str]:
    """(split used for accuracy or None, one honest sentence saying where the number comes from)."""
    if n_test:
        return TEST, (
            f"Accuracy on the test split: {n_test} images with known labels that are never shown "
            "while labeling and never trained on."
        )
    if n_audit_labeled:
        return AUDIT, (
            f"Accuracy on the audit set: {n_audit_labeled} of {n_audit} randomly chosen images that you "
            "labeled and training never sees, with a 95 % interval. The actively chosen labels are "
            "not a random sample, so they are not used to estimate accuracy."
        )
    return None, (
        "No honest accuracy yet: this data set has no test split, and none of the "
        f"{n_audit} audit images (a random sample kept out of training) is labeled. Label some of "
        "them (they come up in the queue) to see an accuracy with its interval."
    )


def curve_frame(curve: pd.DataFrame, split: str | None, n_test: int) -> pd.DataFrame:
    """labels, accuracy, low, high per finished run, from the chosen split."""
    if curve.empty or split is None:
        return pd.DataFrame(columns=["run_id", "model", "labels", "accuracy", "low", "high"])
    if split == TEST:
        frame = curve.dropna(subset=["test_accuracy"])
        acc = frame["test_accuracy"].astype(float)
        bounds = [evaluate.wilson_interval(round(a * n_test), n_test) for a in acc]
    else:
        frame = curve.dropna(subset=["audit_accuracy"])
        acc = frame["audit_accuracy"].astype(float)
        bounds = list(zip(frame["audit_low"].astype(float), frame["audit_high"].astype(float)))
    return pd.DataFrame(
        {
            "run_id": frame["run_id"].to_numpy(),
            "model": frame["model"].to_numpy(),
            "labels": frame["labels"].to_numpy(),
            "accuracy": acc.to_numpy(),
            "low": [b[0] for b in bounds],
            "high": [b[1] for b in bounds],
        }
    )


def curve_figure(frame: pd.DataFrame, source: str) -> go.Figure:
    """Accuracy against labels, one line per model, with the 95 % interval as error bars. Each
    line runs from fewer labels to more (runs with as many labels in run order): joined in run
    order, a run after an undone bulk label, trained on fewer, drew the line back over itself."""
    traces = []
    for model, part in frame.groupby("model", sort=False):
        part = part.sort_values("labels", kind="stable")
        traces.append(
            go.Scatter(
                x=part["labels"],
                y=part["accuracy"],
                mode="lines+markers",
                name=common.for_chart(model),
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": part["high"] - part["accuracy"],
                    "arrayminus": part["accuracy"] - part["low"],
                },
                customdata=part["run_id"],
                hovertemplate="run %{customdata}: %{y:.1%} with %{x} labels<extra>%{fullData.name}</extra>",
            )
        )
    fig = go.Figure(traces)
    fig.update_layout(
        yaxis={"range": [0, 1.02], "tickformat": ".0%", "title": f"accuracy ({source})"},
        xaxis_title="labels used for training",
        legend_title="model",
        showlegend=True,
        height=380,
        margin={"l": 10, "r": 10, "t": 20, "b": 10},
    )
    return fig


def bar_figure(classes: list[str], values, title: str, percent: bool = False) -> go.Figure:
    """One bar per class (names escaped for plotly), in the given order."""
    fig = go.Figure(go.Bar(x=[common.for_chart(c) for c in classes], y=values))
    fig.update_layout(
        height=320,
        margin={"l": 10, "r": 10, "t": 20, "b": 10},
        xaxis={"type": "category", "title": "class"},
        yaxis={"title": title, **({"range": [0, 1], "tickformat": ".0%"} if percent else {})},
    )
    return fig


def confusion_figure(cm: np.ndarray, classes: list[str]) -> go.Figure:
    """Counts of (true, predicted) with the numbers written in the cells, true classes down."""
    shown = [common.for_chart(c) for c in classes]
    fig = go.Figure(
        go.Heatmap(
            z=cm,
            x=shown,
            y=shown,
            colorscale="Blues",
            texttemplate="%{z}",
            colorbar={"title": {"text": "images"}},
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        height=max(300, 40 * len(shown) + 120),
        margin={"l": 10, "r": 10, "t": 20, "b": 10},
        xaxis={"type": "category", "title": "predicted"},
        yaxis={"type": "category", "title": "true", "autorange": "reversed"},
    )
    return fig


def agreement_figure(by_run: pd.DataFrame) -> go.Figure:
    """Agreement with each run's guesses, with Wilson intervals, one point per run."""
    x = [f"run {int(r)}" for r in by_run["run_id"]]
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=by_run["rate"],
            mode="lines+markers",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": by_run["high"] - by_run["rate"],
                "arrayminus": by_run["rate"] - by_run["low"],
            },
            customdata=np.stack([by_run["agree"], by_run["n"]], axis=1),
            hovertemplate="%{x}: %{customdata[0]} of %{customdata[1]} answers agreed<extra></extra>",
        )
    )
    fig.update_layout(
        yaxis={"range": [0, 1.02], "tickformat": ".0%", "title": "agreed"},
        xaxis={"type": "category"},
        height=220,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
    )
    return fig


@st.cache_data(show_spinner=False, max_entries=16)
def _test_report(url: str, run_id: int) -> dict | None:
    """A finished run's report on the test split: its predictions and the test truth never
    change, so it is computed once per run and server process (10,000 rows on Fashion-MNIST)."""
    with common._session_factory(url)() as session:
        return evaluate.run_report(session, run_id, split=TEST)


def run_report(session, run_id: int, split: str) -> dict | None:
    if split == TEST:
        from ..config import db_url

        return _test_report(db_url(), run_id)
    return evaluate.run_report(session, run_id, split=split)  # audit: depends on the labels


def progress_page() -> None:
    project = common.current_project()
    names = common.class_names(project.id)
    with common.session_factory()() as session:
        curve = evaluate.learning_curve(session, project.id)
        agreement = evaluate.label_agreement(session, project.id)
        by_run = evaluate.agreement_by_run(session, project.id)
        n_test = queries.count_items(session, project.id, TEST)
        n_audit = queries.count_items(session, project.id, AUDIT)
        labels = queries.current_labels(session, project.id)
        audit_ids = {item.id for item in queries.items(session, project.id, AUDIT)}
        n_audit_labeled = len(audit_ids & set(labels))
        split, source_text = accuracy_source(n_test, n_audit_labeled, n_audit)
        latest = queries.latest_done_run_id(session, project.id)
        report = run_report(session, latest, split) if latest and split else None
        counts = parts.class_counts(session, project.id, names)
        people = queries.annotator_counts(session, project.id)

    st.title(f"Progress · {common.as_typed(project.name)}")
    st.info(source_text)
    frame = curve_frame(curve, split, n_test)

    left, right = st.columns(2)
    shown = None  # (label, accuracy, low, high) of the accuracy box
    if split == AUDIT and report is not None and (frame.empty or int(frame.iloc[-1].run_id) != latest):
        # The newest run finished before the audit images it is measured on now were labeled (its
        # point on the curve has none): measured on them now, as the confusion matrix below is.
        # The box stayed empty though audit images were labeled.
        label = f"Accuracy of run {latest} (the {report['n']} audit images labeled now)"
        shown = (label, report["accuracy"], report["low"], report["high"])
    elif not frame.empty:  # the newest point of the curve: measured when that run finished
        last = frame.iloc[-1]
        label = f"Accuracy of run {int(last.run_id)} ({'test split' if split == TEST else 'audit set'})"
        shown = (label, last.accuracy, last.low, last.high)
    box_from_curve = shown is not None and not frame.empty and int(frame.iloc[-1].run_id) == latest
    if shown is not None:
        label, accuracy, low, high = shown
        left.metric(
            label,
            f"{accuracy:.1%}",
            f"95 % interval {low:.1%} - {high:.1%}",
            delta_color="off",
            delta_arrow="off",
        )
    if agreement["n"]:
        right.metric(
            "Your labels agreed with the model's prior guess",
            f"{agreement['rate']:.0%}",
            f"{agreement['agree']} of {agreement['n']}, interval {agreement['low']:.0%} - {agreement['high']:.0%}",
            delta_color="off",
            delta_arrow="off",
        )
        right.caption(
            "Answers given with the guess on screen (one image, grid; not bulk labels, History "
            "corrections or audit images). On the hard images the queue picks this understates "
            "accuracy: it says how useful the guesses are, not how accurate the model is."
        )
        if len(by_run) > 1:
            right.plotly_chart(agreement_figure(by_run), key="agreement_by_run")
            right.caption("Agreement with each run's guesses, in the order of the runs.")
    else:
        right.caption("Agreement with the model appears once you label images after a finished run.")

    st.subheader("Learning curve")
    if frame.empty and not curve.empty and split == AUDIT:
        st.caption(
            "One point per finished run, measured on the audit images labeled when it finished: "
            "the runs so far finished before any was labeled, so the next run adds the first point."
        )
    elif frame.empty:
        st.caption("One point per finished run appears here: label, then train (Train page).")
    else:
        st.plotly_chart(
            curve_figure(frame, "test split" if split == TEST else "audit set"), key="learning_curve"
        )

    balance, per_class = st.columns(2)
    with balance:
        st.subheader("Class balance")
        if counts["labels"].sum():
            st.plotly_chart(
                bar_figure(list(counts["class"]), counts["labels"], "labels"), key="class_balance"
            )
        else:
            st.caption("No labels yet.")
        if people:
            st.subheader("Answers per annotator")
            st.dataframe(
                pd.DataFrame(sorted(people.items(), key=lambda p: -p[1]), columns=["annotator", "answers"]),
                hide_index=True,
                width="content",
            )
    if report is None:
        return
    with per_class:
        st.subheader("Per-class accuracy")
        shown = names[: len(report["per_class"])]
        st.plotly_chart(bar_figure(shown, report["per_class"], "accuracy", percent=True), key="per_class")
    st.subheader(f"Confusion matrix of run {latest} ({report['n']} images)")
    cm = np.asarray(report["confusion"])
    st.plotly_chart(confusion_figure(cm, names[: cm.shape[0]]), key="confusion")
    if split == AUDIT and box_from_curve:
        # The box is the run's point: a correction since moves these and not it (exploratory).
        st.caption(
            "Per-class accuracy and the confusion matrix use the audit answers as they are now; "
            "each run's accuracy above and on the curve uses those standing when it finished."
        )
