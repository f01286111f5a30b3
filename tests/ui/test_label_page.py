"""AppTest runs of the real app.py: label an image and find the answer in the database."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from db import queries

APP = Path(__file__).resolve().parents[2] / "app.py"


def _app(project_id: int) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["project_id"] = project_id
    at.session_state["annotator"] = "tester"
    return at.run()


def test_label_page_labels_and_undoes(Session, tiny_project):
    at = _app(tiny_project.id)
    assert not at.exception
    assert "0 labeled" in at.get("progress")[0].proto.text
    first_caption = at.get("image")[0].proto.imgs[0].caption
    at.button(key="class-1").click().run()
    assert not at.exception
    with Session() as session:
        labels = queries.current_labels(session, tiny_project.id)
        events = queries.history(session, next(iter(labels)))
    assert list(labels.values()) == [1]
    assert events[0].annotator == "tester"
    assert "1 labeled" in at.get("progress")[0].proto.text
    assert at.get("image")[0].proto.imgs[0].caption != first_caption

    at.button(key="undo").click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}
    # The undone image is shown again so it can be answered anew.
    assert at.get("image")[0].proto.imgs[0].caption == first_caption


def test_skip_moves_on_without_labeling(Session, tiny_project):
    at = _app(tiny_project.id)
    first_caption = at.get("image")[0].proto.imgs[0].caption
    at.button(key="skip").click().run()
    assert at.get("image")[0].proto.imgs[0].caption != first_caption
    with Session() as session:
        assert queries.label_count(session, tiny_project.id) == 0


def test_digit_classes_get_their_own_keys():
    from labeler.ui.label import shortcut_keys

    assert shortcut_keys([str(d) for d in range(10)]) == [str(d) for d in range(10)]
    assert shortcut_keys(["cat", "dog"]) == ["1", "2"]
    assert shortcut_keys(["1", "2", "x"]) == ["1", "2", "3"]
    assert shortcut_keys([f"c{i}" for i in range(12)])[-2:] == [None, None]
