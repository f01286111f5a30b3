"""The Project page: switch projects, create one, read its import report, set the annotator.

A new project comes from a built-in data set, a folder on the server, or an uploaded zip (saved
under `<data dir>/uploads/` and imported as `zip:PATH`). A flat folder has no class folders,
so its class names are typed in. Only admins create projects, and a server folder only under
`LABELER_IMPORT_ROOT` (no server folder at all when it is unset). Names are shown as typed.
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import pandas as pd
import streamlit as st

from db import queries
from db.models import AUDIT, TEST, Project

from .. import auth, projects
from ..config import SettingError, check_int, data_dir, user_error
from ..data import DATASETS, DataError
from ..data.importer import disk_full
from . import account, common, label

SOURCES = {"builtin": "Built-in data set", "folder": "Folder on the server", "upload": "Upload a zip"}


def parse_classes(text: str) -> list[str]:
    """Class names from "cat, dog" or one per line."""
    return [c.strip() for c in (text or "").replace("\n", ",").split(",") if c.strip()]


def save_upload(data: bytes) -> str:
    """Store an uploaded zip under the data folder; return its `zip:PATH` source string."""
    folder = data_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.zip"
    try:
        path.write_bytes(data)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise disk_full(error, "saving the upload") or error from None
    return f"zip:{path}"


def _saved_upload(source: str | None) -> Path | None:
    """The file of a `zip:PATH` source that `save_upload` wrote (in the uploads folder), else
    None: a zip elsewhere is the user's own file."""
    kind, _, path = (source or "").partition(":")
    if kind == "zip" and Path(path).name and Path(path).parent == data_dir() / "uploads":
        return Path(path)
    return None


def named_as_uploaded(text: str, source: str | None, upload) -> str:
    """`text` (an import's error) with the saved upload's server-side name (a random one under
    the uploads folder) put back to the name of the file the person uploaded."""
    saved = _saved_upload(source)
    if saved is None or upload is None:
        return text
    # The whole path first: the folder it lies in is the server's, not the person's business.
    return text.replace(str(saved), str(upload.name)).replace(saved.name, str(upload.name))


def record_uploaded_name(project_id: int, source: str | None, upload) -> None:
    """A project imported from an upload is shown with the name of the file the person uploaded
    (`upload:photos.zip`), not the server's random name of a copy deleted after the import."""
    if _saved_upload(source) is None or upload is None:
        return
    with common.session_factory().begin() as session:
        session.get(Project, project_id).source = f"upload:{upload.name}"[:1000]


def remove_upload(source: str | None) -> None:
    """Delete an uploaded zip once its import has ended, whatever the outcome; a `zip:PATH`
    outside the uploads folder is the user's own file and stays."""
    saved = _saved_upload(source)
    if saved is not None:
        saved.unlink(missing_ok=True)


def _switch() -> None:
    st.session_state["project_id"] = st.session_state["project_choice"]
    for key in ("skipped", "undone_item", "export_files"):
        st.session_state.pop(key, None)


def sources() -> dict[str, str]:
    """The kinds of source offered: a server folder only when an import root is set."""
    root = auth.import_root()
    if root is None:
        return {k: v for k, v in SOURCES.items() if k != "folder"}
    # Radio options are Markdown: a path's underscores would turn into italics.
    return {**SOURCES, "folder": f"Folder on the server, under {common.as_typed(str(root))}"}


