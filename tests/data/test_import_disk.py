"""Imports cannot fill the disk: zip bombs of many small entries are refused whole, scratch
folders go away whatever the outcome, a full disk leaves no partial file, and entries nested
too deep are skipped with a reason instead of ending the import."""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db import queries
from labeler import projects
from labeler.data import DataError, import_folder, import_zip, importer, staging
from labeler.data.importer import DiskFull


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def class_zip(path: Path, extra: list[tuple[str, bytes]] = ()) -> Path:
    entries = [(f"{c}/{i}.png", png(10 * k + i)) for k, c in enumerate(("cat", "dog")) for i in range(5)]
    return make_zip(path, entries + list(extra))


def data_files() -> set[str]:
    """Every file in the data folder except the database's own, and every folder with a file."""
    root = Path(os.environ["LABELER_DATA_DIR"])
    files = {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("labeler.db")}
    folders = {
        parent for f in files for parent in f.parents if parent.is_relative_to(root) and parent != root
    }
    return {str(p.relative_to(root)) for p in files | folders}


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillsUp:
    """A file whose writes succeed for `room` bytes, then fail as on a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.file.flush()
            self.room = 0
            no_space()
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


# ---- zip bombs


def test_many_small_entries_zip_bomb_is_refused_and_leaves_nothing(Session, tmp_path):
    # The issue's zip: 500 entries of 1 MiB of zeros, each too small for the per-entry ratio check.
    zeros = [(f"cat/zeros{i:03d}.png", bytes(2**20)) for i in range(500)]
    archive = class_zip(tmp_path / "bomb.zip", zeros)
    assert max(i.file_size for i in zipfile.ZipFile(archive).infolist()) <= importer._RATIO_MIN_BYTES
    before = data_files()
    with pytest.raises(DataError, match=r"would unpack to 50\d MiB .*possible zip bomb"):
        projects.create_project(Session, "bomb", f"zip:{archive}")
    assert data_files() == before
    with Session() as session:
        assert queries.list_projects(session) == []


def test_every_entry_counts_toward_the_total(tmp_path):
    archive = make_zip(tmp_path / "small.zip", [(f"{i}.png", png(i)) for i in range(20)])
    total = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    with pytest.raises(DataError, match="would unpack to"):
        import_zip(archive, target=tmp_path / "t", max_total_bytes=total - 1)
    assert not (tmp_path / "t").exists()
    assert len(import_zip(archive, target=tmp_path / "t2", max_total_bytes=total).keys) == 20


def test_a_zip_larger_than_the_free_space_is_refused_before_writing(Session, tmp_path, monkeypatch):
    archive = class_zip(tmp_path / "pets.zip")
    monkeypatch.setattr(importer, "free_bytes", lambda _target: importer.MIN_FREE_BYTES + 100)
    before = data_files()
    with pytest.raises(DiskFull, match="free some space") as refused:
        projects.create_project(Session, "pets", f"zip:{archive}")
    assert data_files() == before
    # What is kept free is said: "needs 0 MiB but has 0 MiB to spare" on a small disk said nothing.
    assert "0.0 MiB to spare (it keeps 256 MiB free)" in str(refused.value)


# ---- scratch folders and uploads


def test_zip_import_keeps_the_files_in_the_project_and_nothing_in_imports(Session, tmp_path):
    archive = class_zip(
        tmp_path / "pets.zip", [("dog/readme.txt", b"skip me"), ("cat/bad.png", b"not a png")]
    )
    project = projects.create_project(Session, "pets", f"zip:{archive}", audit_size=0)
    root = Path(os.environ["LABELER_DATA_DIR"])
    assert not any((root / "imports").glob("*")), "the extracted zip was left behind"
    with Session() as session:
        stored = [Path(item.path) for item in queries.items(session, project.id)]
        skipped = {i.path: i.reason for i in queries.import_issues(session, project.id)}
    assert len(stored) == 10 and all(p.is_file() and p.is_relative_to(root / "projects") for p in stored)
    assert set(skipped) == {"dog/readme.txt", "cat/bad.png"}


def test_refused_zip_import_leaves_nothing(Session, tmp_path):
    flat = make_zip(tmp_path / "flat.zip", [(f"{i}.png", png(i)) for i in range(5)])
    before = data_files()
    with pytest.raises(ValueError, match="no class folders"):
        projects.create_project(Session, "flat", f"zip:{flat}")
    assert data_files() == before
    assert flat.exists(), "the user's own zip is not ours to delete"


def test_an_upload_is_removed_when_its_import_ends(Session, tmp_path):
    from labeler.ui.project import remove_upload, save_upload

    flat = make_zip(tmp_path / "flat.zip", [(f"{i}.png", png(i)) for i in range(5)])
    before = data_files()
    source = save_upload(flat.read_bytes())
    try:
        with pytest.raises(ValueError, match="no class folders"):
            projects.create_project(Session, "flat", source)
    finally:
        remove_upload(source)
    assert data_files() == before, "the upload or its extraction was left behind"
    remove_upload(f"zip:{flat}")  # a zip elsewhere is never removed
    assert flat.exists()


# ---- a full disk


def test_disk_full_while_extracting_leaves_no_file(Session, tmp_path, monkeypatch):
    archive = class_zip(tmp_path / "pets.zip")
    calls = []

    def fills_up(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by the wrapper
        calls.append(path)
        return _FillsUp(file, room=50) if len(calls) == 4 else file

    monkeypatch.setattr(importer, "open", fills_up, raising=False)
    before = data_files()
    with pytest.raises(DiskFull, match="ran out of space while extracting pets.zip; free some space"):
        projects.create_project(Session, "pets", f"zip:{archive}")
    assert len(calls) == 4
    assert data_files() == before


def test_disk_full_while_saving_the_pixels_leaves_no_file(Session, tmp_path, monkeypatch):
    archive = class_zip(tmp_path / "pets.zip")

    def partial_save(path, array, *args, **kwargs):
        Path(path).write_bytes(b"\x93NUMPY" + bytes(100))  # what a write cut short leaves
        no_space()

    before = data_files()
    with monkeypatch.context() as patch:
        patch.setattr(projects.np, "save", partial_save)
        with pytest.raises(DiskFull, match="ran out of space while storing the images; free some space"):
            projects.create_project(Session, "pets", f"zip:{archive}")
    assert data_files() == before, "a partial pixel file or extracted files were left behind"
    with Session() as session:
        assert queries.list_projects(session) == []

    # Space was freed: the same import now works.
    project = projects.create_project(Session, "pets", f"zip:{archive}")
    assert projects.pixels(project.id).shape == (10, 1, 28, 28)


def test_disk_full_while_copying_a_folder_leaves_the_disk_as_it_was(Session, tmp_path, monkeypatch):
    source = tmp_path / "src"
    for k, c in enumerate(("cat", "dog")):
        for i in range(3):
            (source / c).mkdir(parents=True, exist_ok=True)
            (source / c / f"{i}.png").write_bytes(png(10 * k + i))
    originals = {p: p.read_bytes() for p in source.rglob("*.png")}
    copies = []

    def partial_copy(data, dst, made):
        copies.append(dst)
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes(b"\x89PNG" if len(copies) == 3 else data)
        if len(copies) == 3:
            no_space()

    monkeypatch.setattr(staging, "_write_copy", partial_copy)  # a folder import keeps copies
    before = data_files()
    with pytest.raises(DiskFull, match="free some space"):
        projects.create_project(Session, "pets", f"folder:{source}")
    assert data_files() == before
    assert {p: p.read_bytes() for p in source.rglob("*.png")} == originals


def test_a_full_disk_under_the_staging_database_is_one_sentence_and_leaves_nothing(
    Session, tmp_path, monkeypatch
):
    """SQLite's "database or disk is full" from the staging folder's own database ended the
    import in a traceback and left the staging folder and its lock (exploratory, a tmpfs)."""
    import sqlite3

    source = tmp_path / "src"
    for k, c in enumerate(("cat", "dog")):
        (source / c).mkdir(parents=True)
        (source / c / "0.png").write_bytes(png(k))
    real_connect = staging._connect

    def fills_up(folder):
        real_connect(folder).close()  # the file is there, as on a real disk
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorname = "SQLITE_FULL"  # as SQLite sets it
        raise error

    monkeypatch.setattr(staging, "_connect", fills_up)
    before = data_files()
    with pytest.raises(
        DiskFull, match=r"^The disk ran out of space while reading the images; free some space"
    ):
        projects.create_project(Session, "pets", f"folder:{source}")
    assert data_files() == before
    monkeypatch.setattr(staging, "_connect", real_connect)
    assert projects.create_project(Session, "pets", f"folder:{source}").name == "pets"  # space freed


# ---- nesting


def test_zip_entry_nested_too_deep_is_skipped_with_a_reason(tmp_path):
    deep = "d/" * 1100 + "deep.png"
    archive = class_zip(tmp_path / "deep.zip", [(deep, png(99))])
    data = import_zip(archive, target=tmp_path / "t")
    assert len(data.keys) == 10
    assert dict(data.skipped) == {deep: importer.TOO_DEEP}


def test_folder_nested_too_deep_is_skipped_with_a_reason(tmp_path):
    root = tmp_path / "src"
    for k, c in enumerate(("cat", "dog")):
        (root / c).mkdir(parents=True)
        (root / c / "0.png").write_bytes(png(k))
    folder = root / "cat"
    for _ in range(1100):  # one level at a time: os.makedirs itself recurses
        folder = folder / "d"
        folder.mkdir()
    (folder / "deep.png").write_bytes(png(99))
    try:
        data = import_folder(root)
    finally:
        _remove_upwards(folder, stop=root / "cat")
    assert data.keys == ["cat/0.png", "dog/0.png"]
    ((shown, reason),) = data.skipped
    assert reason == importer.TOO_DEEP and shown == "cat" + "/d" * importer.MAX_DEPTH + "/"


def _remove_upwards(folder: Path, stop: Path) -> None:
    """Remove a deep chain of folders bottom-up (shutil.rmtree, as pytest's cleanup, recurses)."""
    for path in folder.iterdir():
        path.unlink()
    while folder != stop:
        folder.rmdir()
        folder = folder.parent


def test_a_folder_larger_than_the_free_space_is_refused_before_writing(Session, tmp_path, monkeypatch):
    source = tmp_path / "src"
    for k, c in enumerate(("cat", "dog")):
        (source / c).mkdir(parents=True)
        (source / c / "0.png").write_bytes(png(k))
    # Room for the pixel array (2 x 28 x 28 bytes) but not for the copied files as well.
    monkeypatch.setattr(importer, "free_bytes", lambda _path: importer.MIN_FREE_BYTES + 2 * 28 * 28 + 10)
    before = data_files()
    with pytest.raises(DiskFull, match="free some space, then import again"):
        projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
    assert data_files() == before


def test_what_a_killed_import_left_is_swept_a_day_later(Session, tmp_path):
    root = Path(os.environ["LABELER_DATA_DIR"])
    stale, fresh = root / "imports" / "old-1234", root / "imports" / "running-5678"
    upload = root / "uploads" / "old.zip"
    for folder in (stale, fresh):
        (folder / "cat").mkdir(parents=True)
        (folder / "cat" / "1.png").write_bytes(png(1))
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"zip")
    _a_day_old(stale, upload)
    projects.create_project(Session, "pets", f"zip:{class_zip(tmp_path / 'pets.zip')}", audit_size=0)
    assert not stale.exists() and not upload.exists()
    assert (fresh / "cat" / "1.png").exists(), "an import still running must be left alone"


