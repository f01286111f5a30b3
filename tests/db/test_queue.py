"""The queue a finished run stores (QueuePosition) gives exactly the order the Label page used to
sort for on every call: score, highest first, then row; labeled and test images never; skipped
images last; another annotator's claims respected. SQLite and PostgreSQL (tests/db/conftest.py)."""

from __future__ import annotations

from datetime import UTC, timedelta

import numpy as np
import pytest
from sqlalchemy import and_, event, select, update

from db import queries
from db import runs as run_queries
from db.models import AUDIT, DONE, POOL, TEST, Item, LabelEvent, Prediction, QueuePosition, Run, utcnow
from labeler import projects, queue
from tests.conftest import tiny_image_set


@pytest.fixture
def project(Session):
    """60 images of one's own (no test split): 10 audit, 50 pool."""
    return projects.create_project(Session, "own", "folder:x", images=tiny_image_set(n=60), audit_size=10)


def _finished_run(Session, project_id: int, scores=None, seed: int = 0) -> int:
    """A DONE run with a prediction for every item, stored the way the worker stores them.
    Scores come in few distinct values, so the row must break ties."""
    with Session.begin() as session:
        ids = [item.id for item in queries.items(session, project_id)]
        run = Run(project_id=project_id, model="m2", status=DONE, finished_at=utcnow())
        session.add(run)
        session.flush()
        rng = np.random.default_rng(seed)
        n = len(ids)
        score = rng.integers(0, 5, n).astype(float) / 4 if scores is None else np.asarray(scores, dtype=float)
        columns = {
            "item_id": np.array(ids),
            "predicted": rng.integers(0, 2, n),
            "confidence": rng.random(n),
            "entropy": rng.random(n),
            "margin": rng.random(n),
            "score": score,
            "x": rng.random(n),
            "y": rng.random(n),
        }
        run_queries.store_predictions(session, run.id, columns)
        return run.id


def _old_sort(session, project_id: int, run_id: int, splits) -> list[int]:
    """The query next_items ran on every call before queues were stored."""
    labeled = select(LabelEvent.item_id).where(
        LabelEvent.project_id == project_id, LabelEvent.undone.is_(False)
    )
    query = (
        select(Item.id)
        .join(Prediction, and_(Prediction.item_id == Item.id, Prediction.run_id == run_id), isouter=True)
        .where(Item.project_id == project_id, Item.split.in_(splits), Item.id.not_in(labeled))
        .order_by(Prediction.score.desc().nulls_last(), Item.row)
    )
    return list(session.scalars(query))


def _label(Session, item_ids, annotator: str = "ann") -> list[int]:
    with Session.begin() as session:
        return [queries.add_label(session, i, 0, annotator=annotator).id for i in item_ids]


def test_the_stored_queue_is_the_old_sort(Session, project):
    run_id = _finished_run(Session, project.id)
    with Session() as session:
        first = _old_sort(session, project.id, run_id, (POOL,))
    # Some answers after the run, one taken back: labeled images leave the queue, the undone one returns.
    events = _label(Session, first[:3] + first[10:13])
    with Session.begin() as session:
        queries.undo_events(session, [events[1]], "ann")
    with Session() as session:
        pool_order = _old_sort(session, project.id, run_id, (POOL,))
        both_order = _old_sort(session, project.id, run_id, (POOL, AUDIT))
        assert first[1] in pool_order and first[0] not in pool_order and first[10] not in pool_order
        assert not queue.audit_turn(session, project.id)
        got = [item.id for item, _ in queue.next_items(session, project.id, k=len(pool_order))]
        assert got == pool_order
        # Asking for more than the pool holds: the pool in queue order, then the audit images.
        everything = queue.next_items(session, project.id, k=1000)
        assert [item.id for item, _ in everything] == pool_order + [
            i for i in both_order if i not in pool_order
        ]
        assert all(prediction.run_id == run_id for _, prediction in everything)
        assert {session.get(Item, i).split for i in both_order} == {POOL, AUDIT}
        # Skipped images go last, in their own queue order.
        skipped = {pool_order[0], pool_order[2]}
        got = [
            item.id for item, _ in queue.next_items(session, project.id, k=len(pool_order), exclude=skipped)
        ]
        assert got == [i for i in pool_order if i not in skipped] + [pool_order[0], pool_order[2]]


