"""A folder import that streams and resumes: a million images in bounded memory.

`stage_folder` reads a folder (the layout of `labeler.data.importer`) into a staging folder a
chunk of `CHUNK` files at a time:

    state.db      SQLite: the accepted images (row, key, sha256), the skipped files, and how
                  far the walk got; one transaction per chunk
    pixels.npy    uint8 (candidates, C, S, S), written a chunk of rows at a time (`PixelFile`);
                  row i = the i-th accepted image
    files/<key>   copies of the original files

No list of decoded images, file names or digests is held in memory: duplicates are found through
the UNIQUE sha256 column, and the folder is walked again rather than listed (`importer.scan`
yields in a fixed, sorted order). A chunk's pixels are synced to disk before its transaction
commits, so what state.db says was imported is on disk. After a kill, calling `stage_folder`
again with the same folder and staging folder continues after the last committed chunk: the
rows of an unfinished chunk are written again, never twice, and nothing committed is lost. If
the folder changed in between (names, sizes or modification times), the import starts over.

Channels and size: images are stored with one channel (28x28 unless a size is given) while
every image seen is gray; the first colour image decodes the images so far again, from their
copies, into a new three-channel array (32x32 unless given), which that chunk's commit
switches to, so the result is what reading the folder in one go gives.

`projects.create_project` calls this for folder sources, then adds the items to the database
(`staged_items`) and moves pixels.npy and files/ into the project.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import importer
from .base import DataError
from .images import MAX_FILE_BYTES, MAX_PIXELS, ImageSkipped, check_and_decode, decode_image
from .importer import (
    COLOUR_SIZE,
    GRAY_SIZE,
    MIN_FREE_BYTES,
    DiskFull,
    _check_folder_import,
    _data_root,
    _nothing_imported,
    disk_full,
    scan,
)

Progress = Callable[[int, int], None]
CHUNK = 1024  # files per transaction: what an interrupted import may have to read again
TOKEN = ".import-token"  # in a project's folder: which staging moved its files there (`move_into`)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY, key TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS skipped (id INTEGER PRIMARY KEY, path TEXT NOT NULL, reason TEXT NOT NULL);
"""


@dataclass
class Staged:
    """A finished staging: everything `create_project` needs, on disk in `folder`."""

    folder: Path
    pixels_name: str  # pixels.npy, or pixels-3.npy after a switch to colour
    count: int  # accepted images, rows 0..count-1 of the pixel array
    shape: tuple[int, int, int]
    classes: list[str]
    class_folders: bool  # keys start with a class folder (truth known)
    # A flat set with images in folders too (a few of those folders): images at the top level
    # make the set flat, so its folders are not classes (the project page says why).
    subfolders: tuple[str, ...] = ()

    @property
    def pixels_path(self) -> Path:
        return self.folder / self.pixels_name

    @property
    def files(self) -> Path:
        return self.folder / "files"

    def connect(self) -> sqlite3.Connection:
        return _connect(self.folder)

    def items(self, chunk: int = 10_000) -> Iterator[list[tuple[int, str, str, int]]]:
        """(row, key, sha256, truth or -1) of every accepted image, by row, `chunk` at a time."""
        index = {name: i for i, name in enumerate(self.classes)}
        with contextlib.closing(self.connect()) as db:
            cursor = db.execute("SELECT row, key, sha256 FROM items ORDER BY row")
            while rows := cursor.fetchmany(chunk):
                yield [
                    (row, key, sha, index[key.split("/")[0]] if self.class_folders else -1)
                    for row, key, sha in rows
                ]

    def move_into(self, target: Path) -> None:
        """Move the pixel array (as pixels.npy) and files/ into the new project's folder `target`,
        noting it first, so that `reclaim` can bring them back if the project is never committed.

        A token goes into `target` and into state.db first: after a kill the project's id was
        never committed and the next project may get it (SQLite reuses the highest id), and that
        project's own files must not be taken back for this import (`reclaim`)."""
        token = secrets.token_hex(16)
        (target / TOKEN).write_text(token)
        with contextlib.closing(self.connect()) as db:
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("moved_to", str(target)), ("moved_token", token)],
            )
        os.replace(self.pixels_path, target / "pixels.npy")
        if self.files.exists():
            os.replace(self.files, target / "files")

    def skipped(self, chunk: int = 10_000) -> Iterator[list[tuple[str, str]]]:
        with contextlib.closing(self.connect()) as db:
            cursor = db.execute("SELECT path, reason FROM skipped ORDER BY id")
            while rows := cursor.fetchmany(chunk):
                yield rows


