"""Two annotators at once, as two real processes: no answer is lost, no image is handed to both,
and the history says who gave which label. Runs on SQLite and on PostgreSQL."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from db import queries
from db.models import LabelEvent
from labeler import projects, queue

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("label_worker.py")


def start_worker(
    url: str, project_id: int, annotator: str, n: int, go_file: Path | None = None
) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    args = [sys.executable, str(WORKER), url, str(project_id), annotator, str(n)]
    if go_file is not None:
        args.append(str(go_file))
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def acks(output: str) -> list[int]:
    return [int(line.split()[1]) for line in output.splitlines() if line.startswith("ack ")]


def test_two_annotator_processes_lose_nothing_and_never_share_an_image(
    db_url, Session, tmp_path, make_image_set
):
    project = projects.create_project(Session, "team", "test", images=make_image_set(n=80, classes=3))
    n = 20
    go = tmp_path / "go"
    workers = {name: start_worker(db_url, project.id, name, n, go) for name in ("alice", "bob")}
    for worker in workers.values():
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
    go.touch()  # both start labeling at the same moment, racing for the same first image
    outputs = {}
    for name, worker in workers.items():
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        assert "Traceback" not in err
        outputs[name] = acks(out)

    assert [len(ids) for ids in outputs.values()] == [n, n]
    both = outputs["alice"] + outputs["bob"]
    shared = sorted(set(outputs["alice"]) & set(outputs["bob"]))
    assert len(set(both)) == 2 * n, f"images handed to both annotators: {shared}; {outputs}"
    with Session() as session:
        events = list(session.scalars(select(LabelEvent).where(LabelEvent.project_id == project.id)))
        assert len(events) == 2 * n
        by_item = {e.item_id: e.annotator for e in events}
        assert Counter(e.annotator for e in events) == {"alice": n, "bob": n}
        for name, ids in outputs.items():
            assert all(by_item[i] == name for i in ids), "the history must show who gave each label"
        assert queries.label_count(session, project.id) == 2 * n


def test_claims_keep_an_image_from_others_until_answered_or_expired(Session, tiny_project):
    with Session() as session:
        alice = [item.id for item, _ in queue.next_items(session, tiny_project.id, k=2, annotator="alice")]
        bob = [item.id for item, _ in queue.next_items(session, tiny_project.id, k=2, annotator="bob")]
        assert not set(alice) & set(bob)
        # Asking again (a page rerun) keeps the same images; without an annotator nothing changes.
        assert [i.id for i, _ in queue.next_items(session, tiny_project.id, k=2, annotator="alice")] == alice
        assert [i.id for i, _ in queue.next_items(session, tiny_project.id, k=2)] == alice
    with Session.begin() as session:
        queries.add_label(session, alice[0], 0, annotator="alice")
    with Session() as session:
        # Answered: alice moves on; bob still does not get her other image.
        again = [i.id for i, _ in queue.next_items(session, tiny_project.id, k=2, annotator="alice")]
        assert alice[0] not in again and alice[1] in again
        assert alice[1] not in [
            i.id for i, _ in queue.next_items(session, tiny_project.id, k=2, annotator="bob")
        ]
    with Session.begin() as session:
        from sqlalchemy import update

        from db.models import Claim, utcnow

        session.execute(update(Claim).where(Claim.annotator == "alice").values(expires_at=utcnow()))
    with Session() as session:
        # Alice left: her claim expired, so her image goes to the next person.
        assert alice[1] in [i.id for i, _ in queue.next_items(session, tiny_project.id, k=2, annotator="bob")]


def test_a_tab_gives_back_its_own_claims_and_nobody_elses(Session, tiny_project):
    """`release_claims(token)` (a login, logout or new name in that tab) frees the claims of
    "name#token" whatever the name, and no other: not the same person's other tab, not a token
    that only a LIKE wildcard would match."""
    from db.models import Claim

    token, other = "0123abcd" * 4, "fedc9876" * 4
    holders = [f"ann%_/#{token}", f"ann#{other}", f"bob#{token}0", "x#abcd"]
    with Session.begin() as session:
        held = {
            who: queue.next_items(session, tiny_project.id, k=1, annotator=who)[0][0].id for who in holders
        }
    assert len(set(held.values())) == len(holders)
    with Session.begin() as session:
        assert queries.release_claims(session, "ab_d") == 0
        assert queries.release_claims(session, "") == 0
        assert queries.release_claims(session, token) == 1
    with Session() as session:
        assert {c.annotator for c in session.query(Claim)} == set(holders[1:])


def test_when_only_claimed_images_remain_they_are_shared(Session, tiny_project):
    with Session() as session:
        everything = queue.next_items(session, tiny_project.id, k=100, annotator="alice")
        assert len(everything) == 32  # 40 images, 8 in the test split
        shared = queue.next_items(session, tiny_project.id, k=1, annotator="bob")
        assert len(shared) == 1, "bob must not be told all is done while images are unlabeled"


def test_a_database_locked_past_every_retry_still_shows_an_image(Session, tiny_project, monkeypatch):
    import json

    from sqlalchemy.exc import OperationalError

    import db

    def locked(*args, **kwargs):
        raise OperationalError("INSERT INTO claims", {}, Exception("database is locked"))

    monkeypatch.setattr(queries, "claim_items", locked)
    monkeypatch.setattr(db, "retrying", lambda fn, **kwargs: fn())  # every retry, at once
    at = _open_label_page(tiny_project.id, "alice")
    assert json.loads(at.get("bidi_component")[0].proto.json)["items"], "the page showed no image"
    assert not _claimed(Session, "alice")


def _claimed(Session, prefix: str) -> set[int]:
    from db.models import Claim

    with Session() as session:
        return set(session.scalars(select(Claim.item_id).where(Claim.annotator.like(f"{prefix}#%"))))


def _open_label_page(project_id: int, name: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["project_id"] = project_id
    at.session_state["annotator"] = name
    at.run()
    assert not at.exception
    return at


def _project_of(Session, n: int):
    """A project with room for two full pages of the label box (20 images each)."""
    from labeler import projects
    from tests.conftest import tiny_image_set

    return projects.create_project(Session, f"big-{n}", "test", images=tiny_image_set(n=n, test=8))


def test_two_label_page_sessions_show_different_images_and_keep_both_answers(Session):
    import json

    from labeler import answers

    tiny_project = _project_of(Session, 60)

    shown = {}
    for name in ("alice", "bob"):
        at = _open_label_page(tiny_project.id, name)
        shown[name] = [i["id"] for i in json.loads(at.get("bidi_component")[0].proto.json)["items"]]
        assert set(shown[name]) == _claimed(Session, name)
    assert not set(shown["alice"]) & set(shown["bob"]), "two people were shown the same image"
    # Each answers the first image on their screen, as the page's box sends it.
    for n, name in enumerate(("alice", "bob")):
        action = {"id": "a1", "type": "label", "item": shown[name][0], "class": n}
        answers.apply_actions(Session, tiny_project.id, name, [action], answers.Ledger())
    with Session() as session:
        events = list(session.scalars(select(LabelEvent).order_by(LabelEvent.id)))
    assert [(e.annotator, e.item_id, e.class_index) for e in events] == [
        ("alice", shown["alice"][0], 0),
        ("bob", shown["bob"][0], 1),
    ]


def test_two_tabs_with_the_same_annotator_name_get_different_images(Session):
    """The default name is the server's user name, which every browser on it shares."""
    import json

    tiny_project = _project_of(Session, 60)
    first = _open_label_page(tiny_project.id, "same-name")
    second = _open_label_page(tiny_project.id, "same-name")
    ids = [
        {i["id"] for i in json.loads(at.get("bidi_component")[0].proto.json)["items"]}
        for at in (first, second)
    ]
    assert ids[0] and ids[1] and not ids[0] & ids[1]


