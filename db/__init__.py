"""Storage: SQLAlchemy 2 models, engine setup and queries (see `db.models`)."""

from .engine import get_engine, make_engine, retrying, session_factory
from .models import Base

__all__ = ["Base", "get_engine", "make_engine", "retrying", "session_factory"]
