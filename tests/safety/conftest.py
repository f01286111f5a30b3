"""Tests here that use a database run on SQLite and on PostgreSQL (when LABELER_TEST_PG_URL is set)."""

import os

import pytest

import db


@pytest.fixture
def db_url(any_db_url) -> str:
    return any_db_url


@pytest.fixture
def preferred_db_url(request) -> str:
    """One backend for the slowest tests: PostgreSQL when a server is given, else SQLite."""
    return request.getfixturevalue("pg_url" if os.environ.get("LABELER_TEST_PG_URL") else "sqlite_url")


@pytest.fixture
def preferred_Session(preferred_db_url):
    engine = db.make_engine(preferred_db_url)
    yield db.session_factory(engine)
    engine.dispose()
