"""Import the user's own images: a folder on the server, or a zip extracted safely first.

Folder layout. Wrapper folders are looked through: while the folder holds exactly one
sub-folder and nothing else (hidden files and `__MACOSX` aside), that sub-folder is the data
root, so `photos.zip -> photos/cat/1.png` works like `cat/1.png`. Then:

- every image inside a sub-folder of the data root (at any depth): the first-level folder
  names are the classes (sorted) and the ground truth;
- otherwise (images directly in the root): no classes are known, truth is -1, and the
  caller may pass class names to use.

Keys are paths relative to the data root, with "/" separators. Skipped paths are relative
to the folder given. Symbolic links are never followed, hidden files and non-images are
skipped, and files with the same bytes (sha256) are imported once; each skip has a reason.

Working size: one channel when every image is gray (modes 1, L, LA, I, F, gray palettes),
else three; `image_size` pixels square, by default 28 for gray and 32 for colour (the sizes
of MNIST and CIFAR, which the models are tuned for). Images are letterboxed to it (see
`labeler.data.images`).

Zip: entries are checked before anything is written (count, total size, compression ratio of
each entry and of the whole zip, free disk space, absolute or `..` paths, folders nested more
than `MAX_DEPTH` deep, symbolic links, encryption), then written one by one with exclusive
creation under the target folder, counting the bytes actually written. The extracted files
are the originals of the imported images (`ImageSet.files`) until the caller stores them;
`scratch_folder` gives a folder that is removed again whatever the outcome.

Disk full: a write that fails for lack of space (ENOSPC, EDQUOT) removes its partial file and
ends the import with `DiskFull`, a DataError that says to free space.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .base import DataError, ImageSet
from .images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageSkipped,
    check_image,
    check_image_size,
    decode_image,
    extension_reason,
    file_size_reason,
)

Progress = Callable[[int, int], None]

GRAY_SIZE, COLOUR_SIZE = 28, 32
MAX_ZIP_BYTES = 2 * 2**30  # total uncompressed size
MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_RATIO = 1000  # uncompressed / compressed, for entries over 1 MiB
_RATIO_MIN_BYTES = 2**20
# The same for the whole zip, every entry counted: many small entries of zeros each pass the
# check above (1 MiB of zeros deflates 1015:1), while a zip of real images, even of BMPs, stays
# far below 100:1 overall.
MAX_ZIP_TOTAL_RATIO = 100
_TOTAL_RATIO_MIN_BYTES = 16 * 2**20
MAX_DEPTH = 64  # folder levels below the zip's or folder's root
# Left free on the data folder's disk after an import, so labeling and training can go on.
MIN_FREE_BYTES = 256 * 2**20


def mib(n: int) -> str:
    """A size for a sentence: "0.3 MiB", "42 MiB"."""
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


def spare_words(free: int) -> str:
    """What a disk with `free` bytes has to spare, saying what is kept free ("0 MiB to spare"
    on a 30 MB disk said nothing of the 256 MiB kept)."""
    return f"{mib(max(free - MIN_FREE_BYTES, 0))} to spare (it keeps {MIN_FREE_BYTES // 2**20} MiB free)"


STALE_AFTER_S = 24 * 3600

SYMLINK = "symbolic link"
TOO_DEEP = f"folders nested too deep (more than {MAX_DEPTH} levels)"
HIDDEN_FOLDER = "hidden folder or macOS metadata"  # the import report's reasons, folder and zip alike
HIDDEN_FILE = "hidden file"
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(DataError):
    """The disk ran out of space during an import; whatever was written is removed again."""


def disk_full(error: OSError, what: str) -> DiskFull | None:
    """A DiskFull saying what to do when `error` means "no space left", else None."""
    if getattr(error, "errno", None) not in _DISK_FULL:
        return None
    return DiskFull(f"The disk ran out of space while {what}; free some space, then import again.")


@contextlib.contextmanager
def scratch_folder(name: str = "upload") -> Iterator[Path]:
    """A new, not yet existing path `<data dir>/imports/<name>-<random>`, removed with
    everything in it when the block ends, whatever the outcome."""
    from labeler.config import data_dir

    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40] or "upload"
    path = data_dir() / "imports" / f"{stem}-{uuid.uuid4().hex[:8]}"
    sweep_stale([data_dir() / "imports", data_dir() / "uploads"])
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale(folders: Sequence[Path], max_age_s: float = STALE_AFTER_S) -> None:
    """Remove what a killed process left in `folders` (scratch folders, uploads, a folder
    import's staging folder): entries not modified for `max_age_s`. No import runs that long,
    and a folder import's staging folder whose lock is held (an import resumed after a day, which
    writes nothing new into the folder itself for a while) is never touched."""
    cutoff = time.time() - max_age_s
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                lock = entry.path if entry.name.endswith(".lock") else f"{entry.path}.lock"
                if _lock_held(lock):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


def _lock_held(path: str) -> bool:
    """Whether a process holds the lock file `path` (`staging.exclusive`); False when there is none."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def import_folder(
    path: str | Path,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    progress: Progress | None = None,
    max_pixels: int = MAX_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ImageSet:
    """Import the images in folder `path` (see the module docstring for layout and size).

    classes: class names to use. For a flat folder they become the project's classes (truth
    stays -1); for class sub-folders they fix the class order and must name every sub-folder.
    progress: called as progress(done, total) while images are decoded.
    Raises DataError when the folder is missing or no image in it can be imported.
    """
    return _import_tree(Path(path), str(path), image_size, classes, progress, max_pixels, max_file_bytes, [])


