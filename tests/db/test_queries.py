from db import queries
from db.models import TEST, Item, LabelEvent
from labeler import queue


def _pool_items(Session, project):
    with Session() as session:
        return queries.items(session, project.id, "pool")


def test_label_relabel_undo_history(Session, tiny_project):
    item = _pool_items(Session, tiny_project)[0]
    with Session.begin() as session:
        first = queries.add_label(session, item.id, 0, annotator="ann").id
    with Session.begin() as session:
        second = queries.add_label(session, item.id, 1, annotator="ann").id
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {item.id: 1}
    with Session.begin() as session:
        undone = queries.undo_events(session, [second], "ann")
        assert [e.class_index for e in undone] == [1]
    with Session() as session:
        # The relabel is undone: the first answer stands again, and history keeps all three facts.
        assert queries.current_labels(session, tiny_project.id) == {item.id: 0}
        events = queries.history(session, item.id)
        assert [(e.class_index, e.undone) for e in events] == [(0, False), (1, True)]
    with Session.begin() as session:
        queries.undo_events(session, [first], "ann")
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}
        assert queries.label_count(session, tiny_project.id) == 0
    with Session.begin() as session:
        assert queries.undo_events(session, [first, second], "ann") == []


def test_undo_only_touches_own_labels(Session, tiny_project):
    a, b = _pool_items(Session, tiny_project)[:2]
    with Session.begin() as session:
        mine = queries.add_label(session, a.id, 0, annotator="alice").id
        theirs = queries.add_label(session, b.id, 1, annotator="bob").id
    with Session.begin() as session:
        # Even when handed bob's event, alice's undo leaves it alone.
        queries.undo_events(session, [mine, theirs], "alice")
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b.id: 1}


def test_label_if_unlabeled_never_replaces_an_answer(Session, tiny_project):
    a, b = _pool_items(Session, tiny_project)[:2]
    with Session.begin() as session:
        queries.add_label(session, a.id, 1, annotator="bob")
    with Session.begin() as session:
        assert queries.add_label_if_unlabeled(session, a.id, 0, annotator="alice") is None
        assert queries.add_label_if_unlabeled(session, b.id, 0, annotator="alice") is not None
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a.id: 1, b.id: 0}


def test_bulk_labels_skip_labeled_items_unless_asked(Session, tiny_project):
    a, b, c = _pool_items(Session, tiny_project)[:3]
    with Session.begin() as session:
        queries.add_label(session, a.id, 1, annotator="bob")
    with Session.begin() as session:
        written = queries.add_labels(session, [a.id, b.id], 0, annotator="alice")
        assert [e.item_id for e in written] == [b.id]
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a.id: 1, b.id: 0}
    with Session.begin() as session:
        written = queries.add_labels(session, [a.id, c.id], 0, annotator="alice", relabel=True)
        assert sorted(e.item_id for e in written) == sorted([a.id, c.id])
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a.id: 0, b.id: 0, c.id: 0}


def test_a_bulk_label_takes_as_many_statements_for_many_images_as_for_few(Session):
    """60,000 images bulk-labeled one at a time took 17 minutes (its cost grew with the square of
    the count) and held the write lock throughout (an exploratory session): a bulk label is a
    few statements whatever its size, with the newest run's guess kept per image."""
    from sqlalchemy import event

    from labeler import projects
    from tests.conftest import tiny_image_set
    from tests.ui.ui_helpers import fake_done_run

    project = projects.create_project(Session, "many", "test", images=tiny_image_set(n=400))
    ids = [item.id for item in _pool_items(Session, project)]
    run_id = fake_done_run(Session, project.id)  # its guess for each: the image's truth
    count = []

    def statements(kind: int, chosen: list[int]) -> int:
        with Session.begin() as session:
            engine = session.get_bind()
            seen = []
            listener = lambda *args: seen.append(1)
            event.listen(engine, "before_cursor_execute", listener)
            try:
                written = queries.add_labels(session, chosen, kind, annotator="alice")
            finally:
                event.remove(engine, "before_cursor_execute", listener)
        assert [e.item_id for e in written] == chosen
        count.append(len(seen))

    statements(0, ids[:20])
    statements(1, ids[20:400])
    assert count[1] <= count[0] < 20
    with Session() as session:
        assert queries.current_labels(session, project.id) == {i: int(i in ids[20:400]) for i in ids}
        truth = {item.id: item.truth for item in _pool_items(Session, project)}
        guesses = {e.item_id: (e.predicted_run_id, e.predicted_index) for e in session.query(LabelEvent)}
        assert guesses == {i: (run_id, truth[i]) for i in ids}


