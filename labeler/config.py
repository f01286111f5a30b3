"""Settings read from the environment, and validation of the settings a user can change.

Nothing here runs at import: call `data_dir()` / `db_url()` when they are needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class SettingError(ValueError):
    """A setting is out of its allowed range; the message says what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is (`worker.stopped_by_sigterm`), so the command ends with 143,
    the exit status of a process stopped by SIGTERM (it ended with Ctrl-C's 130)."""


def data_dir() -> Path:
    """The folder holding the SQLite database, pixel arrays, checkpoints and imports."""
    value = os.environ.get("LABELER_DATA_DIR")
    if value is None:
        value = "./labeler-data"
    elif not value.strip():
        # Path("") is the current folder: the database would land wherever the command runs.
        raise SettingError(
            "LABELER_DATA_DIR is set but empty; set it to a folder, or unset it to use ./labeler-data."
        )
    return Path(value).expanduser().resolve()


@contextlib.contextmanager
def data_dir_set(folder: Path) -> Iterator[None]:
    """LABELER_DATA_DIR set to `folder` inside the block, as it was after it."""
    previous = os.environ.get("LABELER_DATA_DIR")
    os.environ["LABELER_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LABELER_DATA_DIR", None)
        else:
            os.environ["LABELER_DATA_DIR"] = previous


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL (its query string left out); None for any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.split("///", 1)[1].split("?", 1)[0])


def db_url() -> str:
    """Any SQLAlchemy URL from `LABELER_DB_URL`, else a SQLite file in the data folder.

    Raises SettingError when the URL cannot be parsed or names a database kind or driver that
    is not installed."""
    url = (os.environ.get("LABELER_DB_URL") or "").strip()
    if not url:
        return f"sqlite:///{data_dir() / 'labeler.db'}"
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect()
    except Exception as error:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, ImportError of a driver
        raise SettingError(
            f"LABELER_DB_URL is not a database URL this installation can open ({_first_line(error)}); set it "
            "like postgresql+psycopg://user@host/dbname, or unset it to use SQLite in the data folder."
        ) from None
    return url


def storage_url() -> str | None:
    """`LABELER_STORAGE_URL`: where pixels, original files and checkpoints are shared beyond this
    machine (any fsspec URL, e.g. s3://bucket/prefix); None (unset or empty) keeps them only in
    the data folder."""
    return (os.environ.get("LABELER_STORAGE_URL") or "").strip() or None


def storage_options() -> dict:
    """`LABELER_STORAGE_OPTIONS`: a JSON object of keyword arguments for the store's filesystem
    (for s3fs: endpoint_url, key, secret, client_kwargs ...); empty when unset."""
    import json

    value = (os.environ.get("LABELER_STORAGE_OPTIONS") or "").strip()
    if not value:
        return {}
    try:
        options = json.loads(value)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise SettingError(
            'LABELER_STORAGE_OPTIONS must be a JSON object such as {"endpoint_url": "http://minio:9000"}; '
            "fix it or unset it."
        )
    return options


def app_worker() -> bool:
    """`LABELER_WORKER`: "on" (the default) lets the app's process train queued runs itself;
    "off" leaves every run to `python -m labeler worker` processes, e.g. on GPU machines."""
    value = (os.environ.get("LABELER_WORKER") or "on").strip().lower()
    if value not in ("on", "off"):
        raise SettingError(f"LABELER_WORKER must be on or off, not {value!r}; fix it or unset it.")
    return value == "on"