def import_zip(
    path: str | Path,
    target: str | Path | None = None,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    progress: Progress | None = None,
    max_total_bytes: int = MAX_ZIP_BYTES,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_ratio: float = MAX_ZIP_RATIO,
    max_pixels: int = MAX_PIXELS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ImageSet:
    """Extract zip `path` safely into `target`, then import that folder like `import_folder`.

    target: an empty or new folder; by default a new `<data dir>/imports/<zip name>-<random>`.
    The extracted images stay there: they are `ImageSet.files` (use `scratch_folder` for a
    target that is removed afterwards). On any error the folder is removed again when this
    call created it.
    """
    if target is None:
        from labeler.config import data_dir

        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40] or "upload"
        target = data_dir() / "imports" / f"{stem}-{uuid.uuid4().hex[:8]}"
    target = Path(target)
    created = not target.exists()
    try:
        skipped = extract_zip(path, target, max_total_bytes, max_entries, max_ratio, max_file_bytes)
        return _import_tree(
            target, str(path), image_size, classes, progress, max_pixels, max_file_bytes, skipped
        )
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise


def extract_zip(
    path: str | Path,
    target: str | Path,
    max_total_bytes: int = MAX_ZIP_BYTES,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_ratio: float = MAX_ZIP_RATIO,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> list[tuple[str, str]]:
    """Extract the image entries of zip `path` into `target`; return (entry, reason) of the rest.

    Never writes outside `target`. Raises DataError for a file that is not a readable zip,
    a zip with more than `max_entries` entries or more than `max_total_bytes` uncompressed
    (a zip bomb), or a `target` that is not an empty folder.
    """
    path, target = Path(path), Path(target)
    if not path.is_file():
        raise DataError(f"The zip file {path} does not exist; check the path or upload it again.")
    _check_directory(path, max_entries)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        raise DataError(
            f"{path.name} is not a readable zip file ({error}); create the zip again and retry."
        ) from None
    with archive:
        infos = archive.infolist()
        for info in infos:
            info.filename = _entry_name(info)
        if len(infos) > max_entries:  # a count in the end record that lied
            raise _too_many_entries(path, len(infos), max_entries)
        declared = sum(info.file_size for info in infos)
        if declared > max_total_bytes:
            raise DataError(
                f"{path.name} would unpack to {declared / 2**30:.2f} GiB, more than the limit of "
                f"{max_total_bytes / 2**30:.2f} GiB; split it into smaller zips."
            )
        packed = sum(info.compress_size for info in infos)
        if declared > _TOTAL_RATIO_MIN_BYTES and declared > MAX_ZIP_TOTAL_RATIO * max(packed, 1):
            raise DataError(
                f"{path.name} would unpack to {declared / 2**20:.0f} MiB from {packed / 2**20:.1f} MiB "
                f"({declared / max(packed, 1):.0f}:1, a possible zip bomb); zip only the image files "
                "and try again."
            )
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise DataError(f"The import folder {target} is not empty; choose a new folder.")
        free = free_bytes(target)
        if free is not None and declared > free - MIN_FREE_BYTES:
            raise DiskFull(
                f"{path.name} would unpack to {mib(declared)} but the disk of {target.parent} has "
                f"{spare_words(free)}; free some space or split the zip."
            )
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise disk_full(error, f"extracting {path.name}") or error from None
        root = target.resolve()
        skipped: list[tuple[str, str]] = []
        written = 0
        folders: set[tuple[str, ...]] = set()
        hidden_folders: set[str] = set()
        for info in infos:
            folders.add(_folder_of_entry(info))
            parts, reason = _entry_parts(info, max_ratio, max_file_bytes)
            if reason == HIDDEN_FOLDER:  # once, as "folder/" (it was listed file by file)
                shown = "/".join(parts) + "/"
                if shown not in hidden_folders:
                    hidden_folders.add(shown)
                    skipped.append((shown, reason))
                continue
            if reason:
                skipped.append((info.filename, reason))
                continue
            if not parts:  # a folder entry: folders are made as files need them
                continue
            dest = root.joinpath(*parts)
            if not dest.resolve().is_relative_to(root):
                skipped.append((info.filename, "path leaves the zip's folder"))
                continue
            try:
                written += _extract_entry(archive, info, dest, max_total_bytes - written)
            except _EntrySkipped as error:
                skipped.append((info.filename, str(error)))
            except _TooLarge:
                raise DataError(
                    f"{path.name} unpacks to more than {max_total_bytes / 2**30:.2f} GiB; "
                    "split it into smaller zips."
                ) from None
        # Its folders too, those with no image extracted included, as a folder on disk has them:
        # the import report names a class folder with no image (`unused_class_folders`).
        for parts in sorted(folders - {()}):
            folder = root.joinpath(*parts)
            if folder.resolve().is_relative_to(root):
                with contextlib.suppress(OSError):
                    folder.mkdir(parents=True, exist_ok=True)
        return skipped


# Bytes of a zip's central directory per entry allowed, on average: 46 fixed, a path of up to
# about 200 bytes and its extra fields. A longer directory than max_entries of these is refused
# before Python parses it (below).
DIRECTORY_BYTES_PER_ENTRY = 300


def _zip_directory(path: Path) -> tuple[int, int] | None:
    """(entries, bytes) of a zip's central directory as its end record declares them (zip64's
    too), read without parsing the directory; None when there is no end record to read."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - (22 + 0xFFFF))  # the end record, then a comment of <= 64 KiB
        f.seek(tail_start)
        tail = f.read()
        last = at = tail.rfind(b"PK\x05\x06")
        # The record's comment runs to the end of the file (a signature inside a comment does
        # not); with bytes after it, which Python's zipfile accepts, its last signature, as there.
        while at >= 0 and int.from_bytes(tail[at + 20 : at + 22], "little") != len(tail) - at - 22:
            at = tail.rfind(b"PK\x05\x06", 0, at)
        at = last if at < 0 else at
        if at < 0 or len(tail) - at < 22:
            return None
        entries = int.from_bytes(tail[at + 10 : at + 12], "little")
        directory = int.from_bytes(tail[at + 12 : at + 16], "little")
        if entries != 0xFFFF and directory != 0xFFFFFFFF:
            return entries, directory
        # zip64: its locator, and its end record just before (where zipfile reads it: the
        # locator's offset counts from the archive's start, not the file's, in a prefixed zip)
        record = tail[at - 76 : at - 20] if at >= 76 else b""
        if tail[at - 20 : at - 16] != b"PK\x06\x07" or record[:4] != b"PK\x06\x06":
            return None  # zipfile says what it makes of it
        return int.from_bytes(record[32:40], "little"), int.from_bytes(record[40:48], "little")


def _too_many_entries(path: Path, entries: int, max_entries: int) -> DataError:
    return DataError(
        f"{path.name} has {entries} entries, more than the limit of {max_entries}; split it into smaller zips."
    )


def _check_directory(path: Path, max_entries: int) -> None:
    """Refuse a zip of too many entries before `zipfile` reads its directory: Python keeps about
    500 bytes for each entry listed there (86 in the file), so a 200 MB upload of minimal entries
    took over a gigabyte before the count was checked (review)."""
    found = _zip_directory(path)
    if found is None:  # zipfile says why it is not a zip
        return
    entries, directory = found
    if entries > max_entries:
        raise _too_many_entries(path, entries, max_entries)
    if directory > max_entries * DIRECTORY_BYTES_PER_ENTRY:  # a count that lies, or very long names
        raise DataError(
            f"{path.name}'s list of entries takes {directory:,} bytes, more than {max_entries} "
            "entries need; split it into smaller zips (or shorten its folder names)."
        )


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's name as its maker wrote it. A name without the zip's UTF-8 flag is read as
    CP437 (the zip standard's default), but most tools that leave the flag off (macOS's Archive
    Utility, older Windows and Java zips) write UTF-8: "Käse/1.png" became the class "K├ñse".
    A name that reads as UTF-8 is taken as UTF-8 (a CP437 name with accents seldom does)."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def _entry_path(info: zipfile.ZipInfo) -> tuple[list[str], str | None]:
    """An entry's path parts, or the reason its path is refused (a bad name, an absolute path,
    one that leaves the zip, a symlink)."""
    name = info.filename
    if "\0" in name:
        return [], "invalid file name in zip"
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal):
        return [], "absolute path in zip"
    parts = [part for part in normal.split("/") if part not in ("", ".")]
    if ".." in parts:
        return [], "path leaves the zip's folder (..)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return [], SYMLINK
    return parts, None


def _folder_of_entry(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The folder an entry lies in (itself for a folder entry), when its path is a plain one:
    () for the top level and for paths that are refused (`_entry_path`), hidden or too deep."""
    parts, reason = _entry_path(info)
    if not info.is_dir() and not info.filename.replace("\\", "/").endswith("/"):
        parts = parts[:-1]
    if reason or len(parts) > MAX_DEPTH or any(_ignored(part) for part in parts):
        return ()
    return tuple(parts)


