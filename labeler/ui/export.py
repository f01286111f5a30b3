"""The Export page: the labeled data set and the newest model (or one of the newest finished
runs, chosen), as downloads.

Files are produced by `labeler.export.export_all` into a folder of their own under
`<data dir>/projects/<id>/exports/` (and put in the shared store under the same key when
LABELER_STORAGE_URL is set), one per preparation, so two admins (or two tabs) preparing at once
never write, delete or download each other's files; then offered with
one download button each: the ImageFolder zip (with metadata.csv and labels.csv),
the Parquet file, labels.csv, predictions.csv and a zip of the model (checkpoint, TorchScript
and classes.json). Only admins export: the page refuses everyone else itself, not only the
navigation that hides it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import secrets
import shutil
import time
from pathlib import Path

import streamlit as st

from db import queries
from db import runs as run_queries

from .. import export, projects, storage
from ..config import user_error
from . import common, parts

log = logging.getLogger(__name__)

# file name -> (button label, MIME type)
DOWNLOADS = {
    "dataset.zip": ("Data set: ImageFolder zip", "application/zip"),
    "dataset.parquet": ("Data set: Parquet", "application/vnd.apache.parquet"),
    "labels.csv": ("Labels: CSV", "text/csv"),
    "predictions.csv": ("Predictions of the model: CSV", "text/csv"),
}
MODEL_FILES = export.MODEL_FILES


KEEP_S = 24 * 3600  # an export folder older than this is removed (`_sweep`)
# The Export page also sweeps when it opens, at most this often per project and server process,
# so a day-old export does not stay on disk until someone prepares another.
SWEEP_EVERY_S = 3600
_last_sweep: dict[int, float] = {}  # project id -> time.monotonic() of this process's last sweep


def export_folder(project_id: int) -> Path:
    """Where the project's exports go, each in a folder of its own (`_new_folder`)."""
    return projects.project_dir(project_id) / "exports"


STAMP = "%Y%m%d-%H%M%S"  # an export folder's name starts with its UTC time


def _new_folder(project_id: int) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime(STAMP)
    return export_folder(project_id) / f"{stamp}-{secrets.token_hex(4)}"


def _age_s(name: str, now: float) -> float | None:
    """Seconds since the export folder `name` was made, from its name; None for another name (a
    file of the layout before folders)."""
    try:
        made = datetime.datetime.strptime(name[:15], STAMP).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return now - made.timestamp()