def _create_ui() -> None:
    offered = sources()
    # Outside the form, so that the form shows only the chosen source's fields: with all of them
    # shown, a folder typed while "From" was left on the built-in set imported the built-in set
    # without a word (exploratory).
    kind = st.radio("From", list(offered), format_func=offered.get, horizontal=True, key="new_project_kind")
    upload = None
    with st.form("create_project", clear_on_submit=False):
        name = st.text_input("Name", key="new_project_name")
        if kind == "builtin":
            st.selectbox(
                "Built-in data set",
                list(DATASETS),
                key="new_project_builtin",
                format_func=lambda d: f"{DATASETS[d].title}: {DATASETS[d].description}",
            )
        elif kind == "folder":
            st.text_input(
                "Folder on the server (class sub-folders, or a flat folder of images)",
                key="new_project_folder",
            )
        else:
            upload = st.file_uploader("Zip of images", type=["zip"], key="new_project_upload")
        if kind != "builtin":  # a built-in set has its classes and its test split
            st.text_input(
                "Class names, for a flat folder or zip (comma-separated)",
                key="new_project_classes",
                placeholder="e.g. cat, dog",
            )
            st.number_input(
                "Audit set size (random images kept out of training to measure accuracy)",
                value=50,
                step=10,
                key="new_project_audit",
                help="0 to 10,000, and at most a fifth of the images (checked when the project is created).",
            )
        submitted = st.form_submit_button("Create project", type="primary")
    if not submitted:
        return
    if not common.is_admin():  # the form is drawn for admins only; a forged submit lands here
        st.error("Only an admin can create projects.")
        return
    source = bar = None
    try:
        source = _source(kind, upload)
        own = kind != "builtin"  # class names and an audit set size are asked for own images only
        audit = (
            check_int("The audit set size", st.session_state.get("new_project_audit", 50), 0, 10_000)
            if own
            else None
        )
        bar = st.progress(0.0, text="Importing the images...")

        def progress(done: int, total: int) -> None:
            bar.progress(done / total if total else 1.0, text=f"Importing the images: {done:,} of {total:,}")

        with st.spinner("Importing the images..."):
            project = projects.create_project(
                common.session_factory(),
                name,
                source,
                classes=parse_classes(st.session_state.get("new_project_classes", "")) if own else None,
                audit_size=audit,
                progress=progress,
            )
    except Exception as error:  # noqa: BLE001 - e.g. a corrupt zip: one sentence, never a traceback
        if bar is not None:
            bar.empty()  # the import ended: no bar left standing above the error
        if isinstance(error, OSError):
            # An OSError's own text ("[Errno 13] ...") does not say what to do; user_error does.
            text = user_error(error)
        elif isinstance(error, (DataError, SettingError, ValueError)):
            text = _sentence(error)
        else:
            text = f"The import failed ({type(error).__name__}: {_sentence(error)}) Check the files and try again."
        st.error(common.as_typed(named_as_uploaded(text, source, upload)))
        return
    finally:
        remove_upload(source)
    record_uploaded_name(project.id, source, upload)
    st.session_state["project_id"] = project.id
    for key in ("skipped", "undone_item", "export_files"):
        st.session_state.pop(key, None)
    message = f"Created the project {project.name!r}; it is now the current project."
    with common.session_factory()() as session:
        n_audit = queries.count_items(session, project.id, AUDIT)
        n_test = queries.count_items(session, project.id, TEST)
        names = queries.class_names(session, project.id)
    for note in (projects.capped_audit_note(audit, n_audit, n_test), projects.case_note(names)):
        if note:
            message += f" {note}"
    st.session_state["project_message"] = message
    st.rerun()


def _source(kind: str, upload) -> str:
    if kind == "builtin":
        return st.session_state.get("new_project_builtin") or "digits"
    if kind == "folder":
        return f"folder:{auth.check_import_folder(st.session_state.get('new_project_folder') or '')}"
    if upload is None:
        raise ValueError("Choose a zip file to upload first.")
    return save_upload(upload.getvalue())


def skipped_words(paths: list[str]) -> str:
    """The import report's sentence ("3 files were skipped when importing."), counting a class
    folder with no image imported (its path ends in "/", `importer.unused_class_folders`) as a
    folder."""
    folders = sum(path.endswith("/") for path in paths)
    return skipped_sentence(len(paths) - folders, folders)


def skipped_sentence(files: int, folders: int) -> str:
    counts = [(files, "file"), (folders, "folder")]
    words = " and ".join(f"{n} {noun}{'s' if n != 1 else ''}" for n, noun in counts if n)
    return f"{words} {'was' if files + folders == 1 else 'were'} skipped when importing."


# The import report lists this many skipped files on the page; the download has them all. Every
# one was listed on every rerun of the page where projects are switched: a folder with a sidecar
# file (.json, .xml) per image skips as many files as it has images.
ISSUES_SHOWN = 500