def test_a_relabel_replaces_only_the_answer_a_page_showed(Session, tiny_project):
    from db.models import IGNORED

    a, b, c, d, e = _pool_items(Session, tiny_project)[:5]
    with Session.begin() as session:
        queries.add_label(session, b.id, 0, annotator="bob")
        queries.add_label(session, c.id, 1, annotator="bob")
        queries.add_label(session, d.id, IGNORED, annotator="bob")
    with Session() as session:
        shown = {
            item: event for item, (event, _) in queries.current_answers(session, tiny_project.id).items()
        }
    assert set(shown) == {b.id, c.id, d.id}  # the "ignore" answer too
    with Session.begin() as session:  # then bob answers e and corrects b
        queries.add_label(session, e.id, 0, annotator="bob")
        queries.add_label(session, b.id, 1, annotator="bob")
    results = {}
    with Session.begin() as session:
        for item in (a, b, c, d, e):
            event, what, _ = queries.relabel_as_shown(
                session, item.id, 1, shown.get(item.id), annotator="alice"
            )
            results[item.id] = (what, event is not None)
    assert results == {
        a.id: (queries.LABELED, True),
        b.id: (queries.CHANGED, False),  # bob's correction since the page was drawn stays
        c.id: (queries.SAME, False),  # already class 1: stays bob's answer
        d.id: (queries.REPLACED, True),
        e.id: (queries.CHANGED, False),  # answered since the page was drawn
    }
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {
            a.id: 1,
            b.id: 1,
            c.id: 1,
            d.id: 1,
            e.id: 0,
        }
        assert [ev.annotator for ev in queries.history(session, c.id)] == ["bob"]
        assert queries.history(session, b.id)[-1].annotator == "bob"


def test_ignored_images_are_answered_but_in_no_class(Session, tiny_project):
    from db import runs
    from db.models import IGNORED

    a, b = _pool_items(Session, tiny_project)[:2]
    with Session.begin() as session:
        queries.add_label(session, a.id, IGNORED, annotator="ann")
        queries.add_label(session, b.id, 1, annotator="ann")
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {b.id: 1}
        assert queries.current_labels(session, tiny_project.id, ignored=True) == {a.id: IGNORED, b.id: 1}
        assert runs.pool_labels(session, tiny_project.id) == {b.id: 1}
        shown = {item.id for item, _ in queue.next_items(session, tiny_project.id, k=100)}
        assert a.id not in shown and b.id not in shown


def test_history_filters_and_annotator_counts(Session, tiny_project):
    a, b, c = _pool_items(Session, tiny_project)[:3]
    with Session.begin() as session:
        queries.add_label(session, a.id, 0, annotator="alice")
        queries.add_label(session, b.id, 1, annotator="bob")
        queries.add_label(session, c.id, 1, annotator="alice")
        queries.add_label(session, c.id, 0, annotator="bob")  # bob corrects alice
    with Session() as session:
        assert [i.id for _, i in queries.label_history(session, tiny_project.id)] == [c.id, b.id, a.id]
        assert [i.id for _, i in queries.label_history(session, tiny_project.id, class_index=1)] == [b.id]
        assert [i.id for _, i in queries.label_history(session, tiny_project.id, annotator="alice")] == [a.id]
        assert queries.annotator_counts(session, tiny_project.id) == {"alice": 1, "bob": 2}


