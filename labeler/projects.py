"""Projects on disk: create one from a data source, and find its pixels, files and checkpoints.

Layout under the data folder:

    projects/<id>/pixels.npy        uint8 (N, C, H, W), row i = Item.row i
    projects/<id>/files/...         original image files of folder and zip imports
    projects/<id>/runs/<run>.pt     checkpoints
    projects/<id>/exports/<time>-<random>/...  one export made in the app (kept a day)

Creating a project either completes or leaves the disk as it was: a zip is extracted into a
scratch folder under `imports/` that is removed when the import ends, whatever its outcome,
and a failed creation (a refused data set, a full disk) removes the project's folder with any
partial file in it.

With a shared store (`LABELER_STORAGE_URL`, see `storage.py`) the data folder is a working
copy: creating a project puts its pixels and files in the store before the project exists in
the database, a worker puts each checkpoint there (`publish`), and `pixels()` and `local_file()`
fetch a file this machine lacks, so an app server or a worker needs only the database and the
store. Without one, nothing here touches anything but the data folder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import AUDIT, POOL, TEST, ImportIssue, Item, LabelClass, Project

from .config import check_int, data_dir, database_trouble, storage_url
from .data import importer
from .data.base import DataError, ImageSet
from .data.importer import disk_full, scratch_folder
from .storage import StorageError

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS = {
    "model": "m2",
    "strategy": "entropy",
    "budget_s": 60,
    "auto_retrain_every": 10,
    "audit_size": 50,
}
MAX_CLASSES = 100


def project_dir(project_id: int) -> Path:
    return data_dir() / "projects" / str(project_id)


def pixels_path(project_id: int) -> Path:
    return project_dir(project_id) / "pixels.npy"


def checkpoint_path(project_id: int, run_id: int) -> Path:
    return project_dir(project_id) / "runs" / f"{run_id}.pt"


@functools.lru_cache(maxsize=16)
def _load_pixels(path: str, mtime: float) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def pixels(project_id: int) -> np.ndarray:
    """The project's images as uint8 (N, C, H, W), memory-mapped (read-only)."""
    path = pixels_path(project_id)
    if not path.exists() and local_file(path) is None:
        raise DataError(f"The pixel file of project {project_id} is missing ({path}); import the data again.")
    return _load_pixels(str(path), path.stat().st_mtime)


def image(project_id: int, row: int) -> np.ndarray:
    """One image as (H, W) or (H, W, 3) uint8, for display."""
    array = np.asarray(pixels(project_id)[row])
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


# A stored path names a file by its key below the data folder of the machine that wrote it;
# the first "projects/<id>/" followed by one of the project's own entries starts that key.
_KEY = re.compile(r"(?:^|/)(projects/\d+/(?:pixels\.npy$|runs/|files/|exports/).*)$")


def storage_key(path: str | Path) -> str | None:
    """The key of a project file (`projects/<id>/...`) from its path on this or another
    machine, or None for a file outside any project's folder."""
    path = Path(path)
    with contextlib.suppress(ValueError):
        key = path.relative_to(data_dir()).as_posix()
        return key if _KEY.match(key) else None
    match = _KEY.search(path.as_posix())
    return match.group(1) if match else None


def local_file(path: str | Path | None) -> Path | None:
    """This machine's copy of a project file (pixels, an original file, a checkpoint) whose
    path was stored on this or another machine: the path itself when it exists, else the file
    under its key in this data folder (a data folder moved or restored elsewhere: the paths
    stored name its old place; the originals and the model went missing from exports without
    a word), else the file fetched from the store into the data folder; None when it is
    nowhere."""
    if not path:
        return None
    path = Path(path)
    if path.exists():
        return path
    key = storage_key(path)
    if key is None:
        return None
    local = data_dir() / key
    if not local.resolve().is_relative_to(data_dir()):  # a key with ".." from a tampered path
        return None
    if local.exists():
        return local
    if storage_url() is None:  # the default: the data folder is the only copy
        return None
    from .storage import store

    shared = store()
    if shared is None or not shared.get(key, local):
        return None
    return local