def free_bytes(target: Path) -> int | None:
    """Free bytes on the disk that will hold `target` (None when it cannot be told)."""
    folder = target
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class _EntrySkipped(Exception):
    pass


class _TooLarge(Exception):
    pass


def _entry_parts(
    info: zipfile.ZipInfo, max_ratio: float, max_file_bytes: int
) -> tuple[list[str], str | None]:
    """The path parts of an entry to extract, or a reason to skip it with [] ([] and None for
    folders); a hidden entry comes with its parts up to the hidden one (its folder's row)."""
    parts, reason = _entry_path(info)
    if reason:
        return [], reason
    if info.is_dir() or not parts:
        return [], None
    if len(parts) > MAX_DEPTH + 1:
        return [], TOO_DEEP
    hidden = [n for n, part in enumerate(parts) if _ignored(part)]
    if hidden:  # named as a folder import names them: a hidden folder once, with its "/"
        return parts[: hidden[0] + 1], HIDDEN_FOLDER if hidden[0] < len(parts) - 1 else HIDDEN_FILE
    reason = extension_reason(parts[-1])
    if reason:
        return [], reason
    if info.flag_bits & 0x1:
        return [], "encrypted (password-protected) entry"
    reason = file_size_reason(info.file_size, max_file_bytes)
    if reason:
        return [], reason
    if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return [], f"suspicious compression ratio ({ratio:.0f}:1; possible zip bomb)"
    return parts, None


