"""Queries on accounts (`User`). The caller owns the transaction; nothing here commits.

Passwords arrive here already hashed (`labeler.auth.hash_password`): the database never sees
a password in clear.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import ADMIN, ROLES, LabelEvent, User
from .queries import check_text_name

MAX_NAME = 200  # User.name is String(200)


def check_name(name: str) -> str:
    """The account name as stored: stripped; raises ValueError with one sentence when unusable."""
    return check_text_name(name, "An account name", MAX_NAME)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"The role must be one of {', '.join(ROLES)}; got {role!r}.")
    return role


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def get_user(session: Session, name: str) -> User | None:
    return session.scalars(select(User).where(User.name == name)).first()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def add_user(session: Session, name: str, password_hash: str, role: str) -> User:
    name, role = check_name(name), check_role(role)
    if get_user(session, name) is not None:
        raise ValueError(f"An account named {name!r} exists already; `users passwd` resets its password.")
    user = User(name=name, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user


def _existing(session: Session, name: str) -> User:
    user = get_user(session, name)
    if user is None:
        raise ValueError(f"There is no account named {name!r}; `python -m labeler users list` lists them.")
    return user


def set_password(session: Session, name: str, password_hash: str) -> User:
    user = _existing(session, name)
    user.password_hash = password_hash
    return user


def set_role(session: Session, name: str, role: str) -> User:
    user = _existing(session, name)
    role = check_role(role)
    if user.role == ADMIN and role != ADMIN and _admins(session) == 1 and count_users(session) > 1:
        raise ValueError(f"{name!r} is the last admin; make another account admin first.")
    user.role = role
    return user


def remove_user(session: Session, name: str) -> None:
    """Remove an account. The last admin stays while other accounts exist, so someone can still
    create projects and export; removing every account returns the app to single-user mode."""
    user = _existing(session, name)
    if user.role == ADMIN and _admins(session) == 1 and count_users(session) > 1:
        raise ValueError(
            f"{name!r} is the last admin; make another account admin first, or remove the others."
        )
    session.delete(user)
    session.flush()


def answers_given(session: Session, name: str) -> int:
    """How many answers the history holds under `name`, in every project: answers are kept by
    name, so an account added under a name that answered before is credited with them."""
    return session.scalar(select(func.count()).where(LabelEvent.annotator == name)) or 0


def _admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(User.role == ADMIN)) or 0
