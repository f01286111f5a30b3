"""A database that stops answering: one sentence on the page and retries, never a traceback."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError
from ui_helpers import app_run

from labeler.ui import common, label

DOWN = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_a_page_says_the_database_is_unreachable_and_comes_back_on_the_next_run(
    Session, tiny_project, monkeypatch
):
    """The page showed the OperationalError's traceback (host, port and paths in it) and stayed
    so after the database came back, until the person clicked elsewhere."""
    at = app_run(tiny_project.id)
    assert not at.exception and not at.error

    def down(*args, **kwargs):
        raise DOWN

    monkeypatch.setattr(label, "unsaved_anywhere", down)
    monkeypatch.setattr(common, "RETRY_DATABASE_S", None)  # AppTest waits for a timed fragment
    monkeypatch.setattr(common, "database_answers", lambda: False)  # the retry's look: still down
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] and "database cannot be reached" in at.error[0].value
    monkeypatch.undo()
    assert common.database_answers()  # what the page's retry asks every RETRY_DATABASE_S
    at.run()  # the retry's rerun
    assert not at.exception and not at.error


def test_a_callback_that_meets_an_unreachable_database_stores_nothing_and_does_not_raise():
    calls = []

    @common.survives_outage
    def store(x):
        calls.append(x)
        raise DOWN

    assert store(1) is None and calls == [1]

    @common.survives_outage
    def broken():
        raise ValueError("a bug")

    with pytest.raises(ValueError):  # only an outage is taken in; a bug keeps its traceback
        broken()


def test_the_box_and_the_guard_callbacks_survive_an_outage():
    assert label._apply_box_actions.__wrapped__ and label._apply_unsent.__wrapped__