def _extract_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int) -> int:
    """Copy one entry to `dest` (which must not exist); return the bytes written."""
    written = 0
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise disk_full(error, f"extracting {Path(str(archive.filename)).name}") or _EntrySkipped(
            f"cannot write this entry ({error.strerror or error})"
        ) from None
    try:
        with archive.open(info) as source, open(dest, "xb") as out:
            while chunk := source.read(2**20):
                written += len(chunk)
                if written > budget:
                    raise _TooLarge
                out.write(chunk)
    except FileExistsError:
        raise _EntrySkipped("duplicate entry in zip") from None
    except _TooLarge:
        dest.unlink(missing_ok=True)
        raise
    except OSError as error:
        dest.unlink(missing_ok=True)
        raise disk_full(error, f"extracting {Path(str(archive.filename)).name}") or _EntrySkipped(
            f"cannot extract this entry ({error.strerror or error})"
        ) from None
    except Exception as error:  # noqa: BLE001 - BadZipFile (CRC), zlib.error, NotImplementedError ...
        dest.unlink(missing_ok=True)
        raise _EntrySkipped(f"corrupt zip entry ({error})") from None
    return written


def duplicate_reason(key: str, first: str) -> str:
    """Why `key` is skipped as a byte-for-byte copy of the image kept as `first`. Copies in two
    folders say so: in class folders the tree gives one image two classes, and only the first
    folder's is kept (it was a bare "duplicate of", easy to miss among the skips)."""
    folder, first_folder = key.rpartition("/")[0], first.rpartition("/")[0]
    if folder != first_folder:
        return f"duplicate of {first}, in another folder; kept there only"
    return f"duplicate of {first}"