def _discard(path: Path) -> None:
    """Remove an export (a folder, or a file of the layout before folders) here and in the store."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    key = projects.storage_key(path)
    with contextlib.suppress(Exception):  # a store out of reach keeps a stale copy, nothing worse
        shared = _store()
        if shared is not None and key is not None:
            shared.remove(key)


def _sweep(project_id: int, keep: Path | None) -> None:
    """Remove the project's exports older than KEEP_S (their sessions are long gone) and files of
    the layout before folders, here and in the store (another machine's too), never `keep`."""
    now = time.time()

    def expired(name: str) -> bool:
        age = _age_s(name, now)
        return (keep is None or name != keep.name) and (age is None or age > KEEP_S)

    folder = export_folder(project_id)
    for path in folder.iterdir() if folder.exists() else ():
        if expired(path.name):
            _discard(path)
    prefix = f"projects/{project_id}/exports"  # the store's copy of `folder` (projects.storage_key)
    with contextlib.suppress(Exception):  # a store out of reach is swept another time
        shared = _store()
        for name in shared.names(prefix) if shared is not None else ():
            if expired(name):
                shared.remove(f"{prefix}/{name}")


def _sweep_now_and_then(project_id: int, keep: Path | None) -> None:
    """`_sweep` when the page opens, unless this process swept the project's exports less than
    SWEEP_EVERY_S ago (each sweep lists the folder and the shared store)."""
    now = time.monotonic()
    if now - _last_sweep.get(project_id, -math.inf) < SWEEP_EVERY_S:
        return
    _last_sweep[project_id] = now
    _sweep(project_id, keep)


def _store():
    from ..storage import store

    return store()


def _prepare(project_id: int, run_id: int | None) -> None:
    """Write the export with a progress bar (images written to the data set); runs in the script
    body, not in a button callback, so the bar shows while it works."""
    if not common.is_admin():
        st.session_state["export_error"] = "Only an admin can export."
        return
    folder = _new_folder(project_id)
    previous = st.session_state.get("export_files") or {}
    bar = st.progress(0.0, text="Preparing the export...")

    def progress(done: int, total: int) -> None:
        bar.progress(
            done / total if total else 1.0, text=f"Preparing the export: {done:,} of {total:,} images"
        )

    try:
        notes: list[str] = []
        written = export.export_all(
            common.session_factory(),
            project_id,
            folder,
            notes=notes,
            progress=progress,
            run_id=run_id,
            stage=lambda what: bar.progress(1.0, text=f"Preparing the export: writing {what}..."),
        )
        if storage.storage_url() is not None:  # said without one too (an exploratory session)
            bar.progress(1.0, text="Putting the export in the shared store...")
        for path in written:  # with LABELER_STORAGE_URL, kept beside the project's files
            projects.publish(path)
    except BaseException as error:  # shown as one sentence; a stopped script run (a click) re-raised
        _discard(folder)
        if not isinstance(error, Exception):
            raise
        message = user_error(error)
        if message is None:
            log.exception("The export of project %s failed", project_id)
            message = f"{type(error).__name__}; the server log has the details. Try again"
        st.session_state["export_error"] = common.as_typed(f"The export failed: {message.rstrip('.')}.")
        return
    finally:
        bar.empty()
    if previous.get("folder"):  # this session's last export: its buttons now offer the new one
        _discard(Path(previous["folder"]))
    _sweep(project_id, keep=folder)
    st.session_state["export_files"] = {
        "project": project_id,
        "folder": str(folder),
        "paths": [str(p) for p in written],
        "notes": notes,
        "run": run_id,
        "at": datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S UTC"),
    }


class NotAdmin(PermissionError):
    pass


def _for_admin(user: dict | None, make) -> bytes:
    """A download's bytes, made when its button is clicked, which runs no script (so no page
    check): only while `user`, who was shown the button, is an admin still. An admin demoted
    with the page open downloaded every file, the model zip built after the demotion (an
    exploratory session)."""
    if not common.admin_now(user):
        raise NotAdmin("Only an admin can download exports; ask an admin of this app.")
    return make()


EXPORT_REQUEST = "export_request"  # (project, run) of a click on Prepare, done in the script body


def _ask_export(project_id: int, run_id: int | None) -> None:
    st.session_state[EXPORT_REQUEST] = (project_id, run_id)


def _chosen_run(project_id: int, runs: list) -> int | None:
    """The finished run whose model and predictions go in the export: the newest, or one of the
    newest few (those whose predictions are kept), chosen here. A newer run is not always the
    better one: one trained for seconds, or after an undone bulk label."""
    if not runs:
        return None
    newest = runs[0].id

    def label(run_id: int) -> str:
        run = next(r for r in runs if r.id == run_id)
        accuracy = parts.run_accuracy(run)
        return (
            f"run {run.id}: {common.as_typed(run.model)}, {run.labels_used or 0} labels"
            + (f", {accuracy}" if accuracy else "")
            + (" (the newest)" if run.id == newest else "")
        )

    chosen = st.selectbox(
        "Model and predictions from",
        [run.id for run in runs],
        format_func=label,
        key=f"export_run-{project_id}",
        help=f"The newest {len(runs)} finished runs (older runs' predictions are not kept).",
    )
    return chosen


def export_page() -> None:
    common.require_admin("export")
    project = common.current_project()
    with common.session_factory()() as session:
        n_ignored = queries.ignored_count(session, project.id)  # "ignore" answers are not exported
        n_labeled = queries.label_count(session, project.id) - n_ignored
        runs = run_queries.newest_done_runs(session, project.id)
    has_model = bool(runs)
    prepared = st.session_state.get("export_files")
    mine = prepared.get("folder") if prepared and prepared["project"] == project.id else None
    try:
        _sweep_now_and_then(project.id, keep=Path(mine) if mine else None)
    except Exception:  # an export left on disk is tidied another time; the page works on
        log.warning("Sweeping the old exports of project %s failed", project.id, exc_info=True)
    st.title(f"Export · {common.as_typed(project.name)}")
    st.write(
        common.by_count(n_labeled, "1 labeled image", f"{n_labeled} labeled images")
        + (
            common.by_count(
                n_ignored,
                " (1 more answered 'ignore', which is not exported)",
                f" ({n_ignored} more answered 'ignore', which are not exported)",
            )
            if n_ignored
            else ""
        )
        + ("; a trained model is available." if has_model else "; no trained model yet.")
    )
    # The run shown when the button was drawn: a run finishing before the click pushed the one
    # chosen out of the newest few, Streamlit put the choice back on the newest, and that was
    # exported while the page still showed the one chosen.
    st.button(
        "Prepare the export",
        key="export_prepare",
        type="primary",
        on_click=_ask_export,
        args=(project.id, _chosen_run(project.id, runs)),
    )
    request = st.session_state.pop(EXPORT_REQUEST, None)
    if request is not None and request[0] == project.id:
        _prepare(*request)
    error = st.session_state.pop("export_error", None)
    if error:
        st.error(error)

    prepared = st.session_state.get("export_files")
    if not prepared or prepared["project"] != project.id:
        st.caption("Prepare the export to get the download buttons; it reflects the labels at that moment.")
        return
    if prepared.get("folder") and not Path(prepared["folder"]).exists():
        st.info("This export was removed (exports are kept for a day); prepare it again.")
        return
    paths = {Path(p).name: Path(p) for p in prepared["paths"] if Path(p).exists()}
    model_paths = [paths[n] for n in MODEL_FILES if n in paths]
    # Only a model that was written: with a checkpoint that did not load, the caption said the
    # files held the model while the note below said it could not be exported (exploratory).
    model = f" and the model of run {prepared['run']}" if prepared.get("run") and model_paths else ""
    st.caption(f"Prepared at {prepared.get('at', '?')}: the files hold the labels of that moment{model}.")
    notes = prepared.get("notes", [])
    for note in notes:  # e.g. why the model is left out
        st.warning(common.as_typed(note))
    for name, (label, mime) in DOWNLOADS.items():
        if name in paths:
            # A callable: the file is read when the button is clicked, not on every rerun.
            st.download_button(
                label,
                data=functools.partial(_for_admin, common.signed_in(), paths[name].read_bytes),
                file_name=f"{project.name}-{name}",
                mime=mime,
                key=f"download-{name}",
                on_click="ignore",
            )
    if model_paths:
        st.download_button(
            "Model: checkpoint + TorchScript + ONNX + classes.json + prepare.py (zip)",
            data=functools.partial(
                _for_admin, common.signed_in(), functools.partial(export.zip_bytes, model_paths)
            ),
            file_name=f"{project.name}-model.zip",
            mime="application/zip",
            key="download-model",
            on_click="ignore",
        )
    with st.expander("How to use the files"):
        st.code(
            export.HOW_TO_USE.format(c=project.channels, h=project.height, w=project.width), language="text"
        )