def user_error(error: BaseException) -> str | None:
    """One sentence saying what went wrong and what to do, for errors a person can meet (bad
    settings, files, the data folder, the database); None for a bug, which keeps its traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(error, ValueError):  # SettingError, DataError, CheckpointError, ExportError ...
        return _first_line(error)
    if isinstance(error, SQLAlchemyError):
        return database_error(error)
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        reason = error.strerror or _first_line(error)
        if isinstance(error, PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError):
            if not _in_data_dir(error.filename):  # an --out path: the data folder is not to blame
                return f"Cannot write{where} ({reason}); choose a path you can write to."
            return (
                f"Cannot write{where} ({reason}); make it a writable folder, or set LABELER_DATA_DIR "
                "to one (it holds the database and the images)."
            )
        if error.errno == errno.ENOSPC:
            return f"The disk is full ({reason}{where}); free some space and try again."
        return f"Cannot use{where} ({reason}); check the path and try again."
    return None


def database_trouble(error: BaseException) -> str | None:
    """ "full", "busy" or "damaged" for a database error that means it (an sqlite3 error, also
    inside a SQLAlchemy one, by its error code; PostgreSQL's disk-full SQLSTATE 53100), else
    None. Not by the message: a SQLAlchemy message holds the statement and its parameters."""
    orig = getattr(error, "orig", None) or error
    name = getattr(orig, "sqlite_errorname", None) or _sqlite_name_of(orig)
    if name.startswith("SQLITE_FULL") or getattr(orig, "sqlstate", None) == "53100":
        return "full"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "busy"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "damaged"
    return None


def _sqlite_name_of(error: BaseException) -> str:
    """SQLite's error name from the sqlite3 error's own message, where Python (before 3.11) does
    not give it: the messages SQLite itself writes for these codes."""
    import sqlite3

    if not isinstance(error, sqlite3.Error):
        return ""
    text = str(error)
    for words, name in (
        ("database or disk is full", "SQLITE_FULL"),
        ("database is locked", "SQLITE_BUSY"),
        ("database disk image is malformed", "SQLITE_CORRUPT"),
        ("file is not a database", "SQLITE_NOTADB"),
    ):
        if text == words:
            return name
    return ""


def database_error(error: BaseException) -> str:
    """One sentence for a database that cannot be opened or written."""
    reason = _first_line(getattr(error, "orig", None) or error)
    if any(words in reason for words in ("malformed", "not a database")):
        where = "LABELER_DB_URL" if os.environ.get("LABELER_DB_URL", "").strip() else _data_dir_or_default()
        return (
            f"The database file in {where} is damaged ({reason}); restore it from a backup (python -m "
            "labeler backup makes them), or move it away to start afresh."
        )
    if os.environ.get("LABELER_DB_URL", "").strip():
        return (
            f"Cannot use the database in LABELER_DB_URL ({reason}); check that the server runs and is "
            "reachable and that the URL's user, password and database name are right."
        )
    return (
        f"Cannot use the database in {_data_dir_or_default()} ({reason}); make that folder writable, "
        "or set LABELER_DATA_DIR to a writable folder."
    )


def _in_data_dir(filename) -> bool:
    """Whether `filename` (None: not known) lies in the data folder, or is a folder it lies in (a
    parent that could not be made), or could be (LABELER_DATA_DIR not set right)."""
    if not filename:
        return True
    try:
        path, folder = Path(filename).resolve(), data_dir().resolve()
        return path.is_relative_to(folder) or folder.is_relative_to(path)
    except (SettingError, OSError, ValueError):
        return True


def _data_dir_or_default() -> str:
    try:
        return str(data_dir())
    except SettingError:
        return "LABELER_DATA_DIR"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the system has one (a
    container limited to 2 CPUs on a bigger host), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def train_threads() -> int:
    """CPU threads for training in the app's process: `LABELER_TRAIN_THREADS`; by default every
    core on a machine of one or two cores (`available_cores`), every core but one on bigger ones
    (the page that serves the person labeling keeps a core where that costs training at most a
    third).

    On 2 cores one thread alone trains about 0.6 of two threads' steps (m2 14.9 against 24.2
    steps/s), and the Label page's key latency with both training stayed at a median of 11-12 ms
    and a p90 of 14-17 ms on an idle machine (README, Labeling latency)."""
    value = os.environ.get("LABELER_TRAIN_THREADS", "").strip()
    cores = available_cores()
    if not value:
        return cores if cores <= 2 else cores - 1
    return check_int("LABELER_TRAIN_THREADS", value, 1, 1024)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_arg(value: str) -> str:
    """The `type` of every command's --device: "cpu", "cuda" or "cuda:N" that this machine has.
    Anything else is one line and exit 2 from argparse (torch's own error was a traceback, and a
    worker started on a wrong device waited for runs that could only fail)."""
    import argparse
    import re

    import torch

    text = str(value).strip().lower()
    if text == "cpu":
        return text
    match = re.fullmatch(r"cuda(?::([0-9]{1,3}))?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device here: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            "CUDA is not available on this machine (no GPU, or no working driver); use --device cpu or leave it out"
        )
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise argparse.ArgumentTypeError(
            f"{value!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return text


def check_int(name: str, value, low: int, high: int) -> int:
    """Return `value` as an int in [low, high], or raise a SettingError saying what is allowed."""
    try:
        as_int = int(value)
        if as_int != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise SettingError(
            f"{name} must be a whole number between {low} and {high}, got {value!r}."
        ) from None
    if not low <= as_int <= high:
        raise SettingError(f"{name} must be between {low} and {high}, got {as_int}.")
    return as_int


def check_float(name: str, value, low: float, high: float) -> float:
    """Return `value` as a float in [low, high], or raise a SettingError saying what is allowed."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{name} must be a number between {low} and {high}, got {value!r}.") from None
    if not (low <= as_float <= high):  # also rejects NaN
        raise SettingError(f"{name} must be between {low} and {high}, got {as_float}.")
    return as_float


def check_choice(name: str, value: str, choices) -> str:
    choices = list(choices)
    if value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value