def test_the_stored_queue_respects_claims(Session, project):
    run_id = _finished_run(Session, project.id)
    with Session.begin() as session:  # claims count once committed
        order = _old_sort(session, project.id, run_id, (POOL,))
        bob = [item.id for item, _ in queue.next_items(session, project.id, k=3, annotator="bob")]
        alice = [item.id for item, _ in queue.next_items(session, project.id, k=4, annotator="alice")]
        assert bob == order[:3]
        assert alice == order[3:7]
        # Asking again keeps one's own images (the claims are one's own) and releases the rest.
        assert [
            item.id for item, _ in queue.next_items(session, project.id, k=2, annotator="alice")
        ] == order[3:5]
    with Session() as session:
        from db.models import Claim

        held = {c.item_id: c.annotator for c in session.scalars(select(Claim))}
        assert held == {**{i: "bob" for i in order[:3]}, **{i: "alice" for i in order[3:5]}}
    # An image answered meanwhile is passed over; the next free one is won.
    _label(Session, [order[5]], annotator="carol")
    with Session.begin() as session:
        alice = [item.id for item, _ in queue.next_items(session, project.id, k=3, annotator="alice")]
        assert alice == [order[3], order[4], order[6]]


def test_images_still_in_the_browser_keep_their_claims_when_a_new_run_reorders_the_queue(Session, project):
    """The Label box keeps the image on screen whatever a new page holds; a finished run that
    put it further back released its claim, and another session was given it (a team
    exploration: one image answered in two tabs, the second answer refused)."""
    _finished_run(Session, project.id)
    with Session.begin() as session:
        first = [item.id for item, _ in queue.next_items(session, project.id, k=3, annotator="alice#1")]
        ids = [item.id for item in queries.items(session, project.id)]
        pool = [item.id for item in queries.items(session, project.id, "pool")]
    # A new run puts three other images first, then alice's, then the rest.
    others = [i for i in pool if i not in first][:3]
    _finished_run(
        Session, project.id, scores=[1.0 if i in others else 0.9 if i in first else 0.0 for i in ids]
    )
    with Session.begin() as session:
        second = queue.next_items(session, project.id, k=3, annotator="alice#1", keep=first)
        assert not {item.id for item, _ in second} & set(first)
        bob = {item.id for item, _ in queue.next_items(session, project.id, k=3, annotator="bob#1")}
    assert not bob & set(first)  # still alice's: kept from bob
    assert {i: a for i, (a, _) in _claims(Session).items() if i in first} == dict.fromkeys(first, "alice#1")


def _claims(Session) -> dict:
    from db.models import Claim

    with Session() as session:
        return {c.item_id: (c.annotator, c.expires_at) for c in session.scalars(select(Claim))}


def test_asking_again_for_the_page_one_holds_writes_nothing(Session, project):
    _finished_run(Session, project.id)

    def page(k):
        with Session.begin() as session:
            return [item.id for item, _ in queue.next_items(session, project.id, k=k, annotator="alice")]

    first = page(12)
    held = _claims(Session)
    assert set(held) == set(first)
    assert page(12) == first and _claims(Session) == held  # a rerun: the same claims, untouched
    smaller = page(4)  # a smaller page: one write, which gives back the rest
    assert smaller == first[:4] and set(_claims(Session)) == set(smaller)


def test_items_without_a_position_follow_in_score_order(Session, project):
    """A run stored before queues were (no QueuePosition rows) is read in the old order, and
    so are images that have no position in a run that has them."""
    run_id = _finished_run(Session, project.id)
    with Session.begin() as session:
        positions = list(session.scalars(select(QueuePosition).where(QueuePosition.run_id == run_id)))
        dropped = {p.item_id for p in positions[::3]}
        for p in positions:
            if p.item_id in dropped:
                session.delete(p)
    with Session() as session:
        expected = _old_sort(session, project.id, run_id, (POOL,))
        got = [item.id for item, _ in queue.next_items(session, project.id, k=len(expected))]
        assert got == [i for i in expected if i not in dropped] + [i for i in expected if i in dropped]
    with Session.begin() as session:
        session.execute(QueuePosition.__table__.delete())
    with Session() as session:
        assert [item.id for item, _ in queue.next_items(session, project.id, k=len(expected))] == expected