def _import_report_csv(project_id: int) -> bytes:
    with common.session_factory()() as session:
        issues = queries.import_issues(session, project_id)
    frame = pd.DataFrame([(i.path, i.reason) for i in issues], columns=["file", "why it was skipped"])
    return frame.to_csv(index=False).encode()


def _sentence(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text if text.endswith((".", "!", "?")) else text + "."


def _set_annotator() -> None:
    if common.signed_in() is not None or common.accounts_enabled():
        return
    name = (st.session_state.get("annotator_input") or "").strip()[:200]
    if name:
        if name != st.session_state.get("annotator"):
            # Another person, as a login would be: the last one's undo history, held grid page,
            # claims and choices stay theirs.
            account.clear_personal(keep=("annotator_input",))
        st.session_state["annotator"] = name
        st.session_state[common.NAMED] = True
        st.query_params["annotator"] = name  # kept across a reload (common.keep_annotator_in_address)


def project_page() -> None:
    project = common.current_project()
    annotator = common.annotator()
    Session = common.session_factory()
    with Session() as session:
        all_projects = queries.list_projects(session)
        issues = queries.import_issues(session, project.id, limit=ISSUES_SHOWN)
        skipped_files, skipped_folders = queries.import_issue_counts(session, project.id)
        names = queries.class_names(session, project.id)
        counts = {
            split: queries.count_items(session, project.id, split) for split in ("pool", "audit", "test")
        }
        n_ignored = queries.ignored_count(session, project.id)  # "ignore" answers are no label
        n_labeled = queries.label_count(session, project.id) - n_ignored

    st.title("Project")
    message = st.session_state.pop("project_message", None)
    if message:
        st.success(common.as_typed(message))

    ids = [p.id for p in all_projects]
    titles = {p.id: f"{p.name} ({p.source})" for p in all_projects}
    if st.session_state.get("project_choice") != project.id:
        st.session_state["project_choice"] = project.id
    st.selectbox("Current project", ids, format_func=titles.get, key="project_choice", on_change=_switch)
    st.markdown(
        f"**{common.as_typed(project.name)}**: {counts['pool']} images in the pool, {counts['audit']} in the audit "
        f"set, {counts['test']} in the test split; {n_labeled} labeled"
        f"{f' + {n_ignored} ignored' if n_ignored else ''}; image size "
        f"{project.channels}x{project.height}x{project.width}; classes: {common.as_typed(', '.join(names))}."
    )

    if common.signed_in() is None:
        # Single-user mode only: with accounts, the logged-in name is recorded, never a typed one.
        if "annotator_input" not in st.session_state:
            st.session_state["annotator_input"] = annotator
        st.text_input(
            "Your name (recorded with every label)", key="annotator_input", on_change=_set_annotator
        )
        unsaved = label.unsaved_anywhere()
        if unsaved:  # another name starts clean, as a login does (`_set_annotator`)
            st.warning(f"{label.unsaved_words(unsaved)} Another name drops them; Label, History saves them.")
        grid = label.grid_choices_anywhere()
        if grid:
            st.warning(
                f"Grid tiles set and not accepted: {grid}. Another name drops them; Label, Grid accepts them."
            )
    else:
        st.text(f"Labels are recorded as {annotator}.")

    st.subheader("Import report")
    if issues:
        st.warning(skipped_sentence(skipped_files, skipped_folders))
        st.dataframe(
            pd.DataFrame([(i.path, i.reason) for i in issues], columns=["file", "why it was skipped"]),
            hide_index=True,
            width="stretch",
        )
        total = skipped_files + skipped_folders
        if total > len(issues):
            st.caption(f"The first {len(issues)} of {total} are listed here; the download has them all.")
            st.download_button(
                "Download the whole import report (CSV)",
                data=functools.partial(_import_report_csv, project.id),  # read when clicked
                file_name=f"{project.name}-import-report.csv",
                mime="text/csv",
                key="import-report",
                on_click="ignore",
            )
    else:
        st.caption("Every file was imported.")

    if common.is_admin():
        st.subheader("New project")
        _create_ui()
