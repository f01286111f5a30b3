"""Labels and class names are data, never markup or SQL: odd names come back exactly as typed,
from the database, the export and the label page."""

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import inspect

from db import queries
from labeler import export, projects

ODD = [
    "<script>alert(1)</script>",
    "'; DROP TABLE items; --",
    'Robert"); DROP TABLE classes;--',
    "🐱 chat ñ 名前",
    "**bold** _it_ `code` [link](http://x)",
    "x" * queries.MAX_CLASS_NAME,
]


def _rename_all(Session, project_id, names):
    with Session.begin() as session:
        for index, name in enumerate(names[:2]):
            queries.rename_class(session, project_id, index, name)
        for name in names[2:]:
            queries.add_class(session, project_id, name)


def test_odd_class_names_round_trip_exactly(Session, make_image_set, tmp_path):
    project = projects.create_project(Session, "odd", "test", images=make_image_set(n=20, classes=2))
    _rename_all(Session, project.id, ODD)
    with Session() as session:
        assert queries.class_names(session, project.id) == ODD
        items = queries.items(session, project.id)
    with Session.begin() as session:
        for index, item in enumerate(items[: len(ODD)]):
            queries.add_label(session, item.id, index, annotator="<b>ann'; --</b>")
    with Session() as session:
        frame = export.labels_frame(session, project.id)
        assert sorted(frame["label"]) == sorted(ODD)
        assert set(frame["annotator"]) == {"<b>ann'; --</b>"}
        # Nothing was executed: every table is still there, with every row.
        assert queries.count_items(session, project.id) == 20
        assert {"items", "classes", "label_events"} <= set(inspect(session.get_bind()).get_table_names())
    written = export.write_labels_csv(Session, project.id, tmp_path)
    read = pd.read_csv(written, keep_default_na=False, dtype=str)
    assert sorted(read["label"]) == sorted(ODD)


def test_class_names_that_cannot_be_stored_are_refused_clearly(Session, tiny_project):
    with Session.begin() as session:
        with pytest.raises(ValueError, match="at most 200 characters"):
            queries.add_class(session, tiny_project.id, "y" * 201)
        with pytest.raises(ValueError, match="control characters"):
            queries.rename_class(session, tiny_project.id, 0, "two\nlines")
        with pytest.raises(ValueError, match="empty"):
            queries.add_class(session, tiny_project.id, "   ")
        with pytest.raises(ValueError, match="already"):
            queries.add_class(session, tiny_project.id, "1")


def test_label_page_shows_odd_names_as_typed(Session, make_image_set):
    """Also the app on PostgreSQL: `pg_url` sets LABELER_DB_URL, which the app reads."""
    import json

    from streamlit.testing.v1 import AppTest

    from labeler import answers

    project = projects.create_project(Session, "odd-page", "test", images=make_image_set(n=20, classes=2))
    _rename_all(Session, project.id, ODD)
    app = Path(__file__).resolve().parents[2] / "app.py"
    at = AppTest.from_file(str(app), default_timeout=60)
    at.session_state["project_id"] = project.id
    at.session_state["annotator"] = "tester"
    at.run()
    assert not at.exception
    # The one-image box sets its buttons' text directly (no Markdown), so names go to it unchanged.
    data = json.loads(at.get("bidi_component")[0].proto.json)
    assert [c["name"] for c in data["classes"]] == ODD
    action = {"id": "a1", "type": "label", "item": data["items"][0]["id"], "class": 1}
    answers.apply_actions(Session, project.id, "tester", [action], answers.Ledger())
    with Session() as session:
        assert list(queries.current_labels(session, project.id).values()) == [1]