NOT_A_CLASS = (
    "no image in this folder could be imported, so it is not a class (an admin can add the class "
    "on the Label page, under Classes)"
)


def shown_folder(path: str, folder: Path) -> str:
    """A folder as the import report shows it: relative to the imported `folder`, printable,
    ending in "/" so that the report counts it as a folder (`ui.project.skipped_words`)."""
    rel = _printable(Path(os.path.relpath(path, folder)).as_posix())
    return rel if rel == "." else rel + "/"


def unused_class_folders(folder: Path, data_root: Path, classes: Sequence[str]) -> list[tuple[str, str]]:
    """(shown path, reason) for each class folder (a visible folder at the top of `data_root`)
    that is not among `classes` because no image in it was imported: an empty class folder
    vanished from the project without a note (exploratory)."""
    try:
        entries = sorted(os.scandir(data_root), key=lambda entry: entry.name)
    except OSError:
        return []
    return [
        (shown_folder(entry.path, folder), NOT_A_CLASS)
        for entry in entries
        if entry.is_dir(follow_symlinks=False) and not _ignored(entry.name) and entry.name not in classes
    ]


# ---------------------------------------------------------------------------------------
# Folder import


def _import_tree(
    folder: Path,
    label: str,
    image_size: int | None,
    classes: Sequence[str] | None,
    progress: Progress | None,
    max_pixels: int,
    max_file_bytes: int,
    skipped: list[tuple[str, str]],
) -> ImageSet:
    image_size, classes = _check_folder_import(folder, image_size, classes)
    skipped = list(skipped)
    data_root = _data_root(folder)
    candidates = _scan(folder, data_root, max_file_bytes, skipped)

    # Pass 1: bytes, digest, duplicates and the image header (cheap: no pixel decoding).
    accepted = []  # (key, path, digest, grayscale, shown path)
    first_key: dict[str, str] = {}
    for key, path, shown in candidates:
        try:
            data = path.read_bytes()
        except OSError as error:
            skipped.append((shown, f"cannot read file ({error.strerror or error})"))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in first_key:
            skipped.append((shown, duplicate_reason(key, first_key[digest])))
            continue
        try:
            info = check_image(data, path.name, max_pixels)
        except ImageSkipped as error:
            skipped.append((shown, error.reason))
            continue
        first_key[digest] = key
        accepted.append((key, path, digest, info.grayscale, shown))

    channels = 1 if accepted and all(gray for *_, gray, _ in accepted) else 3
    size = image_size or (GRAY_SIZE if channels == 1 else COLOUR_SIZE)

    # Pass 2: decode at the working size.
    pixels = np.empty((len(accepted), channels, size, size), dtype=np.uint8)
    kept = []
    if progress is not None:
        progress(0, len(accepted))
    for done, (key, path, digest, _, shown) in enumerate(accepted, 1):
        try:
            pixels[len(kept)] = decode_image(path.read_bytes(), size, channels, max_pixels)
            kept.append((key, path, digest))
        except ImageSkipped as error:
            skipped.append((shown, error.reason))
        except OSError as error:
            skipped.append((shown, f"cannot read file ({error.strerror or error})"))
        if progress is not None:
            progress(done, len(accepted))
    if not kept:
        raise DataError(_nothing_imported(label, skipped))
    pixels = pixels[: len(kept)]

    keys = [key for key, _, _ in kept]
    found = [key.split("/")[0] for key in keys] if all("/" in key for key in keys) else None
    if found is None:
        class_names = list(classes or [])
        truth = np.full(len(kept), -1, dtype=np.int64)
    else:
        class_names = list(classes) if classes is not None else sorted(set(found))
        missing = sorted(set(found) - set(class_names))
        if missing:
            raise DataError(
                f"The folders {', '.join(missing)} in {label} are not among the given classes; "
                "add them to the class names or remove those folders."
            )
        index = {name: i for i, name in enumerate(class_names)}
        truth = np.array([index[name] for name in found], dtype=np.int64)
        named = {shown for shown, _ in skipped}  # an unreadable class folder is named once
        skipped.extend(
            row for row in unused_class_folders(folder, data_root, class_names) if row[0] not in named
        )
    return ImageSet(
        pixels=pixels,
        keys=keys,
        sha256=[digest for _, _, digest in kept],
        truth=truth,
        splits=["pool"] * len(kept),
        classes=class_names,
        files=[str(path) for _, path, _ in kept],
        skipped=skipped,
    )


