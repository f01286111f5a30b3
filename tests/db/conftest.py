"""Tests here that use a database run on SQLite and on PostgreSQL (when LABELER_TEST_PG_URL is set)."""

import pytest


@pytest.fixture
def db_url(any_db_url) -> str:
    return any_db_url