def test_before_the_first_run_the_order_is_the_hash_order(Session, project):
    with Session() as session:
        pool = sorted((i for i in queries.items(session, project.id, POOL)), key=lambda i: i.sha256)
        got = queue.next_items(session, project.id, k=len(pool))
        assert [item.id for item, _ in got] == [i.id for i in pool]
        assert all(prediction is None for _, prediction in got)
        assert [i.row for i in pool] != sorted(i.row for i in pool)


def test_predictions_and_positions_are_stored_in_bulk(Session, tiny_project):
    """One statement (or one COPY) for all prediction rows and one for all positions: the
    number of statements does not grow with the number of images."""
    with Session() as session:
        n_items = queries.count_items(session, tiny_project.id)
        shown = n_items - queries.count_items(session, tiny_project.id, TEST)
    engine = Session.kw["bind"]
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        scores = np.linspace(1, 0, n_items)
        run_id = _finished_run(Session, tiny_project.id, scores=scores)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    writes = [
        s
        for s in statements
        if s.lstrip().upper().startswith(("INSERT", "COPY")) and "runs" not in s.split("(")[0]
    ]
    assert len(writes) <= 2, writes
    with Session() as session:
        predictions = run_queries.predictions(session, run_id)
        assert len(predictions) == n_items
        positions = list(
            session.execute(
                select(QueuePosition.position, QueuePosition.item_id, Item.split, Item.row)
                .join(Item, Item.id == QueuePosition.item_id)
                .where(QueuePosition.run_id == run_id)
                .order_by(QueuePosition.position)
            )
        )
    assert [p for p, *_ in positions] == list(range(1, shown + 1))
    assert TEST not in {split for _, _, split, _ in positions}
    rows = [row for *_, row in positions]
    assert rows == sorted(rows)  # scores fall with the row here


def test_pruning_old_runs_drops_their_positions(Session, project):
    runs = [_finished_run(Session, project.id, seed=s) for s in range(3)]
    with Session.begin() as session:
        assert run_queries.prune_predictions(session, project.id, keep=1) == 2
    with Session() as session:
        left = set(session.scalars(select(QueuePosition.run_id).distinct()))
        assert left == {runs[-1]}


def test_next_items_reads_the_stored_positions(Session, project):
    """The page follows the stored queue, not a sort of its own: swap the first two positions
    and the first two images swap."""
    run_id = _finished_run(Session, project.id)
    with Session() as session:
        order = _old_sort(session, project.id, run_id, (POOL,))
    with Session.begin() as session:
        at = QueuePosition.run_id == run_id
        a, b = (
            session.scalar(select(QueuePosition.position).where(at, QueuePosition.item_id == i))
            for i in order[:2]
        )
        for old, new in ((a, 0), (b, a), (0, b)):  # position 0 is free: they start at 1
            session.execute(
                update(QueuePosition).where(at, QueuePosition.position == old).values(position=new)
            )
    with Session() as session:
        assert [item.id for item, _ in queue.next_items(session, project.id, k=3)] == [
            order[1],
            order[0],
            order[2],
        ]


