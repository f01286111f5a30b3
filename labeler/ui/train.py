"""The Train page: choose a model and its few settings, start or cancel a run, watch it live.

The live part is a fragment that reruns itself every 2 seconds while a run is active
(`st.fragment(run_every=...)`), so the progress bar and the loss curves move without reloading
the page; when a run starts or ends it redraws the whole page once, so the history, the buttons
and the refresh rate follow.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import plotly.express as px
import streamlit as st

import db
from db import runs as run_queries
from db.models import FAILED, QUEUED, RUNNING, Project

from .. import active
from ..config import SettingError, check_int
from ..models import DESCRIPTIONS, MODELS
from ..runspec import LIMITS, RunSpec
from . import account, common, parts

# While a run is queued or running. The page's runs share the interpreter with the training
# thread of the same process: with the Train page open a run made 0.58 of the steps it made
# with the Label page open; with the loss figure cached (below) 0.73, without Streamlit's full
# garbage collection after every run (.streamlit/config.toml) 0.78, and refreshed every 2 s
# instead of every second 0.95 (README, Training beside an open page).
LIVE_EVERY_S = 2.0
# The loss curves are drawn anew at most this often: a figure takes 0.1 to 0.2 s of Python.
LOSS_EVERY_S = 5.0
_LOSS_FIGURE = "train-loss-figure"  # (run, metric points, status), when drawn, the figure
IDLE_EVERY_S = 5.0  # otherwise: notices runs started elsewhere (auto-retrain, another tab)
# The form's fields the run keeps (the project's settings give the rest, e.g. mc_samples).
FORM_SETTINGS = ("budget_s", "steps", "strategy", "seed", "config")


def model_defaults(model: str) -> dict:
    """The model's Config dataclass as a dict ({} when it has none)."""
    config = MODELS[model].Config()
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def _lr_key(model: str) -> str:
    """One learning-rate field per model: a rate typed (or shown) for one model is not carried
    to another when the model is switched (M2's own rate for the images would be lost)."""
    return f"train_lr-{model}"


def validated_settings(values: dict) -> RunSpec:
    """The run the form asks for; raises SettingError with one sentence (RunSpec's checks)."""
    model = values["model"]
    steps = values.get("steps")
    # RunSpec's range starts at 1: 0 is the form's "none", so the form says its own range (above
    # it, RunSpec's "between 1 and 10000000" contradicted this one).
    if isinstance(steps, int | float) and not 0 <= steps <= LIMITS["steps"][2]:
        shown = f"{int(steps):,}" if float(steps).is_integer() else f"{steps:g}"  # not "2e+07"
        raise SettingError(f"The step limit must be 0 (none) to {LIMITS['steps'][2]:,}, not {shown}.")
    config = {}
    if model in MODELS and "lr" in model_defaults(model) and values.get("lr") is not None:
        config["lr"] = values["lr"]
    return RunSpec.parse(
        {
            "model": model,
            "budget_s": values["budget_s"],
            "steps": values.get("steps") or None,
            "strategy": values["strategy"],
            "seed": values["seed"],
            "config": config,
        }
    )


def _allowed() -> bool:
    """Whether the person acting now may start or cancel runs (account.acting_user: a session an
    admin ended, by a new password or a removed account, may not); the Train page says why not."""
    try:
        account.acting_user()
    except account.NotAllowed as refused:
        st.session_state["train_error"] = str(refused)
        return False
    return True


@common.survives_outage
def _start(project_id: int) -> None:
    if not _allowed():  # checked before anything is stored: the project's settings too
        return
    state = st.session_state
    values = {k: state.get(f"train_{k}") for k in ("model", "budget_s", "strategy", "seed", "steps")}
    values["lr"] = state.get(_lr_key(values["model"])) if "lr" in model_defaults(values["model"]) else None
    try:
        spec = validated_settings(values)
        every = check_int("Retrain every N labels", state.get("train_every", 0), 0, 100_000)
    except SettingError as error:
        state["train_error"] = str(error)
        return
    Session = common.session_factory()
    with Session() as session:  # a run would fail at once, and the server log get a traceback
        if not run_queries.pool_label_count(session, project_id):
            # Answers on audit images measure accuracy and are never trained on (nor is "ignore").
            state["train_error"] = (
                "There are no labels to train on yet (audit images and 'ignore' answers are not "
                "trained on): label a few images from the queue, then train."
            )
            return
    settings = {key: value for key, value in spec.settings().items() if key in FORM_SETTINGS}

    def save() -> None:
        with Session.begin() as session:
            project = session.get(Project, project_id)
            # The project remembers the choice: automatic retraining uses it.
            project.settings = {
                **(project.settings or {}),
                **settings,
                "model": values["model"],
                "auto_retrain_every": every,
            }
            if "steps" not in settings:
                project.settings.pop("steps", None)

    try:
        db.retrying(save)
        with Session() as session:  # a run already waiting takes these settings instead
            waiting = {
                run.id: run.model
                for run in run_queries.active_runs(session, project_id)
                if run.status == QUEUED
            }
        run_id = parts.request_training(project_id, values["model"], settings)
    except Exception as error:  # noqa: BLE001 - shown as one sentence
        state["train_error"] = f"Training could not start: {error}"
        return
    if run_id in waiting:  # it read "Run 11 is queued" both times, the second run's model changed silently
        was = "" if waiting[run_id] == values["model"] else f" (it was {waiting[run_id]})"
        state["train_notice"] = (
            f"Run {run_id} was already waiting; it now trains {values['model']} with these settings{was}, "
            "as soon as the trainer is free."
        )
        return
    state["train_notice"] = f"Run {run_id} is queued; it starts as soon as the trainer is free."