def publish(path: str | Path) -> None:
    """Put a file of the data folder into the store (a no-op without one), under its key."""
    from .storage import store

    shared = store()
    if shared is None:
        return
    key = storage_key(path)
    if key is not None:
        shared.put(path, key)


def _publish_project(project_id: int, files: list[str | None]) -> None:
    """Put a new project's pixels and original files into the store, first clearing what a
    deleted database may have left under its id."""
    from .storage import store

    shared = store()
    if shared is None:
        return
    prefix = f"projects/{project_id}"
    shared.remove(prefix)
    stored = [f for f in files if f is not None]
    shared.put_many(
        [pixels_path(project_id), *stored], [f"{prefix}/pixels.npy", *(storage_key(f) for f in stored)]
    )


def _unpublish_project(project_id: int) -> None:
    from .storage import store

    with contextlib.suppress(Exception):  # the original error is the one to report
        shared = store()
        if shared is not None:
            shared.remove(f"projects/{project_id}")


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValueError("A project name must be 1 to 200 characters long.")
    return name


def create_project(
    Session: sessionmaker[Session],
    name: str,
    source: str,
    images: ImageSet | None = None,
    classes: list[str] | None = None,
    audit_size: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Project:
    """Read `source` (unless `images` is given), store pixels and files, and add the items.

    Classes come from the source (built-ins, class folders) or from `classes`. For data with no
    test split, a random audit set of `audit_size` pool items is held out of training so the
    app can report an honest accuracy. Whatever the outcome, nothing is left in `imports/`;
    on any error nothing is left of the project either (see the module docstring).
    """
    name = validate_name(name)
    if audit_size is not None:  # before reading: a folder or built-in set can take minutes
        check_int("The audit set size", audit_size, 0, 10_000)
    with Session() as session:
        if queries.get_project(session, name) is not None:
            raise ValueError(f"A project named {name!r} exists already; choose another name.")
    if images is not None:
        return _create(Session, name, source, images, classes, audit_size, seed, scratch=None)
    folder = _folder_of(source)
    if folder is not None:
        return _create_from_folder(Session, name, source, folder, classes, audit_size, seed, progress)
    from .data import read_source

    with scratch_folder(Path(source.partition(":")[2] or source).stem) as scratch:
        images = read_source(source, progress=progress, target=scratch)
        return _create(Session, name, source, images, classes, audit_size, seed, scratch)


def _folder_of(source: str) -> Path | None:
    """The folder of a folder source (`folder:PATH`, or a bare path to a folder), else None."""
    from .data import DATASETS, source_path

    source = source.strip()
    if source in DATASETS:
        return None
    kind, sep, rest = source.partition(":")
    if sep and kind == "folder":
        return source_path(kind, rest)
    if sep and kind == "zip":
        source_path(kind, rest)  # refused when empty
        return None
    return Path(source) if Path(source).is_dir() else None


def _settings_and_classes(
    found: list[str], classes: list[str] | None, audit_size: int | None, subfolders=()
) -> tuple[list[str], dict]:
    """`subfolders`: a few folders of a flat set (images at its top level make it flat)."""
    class_list = list(found) or [c.strip() for c in (classes or []) if c.strip()]
    if not class_list and subfolders:
        raise ValueError(
            "Images at the top level of this folder make it a flat set, so its folders "
            f"({', '.join(subfolders)}) are not classes: move those images into class folders to use "
            "the folders as classes, or give the class names."
        )
    if not class_list:
        raise ValueError("This data set has no class folders: give the class names (e.g. cat, dog).")
    if len(set(class_list)) != len(class_list):
        raise ValueError("Class names must be different from each other.")
    check_int("The number of classes", len(class_list), 2, MAX_CLASSES)
    settings = dict(DEFAULT_SETTINGS)
    if audit_size is not None:
        settings["audit_size"] = check_int("The audit set size", audit_size, 0, 10_000)
    return class_list, settings


def _create_from_folder(
    Session: sessionmaker[Session],
    name: str,
    source: str,
    path: Path,
    classes: list[str] | None,
    audit_size: int | None,
    seed: int,
    progress: Callable[[int, int], None] | None,
    chunk: int = 10_000,
) -> Project:
    """A folder import that streams and resumes (`labeler.data.staging`): the images are staged
    a chunk at a time under `imports/`, then moved into the project while its items are added,
    `chunk` rows per statement, in one transaction. An import that is killed or fails continues
    where it stopped when it is started again with the same folder and name."""
    from .data import staging as stage

    scratch = stage.staging_folder(data_dir() / "imports", str(path), name, None, None)
    with stage.exclusive(scratch):
        if scratch.exists():  # resumed: the sweep below (and other imports' sweeps) leave it be
            os.utime(scratch)
        # Folder imports never swept: a killed import's staging folder (1.25 GB for a million
        # images) stayed when no zip or built-in set was imported after it.
        importer.sweep_stale([data_dir() / "imports", data_dir() / "uploads"])
        return _create_staged(
            Session, name, source, path, scratch, classes, audit_size, seed, progress, chunk
        )


def _create_staged(
    Session: sessionmaker[Session],
    name: str,
    source: str,
    path: Path,
    scratch: Path,
    classes: list[str] | None,
    audit_size: int | None,
    seed: int,
    progress: Callable[[int, int], None] | None,
    chunk: int,
) -> Project:
    """`_create_from_folder` while it holds the staging folder `scratch`."""
    from .data import staging as stage

    try:
        try:
            staged = stage.stage_folder(path, scratch, progress=progress)
        except sqlite3.OperationalError as error:  # the staging folder's own database
            if database_trouble(error) != "full":
                raise
            # It ended in a traceback and left the staging folder (exploratory, a full disk).
            raise importer.DiskFull(
                "The disk ran out of space while reading the images; free some space, then import again."
            ) from None
        class_list, settings = _settings_and_classes(staged.classes, classes, audit_size, staged.subfolders)
    except ValueError:  # refused data or settings, a full disk: nothing worth continuing
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    audit = np.zeros(staged.count, dtype=bool)
    if settings["audit_size"] > 0:  # a folder has no test split
        audit[_audit_rows(np.arange(staged.count), settings["audit_size"], seed)] = True
    folder = None
    try:
        with Session.begin() as session:
            project = _add_project(session, name, source, staged.shape, settings)
            folder = project_dir(project.id)
            _empty_folder(folder)
            staged.move_into(folder)
            for index, class_name in enumerate(class_list):
                session.add(LabelClass(project_id=project.id, index=index, name=class_name))
            session.flush()
            files = folder / "files"
            for rows in staged.items(chunk):
                session.execute(
                    insert(Item),
                    [
                        {
                            "project_id": project.id,
                            "row": row,
                            "key": key,
                            "path": str(files / key),
                            "sha256": sha,
                            "split": AUDIT if audit[row] else POOL,
                            "truth": truth if truth >= 0 else None,
                        }
                        for row, key, sha, truth in rows
                    ],
                )
            for rows in staged.skipped(chunk):
                session.execute(
                    insert(ImportIssue), [{"project_id": project.id, "path": p, "reason": r} for p, r in rows]
                )
            queries.analyze(session, "items")
            _publish_staged(project.id, folder, staged, chunk)
    except BaseException as error:
        stored = None if folder is None else _stored_after_all(Session, project.id, name, error)
        if folder is not None and stored is False:
            with contextlib.suppress(sqlite3.Error):  # a full disk: the error below says so
                stage.reclaim(scratch)  # the next import of this folder continues from here
            _discard_project_files(folder, error)
        elif stored:  # a commit whose answer was lost: the project is there, with its files
            shutil.rmtree(scratch, ignore_errors=True)
            return project
        if isinstance(error, OSError):
            raise disk_full(error, "storing the images") or error from None
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return project


def _publish_staged(project_id: int, folder: Path, staged, chunk: int) -> None:
    """`_publish_project` for a streamed import: the files are put `chunk` at a time."""
    from .storage import store

    shared = store()
    if shared is None:
        return
    prefix = f"projects/{project_id}"
    shared.remove(prefix)
    shared.put(folder / "pixels.npy", f"{prefix}/pixels.npy")
    for rows in staged.items(chunk):
        paths = [folder / "files" / key for _, key, _, _ in rows]
        shared.put_many(paths, [storage_key(p) for p in paths])


def _create(
    Session: sessionmaker[Session],
    name: str,
    source: str,
    images: ImageSet,
    classes: list[str] | None,
    audit_size: int | None,
    seed: int,
    scratch: Path | None,
) -> Project:
    subfolders = (
        sorted({key.split("/")[0] for key in images.keys if "/" in key})[:5] if not images.classes else []
    )
    class_list, settings = _settings_and_classes(images.classes, classes, audit_size, subfolders)
    if len(images.pixels) == 0:
        reasons = "; ".join(f"{p}: {r}" for p, r in images.skipped[:5])
        raise DataError(f"No image could be imported from {source}. {reasons}")

    splits = list(images.splits)
    if TEST not in splits and settings["audit_size"] > 0:
        pool_rows = [i for i, s in enumerate(splits) if s == POOL]
        for i in _audit_rows(pool_rows, settings["audit_size"], seed):
            splits[int(i)] = AUDIT

    _check_free_space(images, scratch)
    folder = None
    try:
        with Session.begin() as session:
            project = _add_project(session, name, source, images.shape, settings)
            folder = project_dir(project.id)
            _empty_folder(folder)
            tmp = folder / "pixels.tmp.npy"
            np.save(tmp, np.ascontiguousarray(images.pixels))
            os.replace(tmp, pixels_path(project.id))
            for index, class_name in enumerate(class_list):
                session.add(LabelClass(project_id=project.id, index=index, name=class_name))
            stored = _store_files(folder / "files", images, scratch)
            session.add_all(
                Item(
                    project_id=project.id,
                    row=row,
                    key=images.keys[row],
                    path=stored[row],
                    sha256=images.sha256[row],
                    split=splits[row],
                    truth=int(images.truth[row]) if images.truth[row] >= 0 else None,
                )
                for row in range(len(images.pixels))
            )
            session.add_all(ImportIssue(project_id=project.id, path=p, reason=r) for p, r in images.skipped)
            session.flush()
            queries.analyze(session, "items")  # PostgreSQL: the queue's plans see the new rows
            # Before the commit: a project other machines can see has its files in the store.
            _publish_project(project.id, stored)
    except BaseException as error:
        # The transaction is rolled back; leave no pixel array or file behind (a partial
        # pixels.tmp.npy on a full disk would keep it full).
        stored = None if folder is None else _stored_after_all(Session, project.id, name, error)
        if folder is not None and stored is False:
            _discard_project_files(folder, error)
        elif stored:  # a commit whose answer was lost: the project is there, with its files
            return project
        if isinstance(error, OSError):
            raise disk_full(error, "storing the images") or error from None
        raise
    return project


def case_note(names: list[str]) -> str | None:
    """The sentence the Project page and `import` say when two classes differ only in case
    (`queries.case_twin`: kept as two, as letters need; more often a slip, "star" and "Star")."""
    for k, name in enumerate(names):
        twin = queries.case_twin(name, names[:k])
        if twin is not None:
            return (
                f"The classes {twin!r} and {name!r} differ only in case, so they are two classes; "
                "rename one on the Label page if they are one."
            )
    return None


def capped_audit_note(asked: int | None, n_audit: int, n_test: int) -> str | None:
    """The sentence the Project page and `import` say when the audit set asked for was capped
    at a fifth of the images (`_audit_rows`); None when it was not (or a test split measures)."""
    if asked is None or n_audit >= asked or n_test:
        return None
    return (
        f"The audit set has {n_audit} {'image' if n_audit == 1 else 'images'}, not {asked}: it is at "
        "most a fifth of the images, so most are left to label and train on."
    )


def _audit_rows(rows: np.ndarray | list[int], audit_size: int, seed: int) -> np.ndarray:
    """The audit set drawn from `rows` with `seed`: `audit_size` of them, a fifth at the most."""
    n_audit = min(audit_size, len(rows) // 5)
    return np.random.default_rng(seed).choice(rows, size=n_audit, replace=False)


def _add_project(
    session: Session, name: str, source: str, shape: tuple[int, int, int], settings: dict
) -> Project:
    """Insert a new project's row (flushed, so it has its id)."""
    channels, height, width = shape
    project = Project(
        name=name, source=source, channels=channels, height=height, width=width, settings=settings
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError:  # the name's unique key: a project of that name made since the check
        raise ValueError(
            f"A project named {name!r} was created meanwhile (by someone else?); choose another name."
        ) from None
    return project


def _stored_after_all(
    Session: sessionmaker[Session], project_id: int, name: str, error: BaseException
) -> bool | None:
    """After an import's transaction failed: True when its project is in the database all the
    same (a commit whose answer was lost: the connection dropped after the server committed; its
    files were removed, and the project stayed with "The pixel file ... is missing") and the
    error was not an interrupt; False when it is not there; None when the database cannot say
    (its files are kept: a project may need them)."""
    try:
        with Session() as session:
            stored = session.get(Project, project_id)
            # By its unique name too: SQLite reuses the highest id, so an import that waited
            # for the write lock could have taken it meanwhile.
            there = stored is not None and stored.name == name
    except Exception:
        logger.warning(
            "Import of %r failed and the database cannot say whether project %d was stored; its "
            "folder %s is kept",
            name,
            project_id,
            project_dir(project_id),
            exc_info=True,
        )
        return None
    if there and not isinstance(error, Exception):  # Ctrl-C after the commit: stored, and stop
        return None
    return there


def _empty_folder(folder: Path) -> None:
    """Make a new project's folder, empty."""
    if folder.exists():  # left over from a database that was deleted
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _discard_project_files(folder: Path, error: BaseException) -> None:
    """After a failed import: remove the project's folder and what was put in the store."""
    shutil.rmtree(folder, ignore_errors=True)
    if not isinstance(error, StorageError):  # a store out of reach has nothing to clear
        _unpublish_project(int(folder.name))


def _check_free_space(images: ImageSet, scratch: Path | None) -> None:
    """Refuse, before writing, a project that would leave less than MIN_FREE_BYTES free: its
    pixel array and the files copied in (files moved out of `scratch` need no new space)."""
    needed = images.pixels.nbytes
    for file in images.files:
        if file is not None and not (scratch is not None and Path(file).is_relative_to(scratch)):
            with contextlib.suppress(OSError):
                needed += os.stat(file).st_size
    free = importer.free_bytes(data_dir())
    if free is not None and needed > free - importer.MIN_FREE_BYTES:
        raise importer.DiskFull(
            f"The project needs {importer.mib(needed)} but the disk of {data_dir()} has "
            f"{importer.spare_words(free)}; free some space, then import again."
        )


def _store_files(target: Path, images: ImageSet, scratch: Path | None = None) -> list[str | None]:
    """Keep the original files in the project (so exports do not depend on the source staying):
    moved out of `scratch` (an extracted zip, removed afterwards anyway), else copied."""
    stored: list[str | None] = []
    for key, file in zip(images.keys, images.files):
        if file is None:
            stored.append(None)
            continue
        destination = (target / key).resolve()
        if not destination.is_relative_to(target.resolve()):
            raise DataError(f"Refusing to store {key!r}: it would land outside the project folder.")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if scratch is not None and Path(file).is_relative_to(scratch):
            os.replace(file, destination)
        else:
            shutil.copyfile(file, destination)
        stored.append(str(destination))
    return stored


def ensure_default_project(Session: sessionmaker[Session], name: str = "digits") -> Project:
    """The built-in digits project, created on first start so the app opens ready to label."""
    with Session() as session:
        project = queries.get_project(session, name)
        if project is not None:
            return project
        if queries.list_projects(session):
            return queries.list_projects(session)[0]
    try:
        return create_project(Session, name, "digits")
    except ValueError:  # another process created it at the same moment
        with Session() as session:
            return queries.get_project(session, name)
