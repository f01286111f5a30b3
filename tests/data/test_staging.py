"""A folder import streams in chunks and resumes after a kill: a second import of the same folder
continues where the first stopped, and the project ends up exactly as an uninterrupted import
makes it (nothing duplicated, nothing lost)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db import queries
from labeler import projects
from labeler.data import import_folder, importer, staging
from labeler.data.images import decode_image


class Killed(Exception):
    """Stands in for a kill: raised from the progress callback, between two chunks."""


def png(seed: int, colour: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    shape, mode = ((10, 10, 3), "RGB") if colour else ((10, 10), "L")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def make_folder(root: Path, n: int = 11, colour_at: int | None = None) -> Path:
    """n images per class in cat/ and dog/, one duplicate, one corrupt file and one text file."""
    for k, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:03d}.png").write_bytes(png(100 * k + i, colour=(k, i) == (1, colour_at)))
    (root / "dog" / "dup.png").write_bytes(png(3))  # the same bytes as cat/003.png
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def project_state(Session, project_id: int):
    """Everything an import decides: items by row, skipped files, classes, pixels."""
    with Session() as session:
        items = [(i.row, i.key, i.sha256, i.truth) for i in queries.items(session, project_id)]
        skipped = sorted((issue.path, issue.reason) for issue in queries.import_issues(session, project_id))
        names = queries.class_names(session, project_id)
    return sorted(items), skipped, names, np.asarray(projects.pixels(project_id))


@pytest.fixture
def db_url(any_db_url) -> str:
    """Each test on SQLite and on PostgreSQL (skipped without LABELER_TEST_PG_URL)."""
    return any_db_url


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(staging, "CHUNK", 4)


def test_an_interrupted_import_continues_where_it_stopped(Session, tmp_path, small_chunks):
    source = make_folder(tmp_path / "src")
    seen = []

    def kill_after_8(done, total):
        seen.append(done)
        if done >= 8:
            raise Killed

    with pytest.raises(Killed):
        projects.create_project(Session, "pets", f"folder:{source}", audit_size=0, progress=kill_after_8)
    assert seen == [0, 4, 8]  # committed a chunk of 4 candidates at a time
    with Session() as session:
        assert queries.get_project(session, "pets") is None

    resumed = []
    project = projects.create_project(
        Session, "pets", f"folder:{source}", audit_size=0, progress=lambda d, t: resumed.append((d, t))
    )
    total = 2 * 11 + 2  # the images, the duplicate and the corrupt file (the .txt is no candidate)
    assert resumed[0] == (8, total) and resumed[-1] == (total, total)  # nothing read twice

    items, skipped, names, pixels = project_state(Session, project.id)
    assert len(items) == 22 and len({key for _, key, _, _ in items}) == 22
    assert len({sha for _, _, sha, _ in items}) == 22 and [row for row, *_ in items] == list(range(22))
    assert names == ["cat", "dog"]
    assert {reason.split(" of ")[0] for _, reason in skipped} >= {"duplicate"}
    assert len(skipped) == 3  # the duplicate, the corrupt file, the text file: each once
    # The same as reading the folder in one go.
    whole = import_folder(source)
    assert [key for _, key, _, _ in items] == whole.keys
    assert [truth for *_, truth in items] == whole.truth.tolist()
    assert np.array_equal(pixels, whole.pixels)
    assert sorted(whole.skipped) == skipped
    for _, key, _, _ in items[:3]:
        with Session() as session:
            stored = next(i for i in queries.items(session, project.id) if i.key == key)
        assert Path(stored.path).read_bytes() == (source / key).read_bytes()
    assert not any((Path(os.environ["LABELER_DATA_DIR"]) / "imports").iterdir())  # staging removed


def test_a_kill_while_the_items_are_added_loses_nothing(Session, tmp_path, small_chunks, monkeypatch):
    source = make_folder(tmp_path / "src")

    def fail(*_args):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(queries, "analyze", fail)  # inside the transaction, after every item is added
        with pytest.raises(Killed):
            projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    with Session() as session:
        assert queries.get_project(session, "pets") is None
    project = projects.create_project(Session, "pets", f"folder:{source}", audit_size=5)
    items, skipped, _, pixels = project_state(Session, project.id)
    assert len(items) == 22 and len(skipped) == 3 and pixels.shape == (22, 1, 28, 28)
    with Session() as session:
        assert queries.count_items(session, project.id, "audit") == 4  # at most a fifth


@pytest.mark.parametrize("from_before_tokens", [False, True])
def test_a_retry_after_a_real_kill_leaves_the_next_projects_files_alone(
    Session, db_url, tmp_path, small_chunks, monkeypatch, from_before_tokens
):
    # A kill runs no cleanup: nothing is reclaimed and the project's folder stays. Its id was never
    # committed, so on SQLite the next project gets it, and with it the folder the kill left.
    source = make_folder(tmp_path / "src")
    other_source = tmp_path / "other"
    for k, name in enumerate(("x", "y")):
        (other_source / name).mkdir(parents=True)
        for i in range(3):
            (other_source / name / f"{i}.png").write_bytes(png(900 + 10 * k + i))

    def fail(*_args):
        raise Killed

    root = projects.project_dir(0).parent
    before = set(root.iterdir()) if root.exists() else set()
    with monkeypatch.context() as patch:
        patch.setattr(queries, "analyze", fail)  # after the files moved into the project's folder
        patch.setattr(staging, "reclaim", lambda scratch: None)
        patch.setattr(projects, "_discard_project_files", lambda folder, error: None)
        with pytest.raises(Killed):
            projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    (killed_folder,) = set(root.iterdir()) - before
    assert (killed_folder / "pixels.npy").exists()
    if from_before_tokens:  # killed by the version before tokens: its state has none
        import sqlite3

        (state,) = (Path(os.environ["LABELER_DATA_DIR"]) / "imports").glob("*/state.db")
        with sqlite3.connect(state) as db:
            db.execute("DELETE FROM meta WHERE name = 'moved_token'")
        (killed_folder / staging.TOKEN).unlink()
    # Made by the importer that holds images in memory (a zip's): it writes no token of its own.
    other = projects.create_project(
        Session, "other", "test", images=import_folder(other_source), audit_size=0
    )
    if db_url.startswith("sqlite"):
        assert projects.project_dir(other.id) == killed_folder  # the id (and folder) reused
    other_before = project_state(Session, other.id)

    project = projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    items, skipped, _, pixels = project_state(Session, project.id)
    whole = import_folder(source)
    assert len(items) == 22 and len(skipped) == 3 and np.array_equal(pixels, whole.pixels)
    other_after = project_state(Session, other.id)
    assert other_after[:3] == other_before[:3] and np.array_equal(other_after[3], other_before[3])
    assert np.array_equal(other_after[3], import_folder(other_source).pixels)
    with Session() as session:
        for item in queries.items(session, other.id):
            assert Path(item.path).read_bytes() == (other_source / item.key).read_bytes()


def test_a_folder_changed_between_the_runs_is_imported_afresh(Session, tmp_path, small_chunks):
    source = make_folder(tmp_path / "src")

    def kill(done, _total):
        if done >= 4:
            raise Killed

    with pytest.raises(Killed):
        projects.create_project(Session, "pets", f"folder:{source}", audit_size=0, progress=kill)
    (source / "cat" / "000.png").unlink()
    (source / "cat" / "new.png").write_bytes(png(999))
    project = projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    items, _, _, pixels = project_state(Session, project.id)
    whole = import_folder(source)
    assert [key for _, key, _, _ in items] == whole.keys and np.array_equal(pixels, whole.pixels)


def test_the_first_colour_image_turns_the_gray_rows_into_colour(tmp_path, small_chunks):
    source = make_folder(tmp_path / "src", n=5, colour_at=2)  # dog/002.png, after 8 gray images
    staged = staging.stage_folder(source, tmp_path / "stage")
    pixels = np.load(staged.pixels_path)
    assert staged.shape == (3, 32, 32) and pixels.shape == (staged.count, 3, 32, 32)
    assert np.array_equal(pixels[0], decode_image((source / "cat" / "000.png").read_bytes(), 32, 3))
    assert np.array_equal(pixels, import_folder(source).pixels)


def test_a_copy_in_another_class_folder_says_it_is_kept_in_the_first(tmp_path):
    staged = staging.stage_folder(make_folder(tmp_path / "src", n=5), tmp_path / "stage")
    reasons = dict(pair for chunk in staged.skipped() for pair in chunk)
    assert reasons["dog/dup.png"] == "duplicate of cat/003.png, in another folder; kept there only"


def test_a_second_import_of_the_same_folder_while_one_runs_is_refused(Session, tmp_path):
    source = make_folder(tmp_path / "src")
    folder = staging.staging_folder(
        Path(os.environ["LABELER_DATA_DIR"]) / "imports", str(source), "pets", None, None
    )
    running = staging.exclusive(folder)  # an import that is running
    with running, pytest.raises(staging.DataError, match="being imported under this name already"):
        projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    project = projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    assert project_state(Session, project.id)[0][-1][0] == 21


def both_imports(source: Path, stage: Path) -> list[tuple[list[str], list[tuple[str, str]]]]:
    """(classes, skipped rows) of `source` staged in `stage` and imported in memory."""
    staged = staging.stage_folder(source, stage)
    in_memory = import_folder(source)
    return [
        (staged.classes, [pair for chunk in staged.skipped() for pair in chunk]),
        (in_memory.classes, in_memory.skipped),
    ]


def test_a_class_folder_with_no_image_imported_is_named_in_the_report(Session, tmp_path):
    """An empty class folder vanished from the project's classes without a note (exploratory)."""
    source = make_folder(tmp_path / "src", n=3)
    (source / "empty").mkdir()
    (source / "junk").mkdir()
    (source / "junk" / "readme.txt").write_text("not an image")
    (source / ".thumbnails").mkdir()  # hidden: skipped as such, not a class folder
    for classes, skipped in both_imports(source, tmp_path / "stage"):
        assert classes == ["cat", "dog"]
        reasons = dict(skipped)
        assert reasons["empty/"] == reasons["junk/"] == importer.NOT_A_CLASS
        assert reasons["junk/readme.txt"].startswith("not an image")
        assert reasons[".thumbnails/"] == "hidden folder or macOS metadata"  # not NOT_A_CLASS
    # Run again on the same staging folder (an import that resumes): each folder is named once.
    again = staging.stage_folder(source, tmp_path / "stage")
    assert [path for chunk in again.skipped() for path, _ in chunk].count("empty/") == 1
    # Through the import the app and the CLI run, into the project's import report.
    project = projects.create_project(Session, "pets", str(source))
    with Session() as session:
        assert queries.class_names(session, project.id) == ["cat", "dog"]
        report = {issue.path: issue.reason for issue in queries.import_issues(session, project.id)}
    assert report["empty/"] == report["junk/"] == importer.NOT_A_CLASS


def test_an_unreadable_class_folder_is_named_once_with_its_reason(tmp_path, monkeypatch):
    """It was named twice: "cannot read folder" and "not a class"."""
    source = make_folder(tmp_path / "src", n=3)
    (source / "bird").mkdir()
    (source / "bird" / "0.png").write_bytes(png(7))
    scandir = os.scandir

    def refuse_bird(path):  # the tests run as root, which chmod cannot keep out
        if os.path.basename(os.fspath(path)) == "bird":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(importer.os, "scandir", refuse_bird)
    for classes, skipped in both_imports(source, tmp_path / "stage"):
        assert classes == ["cat", "dog"]
        assert [reason for shown, reason in skipped if shown.startswith("bird")] == [
            "cannot read folder (Permission denied)"
        ]
