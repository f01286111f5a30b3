"""Accounts and what they may do: password hashing, login checks, the server import root.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile);
only the hash is stored, in the `users` table of the app's own database. With no account the
app is single-user and local, as before accounts existed: whoever opens it is an admin.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session

from db import users
from db.models import ADMIN, ROLES, User

MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 takes any length; a cap keeps one login from costing much


@functools.cache
def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise ValueError(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"A password can be at most {MAX_PASSWORD} characters long.")
    return password


def hash_password(password: str) -> str:
    return _hasher().hash(check_password(password))


@functools.cache
def _dummy_hash() -> str:
    return _hasher().hash("not a password of anyone")


def verify_password(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    if not password or len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The account when the name and password match, else None. An unknown name costs one hash
    check too, so the answer's timing does not tell which names exist."""
    user = users.get_user(session, (name or "").strip())
    if user is None:
        verify_password(_dummy_hash(), password or "x")
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)
    return user


# Guessing passwords: after MAX_FAILURES wrong passwords for one name within LOCKOUT_S seconds,
# that name may not log in for LOCKOUT_S seconds. In memory, per process: the app is one process.
MAX_FAILURES = 5
LOCKOUT_S = 60.0
_failures: dict[str, list[float]] = {}
_failures_lock = threading.Lock()


# Names whose failures are older than LOCKOUT_S are forgotten once this many are kept: each name
# ever tried stayed for good, so a script trying many names grew the server's memory (review).
_PRUNE_AT = 1_000


def _forget_old_failures(now: float) -> None:
    for key in [k for k, times in _failures.items() if not times or now - times[-1] >= LOCKOUT_S]:
        del _failures[key]


class TooManyFailures(ValueError):
    """Too many wrong passwords for one name; the message says how long to wait."""


def log_in(session: Session, name: str, password: str, now: float | None = None) -> User | None:
    """`authenticate`, refused for a while after repeated wrong passwords for the same name."""
    now = time.monotonic() if now is None else now
    key = (name or "").strip().casefold()
    with _failures_lock:
        if len(_failures) > _PRUNE_AT:
            _forget_old_failures(now)
        recent = [t for t in _failures.get(key, []) if now - t < LOCKOUT_S]
        if recent:
            _failures[key] = recent
        else:
            _failures.pop(key, None)
        if len(recent) >= MAX_FAILURES:
            wait = int(LOCKOUT_S - (now - recent[-MAX_FAILURES])) + 1
            raise TooManyFailures(f"Too many wrong passwords for this name; try again in {wait} seconds.")
    user = authenticate(session, name, password)
    with _failures_lock:
        if user is None:
            _failures.setdefault(key, []).append(now)
        else:
            _failures.pop(key, None)
    return user


def accounts_exist(session: Session) -> bool:
    return users.count_users(session) > 0


def is_admin_role(role: str | None) -> bool:
    return role == ADMIN


def may_label(role: str | None) -> bool:
    """Every role this version knows labels; a role it does not know (stored by a later version,
    or by hand) may not."""
    return role in ROLES


# Importing folders that live on the server ------------------------------------------------------


def import_root() -> Path | None:
    """The folder under which the app may import server folders (`LABELER_IMPORT_ROOT`), or None:
    then the app imports no server folder at all (uploads and the CLI still work)."""
    root = os.environ.get("LABELER_IMPORT_ROOT", "").strip()
    return Path(root).expanduser().resolve() if root else None


def check_import_folder(folder: str) -> Path:
    """The folder, resolved, when it lies under the import root; raises ValueError otherwise.

    Resolving follows symbolic links and `..`, so neither can lead outside the root. A relative
    path is taken relative to the root.
    """
    root = import_root()
    if root is None:
        raise ValueError(
            "Importing a folder on the server is off; an admin can set LABELER_IMPORT_ROOT to the folder "
            "that holds the data sets and restart the app, or upload a zip instead."
        )
    folder = (folder or "").strip()
    if not folder:
        raise ValueError(f"Type the path of a folder under {root}.")
    path = (root / Path(folder).expanduser()).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"Only folders under {root} can be imported; {folder!r} is outside it.")
    return path