@common.survives_outage
def _cancel(run_id: int) -> None:
    if not _allowed():
        return
    Session = common.session_factory()

    def commit() -> None:
        with Session.begin() as session:
            run_queries.cancel_run(session, run_id)

    db.retrying(commit)
    st.session_state["train_notice"] = f"Run {run_id} is being cancelled."


def loss_figure(metrics: list) -> object | None:
    """One small panel per loss (their scales differ), against the training step."""
    if not metrics:
        return None
    frame = pd.DataFrame([(m.step, m.name, m.value) for m in metrics], columns=["step", "loss", "value"])
    fig = px.line(frame, x="step", y="value", facet_col="loss", facet_col_wrap=3, markers=len(frame) < 40)
    fig.update_yaxes(matches=None, showticklabels=True, title=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_layout(
        height=260 * ((frame["loss"].nunique() + 2) // 3),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=False,
    )
    return fig


def _loss_figure_of(run, metrics: list) -> object | None:
    """`loss_figure`, made again only when the run has new loss points (or another status) and
    LOSS_EVERY_S have passed since the last one this session drew (see LOSS_EVERY_S)."""
    key = (run.id, len(metrics), run.status)
    drawn = st.session_state.get(_LOSS_FIGURE)
    now = time.monotonic()
    same_run = drawn is not None and drawn[0][0] == run.id and drawn[0][2] == run.status
    if same_run and (drawn[0] == key or now - drawn[1] < LOSS_EVERY_S):
        return drawn[2]
    fig = loss_figure(metrics)
    st.session_state[_LOSS_FIGURE] = (key, now, fig)
    return fig


def history_frame(runs: list) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": run.id,
                "model": run.model,
                "status": parts.STATUS_TEXT.get(run.status, run.status),
                "labels": run.labels_used,
                "accuracy": parts.run_accuracy(run),
                "steps": run.step,
                "seconds": round(run.seconds or 0.0, 1),
                "started": run.started_at.strftime("%Y-%m-%d %H:%M:%S") if run.started_at else "",
                "note": run.error or "; ".join((run.metrics or {}).get("notes", [])),
            }
            for run in runs
        ]
    )


def _live_or_outage(project_id: int) -> None:
    """`_live`, with one line while the database cannot be reached (`common.drawn_through_outage`)."""
    common.drawn_through_outage(
        _live,
        project_id,
        lambda: st.warning(
            "The database cannot be reached just now; training goes on, and this part follows once it is back."
        ),
    )


def _live(project_id: int) -> None:
    """Progress of the active run (or the newest one) and its loss curves."""
    Session = common.session_factory()
    with Session() as session:
        current = run_queries.active_runs(session, project_id)
        shown = next((r for r in current if r.status == RUNNING), None) or (current[0] if current else None)
        if shown is None:
            runs = run_queries.list_runs(session, project_id)
            shown = runs[0] if runs else None
        metrics = run_queries.run_metrics(session, shown.id) if shown is not None else []
    if {r.id for r in current} != st.session_state.get("train_seen_active"):
        # A run started or ended: redraw history and buttons, and switch the refresh rate.
        st.rerun(scope="app")

    st.caption(parts.status_line(current))
    if shown is None:
        st.info("No run yet: label a few images of each class, then start training.")
        return
    doing = parts.STATUS_TEXT.get(shown.status, shown.status)
    if shown.status == RUNNING and (shown.progress or 0) >= 1.0:
        doing = "trained, predicting every image"  # can take minutes on a big project after the budget
    label = f"Run {shown.id} ({shown.model}): {doing}"
    st.progress(min(1.0, max(0.0, shown.progress or 0.0)), text=f"{label}, {shown.progress or 0:.0%}")
    if shown.status == FAILED and shown.error:
        st.error(common.as_typed(f"Run {shown.id} failed: {shown.error}"))
    for run in current:
        st.button(
            f"Cancel run {run.id}",
            key=f"cancel-{run.id}",
            on_click=_cancel,
            args=(run.id,),
            disabled=bool(run.cancel_requested),
        )
    fig = _loss_figure_of(shown, metrics)
    if fig is not None:
        st.plotly_chart(fig, key="loss_curves")
    elif shown.status == RUNNING:
        st.caption("The first loss values arrive within a few seconds.")


