"""Settings read from the environment, and validation of the settings a user can change.

Nothing here runs at import: call `data_dir()` / `db_url()` when they are needed.
"""

from __future__ import annotations

import os
from pathlib import Path


class SettingError(ValueError):
    """A setting is out of its allowed range; the message says what is allowed."""


def data_dir() -> Path:
    """The folder holding the SQLite database, pixel arrays, checkpoints and imports."""
    return Path(os.environ.get("LABELER_DATA_DIR", "./labeler-data")).resolve()


def db_url() -> str:
    """Any SQLAlchemy URL from `LABELER_DB_URL`, else a SQLite file in the data folder."""
    url = os.environ.get("LABELER_DB_URL")
    if url:
        return url
    return f"sqlite:///{data_dir() / 'labeler.db'}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_int(name: str, value, low: int, high: int) -> int:
    """Return `value` as an int in [low, high], or raise a SettingError saying what is allowed."""
    try:
        as_int = int(value)
        if as_int != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise SettingError(f"{name} must be a whole number between {low} and {high}, got {value!r}.") from None
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
