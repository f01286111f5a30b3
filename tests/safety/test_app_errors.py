"""The app itself says in one sentence what to do when the database cannot be opened (a wrong
LABELER_DB_URL, an empty LABELER_DATA_DIR, a data folder that cannot be written), instead of
showing a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "app.py"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LABELER_DB_URL", "not a url", "LABELER_DB_URL is not a database URL"),
        (
            "LABELER_DB_URL",
            "postgresql+psycopg://nobody@127.0.0.1:9/nothing",
            "Cannot use the database in LABELER_DB_URL",
        ),
        ("LABELER_DATA_DIR", "", "LABELER_DATA_DIR is set but empty"),
        ("LABELER_DATA_DIR", "{file}/data", "Cannot write"),
    ],
)
def test_app_shows_one_sentence_when_storage_cannot_be_opened(
    tmp_path, monkeypatch, variable, value, expected
):
    import db

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(variable, value.format(file=blocker))
    # Run from an empty folder (with the logo), so nothing could land in the repository.
    (tmp_path / "assets").symlink_to(APP.parent / "assets")
    monkeypatch.chdir(tmp_path)
    db.engine._cached_engine.cache_clear()
    try:
        at = AppTest.from_file(str(APP), default_timeout=60).run()
    finally:
        db.engine._cached_engine.cache_clear()
    assert not at.exception, at.exception
    (error,) = at.error
    assert expected in error.value and "Traceback" not in error.value
    assert error.value.count(". ") == 0 and error.value.endswith("."), "one sentence"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "assets"]