def staging_folder(root: Path, source: str, name: str, image_size: int | None, classes) -> Path:
    """The staging folder of one import: the same source, project name and options give the
    same folder, so a second import of a folder finds the first one's work."""
    ident = "\0".join([str(Path(source).resolve()), name, str(image_size), ",".join(classes or [])])
    return root / f"resume-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def exclusive(staging: Path) -> Iterator[None]:
    """Hold the staging folder for one import at a time: a second import of the same folder
    under the same name while the first runs is refused in one sentence (an exclusive lock on
    staging.lock, released by the system when a process dies, so a kill leaves no stale lock)."""
    import fcntl

    staging.parent.mkdir(parents=True, exist_ok=True)
    path = staging.parent / f"{staging.name}.lock"
    with open(path, "a") as lock:
        for attempt in range(20):  # a sweep's look at the lock (importer._lock_held) holds it briefly
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    raise DataError(
                        "This folder is being imported under this name already; wait for that import to finish."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            if not staging.exists():  # finished or cleared: nothing left to continue
                path.unlink(missing_ok=True)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def reclaim(staging: Path) -> None:
    """Bring back what `Staged.move_into` moved into a project that was never committed (a kill
    or an error while the items were added). If it is gone, or the folder is another project's
    now (a kill left the id uncommitted and the next project got it: `move_into`'s token differs),
    the import starts over at its next run, unless the pixels never left the staging folder."""
    if not (staging / "state.db").exists():
        return
    with contextlib.closing(_connect(staging)) as db:
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT name, value FROM meta"))
        if "moved_to" not in meta:
            return
        target, pixels = Path(meta["moved_to"]), staging / meta.get("pixels", "pixels.npy")
        # Without our token the folder is another project's now (its files are not ours to take);
        # a staging from before tokens has none to compare, so it starts over too.
        if meta.get("moved_token") is not None and _token(target) == meta["moved_token"]:
            with contextlib.suppress(OSError):
                if not pixels.exists():
                    os.replace(target / "pixels.npy", pixels)
                if (target / "files").exists() and not (staging / "files").exists():
                    os.replace(target / "files", staging / "files")
        if pixels.exists():
            db.execute("DELETE FROM meta WHERE name IN ('moved_to', 'moved_token')")
        else:
            db.execute("DELETE FROM meta")  # nothing left to continue from: start over


def _token(folder: Path) -> str | None:
    try:
        return (folder / TOKEN).read_text()
    except OSError:
        return None


def _connect(folder: Path) -> sqlite3.Connection:
    db = sqlite3.connect(folder / "state.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _fingerprint(folder: Path, data_root: Path, max_file_bytes: int) -> tuple[str, int, int]:
    """(digest of every candidate's key, size and mtime; number of candidates; their bytes)."""
    digest, count, size = hashlib.sha256(), 0, 0
    for key, path, _, reason in scan(folder, data_root, max_file_bytes):
        if reason is not None:
            continue
        info = os.lstat(path)
        digest.update(f"{key}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count, size = count + 1, size + info.st_size
    return digest.hexdigest(), count, size


def stage_folder(
    path: str | Path,
    staging: Path,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    progress: Progress | None = None,
    max_pixels: int = MAX_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
    chunk: int | None = None,
) -> Staged:
    """Read folder `path` into `staging` (see the module docstring), continuing an interrupted
    run there. progress(done, total) counts candidate files. Raises DataError when the folder
    is missing or nothing in it can be imported, DiskFull when the disk fills up."""
    folder = Path(path)
    image_size, classes = _check_folder_import(folder, image_size, classes)
    chunk = chunk or CHUNK
    data_root = _data_root(folder)
    fingerprint, total, total_bytes = _fingerprint(folder, data_root, max_file_bytes)

    staging.mkdir(parents=True, exist_ok=True)
    reclaim(staging)
    db = _connect(staging)
    try:
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT name, value FROM meta"))
        if meta.get("fingerprint") != fingerprint:  # new, or the folder changed: start over
            db.executescript("DELETE FROM items; DELETE FROM skipped; DELETE FROM meta;")
            for stale in ("pixels.npy", "pixels-3.npy", "files"):
                _remove(staging / stale)
            _check_space(staging, total, total_bytes, image_size or GRAY_SIZE)
            meta = {
                "fingerprint": fingerprint,
                "next": "0",
                "channels": "1",
                "size": str(image_size or 0),
                "pixels": "pixels.npy",
            }
            db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        _stage(
            db,
            folder,
            data_root,
            staging,
            meta,
            total,
            image_size,
            progress,
            max_pixels,
            max_file_bytes,
            chunk,
        )
        count = db.execute("SELECT count(*) FROM items").fetchone()[0]
        if not count:
            reasons = db.execute("SELECT path, reason FROM skipped ORDER BY id LIMIT 3").fetchall()
            n_skipped = db.execute("SELECT count(*) FROM skipped").fetchone()[0]
            raise DataError(_nothing_imported(str(path), reasons + [("", "")] * (n_skipped - len(reasons))))
        flat = db.execute("SELECT count(*) FROM items WHERE instr(key, '/') = 0").fetchone()[0]
        channels, size = int(meta["channels"]), int(meta["size"])
        subfolders: tuple[str, ...] = ()
        if flat:
            class_names, class_folders = list(classes or []), False
            subfolders = tuple(
                name
                for (name,) in db.execute(
                    "SELECT DISTINCT substr(key, 1, instr(key, '/') - 1) FROM items WHERE instr(key, '/') > 0 LIMIT 5"
                )
            )
        else:
            found = [
                name
                for (name,) in db.execute("SELECT DISTINCT substr(key, 1, instr(key, '/') - 1) FROM items")
            ]
            class_names = list(classes) if classes is not None else sorted(found)
            missing = sorted(set(found) - set(class_names))
            if missing:
                raise DataError(
                    f"The folders {', '.join(missing)} in {path} are not among the given classes; "
                    "add them to the class names or remove those folders."
                )
            class_folders = True
            known = {shown for (shown,) in db.execute("SELECT path FROM skipped")}  # a resumed import
            db.executemany(
                "INSERT INTO skipped (path, reason) VALUES (?, ?)",
                [
                    row
                    for row in importer.unused_class_folders(folder, data_root, class_names)
                    if row[0] not in known
                ],
            )
    finally:
        db.close()
    _truncate(staging / meta["pixels"], count)
    return Staged(
        staging, meta["pixels"], count, (channels, size, size), class_names, class_folders, subfolders
    )


def _stage(
    db: sqlite3.Connection,
    folder: Path,
    data_root: Path,
    staging: Path,
    meta: dict,
    total: int,
    image_size: int | None,
    progress: Progress | None,
    max_pixels: int,
    max_file_bytes: int,
    chunk: int,
) -> None:
    start = int(meta["next"])  # candidates (files that may be images) done, in walk order
    channels = int(meta["channels"])
    size = int(meta["size"]) or None  # fixed by the first image when not given
    kept = db.execute("SELECT count(*) FROM items").fetchone()[0]
    pixels = PixelFile(staging / meta["pixels"]) if size else None
    if progress is not None:
        progress(start, total)
    position = 0  # candidates seen so far in this walk
    pending: list[tuple[int, str, str]] = []  # (row, key, sha256) of this chunk
    decoded: list[np.ndarray] = []  # their pixels, rows kept .. kept + len(pending)
    skips: list[tuple[str, str]] = []
    digests: dict[str, str] = {}  # this chunk's, not yet in state.db
    made: set[Path] = set()  # folders of files/ made so far

    def target(gray: bool) -> tuple[int, int]:
        """(size, channels) for this image; the first colour image switches the array to colour."""
        nonlocal pixels, size, channels, decoded
        if size is None:
            size = image_size or (GRAY_SIZE if gray else COLOUR_SIZE)
            channels = 1 if gray else 3
            meta.update(size=str(size), channels=str(channels))
            pixels = PixelFile(staging / meta["pixels"], (total, channels, size, size))
        elif channels == 1 and not gray:
            size, channels = image_size or COLOUR_SIZE, 3
            keys = [k for (k,) in db.execute("SELECT key FROM items ORDER BY row")]
            pixels.close()
            pixels = _to_colour(staging, keys, total, size, max_pixels)
            decoded = [
                decode_image((staging / "files" / k).read_bytes(), size, 3, max_pixels) for _, k, _ in pending
            ]
            meta.update(channels="3", size=str(size), pixels="pixels-3.npy")
        return size, channels

    for key, path, shown, reason in scan(folder, data_root, max_file_bytes):
        if position < start:  # done before the interruption, skips included
            position += reason is None
            continue
        if reason is not None:
            skips.append((shown, reason))
            continue  # not a candidate: committed with the next one
        if position >= total:
            raise DataError(f"Files were added to {folder} during the import; import it again.")
        position += 1
        row = kept + len(pending)
        try:
            data = Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            first = digests.get(digest) or _first_key(db, digest)
            if first is not None:
                raise ImageSkipped(importer.duplicate_reason(key, first))
            _, image = check_and_decode(data, key, target, max_pixels)
            _write_copy(data, staging / "files" / key, made)
        except ImageSkipped as error:
            skips.append((shown, error.reason))
        except OSError as error:
            raise disk_full(error, "importing the images") or DataError(
                f"Could not read or copy {shown} ({error.strerror or error}); check the folder and import again."
            ) from None
        else:
            digests[digest] = key
            pending.append((row, key, digest))
            decoded.append(image)
        if position - start >= chunk:
            kept = _commit(db, pixels, pending, decoded, skips, meta, position, kept)
            pending, decoded, skips, digests, start = [], [], [], {}, position
            if progress is not None:
                progress(position, total)
    if position < total:
        raise DataError(f"Files were removed from {folder} during the import; import it again.")
    _commit(db, pixels, pending, decoded, skips, meta, position, kept)
    if pixels is not None:
        pixels.close()
    if progress is not None:
        progress(total, total)


def _first_key(db: sqlite3.Connection, digest: str) -> str | None:
    row = db.execute("SELECT key FROM items WHERE sha256 = ?", (digest,)).fetchone()
    return row[0] if row else None


def _commit(db, pixels, pending, decoded, skips, meta, done: int, kept: int) -> int:
    """Make one chunk durable: its pixels are written and synced (its files are copied) before
    its rows and the walk's position commit together."""
    if decoded:
        pixels.write(kept, np.stack(decoded))
    if pixels is not None:
        pixels.sync()
    db.execute("BEGIN")
    db.executemany("INSERT INTO items (row, key, sha256) VALUES (?, ?, ?)", pending)
    db.executemany("INSERT INTO skipped (path, reason) VALUES (?, ?)", skips)
    meta["next"] = str(done)
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
    db.execute("COMMIT")
    return kept + len(pending)


class PixelFile:
    """A uint8 .npy array of shape (N, C, S, S) on disk, written a block of rows at a time with
    pwrite: unlike a memory map, the rows written never stay in this process' resident memory."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int] | None = None):
        if shape is None:  # an existing file
            self.fd = os.open(path, os.O_RDWR)
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                shape, _, _ = _HEADER_IO[version][0](f)
                self.offset = f.tell()
        else:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "|u1", "fortran_order": False, "shape": tuple(int(n) for n in shape)}
            )
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.pwrite(self.fd, header.getvalue(), 0)
            self.offset = len(header.getvalue())
            os.ftruncate(self.fd, self.offset + int(np.prod(shape)))
        self.row_bytes = int(np.prod(shape[1:]))

    def write(self, row: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=np.uint8)
        os.pwrite(self.fd, memoryview(data).cast("B"), self.offset + row * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _to_colour(
    staging: Path, keys: list[str], total: int, size: int, max_pixels: int, block: int = 1024
) -> PixelFile:
    """A new three-channel array (pixels-3.npy) with the committed images decoded again from
    their copies, at `size`: what reading the folder in one go gives a set with colour in it."""
    colour = PixelFile(staging / "pixels-3.npy", (total, 3, size, size))
    for start in range(0, len(keys), block):
        images = [
            decode_image((staging / "files" / key).read_bytes(), size, 3, max_pixels)
            for key in keys[start : start + block]
        ]
        colour.write(start, np.stack(images))
    colour.sync()
    return colour


_HEADER_IO = {
    (1, 0): (np.lib.format.read_array_header_1_0, np.lib.format.write_array_header_1_0),
    (2, 0): (np.lib.format.read_array_header_2_0, np.lib.format.write_array_header_2_0),
}


def _truncate(path: Path, count: int) -> None:
    """Cut the array at `path` to its first `count` rows: a new header of the same length and
    a shorter file, no copy (a copy in chunks where the header would change length)."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read, write = _HEADER_IO[version]
        shape, fortran, dtype = read(f)
        offset = f.tell()
        if shape[0] == count:
            return
        header = io.BytesIO()
        write(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": fortran,
                "shape": (count, *shape[1:]),
            },
        )
        if len(header.getvalue()) == offset:
            f.seek(0)
            f.write(header.getvalue())
            f.truncate(offset + count * int(np.prod(shape[1:])) * dtype.itemsize)
            f.flush()
            os.fsync(f.fileno())
            return
    old = np.load(path, mmap_mode="r")
    tmp = path.with_suffix(".tmp.npy")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=old.dtype, shape=(count, *old.shape[1:]))
    for a in range(0, count, 65_536):
        new[a : a + 65_536] = old[a : a + 65_536]
    new.flush()
    del new, old
    os.replace(tmp, path)


def _write_copy(data: bytes, destination: Path, made: set[Path]) -> None:
    """Keep the original file (its bytes, already read) in files/."""
    if destination.parent not in made:
        destination.parent.mkdir(parents=True, exist_ok=True)
        made.add(destination.parent)
    destination.write_bytes(data)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_space(staging: Path, total: int, total_bytes: int, size: int) -> None:
    """Refuse, before writing, an import that would leave less than MIN_FREE_BYTES free (its
    gray pixel array and the copies of its files)."""
    needed = total * size * size + total_bytes
    free = importer.free_bytes(staging)
    if free is not None and needed > free - MIN_FREE_BYTES:
        raise DiskFull(
            f"The import needs {importer.mib(needed)} but the disk of {staging} has "
            f"{importer.spare_words(free)}; free some space, then import again."
        )