def test_a_held_page_stays_as_it_was_shown_after_a_new_run(Session, project):
    """The grid page shown is asked for again (`held_page`): same images, same order, the newest
    run's predictions, this annotator's claims kept, whatever the new queue order is; images
    answered meanwhile stay on it; nothing once all are answered."""
    _finished_run(Session, project.id, seed=0)
    with Session.begin() as session:
        shown = [item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")]
    newer = _finished_run(Session, project.id, seed=1)  # another order
    _label(Session, shown[:1], annotator="bob")
    with Session.begin() as session:
        page = queue.held_page(session, project.id, shown, "alice")
        assert [item.id for item, _ in page] == shown
        assert {prediction.run_id for _, prediction in page} == {newer}
    assert {i for i, (who, _) in _claims(Session).items() if who == "alice"} >= set(shown[1:])
    _label(Session, shown[1:], annotator="bob")
    with Session.begin() as session:
        assert queue.held_page(session, project.id, shown, "alice") == []


def _writes(Session, fn):
    """The INSERT, UPDATE and DELETE statements `fn()` sends."""
    engine = Session.kw["bind"]
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return statements


def test_a_held_page_with_answered_images_writes_nothing_on_a_rerun(Session, project):
    """Once someone else answered an image of the held page, asking for the page again renews
    the claims on the rest once, then writes nothing while they last (each key or tile chosen
    is a rerun; a write each time would contend for the database lock)."""
    _finished_run(Session, project.id)
    with Session.begin() as session:
        shown = [item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")]
    _label(Session, shown[:1], annotator="bob")

    def held():
        with Session.begin() as session:
            assert [item.id for item, _ in queue.held_page(session, project.id, shown, "alice")] == shown

    held()
    claims = _claims(Session)
    assert {i for i, (who, _) in claims.items() if who == "alice"} == set(shown[1:])
    assert _writes(Session, held) == []
    assert _writes(Session, held) == []
    assert _claims(Session) == claims


def test_a_held_page_another_annotator_was_given_is_dropped(Session, project):
    """Alice was away longer than CLAIM_SECONDS, her claims expired and Bob's next page took
    some of her images: her held page is no longer hers (None), so the two never work the same
    images, and Bob's claims stay his."""
    from db.models import Claim

    _finished_run(Session, project.id)
    with Session.begin() as session:
        shown = [item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")]
    with Session.begin() as session:  # alice away: her claims run out
        session.execute(
            update(Claim).values(expires_at=Claim.expires_at - timedelta(seconds=queue.CLAIM_SECONDS + 5))
        )
    with Session.begin() as session:
        bobs = [item.id for item, _ in queue.next_items(session, project.id, k=4, annotator="bob")]
    assert set(bobs) & set(shown)
    held = _claims(Session)
    with Session.begin() as session:
        assert queue.held_page(session, project.id, shown, "alice") is None
    assert _claims(Session) == held
    with Session.begin() as session:  # her next page leaves Bob's images out
        fresh = [item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")]
    assert fresh and not set(fresh) & set(bobs)


def test_a_held_page_keeps_the_images_it_was_given_shared_but_not_others_taken_since(Session, project):
    """Images a page was given while Bob held them (`shared`) do not take it from Alice; one of
    her own that Bob was given after her claim ran out does."""
    from db.models import Claim

    _finished_run(Session, project.id)
    with Session.begin() as session:
        shown = [item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")]
    with Session.begin() as session:  # Bob holds the last two (as if shared with her page)
        session.execute(update(Claim).where(Claim.item_id.in_(shown[4:])).values(annotator="bob"))
    with Session.begin() as session:
        assert [
            item.id for item, _ in queue.held_page(session, project.id, shown, "alice", shown[4:])
        ] == shown
        assert queue.held_page(session, project.id, shown, "alice", shown[5:]) is None
    claims = _claims(Session)
    assert {i for i, (who, _) in claims.items() if who == "bob"} == set(shown[4:])


def test_a_held_page_whose_claims_ran_out_unclaimed_is_claimed_again(Session, project):
    """Claims that ran out while nobody else took the images: the page is still the person's,
    and asking for it claims it again."""
    from db.models import Claim

    _finished_run(Session, project.id)
    with Session.begin() as session:
        shown = [item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")]
    with Session.begin() as session:
        session.execute(
            update(Claim).values(expires_at=Claim.expires_at - timedelta(seconds=queue.CLAIM_SECONDS + 5))
        )
    with Session.begin() as session:
        assert [item.id for item, _ in queue.held_page(session, project.id, shown, "alice")] == shown
    claims = _claims(Session)
    assert set(claims) == set(shown) and all(expires > utcnow() for _, expires in claims.values())


def test_a_project_trains_one_run_at_a_time_whatever_the_number_of_workers(Session, project):
    """Two app servers on one data folder (or GPU workers beside an app) each took a run of the
    same project, the run and its follow-up, and trained both at once."""

    def request(project_id: int) -> int:
        with Session.begin() as session:
            return run_queries.request_run(session, project_id, "m2", {}).id

    def claim(worker: str) -> int | None:
        with Session.begin() as session:
            run = run_queries.claim_next_run(session, worker)
            return None if run is None else run.id

    first = request(project.id)
    assert claim("a") == first
    follow_up = request(project.id)  # labels given while it trains
    other = projects.create_project(Session, "other", "folder:y", images=tiny_image_set(n=12), audit_size=0)
    elsewhere = request(other.id)
    assert claim("b") == elsewhere  # not the follow-up
    assert claim("c") is None
    with Session.begin() as session:
        session.get(Run, first).status = DONE
    assert claim("c") == follow_up


def test_free_images_of_either_split_come_before_images_another_person_holds(Session, project):
    """The pool ran short for a second person while audit images were free: they were given the
    first person's next images instead (two people met on 2 of 16 answers, the second refused)."""
    _finished_run(Session, project.id)

    def page(annotator: str, k: int) -> list[int]:
        with Session.begin() as session:
            return [item.id for item, _ in queue.next_items(session, project.id, k=k, annotator=annotator)]

    alice = page("alice", 45)  # 45 of the 50 pool images
    bob = page("bob", 10)
    assert not set(bob) & set(alice)
    with Session() as session:
        audit = {item.id for item in queries.items(session, project.id, AUDIT)}
    assert len(set(bob) & audit) >= 5  # only 5 pool images were left
    # Nothing free is left for 5 more: shared, from the half of alice's images she reaches last.
    bob = page("bob", 20)
    shared = set(bob) & set(alice)
    assert len(shared) == 5 and not shared & set(alice[:22])
    assert {i for i, (who, _) in _claims(Session).items() if who == "bob"} == set(bob) - shared


def test_images_shown_first_are_claimed_with_an_audit_page(Session, project):
    """Alice undoes a pool answer just as her box's turn becomes an audit turn: the undone image
    comes back first on her screen, but only the audit page was claimed, and Bob's next page was
    given it (review). It is claimed with her page; its claim then lasts while it stays first."""
    _finished_run(Session, project.id)
    with Session() as session:
        pool = [item.id for item in queries.items(session, project.id, POOL)]
    _label(Session, pool[1:17])  # 16 answers: the box's turn (of 4) is an audit turn
    with Session() as session:
        assert queue.audit_turn(session, project.id, queue.BOX_TURN)

    def page(annotator: str, k: int, **extra) -> list[int]:
        with Session.begin() as session:
            return [
                item.id
                for item, _ in queue.next_items(session, project.id, k=k, annotator=annotator, **extra)
            ]

    alice = page("alice", 4, turn=queue.BOX_TURN, first=[pool[0]])
    assert pool[0] not in alice
    assert _claims(Session)[pool[0]][0] == "alice"
    page("alice", 4, turn=queue.BOX_TURN, first=[pool[0]])  # a rerun keeps it
    assert pool[0] not in page("bob", 40)
    assert _claims(Session)[pool[0]][0] == "alice"


def test_claims_heartbeats_and_answers_follow_the_database_clock_on_postgresql(pg_url, monkeypatch):
    """App servers and workers on several machines compared times each wrote with their own
    clocks: a server 10 minutes ahead saw every claim of the others as run out (and took the
    images on their screens) and every run's heartbeat as stale, and an answer given on one 10
    minutes behind counted as older than the run it came after (review). On PostgreSQL the
    database's clock times them all."""
    from datetime import datetime

    import db
    from db.models import RUNNING, Run

    Session = db.session_factory(db.make_engine(pg_url))
    project = projects.create_project(Session, "own", "folder:x", images=tiny_image_set(n=60), audit_size=10)
    with Session.begin() as session:
        alice = {item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="alice")}
        run = run_queries.request_run(session, project.id, "m2")
        session.flush()
        session.execute(
            update(Run).where(Run.id == run.id).values(status=RUNNING, started_at=queries.now(session))
        )
        run_queries.beat(session, run.id)
    ahead = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=10)
    for module in (queries, queue, run_queries):  # this machine's clock, 10 minutes ahead
        monkeypatch.setattr(module, "utcnow", lambda: ahead, raising=False)
    with Session.begin() as session:
        bob = {item.id for item, _ in queue.next_items(session, project.id, k=6, annotator="bob")}
        assert not run_queries.mark_interrupted(session, 300)
    assert not alice & bob
    behind = ahead - timedelta(minutes=20)  # an answer given on a machine 10 minutes behind
    for module in (queries, queue, run_queries):
        monkeypatch.setattr(module, "utcnow", lambda: behind, raising=False)
    with Session.begin() as session:
        queries.add_label(session, next(iter(bob)), 0, annotator="bob")
        assert run_queries.labels_since_last_run(session, project.id) == 1  # given after the run started


def test_the_label_box_gets_its_audit_turns_every_few_answers(Session, project):
    """Asking 20 at a time, the box got its first audit image after 80 labels: on a small project
    nearly everything was labeled before any honest accuracy existed."""
    _finished_run(Session, project.id)
    with Session() as session:
        pool = [item.id for item in queries.items(session, project.id, POOL)]
        audit = {item.id for item in queries.items(session, project.id, AUDIT)}
    _label(Session, pool[:16])

    def splits(**turn) -> set[str]:
        with Session() as session:
            page = queue.next_items(session, project.id, k=20, **turn)
            return {item.split for item, _ in page[: len(audit)]}

    assert splits() == {POOL}  # a grid of 20 waits for its fifth page
    assert splits(turn=queue.BOX_TURN) == {AUDIT}  # 16 answers: the box's fifth turn of 4
    # Claimed: the audit images first, then the queue's head; nothing held that is not shown
    # (the page's fill claimed k more and kept the claims on those it left out).
    with Session.begin() as session:
        page = queue.next_items(session, project.id, k=20, annotator="alice", turn=queue.BOX_TURN)
    assert {item.split for item, _ in page[: len(audit)]} == {AUDIT}
    assert set(_claims(Session)) == {item.id for item, _ in page}


def test_people_sharing_what_another_holds_are_not_all_given_the_same_images(Session, project):
    """Every tab that fell back to sharing took the same images: 28 of 42 answers from three
    people were refused in an exploratory session."""
    _finished_run(Session, project.id)

    def page(annotator: str, k: int) -> set[int]:
        with Session.begin() as session:
            return {item.id for item, _ in queue.next_items(session, project.id, k=k, annotator=annotator)}

    alice = page("alice", 60)  # every image of the project
    bob, carol = page("bob#1", 5), page("carol#1", 5)
    assert bob <= alice and carol <= alice and len(bob) == len(carol) == 5
    assert len(bob & carol) < 3
    assert page("bob#1", 5) == bob  # the same page again for the same tab


def test_grid_pages_shared_from_a_small_project_differ_between_tabs(Session):
    """With 24 or fewer images held, every sharing tab took the same 12 (only reordered)."""
    small = projects.create_project(Session, "small", "folder:s", images=tiny_image_set(n=20), audit_size=0)
    _finished_run(Session, small.id)

    def page(annotator: str, k: int) -> set[int]:
        with Session.begin() as session:
            return {item.id for item, _ in queue.next_items(session, small.id, k=k, annotator=annotator)}

    alice = page("alice#1", 20)
    bob, carol = page("bob#1", 12), page("carol#1", 12)
    assert bob <= alice and carol <= alice and len(bob) == len(carol) == 12
    assert bob != carol


def test_an_open_page_renews_its_own_claims_once_half_their_time_is_gone(Session, project):
    """`keep_claims` (the Label page's fragment, every minute while a page is open): this
    annotator's claims with less than half their time left, expired ones too (nobody took them),
    run CLAIM_SECONDS again; fresher ones and other annotators' are left as they are."""
    from db.models import Claim

    _finished_run(Session, project.id)
    for who in ("alice#1", "bob#2"):
        with Session.begin() as session:
            queue.next_items(session, project.id, k=3, annotator=who)
    held = _claims(Session)
    alice = sorted(i for i, (who, _) in held.items() if who == "alice#1")
    now = utcnow()
    ends = {alice[0]: now - timedelta(seconds=10), alice[1]: now + timedelta(seconds=30)}
    with Session.begin() as session:
        for item_id, end in ends.items():
            session.execute(update(Claim).where(Claim.item_id == item_id).values(expires_at=end))
    with Session.begin() as session:
        assert queue.keep_claims(session, project.id, "alice#1") == 2
    after = _claims(Session)
    later = now + timedelta(seconds=queue.CLAIM_SECONDS - 30)
    assert all(after[i][1] > later for i in ends)
    assert after[alice[2]] == held[alice[2]]  # most of its time left: not written
    assert {i: c for i, c in after.items() if c[0] == "bob#2"} == {
        i: c for i, c in held.items() if c[0] == "bob#2"
    }


def test_cancelling_a_run_a_worker_claims_meanwhile_asks_it_to_stop(Session, project):
    """The page reads the run as queued, a worker claims it, then Cancel writes: an unconditional
    write marked the training run cancelled (and its project's next run could then be claimed
    beside it). It is asked to stop instead, as a running run is."""
    from db.models import QUEUED, RUNNING

    with Session.begin() as session:
        run_id = run_queries.request_run(session, project.id, "m2", {}).id
    with Session.begin() as page:
        seen = page.get(Run, run_id)  # what cancel_run reads, before the worker's claim
        assert seen.status == QUEUED
        with Session.begin() as worker:
            assert run_queries.claim_next_run(worker, "w").id == run_id
        run = run_queries.cancel_run(page, run_id)
        assert run.status == RUNNING and run.cancel_requested
    with Session() as session:
        stored = session.get(Run, run_id)
        assert stored.status == RUNNING and stored.cancel_requested


def test_a_page_a_restarted_server_lost_passes_to_the_same_names_new_session(Session, project):
    """`restored_page` (the grid page a tab sends back after a server restart): the claims the
    lost session ("rosa#old", named by its token's tag) holds pass to the new one, whose other
    claims go back; the same name's other sessions keep theirs, and so does a name that only
    begins like it; a page another session holds an image of is not given back."""
    _finished_run(Session, project.id)
    with Session.begin() as session:
        lost = [item.id for item, _ in queue.next_items(session, project.id, k=4, annotator="rosa#old")]
    with Session.begin() as session:
        drawn = [item.id for item, _ in queue.next_items(session, project.id, k=4, annotator="rosa#new")]
    assert not set(lost) & set(drawn)
    with Session.begin() as session:
        page = queue.restored_page(session, project.id, lost, "rosa#new", {queries.token_tag("old")})
        assert [item.id for item, _ in page] == lost
    held = _claims(Session)
    assert {i: held[i][0] for i in lost} == dict.fromkeys(lost, "rosa#new")
    assert not set(drawn) & set(held)  # the page drawn in its place meanwhile: given back
    for other in ("rosa#desk", "rosa#x#old"):  # the same name's live tab; the name "rosa#x"
        with Session.begin() as session:
            queue.next_items(session, project.id, k=2, annotator=other)
        theirs = [i for i, (who, _) in _claims(Session).items() if who == other]
        tag = queries.token_tag(other.rpartition("#")[2])
        with Session() as session:  # not committed
            assert (
                queries.take_over_claims(session, project.id, theirs, "rosa#new", {queries.token_tag("old")})
                == 0
            )
            assert (
                queue.restored_page(
                    session, project.id, [*lost, theirs[0]], "rosa#new", {queries.token_tag("old")}
                )
                is None
            )
        with Session() as session:  # their own session's tag: only under the same name
            taken = queries.take_over_claims(session, project.id, theirs, "rosa#new", {tag})
            assert taken == (2 if other == "rosa#desk" else 0)
        with Session() as session:  # among the tags of the sessions that took a page over
            tags = {queries.token_tag("old"), tag}
            taken = queries.take_over_claims(session, project.id, theirs, "rosa#new", tags)
            assert taken == (2 if other == "rosa#desk" else 0)