def _check_folder_import(
    folder: Path, image_size: int | None, classes: Sequence[str] | None
) -> tuple[int | None, list[str] | None]:
    """The checks of a folder import before it reads a file: the folder exists, and the image
    size and classes asked for are valid; returns them checked."""
    if folder.exists() and not folder.is_dir():  # it said "does not exist" of a file given
        if zipfile.is_zipfile(folder):
            raise DataError(f"{folder} is a zip file, not a folder; import it as a zip.")
        raise DataError(f"{folder} is a file, not a folder; give the folder that holds the images.")
    if not folder.is_dir():
        raise DataError(f"The folder {folder} does not exist; check the path.")
    if image_size is not None:
        image_size = check_image_size(image_size)
    if classes is not None:
        classes = _check_classes(classes)
    return image_size, classes


def _check_classes(classes: Sequence[str]) -> list[str]:
    names = [str(name).strip() for name in classes]
    if not names or any(not name for name in names) or len(set(names)) != len(names):
        raise DataError("Class names must be a non-empty list of different, non-blank names; fix the list.")
    return names


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _data_root(folder: Path) -> Path:
    """Look through wrapper folders: descend while the only visible entry is a real folder."""
    root = folder
    for _ in range(32):
        try:
            entries = [entry for entry in os.scandir(root) if not _ignored(entry.name)]
        except OSError:
            break
        if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
            break
        root = Path(entries[0].path)
    return root


def _scan(
    folder: Path, data_root: Path, max_file_bytes: int, skipped: list[tuple[str, str]]
) -> list[tuple[str, Path, str]]:
    """Candidate image files as (key, path, shown path); other files are added to `skipped`."""
    candidates = []
    for key, path, shown, reason in scan(folder, data_root, max_file_bytes):
        if reason is None:
            candidates.append((key, Path(path), shown))
        else:
            skipped.append((shown, reason))
    return candidates