def test_the_grid_claims_its_page_once_not_on_every_rerun(Session):
    from db.models import Claim

    tiny_project = _project_of(Session, 60)

    def claims():
        with Session() as session:
            return {
                c.item_id: c.expires_at
                for c in session.scalars(select(Claim).where(Claim.annotator.like("alice#%")))
            }

    at = _open_label_page(tiny_project.id, "alice")
    assert len(claims()) == 20  # the one-image box's batch
    at.radio(key="label_mode").set_value("Grid").run()
    page = claims()
    assert len(page) == 12  # the grid's page; the rest given back
    at.run()  # a rerun, as a tile's choice makes
    assert claims() == page


def test_two_imports_under_one_new_name_at_once_end_in_one_sentence(Session, make_image_set, monkeypatch):
    """Both passed the name check before either committed: the second failed on the unique name
    with the database's own words ("IntegrityError: ... duplicate key ...")."""
    first = projects.create_project(Session, "birds", "test", images=make_image_set(n=20))
    monkeypatch.setattr(queries, "get_project", lambda session, name: None)  # checked before it existed
    try:
        projects.create_project(Session, "birds", "test", images=make_image_set(n=20))
    except ValueError as error:
        assert (
            str(error)
            == "A project named 'birds' was created meanwhile (by someone else?); choose another name."
        )
    else:
        raise AssertionError("a second project named birds was created")
    monkeypatch.undo()
    with Session() as session:
        assert [p.id for p in queries.list_projects(session)] == [first.id]
    assert not (projects.project_dir(first.id + 1)).exists()


def _commit_answer_lost(Session, monkeypatch):
    """The next commit of `Session`'s sessions lands, and then its answer is lost (the connection
    drops after the server committed)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    def lost(session):
        event.remove(Session, "after_commit", lost)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    event.listen(Session, "after_commit", lost)


def test_an_import_whose_commit_answer_was_lost_keeps_its_project_and_files(
    Session, tmp_path, make_image_set, monkeypatch
):
    """The import took the lost answer for a failure and removed the files of a project that was
    in the database: it then said "The pixel file of project N is missing"."""
    import numpy as np
    from PIL import Image

    images = make_image_set(n=20)
    source = tmp_path / "source"
    for key, array in zip(images.keys, images.pixels):
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array[0]).save(source / key)
    _commit_answer_lost(Session, monkeypatch)
    given = projects.create_project(Session, "given", "test", images=images, audit_size=0)
    _commit_answer_lost(Session, monkeypatch)
    folder = projects.create_project(Session, "folder", f"folder:{source}", classes=["a", "b"], audit_size=0)
    for project in (given, folder):
        with Session() as session:
            assert queries.get_project(session, project.name).id == project.id
            (item,) = [i for i in queries.items(session, project.id) if i.row == 3]
        assert projects.pixels(project.id).shape[0] == 20  # "The pixel file ... is missing" before
        if project is folder:
            assert projects.local_file(item.path).read_bytes() == (source / "img" / item.key).read_bytes()
        else:
            assert np.array_equal(projects.pixels(project.id)[3], images.pixels[3])


def test_a_failed_import_takes_no_other_import_s_project_for_its_own(Session, make_image_set):
    """SQLite reuses the highest id: an import that waited for the write lock can take the id of
    one whose transaction rolled back, and the check found "its" project there."""
    other = projects.create_project(Session, "other", "test", images=make_image_set(n=20))
    assert projects._stored_after_all(Session, other.id, "other", RuntimeError()) is True
    assert projects._stored_after_all(Session, other.id, "mine", RuntimeError()) is False
    assert projects._stored_after_all(Session, other.id, "other", KeyboardInterrupt()) is None