def test_label_rejects_unknown_class(Session, tiny_project):
    item = _pool_items(Session, tiny_project)[0]
    import pytest

    with Session.begin() as session, pytest.raises(ValueError, match="does not exist"):
        queries.add_label(session, item.id, 7)


def test_queue_skips_labeled_and_test_items(Session, tiny_project):
    with Session() as session:
        first = queue.next_items(session, tiny_project.id, k=100)
        ids = [item.id for item, _ in first]
        assert all(session.get(Item, i).split != TEST for i in ids)
        rows = [item.row for item, _ in first]
        assert rows != sorted(rows), "before any model the queue must not be the file order"
    with Session.begin() as session:
        queries.add_label(session, ids[0], 0)
    with Session() as session:
        again = [item.id for item, _ in queue.next_items(session, tiny_project.id, k=100)]
        assert ids[0] not in again and len(again) == len(ids) - 1
        # A skipped item goes to the back of the queue.
        skipped = queue.next_items(session, tiny_project.id, k=len(again), exclude={again[0]})
        assert skipped[-1][0].id == again[0]


def test_class_add_and_rename(Session, tiny_project):
    import pytest

    with Session.begin() as session:
        queries.add_class(session, tiny_project.id, "  new one ")
        queries.rename_class(session, tiny_project.id, 0, "zero")
    with Session() as session:
        assert queries.class_names(session, tiny_project.id) == ["zero", "1", "new one"]
    with Session.begin() as session, pytest.raises(ValueError, match="already"):
        queries.rename_class(session, tiny_project.id, 1, "zero")
    # Names that differ only in case are two classes ("a" and "A" of letters); the pages say so.
    assert queries.case_twin("Zero", ["zero", "1"]) == "zero"
    assert queries.case_twin("zero", ["zero", "1"]) is None and queries.case_twin("x", ["1"]) is None
    with Session.begin() as session:
        queries.add_class(session, tiny_project.id, "Zero")
        queries.rename_class(session, tiny_project.id, 0, "ZERO")  # its own name in another case
    with Session() as session:
        assert queries.class_names(session, tiny_project.id) == ["ZERO", "1", "new one", "Zero"]


def test_label_events_are_append_only_rows(Session, tiny_project):
    item = _pool_items(Session, tiny_project)[0]
    for c in (0, 1, 0):
        with Session.begin() as session:
            queries.add_label(session, item.id, c, annotator="x")
    with Session() as session:
        assert session.query(LabelEvent).count() == 3


def test_audit_images_are_woven_in_one_in_five(Session):
    from db.models import AUDIT
    from labeler import projects
    from tests.conftest import tiny_image_set

    project = projects.create_project(Session, "own", "folder:x", images=tiny_image_set(n=60), audit_size=10)
    splits = []
    for _ in range(15):
        with Session() as session:
            ((item, _),) = queue.next_items(session, project.id, k=1)
            splits.append(item.split)
        with Session.begin() as session:
            queries.add_label(session, item.id, 0)
    assert [s == AUDIT for s in splits] == [i % 5 == 4 for i in range(15)]
    with Session() as session:
        audit_labeled = [
            i for i in queries.current_labels(session, project.id) if session.get(Item, i).split == AUDIT
        ]
    assert len(audit_labeled) == 3


def test_long_id_lists_are_read_in_chunks(Session, tiny_project, monkeypatch):
    """PostgreSQL takes at most 65,535 parameters: undoing a bulk label of 70,000 images failed
    (review). Lists go in chunks (BULK_CHUNK ids each; 2 here)."""
    monkeypatch.setattr(queries, "BULK_CHUNK", 2)
    ids = [item.id for item in _pool_items(Session, tiny_project)][:5]
    with Session.begin() as session:
        events = queries.add_labels(session, ids, 1, annotator="ann")
    with Session.begin() as session:
        assert queries.unanswered(session, tiny_project.id, ids) == set()
        assert len(queries.undo_events(session, [e.id for e in events], "ann")) == 5
        assert queries.unanswered(session, tiny_project.id, ids) == set(ids)