def _settings_ui(project: Project) -> None:
    settings = project.settings or {}
    models = list(MODELS)
    default_model = settings.get("model", "m2")
    st.selectbox(
        "Model",
        models,
        index=models.index(default_model) if default_model in models else 0,
        key="train_model",
        format_func=lambda m: DESCRIPTIONS.get(m, m),
    )
    model = st.session_state["train_model"]
    left, right = st.columns(2)
    with left:
        st.number_input(
            "Training time (seconds)",
            value=int(settings.get("budget_s", 60)),
            step=10,
            key="train_budget_s",
            help=f"{LIMITS['budget_s'][1]:,} to {LIMITS['budget_s'][2]:,} s. Training stops after this long, or after the step limit, "
            "whichever comes first.",
        )
        st.number_input(
            "Step limit (0 = none)",
            value=int(settings.get("steps", 0) or 0),
            step=100,
            key="train_steps",
            help=f"0 to {LIMITS['steps'][2]:,}.",
        )
        defaults = model_defaults(model)
        if "lr" in defaults:
            from ..train import SETTING_RANGES

            # The rate the project's runs use: the project's stored rate when this is its stored
            # model (what auto-retrain runs), else the model's default. A model whose rate
            # depends on the images (M2: None) shows an empty field: left empty, the run uses the
            # model's own rate for this project's images.
            stored = settings.get("config") or {}
            lr = (
                stored["lr"]
                if settings.get("model") == model and stored.get("lr") is not None
                else defaults["lr"]
            )
            st.number_input(
                "Learning rate",
                value=None if lr is None else float(lr),
                format="%g",  # "%.5f" showed a rate of 1e-6 as 0.00000
                step=1e-4,
                key=_lr_key(model),
                placeholder="the model's default for these images",
                help=f"{SETTING_RANGES['lr'][0]:g} to {SETTING_RANGES['lr'][1]:g}"
                + ("; empty: the model's own rate for these images." if defaults["lr"] is None else "."),
            )
    with right:
        strategies = list(active.STRATEGIES)
        default_strategy = settings.get("strategy", "entropy")
        st.selectbox(
            "Which images to ask about next",
            strategies,
            index=strategies.index(default_strategy) if default_strategy in strategies else 0,
            key="train_strategy",
            format_func=lambda s: active.STRATEGIES[s].description,
        )
        st.number_input(
            "Retrain automatically every N new labels (0 = off)",
            value=int(settings.get("auto_retrain_every", 10) or 0),
            step=5,
            key="train_every",
            help="0 to 100,000.",
        )
        st.number_input(
            "Seed", value=int(settings.get("seed", 0)), key="train_seed", help=f"0 to {LIMITS['seed'][2]:,}."
        )


def train_page() -> None:
    project = common.current_project()
    Session = common.session_factory()
    with Session() as session:
        project = session.get(Project, project.id)
        runs = run_queries.list_runs(session, project.id)
        current = run_queries.active_runs(session, project.id)
        since = parts.since_last_run_words(session, project.id)
    parts.ensure_worker_for_active(current)

    st.title(f"Train · {common.as_typed(project.name)}")
    error = st.session_state.pop("train_error", None)
    if error:
        st.error(common.as_typed(error))
    notice = st.session_state.pop("train_notice", None)
    if notice:
        st.success(common.as_typed(notice))

    _settings_ui(project)
    st.button("Start training", key="train_start", type="primary", on_click=_start, args=(project.id,))
    st.caption(f"{since}. Training runs in the background: keep labeling.")

    st.subheader("Now")
    st.session_state["train_seen_active"] = {r.id for r in current}
    st.fragment(run_every=LIVE_EVERY_S if current else IDLE_EVERY_S)(_live_or_outage)(project.id)

    st.subheader("History")
    if runs:
        st.dataframe(history_frame(runs), hide_index=True, width="stretch")
    else:
        st.caption("No runs yet.")