def scan(folder: Path, data_root: Path, max_file_bytes: int) -> Iterator[tuple[str, str, str, str | None]]:
    """Every file and refused folder under `folder`, in a fixed (sorted) order, as (key, path,
    shown path, None) for a candidate image and ("", path, shown path, reason) for the rest.
    A generator: a folder of a million files is walked without a list of them in memory."""

    errors: list[OSError] = []
    for dirpath, depth, dirnames, filenames in _walk(folder, errors.append):
        while errors:
            error = errors.pop()
            yield (
                "",
                "",
                shown_folder(error.filename or str(folder), folder),
                f"cannot read folder ({error.strerror or error})",
            )
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            reason = None
            if os.path.islink(full):
                reason = SYMLINK
            elif _ignored(name):
                reason = HIDDEN_FOLDER
            elif depth >= MAX_DEPTH:
                reason = TOO_DEEP
            if reason:
                dirnames.remove(name)
                yield "", full, shown_folder(full, folder), reason
        # Relative paths per folder, not per file: a million relpath calls cost seconds.
        rel_dir = Path(os.path.relpath(dirpath, folder)).as_posix()
        key_dir = Path(os.path.relpath(dirpath, data_root)).as_posix()
        rel_prefix = "" if rel_dir == "." else _printable(rel_dir) + "/"
        key_prefix = "" if key_dir == "." else key_dir + "/"
        dir_utf8 = _utf8(rel_dir)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = rel_prefix + _printable(name)
            try:
                info = os.lstat(full)
            except OSError as error:
                yield "", full, rel, f"cannot read file ({error.strerror or error})"
                continue
            mode, size = info.st_mode, info.st_size
            if stat.S_ISLNK(mode):
                reason = SYMLINK
            elif not stat.S_ISREG(mode):
                reason = "not a regular file"
            elif _ignored(name):
                reason = HIDDEN_FILE
            elif not (dir_utf8 and _utf8(name)):
                reason = "file name is not valid UTF-8"
            else:
                reason = extension_reason(name) or file_size_reason(size, max_file_bytes)
            if reason:
                yield "", full, rel, reason
                continue
            yield key_prefix + name, full, rel, None
    while errors:
        error = errors.pop()
        yield (
            "",
            "",
            shown_folder(error.filename or str(folder), folder),
            f"cannot read folder ({error.strerror or error})",
        )


def _walk(
    folder: Path, on_error: Callable[[OSError], None]
) -> Iterator[tuple[str, int, list[str], list[str]]]:
    """Like os.walk top-down, without following links, as (path, depth, folders, files), sorted.

    An explicit stack, not recursion (os.walk recurses before Python 3.12, so a tree 1,000
    folders deep raised RecursionError); the caller prunes `folders` in place, as with os.walk.
    """
    stack = [(str(folder), 0)]
    while stack:
        path, depth = stack.pop()
        try:
            with os.scandir(path) as entries:
                entries = list(entries)
        except OSError as error:
            on_error(error)
            continue
        dirnames, filenames = [], []
        for entry in entries:
            # As os.walk: a link to a folder is listed with the folders (the caller skips it).
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirnames if is_dir else filenames).append(entry.name)
        dirnames.sort()
        yield path, depth, dirnames, filenames
        stack.extend(
            (os.path.join(path, name), depth + 1)
            for name in reversed(dirnames)
            if not os.path.islink(os.path.join(path, name))
        )


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name become lone surrogates
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _nothing_imported(label: str, skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return (
            f"{label} holds no images; add PNG, JPEG, GIF, WebP, BMP or TIFF files "
            "(in class sub-folders if the classes are known)."
        )
    examples = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
    return (
        f"No image in {label} could be imported ({len(skipped)} files skipped, e.g. {examples}); "
        "add PNG, JPEG, GIF, WebP, BMP or TIFF files."
    )