def _a_day_old(*paths: Path) -> None:
    day_and_a_bit = importer.STALE_AFTER_S + 60
    for path in paths:
        os.utime(path, (os.path.getatime(path) - day_and_a_bit, os.path.getmtime(path) - day_and_a_bit))


def test_a_folder_import_sweeps_too_and_no_sweep_takes_a_staging_folder_in_use(Session, tmp_path):
    """Only zip and built-in imports swept, so a killed folder import's staging folder stayed for
    good where only folders were imported; and a sweep judged a staging folder by its own time,
    which an import resumed after a day does not renew (its lock is what says it is in use)."""
    import fcntl

    root = Path(os.environ["LABELER_DATA_DIR"])
    killed, running = root / "imports" / "resume-killed", root / "imports" / "resume-running"
    for folder in (killed, running):
        (folder / "files").mkdir(parents=True)
        (folder / "state.db").write_bytes(b"")
        (folder.parent / f"{folder.name}.lock").write_bytes(b"")
    _a_day_old(killed, running, killed.parent / "resume-killed.lock", running.parent / "resume-running.lock")
    source = tmp_path / "pets"
    for k, c in enumerate(("cat", "dog")):
        (source / c).mkdir(parents=True)
        (source / c / "0.png").write_bytes(png(k))
    with open(running.parent / "resume-running.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another import, resumed
        projects.create_project(Session, "pets", f"folder:{source}", audit_size=0)
        assert not killed.exists() and not (killed.parent / "resume-killed.lock").exists()
        assert (running / "state.db").exists() and (running.parent / "resume-running.lock").exists()


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_a_stray_image_beside_class_folders_says_why_the_folders_are_not_classes(Session, tmp_path, kind):
    """One image at the top level makes the set flat (a flat set may have folders), so its class
    folders are no classes; the refusal said "This data set has no class folders" while there
    were five. It says why and names them."""
    entries = [(f"{cls}/{i}.png", png(i + 10 * n)) for n, cls in enumerate(["cat", "dog"]) for i in range(3)]
    entries.append(("stray.png", png(99)))
    if kind == "zip":
        source = f"zip:{make_zip(tmp_path / 'pets.zip', entries)}"
    else:
        for name, data in entries:
            (tmp_path / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "pets" / name).write_bytes(data)
        source = f"folder:{tmp_path / 'pets'}"
    with pytest.raises(ValueError, match=r"make it a flat set, so its folders \(cat, dog\) are not classes"):
        projects.create_project(Session, f"pets-{kind}", source)


def test_class_folders_that_differ_only_in_case_are_two_classes_and_the_import_says_so(Session, tmp_path):
    """`star/` beside `Star/` was imported as two classes without a word (exploratory session):
    two classes still (letters have "a" and "A"), and the import says so."""
    source = tmp_path / "src"
    for k, c in enumerate(("star", "Star", "moon")):
        (source / c).mkdir(parents=True)
        (source / c / "0.png").write_bytes(png(k))
    project = projects.create_project(Session, "sky", f"folder:{source}")
    with Session() as session:
        names = queries.class_names(session, project.id)
    assert sorted(names) == ["Star", "moon", "star"]
    assert projects.case_note(names) == (
        "The classes 'Star' and 'star' differ only in case, so they are two classes; "
        "rename one on the Label page if they are one."
    )
    assert projects.case_note(["a", "b"]) is None


def test_a_sweep_s_look_at_a_lock_does_not_refuse_the_import_that_takes_it(tmp_path):
    """The sweep's probe holds the lock for a moment: an import taking it then was told the
    folder was being imported already."""
    import fcntl
    import threading
    import time

    staging_dir = tmp_path / "imports" / "resume-x"
    staging_dir.mkdir(parents=True)
    lock_path = staging_dir.parent / "resume-x.lock"
    lock = open(lock_path, "a")  # noqa: SIM115 - closed by the thread below, as an import ends
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Thread(target=lambda: (time.sleep(0.2), lock.close()), daemon=True).start()
    with staging.exclusive(staging_dir):
        pass
