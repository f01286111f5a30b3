"""AppTest runs of the real app.py and of the Label page: the one-image box, the grid, the keys."""

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from db import queries
from db import runs as run_queries
from db.models import AUDIT, POOL, Claim, LabelEvent, Project, Run
from labeler.ui import label
from tests.ui.ui_helpers import (
    APP,
    box_data,
    button,
    fake_done_run,
    label_items,
    on_screen,
    page_app,
    send_from,
)


def test_app_opens_on_the_label_page(Session, tiny_project):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.run()
    assert not at.exception
    assert "0 labeled" in at.get("progress")[0].proto.text
    # The one-image box claimed the first images for this session.
    with Session() as session:
        from db.models import Claim

        assert session.query(Claim).filter(Claim.annotator.like("tester#%")).count() > 0


def test_an_address_without_a_project_opens_the_one_the_person_answered_in_last(Session, tiny_project):
    """A bookmark of ?annotator=NAME (no ?project=) opened the built-in digits project, where the
    next keys labeled the wrong project's images (exploratory session)."""
    from labeler import projects
    from tests.conftest import tiny_image_set

    other = projects.create_project(Session, "other", "test", images=tiny_image_set(seed=1))
    label_items(Session, other.id, 1, annotator="tester")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params["annotator"] = "tester"
    at.run()
    assert not at.exception
    assert at.session_state["project_id"] == other.id and at.query_params["project"] == str(other.id)
    gone = AppTest.from_file(str(APP), default_timeout=120)  # a project that is gone: the same
    gone.query_params["annotator"] = "tester"
    gone.query_params["project"] = "999"
    gone.run()
    assert not gone.exception and gone.session_state["project_id"] == other.id
    someone_else = AppTest.from_file(str(APP), default_timeout=120)  # no answer yet: the first project
    someone_else.query_params["annotator"] = "newcomer"
    someone_else.run()
    assert not someone_else.exception and someone_else.session_state["project_id"] == tiny_project.id


@pytest.mark.parametrize(
    "test, audit, expected",
    [
        (None, None, "not measured yet"),
        (None, (0.58, 0.3, 0.8, 12), "got 58% of 12 audit images right"),
        (None, (0.95, 0.9, 0.99, 40), None),
        # A built-in set has no audit images but a test split: it said "not measured yet" for ever.
        (0.69, None, "got 69% of the test images right"),
        (0.93, None, None),
    ],
)
def test_grid_warns_when_its_prefilled_guesses_come_from_a_model_measured_poorly(
    Session, tiny_project, test, audit, expected
):
    """An early model is sure of wrong guesses (an exploratory session: 4 of 8 pre-filled tiles
    wrong, 58 % on the audit images), and A accepts them all, without a word."""
    fake_done_run(Session, tiny_project.id, accuracy=test, audit=audit)  # every guess 90 % sure: pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    warnings = [w.value for w in at.warning]
    if expected is None:
        assert not warnings
    else:
        assert any(expected in w for w in warnings), warnings
        at.slider(key="grid_threshold").set_value(0.95).run()  # nothing pre-filled: no warning
        assert not [w for w in at.warning if "pre-filled" in w.value]


def test_grid_accepts_confident_guesses_only_and_undoes_a_page_at_once(Session, tiny_project):
    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.95).run()
    assert all(box.value == -1 for box in at.selectbox if box.key.startswith("grid-"))  # 0.9 < 0.95: none
    at.slider(key="grid_threshold").set_value(0.85).run()
    tiles = [box for box in at.selectbox if box.key.startswith("grid-")]
    assert len(tiles) == 12 and all(box.value >= 0 for box in tiles)
    # Somebody answers one tile's image while this page is open: accepting leaves it alone.
    taken = int(tiles[0].key.split("-")[1])
    accepted = [int(box.key.split("-")[1]) for box in tiles]
    with Session.begin() as session:
        queries.add_label(session, taken, 1, annotator="bob")
    at.run()  # redrawn (a tile's choice reruns the page): the tile says so and takes no choice
    tile = next(box for box in at.selectbox if box.key.startswith(f"grid-{taken}-"))
    assert tile.disabled, "shown open, pre-filled, after it was answered"
    assert any("Answered meanwhile as" in c.value and "by bob" in c.value for c in at.caption)
    button(at, "accept_grid").click().run()
    assert not at.exception
    assert (
        "11 labels" in at.success[0].value
        and "1 image had been answered meanwhile and was left" in at.success[0].value
    )
    with Session() as session:
        assert queries.label_count(session, tiny_project.id) == 12
        assert queries.current_labels(session, tiny_project.id)[taken] == 1
    at.radio(key="label_mode").set_value("Grid").run()
    at.button(key="undo").click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {taken: 1}  # bob's answer stays
    # The undone images come back first, pre-filled with the guesses again, not on "skip".
    again = [box for box in at.selectbox if box.key.startswith("grid-")]
    assert {int(box.key.split("-")[1]) for box in again[:11]} == set(accepted) - {taken}
    assert all(box.value >= 0 for box in again[:11])  # the 12th comes from the queue


def test_undoing_a_page_a_running_run_started_with_says_so(Session, tiny_project):
    """An accepted page started a run (auto-retrain); U undid the page at once and said nothing,
    while the run went on training with it (exploratory session). A run is named when the
    labels it read held the page (by event id, not by clock: review)."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from db.models import RUNNING, utcnow

    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure
    with Session.begin() as session:  # no run of its own: the accept would queue one, which a
        project = session.get(Project, tiny_project.id)  # worker may train before the undo
        project.settings = {**project.settings, "auto_retrain_every": 0}
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.85).run()
    button(at, "accept_grid").click().run()
    with Session.begin() as session:
        page_end = session.scalar(select(func.max(LabelEvent.id)))
        early = utcnow() - timedelta(hours=1)  # both claimed before the page: the clock says nothing
        alive = {"started_at": early, "heartbeat_at": utcnow()}  # not taken for dead by a worker
        without = Run(project_id=tiny_project.id, model="m2", status=RUNNING, **alive)
        without.metrics = {"labels_upto": page_end - 12}  # read its labels before the page
        read = Run(project_id=tiny_project.id, model="m2", status=RUNNING, **alive)
        read.metrics = {"labels_upto": page_end}  # ... and after it
        also = Run(project_id=tiny_project.id, model="m2", status=RUNNING, **alive)
        also.metrics = {"labels_upto": page_end + 5}
        session.add_all([without, read, also])
        session.flush()
        without_id, read_id, also_id = without.id, read.id, also.id
    at.button(key="undo").click().run()
    (said,) = [m.value.replace("\\", "") for m in at.info if m.value.startswith("Undone")]  # as typed
    assert said.endswith(
        f"back in the queue; runs {read_id} and {also_id}, training now, started with them "
        "(the next run leaves them out)."
    )
    with Session.begin() as session:
        session.get(Run, read_id).status = session.get(Run, also_id).status = "done"
    with Session() as session:
        undone = [i.id for i in queries.items(session, tiny_project.id, "pool")]
        assert session.get(Run, without_id).status == RUNNING
        assert run_queries.running_with_undone(session, tiny_project.id, undone) == []


def test_undo_says_first_that_it_would_drop_the_tiles_set_on_the_page_shown(Session, tiny_project):
    """U replaces the page shown with the undone images: tiles set on it were dropped without a
    word (exploratory). The first U says so and undoes nothing; a second one goes ahead."""
    pid = tiny_project.id
    at = page_app("label", pid)
    at.radio(key="label_mode").set_value("Grid").run()
    first = list(at.session_state[f"grid-page-{pid}"])
    _grid_tiles(at)[first[0]].set_value(1).run()
    button(at, "accept_grid").click().run()
    shown = list(at.session_state[f"grid-page-{pid}"])
    _grid_tiles(at)[shown[0]].set_value(0).run()
    _grid_tiles(at)[shown[1]].set_value(1).run()
    at.button(key="undo").click().run()
    assert "Undo would drop the 2 tiles you set on this page" in at.warning[0].value
    assert list(at.session_state[f"grid-page-{pid}"]) == shown
    with Session() as session:
        assert queries.current_labels(session, pid) == {first[0]: 1}  # not undone
    at.button(key="undo").click().run()
    with Session() as session:
        assert queries.current_labels(session, pid) == {}
    assert at.session_state[f"grid-page-{pid}"][0] == first[0]  # the undone image comes first


def test_keys_are_stable_when_classes_are_added_or_renamed():
    from labeler.ui.label import assign_keys

    digits = assign_keys([str(d) for d in range(10)], {})
    assert [digits[str(i)] for i in range(10)] == [str(d) for d in range(10)]
    more = assign_keys([*(str(d) for d in range(10)), "other"], digits)
    assert {k: v for k, v in more.items() if k != "10"} == digits and more["10"] not in digits.values()
    assert assign_keys(["cat", "dog"], {}) == {"0": "1", "1": "2"}
    renamed = assign_keys(["kitten", "dog", "bird"], {"0": "1", "1": "2"})
    assert renamed == {"0": "1", "1": "2", "2": "3"}
    many = assign_keys([f"c{i}" for i in range(30)], {})
    assert len(set(many.values())) == 30 and not set(many.values()) & set("aisuz")


def test_captions_hide_file_names_and_audit_images_never_show_them(Session, tiny_project, monkeypatch):
    from labeler.ui import label

    with Session() as session:
        item = queries.items(session, tiny_project.id, POOL)[0]
    state = {}
    monkeypatch.setattr(label.st, "session_state", state)
    assert label.caption(item) == f"#{item.id}"
    state["show_names"] = True
    assert item.key in label.caption(item)
    item.split = AUDIT
    assert label.caption(item) == f"#{item.id}" and "img" not in label.caption(item)


def test_the_original_file_is_shown_upright_not_the_model_thumbnail(tmp_path):
    import base64
    import io

    from labeler.ui.label import _data_url

    original = Image.new("RGB", (160, 90), (200, 30, 30))
    exif = original.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees to show upright
    path = tmp_path / "photo.jpg"
    original.save(path, exif=exif)
    url = _data_url(1, 0, str(path))
    shown = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    # Upright (90 x 160), at its own size scaled for the page, not a 32x32 model input.
    assert shown.height > shown.width and max(shown.size) >= 160


def test_a_history_correction_never_replaces_an_answer_changed_meanwhile(Session, tiny_project):
    from db.models import IGNORED
    from tests.ui.ui_helpers import label_items

    a, b = label_items(Session, tiny_project.id, 2, annotator="bob")
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    tiles = {int(box.key.split("-")[1]): box for box in at.selectbox if box.key.startswith("hist-")}
    with Session.begin() as session:  # bob corrects image a while alice has the history open
        was = queries.current_labels(session, tiny_project.id)[a]
        queries.add_label(session, a, 1 - was, annotator="bob", kind="correction")
    tiles[a].set_value(IGNORED)  # alice changes a too (drawn before bob's change), and b
    with Session() as session:
        b_was = queries.current_labels(session, tiny_project.id)[b]
    tiles[b].set_value(1 - b_was)
    button(at, "hist_save").click().run()
    assert "Corrected 1 label " in at.success[0].value and "changed by someone else" in at.success[0].value
    with Session() as session:
        labels = queries.current_labels(session, tiny_project.id)
    assert labels == {a: 1 - was, b: 1 - b_was}


def test_a_grid_page_drawn_before_a_class_was_renamed_is_not_saved(Session, tiny_project):
    """A tile showed "0"; the admin renames that class before the page is accepted: the index
    may now mean something else, so nothing is saved and the page says why."""
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    next(box for box in at.selectbox if box.key.startswith("grid-")).set_value(0)
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 0, "renamed")
    button(at, "accept_grid").click().run()
    assert not at.exception
    assert "renamed" in at.error[0].value
    with Session() as session:
        assert queries.label_count(session, tiny_project.id) == 0


def _grid_tiles(at) -> dict[int, object]:
    """The grid's selectboxes by item id."""
    return {int(box.key.split("-")[1]): box for box in at.selectbox if box.key.startswith("grid-")}


def test_a_tile_chosen_with_the_mouse_keeps_its_choice_when_another_person_adds_a_class(
    Session, tiny_project
):
    """A class added (or the threshold moved) draws every tile anew: a tile the person had set with
    the mouse went back to its pre-filled guess, and A stored the guess. It keeps the choice."""
    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    tiles = _grid_tiles(at)
    first = next(iter(tiles))
    guess = tiles[first].value
    assert guess >= 0
    tiles[first].set_value(1 - guess).run()  # the person corrects the guess
    with Session.begin() as session:  # an admin adds a class meanwhile
        queries.add_class(session, tiny_project.id, "third")
    at.run()
    tiles = _grid_tiles(at)
    assert tiles[first].value == 1 - guess and len(tiles[first].options) == 4  # drawn anew, choice kept
    at.slider(key="grid_threshold").set_value(0.95).run()  # no guesses pre-filled now; the choice stays
    tiles = _grid_tiles(at)
    assert tiles[first].value == 1 - guess and all(box.value == -1 for i, box in tiles.items() if i != first)
    button(at, "accept_grid").click().run()
    assert not at.exception
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {first: 1 - guess}


def _rename_refused_once_then_saved(Session, project_id: int, at, first: int) -> None:
    """Class 0 renamed while the first tile holds it: the redraw keeps the tile on 0, the first A
    is refused, the second (on the page drawn under the new names) saves it."""
    with Session.begin() as session:
        queries.rename_class(session, project_id, 0, "renamed")
    at.run()
    assert _grid_tiles(at)[first].value == 0
    button(at, "accept_grid").click().run()
    assert not at.exception
    assert "renamed" in at.error[0].value
    with Session() as session:
        assert queries.label_count(session, project_id) == 0
    button(at, "accept_grid").click().run()  # again, on the page drawn under the new names: saved
    assert "Saved 1 label\\." in at.success[0].value
    with Session() as session:
        assert queries.current_labels(session, project_id) == {first: 0}


def test_a_tile_chosen_before_its_class_was_renamed_is_not_saved_after_a_redraw(Session, tiny_project):
    """The rename redraws the tiles (a rerun before A): the choice is kept, under the new name, and
    A refuses the page as for any answer given for the old name."""
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    first = next(iter(_grid_tiles(at)))
    _grid_tiles(at)[first].set_value(0).run()
    _rename_refused_once_then_saved(Session, tiny_project.id, at, first)


def test_a_grid_key_pressed_before_its_class_was_renamed_is_not_saved_after_a_redraw(Session, tiny_project):
    """A key sends its class's name as shown with the index: after a rename and a redraw the tile
    shows the new name, and A refuses the page as for any answer given for the old name."""
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    held = list(at.session_state[f"grid-page-{tiny_project.id}"])  # the page's items, in order
    first, page = held[0], ",".join(map(str, held))
    # What label_grid.js sends for the key "1" on the first tile while class 0 is named "0".
    at.session_state["grid-keys"] = {
        "edits": {"token": "k1", "page": page, "list": [{"item": first, "class": 0, "name": "0"}]}
    }
    at.run()
    assert _grid_tiles(at)[first].value == 0
    _rename_refused_once_then_saved(Session, tiny_project.id, at, first)


def test_a_history_correction_drawn_before_a_class_was_renamed_is_not_saved(Session, tiny_project):
    from tests.ui.ui_helpers import label_items

    (a,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    with Session() as session:
        was = queries.current_labels(session, tiny_project.id)[a]
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    next(box for box in at.selectbox if box.key.startswith("hist-")).set_value(1 - was)
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 1 - was, "renamed")
    button(at, "hist_save").click().run()
    assert "renamed" in at.error[0].value
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {a: was}


def _labels(Session, project_id: int) -> dict[int, int]:
    with Session() as session:
        return queries.current_labels(session, project_id, ignored=True)


def test_accept_from_the_page_on_screen_never_accepts_a_page_not_shown_yet(Session, tiny_project):
    """A pressed twice (or held down): the second press comes from the page just saved, while the
    server has already drawn the next page, pre-filled with guesses nobody has seen. Streamlit
    runs a click's callback with the arguments of the newest run that drew the button, so the
    button is drawn per page: the press accepts the page it was pressed on, and only that."""
    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: every tile pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    seen = on_screen(at)
    button(seen, "accept_grid").click()
    at.run()
    first = _labels(Session, tiny_project.id)
    assert len(first) == 12
    next_page = {int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")}
    assert len(next_page) == 12 and not next_page & set(first)
    send_from(at, seen)  # the second press, from the saved page still on screen
    assert not at.exception
    assert _labels(Session, tiny_project.id) == first
    assert "saved already" in at.success[0].value


def test_a_second_accept_says_saved_already_even_when_others_answered_some_images(Session, tiny_project):
    """Bob answers two images of Ann's page before she accepts it: the accept saves the other ten
    and says two were answered meanwhile; A pressed again (from the page still on screen) says the
    page was saved already, and writes nothing."""
    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    page = list(_grid_tiles(at))
    with Session.begin() as session:
        for i in page[:2]:
            queries.add_label(session, i, 0, annotator="bob")
    seen = on_screen(at)
    button(seen, "accept_grid").click()
    at.run()
    assert (
        "Saved 10 labels" in at.success[0].value
        and "2 images had been answered meanwhile" in at.success[0].value
    )
    saved = _labels(Session, tiny_project.id)
    send_from(at, seen)
    assert not at.exception
    assert "saved already" in at.success[0].value
    assert _labels(Session, tiny_project.id) == saved


def test_a_page_accepted_undone_then_answered_by_others_is_not_called_saved_already(Session, tiny_project):
    """Accept, Undo (the same images come back as the next page), someone else answers all
    twelve, Accept again: nothing of this person's is saved, and the message says the images were
    answered meanwhile, not that the page was saved already (the undone page is not saved)."""
    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    page = list(_grid_tiles(at))
    button(at, "accept_grid").click().run()
    at.button(key="undo").click().run()
    again = list(_grid_tiles(at))
    assert set(again) == set(page)
    for tile in _grid_tiles(at).values():
        tile.set_value(1)
    at.run()
    with Session.begin() as session:
        for i in again:
            queries.add_label(session, i, 0, annotator="bob")
    button(at, "accept_grid").click().run()
    message = at.success[0].value
    assert "saved already" not in message
    assert "Saved 0 labels" in message and "12 images had been answered meanwhile" in message
    assert set(_labels(Session, tiny_project.id).values()) == {0}  # Bob's answers stand


def test_a_held_grid_page_another_annotator_took_over_is_replaced(Session, tiny_project):
    """Ann left her grid page longer than the claims last, and Bob's next page took some of its
    images: at Ann's next rerun her page is replaced by one without Bob's images, and she is
    told why (her choices on the old page are gone; otherwise both would label the same images)."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Claim
    from labeler import queue

    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    page = list(_grid_tiles(at))
    with Session.begin() as session:  # Ann away: her claims run out
        session.execute(
            update(Claim).values(expires_at=Claim.expires_at - timedelta(seconds=queue.CLAIM_SECONDS + 5))
        )
    with Session.begin() as session:
        bobs = {item.id for item, _ in queue.next_items(session, tiny_project.id, k=4, annotator="bob")}
    assert bobs & set(page)
    at.run()
    assert not at.exception
    now = list(_grid_tiles(at))
    assert len(now) == 12 and not set(now) & bobs
    assert any("Someone else took over images of this page" in w.value for w in at.warning)
    at.run()  # the new page is hers: it stays, without the message
    assert list(_grid_tiles(at)) == now
    assert not any("Someone else took over" in w.value for w in at.warning)


def test_a_grid_page_shared_because_others_hold_everything_stays(Session, tiny_project):
    """Bob holds every image left, so Ann's page is made of images he holds (shared rather than
    "all done"): her page is not taken over from her at each rerun, it stays as it is."""
    from labeler import queue

    fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:
        queue.next_items(session, tiny_project.id, k=1000, annotator="bob")
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    page = list(_grid_tiles(at))
    assert len(page) == 12
    at.run()
    assert list(_grid_tiles(at)) == page
    assert not [w for w in at.warning if "pre-filled guess" not in w.value]  # the model's is no matter here


def test_a_grid_page_partly_shared_keeps_its_tiles_when_the_holder_answers_a_shared_image(
    Session, tiny_project
):
    """Bob holds all but 4 images, so Ann's page is those 4 and 8 he holds. Once Bob answered one
    of the 8, her next rerun drew another page (the batch drawn in its place differed) and the
    tile she had set was lost, with "Someone else took over images of this page while you were
    away" (review). Her page stays, with her choice; his answer shows on it as answered."""
    from labeler import queue

    fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:
        queue.next_items(session, tiny_project.id, k=28, annotator="bob")
        bobs = {c.item_id for c in session.query(Claim)}
    at = page_app("label", tiny_project.id, annotator="ann")
    at.radio(key="label_mode").set_value("Grid").run()
    page = list(_grid_tiles(at))
    shared = [i for i in page if i in bobs]
    own = [i for i in page if i not in bobs]
    assert len(page) == 12 and len(own) == 4
    tiles = _grid_tiles(at)
    choice = 1 - max(tiles[own[0]].value, 0)
    tiles[own[0]].set_value(choice).run()
    with Session.begin() as session:  # Bob answers a shared image, and one of his own
        queries.add_label(session, shared[0], 0, annotator="bob")
        queries.add_label(session, next(i for i in bobs if i not in page), 0, annotator="bob")
    at.run()
    assert list(_grid_tiles(at)) == page
    assert _grid_tiles(at)[own[0]].value == choice
    assert not [w for w in at.warning if "took over" in w.value]


def test_accept_right_after_moving_the_threshold_accepts_the_tiles_on_screen(Session, tiny_project):
    """The threshold lowered and A pressed before the page is redrawn: the tiles on screen (none
    pre-filled) are what is accepted, not the pre-fills the new threshold makes on the server."""
    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.95).run()
    tiles = [b for b in at.selectbox if b.key.startswith("grid-")]
    assert all(b.value == -1 for b in tiles)
    first = int(tiles[0].key.split("-")[1])
    tiles[0].set_value(1).run()  # one tile chosen on screen, the rest on skip
    seen = on_screen(at)
    at.slider(key="grid_threshold").set_value(0.85).run()  # the server draws pre-filled tiles
    button(seen, "accept_grid").click()
    send_from(at, seen)
    assert not at.exception
    assert _labels(Session, tiny_project.id) == {first: 1}


def _history_tiles(tree) -> dict[int, object]:
    return {int(box.key.split("-")[1]): box for box in tree.selectbox if box.key.startswith("hist-")}


def test_a_history_change_stays_on_the_page_until_saved_when_newer_answers_push_it_off(
    Session, tiny_project, monkeypatch
):
    """The History shows the newest answers; others keep answering while a person corrects the
    oldest one on the page. The rerun the change itself makes would push that tile off the page
    and drop the change: a tile with a change not saved yet stays, and Save stores it."""
    from labeler.ui import label
    from tests.ui.ui_helpers import label_items

    monkeypatch.setattr(label, "HISTORY_ROWS", 2)
    a, b = label_items(Session, tiny_project.id, 2, annotator="bob")
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    assert set(_history_tiles(at)) == {a, b}
    was = _labels(Session, tiny_project.id)[a]
    with Session.begin() as session:  # bob answers another image: a is no longer among the newest 2
        c = queries.items(session, tiny_project.id, POOL)[5].id
        queries.add_label(session, c, 0, annotator="bob")
    _history_tiles(at)[a].set_value(1 - was).run()
    assert _history_tiles(at)[a].value == 1 - was
    button(at, "hist_save").click().run()
    assert "Corrected 1 label " in at.success[0].value
    assert _labels(Session, tiny_project.id)[a] == 1 - was


def test_a_history_change_not_saved_yet_follows_its_class_name_through_a_rename(
    Session, tiny_project, monkeypatch
):
    """A selectbox's value travels as the name it shows: after a rename the browser's old name
    matched no option, and Streamlit put a changed tile back on its saved answer, silently, so
    Save left that correction out. The tile keeps the class it was set to, by name, when another
    class is renamed; when its own class is renamed it shows its saved answer again and says so.
    Setting the tiles logs no warning (Streamlit's "created with a default value but also had its
    value set via the Session State API", with a stack, in an exploratory session's log)."""
    from streamlit.elements.lib import policies

    from tests.ui.ui_helpers import label_items

    logged = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)  # once per process
    monkeypatch.setattr(
        policies._LOGGER, "warning", lambda message, *args, **_: logged.append(message % args)
    )

    (a,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    was = _labels(Session, tiny_project.id)[a]
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    _history_tiles(at)[a].set_value(1 - was).run()
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, was, "saved one")
    at.run()
    assert _history_tiles(at)[a].value == 1 - was and not at.warning
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 1 - was, "chosen one")
    at.run()
    assert _history_tiles(at)[a].value == was and f"#{a}" in at.warning[0].value
    at.run()  # a rerun before the person read it (it was said once, and a stopped run lost it)
    assert f"#{a}" in at.warning[0].value
    at.radio(key="label_mode").set_value("Grid").run()
    at.radio(key="label_mode").set_value("History").run()
    assert not at.warning  # old news once the person looked elsewhere
    button(at, "hist_save").click().run()
    assert _labels(Session, tiny_project.id)[a] == was and not at.warning  # old news once saved
    _history_tiles(at)[a].set_value(1 - was).run()
    button(at, "hist_save").click().run()
    assert "Corrected 1 label " in at.success[0].value
    assert _labels(Session, tiny_project.id)[a] == 1 - was
    assert not logged


def test_a_history_change_not_saved_yet_waits_while_the_person_looks_at_another_mode(Session, tiny_project):
    """Streamlit forgets a widget that is not drawn: a History change not saved was dropped when
    the person looked at another mode (or page) first. It waits, the other modes say so, and it
    comes back on the class it was set to, also after another class was renamed (its own class
    renamed: the test above); Save stores it."""
    from tests.ui.ui_helpers import label_items

    a, b = label_items(Session, tiny_project.id, 2, annotator="bob")
    was = _labels(Session, tiny_project.id)
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    _history_tiles(at)[a].set_value(1 - was[a]).run()
    assert not at.info
    at.radio(key="label_mode").set_value("Grid").run()
    assert not _history_tiles(at) and "History changes not saved yet: 1" in at.info[0].value
    at.radio(key="label_mode").set_value("History").run()
    assert _history_tiles(at)[a].value == 1 - was[a]
    at.radio(key="label_mode").set_value("Grid").run()
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, was[a], "saved one")
    at.radio(key="label_mode").set_value("One image").run()
    at.radio(key="label_mode").set_value("History").run()
    assert not at.exception and not at.warning
    tiles = _history_tiles(at)
    assert tiles[a].value == 1 - was[a] and tiles[b].value == was[b]
    button(at, "hist_save").click().run()
    assert "Corrected 1 label " in at.success[0].value
    assert _labels(Session, tiny_project.id) == {a: 1 - was[a], b: was[b]}
    at.radio(key="label_mode").set_value("Grid").run()
    assert not at.info  # saved: nothing waits
    # Its own class renamed while it waited: the tile shows its saved answer again and says so.
    at.radio(key="label_mode").set_value("History").run()
    _history_tiles(at)[b].set_value(1 - was[b]).run()
    at.radio(key="label_mode").set_value("Grid").run()
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 1 - was[b], "chosen one")
    at.radio(key="label_mode").set_value("History").run()
    assert _history_tiles(at)[b].value == was[b] and f"#{b}" in at.warning[0].value
    at.radio(key="label_mode").set_value("Grid").run()
    assert not at.info
    # Two renames trade the names: the name chosen is now the saved answer's, so no change waits.
    at.radio(key="label_mode").set_value("History").run()
    _history_tiles(at)[b].set_value(1 - was[b]).run()
    at.radio(key="label_mode").set_value("Grid").run()
    with Session.begin() as session:
        names = queries.class_names(session, tiny_project.id)
        queries.rename_class(session, tiny_project.id, 1 - was[b], "spare")
        queries.rename_class(session, tiny_project.id, was[b], names[1 - was[b]])
    at.radio(key="label_mode").set_value("History").run()
    assert _history_tiles(at)[b].value == was[b]
    at.radio(key="label_mode").set_value("Grid").run()
    assert not at.info


def test_save_from_the_history_on_screen_saves_the_tiles_it_shows(Session, tiny_project, monkeypatch):
    """The page was redrawn on the server (newer answers came in and pushed tile a off) but not on
    screen yet when the person changes a and clicks Save at once: the click saves the tiles on
    screen, a among them, not those of the newer page."""
    from labeler.ui import label
    from tests.ui.ui_helpers import label_items

    monkeypatch.setattr(label, "HISTORY_ROWS", 2)
    a, b = label_items(Session, tiny_project.id, 2, annotator="bob")
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    seen = on_screen(at)
    was = _labels(Session, tiny_project.id)[a]
    with Session.begin() as session:
        c = queries.items(session, tiny_project.id, POOL)[5].id
        queries.add_label(session, c, 0, annotator="bob")
    at.run()  # any rerun: the server draws the newest two, c and b
    assert set(_history_tiles(at)) == {b, c}
    _history_tiles(seen)[a].set_value(1 - was)
    button(seen, "hist_save").click()
    send_from(at, seen)
    assert not at.exception
    assert _labels(Session, tiny_project.id)[a] == 1 - was


def _grid_tiles(tree) -> dict[int, object]:
    return {int(box.key.split("-")[1]): box for box in tree.selectbox if box.key.startswith("grid-")}


def test_a_grid_page_stays_until_accepted_when_a_new_run_reorders_the_queue(Session, tiny_project):
    """Automatic retraining finishes while a person works through a grid page, and the queue is
    re-ordered: the next rerun (the tile just chosen makes one) drew another page and dropped
    the choices made on this one. The page stays until it is accepted."""
    from sqlalchemy import update

    from db.models import Prediction

    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    tiles = _grid_tiles(at)
    first = next(iter(tiles))
    chosen = 1 - tiles[first].value
    run_id = fake_done_run(Session, tiny_project.id)  # a new run: the queue in reverse order
    with Session.begin() as session:
        session.execute(update(Prediction).where(Prediction.run_id == run_id).values(score=-Prediction.score))
    tiles[first].set_value(chosen).run()
    assert list(_grid_tiles(at)) == list(tiles)
    assert _grid_tiles(at)[first].value == chosen
    button(at, "accept_grid").click().run()
    assert _labels(Session, tiny_project.id)[first] == chosen


def test_a_grid_page_keeps_the_guesses_it_was_drawn_with_when_a_new_run_finishes(Session, tiny_project):
    """A run finishing while a grid page is open changed each tile's confidence and not its
    pre-filled class (Streamlit keeps a widget's value): a tile showed one run's guess beside
    another's confidence, A stored it as the new run's guess, and a reload gave back the new
    run's guesses, which nobody had seen (exploratory). The page keeps its model's guesses."""
    from sqlalchemy import update

    from db.models import Prediction

    old_run = fake_done_run(Session, tiny_project.id)  # every guess the truth, 90 % sure
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    before = {i: (box.value, box.label) for i, box in _grid_tiles(at).items()}
    assert all(value >= 0 and "90%" in label for value, label in before.values())
    new_run = fake_done_run(Session, tiny_project.id)  # the other class, 99 % sure
    with Session.begin() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.run_id == new_run)
            .values(predicted=1 - Prediction.predicted, confidence=0.99)
        )
    first = next(iter(before))
    _grid_tiles(at)[first].set_value(1 - before[first][0]).run()  # a rerun, after the run finished
    after = {i: (box.value, box.label) for i, box in _grid_tiles(at).items() if i != first}
    assert after == {i: shown for i, shown in before.items() if i != first}
    button(at, "accept_grid").click().run()
    with Session() as session:
        events = session.query(LabelEvent).filter(LabelEvent.item_id != first).all()
    assert len(events) == len(after)
    assert {(e.predicted_run_id, e.predicted_index) for e in events} == {
        (old_run, before[e.item_id][0]) for e in events
    }


def test_a_grid_page_drawn_before_any_run_records_no_guess(Session, tiny_project):
    """Drawn with no model, the page showed no guess; a run finishing before A made every answer
    record that run's guess, which nobody had seen (review)."""
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    first = next(iter(_grid_tiles(at)))
    _grid_tiles(at)[first].set_value(1).run()
    fake_done_run(Session, tiny_project.id)
    button(at, "accept_grid").click().run()
    with Session() as session:
        (answer,) = session.query(LabelEvent).all()
    assert answer.item_id == first and answer.predicted_run_id is None


def test_a_class_named_like_skip_or_ignored_is_never_taken_for_it(Session, tiny_project):
    """A selectbox's value travels as the label it shows: with a class named "skip", every grid
    tile left on skip came back as that class, and with one named "ignored", every ignored
    answer in the History came back changed to it. Nothing is stored that was not chosen."""
    with Session.begin() as session:
        queries.add_class(session, tiny_project.id, "skip")
        queries.add_class(session, tiny_project.id, "ignored")
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()  # no model: every tile on skip
    tiles = _grid_tiles(at)
    first = next(iter(tiles))
    tiles[first].set_value(2)  # the class named "skip", chosen on one tile
    button(at, "accept_grid").click().run()
    assert _labels(Session, tiny_project.id) == {first: 2}
    from db.models import IGNORED

    with Session.begin() as session:
        other = next(i.id for i in queries.items(session, tiny_project.id, POOL) if i.id != first)
        queries.add_label(session, other, IGNORED, annotator="bob")
    at.radio(key="label_mode").set_value("History").run()
    button(at, "hist_save").click().run()  # nothing changed
    assert _labels(Session, tiny_project.id) == {first: 2, other: IGNORED}


def test_a_refused_box_answer_is_listed_to_the_box_on_every_run_not_once(Session, tiny_project):
    """A refusal (a class renamed since the key) reached the box only with the one run after it:
    when the next key's rerun stopped that run before its page reached the browser, a later run
    told the box the answer was acknowledged, and the box dropped it without showing its image
    again. The box acts on a refusal once, so it is listed on every run."""
    from labeler.ui import label

    at = page_app("label", tiny_project.id)
    at.session_state[f"box-refused-{tiny_project.id}"] = ["r1"]
    for _ in range(2):
        at.run()
        assert box_data(at)["refused"] == ["r1"]
    at.session_state[f"box-refused-{tiny_project.id}"] = [f"r{n}" for n in range(label.REFUSED_KEPT + 5)]
    at.run()
    assert box_data(at)["refused"] == [f"r{n}" for n in range(5, label.REFUSED_KEPT + 5)]


def test_keyed_grid_tiles_are_kept_when_the_grid_component_value_is_gone(monkeypatch):
    """Streamlit drops the grid component's value in a run without the grid (One image, another
    page); the page held on return reads its keys from the copy `_grid_presses` keeps."""
    from types import SimpleNamespace

    from labeler.ui import label

    edits = {"token": "t1", "page": "4,5,6", "list": [{"item": 5, "class": 1, "name": "bright"}]}
    state = {"grid-keys": {"edits": edits}}
    monkeypatch.setattr(label, "st", SimpleNamespace(session_state=state))
    read = label._grid_presses(7, "4,5,6", 2)
    assert read == ("t1", {5: (1, 1)}, [{"item": 5, "class": 1, "name": "bright"}])
    del state["grid-keys"]  # a run without the grid
    assert label._grid_presses(7, "4,5,6", 2) == read
    assert label._grid_presses(8, "4,5,6", 2) == ("", {}, [])  # another project's page: nothing
    assert label._grid_presses(7, "4,5,7", 2) == ("", {}, [])  # another page: nothing


def test_grid_keys_are_read_from_the_growing_list_of_the_page_on_screen(monkeypatch):
    """`_grid_presses` and `_tile_choice` without a browser: every key of the page's list counts
    (a class key, then skip), a list for another page counts nothing, a key outside the classes
    is dropped, and a keyed tile reads its new selectbox or, before that is drawn, the key."""
    from types import SimpleNamespace

    from labeler.ui import label

    state = {
        "grid-keys": {
            "edits": {
                "token": "t0K-1",
                "page": "4,5,6",
                "list": [
                    {"item": 4, "class": 1},
                    {"item": 5, "class": 0},
                    {"item": 4, "class": -1},
                    {"item": 6, "class": 7},  # no such class: dropped
                ],
            }
        }
    }
    monkeypatch.setattr(label, "st", SimpleNamespace(session_state=state))
    token, pressed, listed = label._grid_presses(1, "4,5,6", 2)
    assert token == "t01" and pressed == {4: (2, -1), 5: (1, 0)} and len(listed) == 3
    assert label._grid_presses(1, "4,5,7", 2) == ("", {}, [])
    view = label._grid_view(0.9, ["dark", "bright"])
    assert (
        view != label._grid_view(0.9, ["dark", "bright", "skip"]) != label._grid_view(0.5, ["dark", "bright"])
    )
    assert label._tile_choice(4, view, token, pressed) == -1  # the last key, its tile not drawn yet
    state[label._tile_key(5, view, token, 1)] = 1  # the keyed tile changed with the mouse
    assert label._tile_choice(5, view, token, pressed) == 1
    state[label._tile_key(6, view)] = 0
    assert label._tile_choice(6, view, token, pressed) == 0
    assert label._apart("skip") != "skip" and label._apart("skip").strip() == "skip"


_PAGE_WITH_BOX_UNDO = """
import streamlit as st
from labeler.ui import label
pid = st.session_state["project_id"]
undo = st.session_state.pop("box_undo", None)
if undo is not None:  # what the one-image box's callback gets when U is pressed on `undo`
    st.session_state[label._box_key(pid)] = {"actions": [{"id": "u1", "type": "undo", "item": undo}]}
    label._apply_box_actions(pid)
    del st.session_state[label._box_key(pid)]
label.label_page()
"""


_PAGE_WITH_BOX_ACTION = """
import streamlit as st
from labeler.ui import label
pid = st.session_state["project_id"]
action = st.session_state.pop("box_action", None)
if action is not None:  # what the one-image box's callback gets
    st.session_state[label._box_key(pid)] = {"actions": [action]}
    label._apply_box_actions(pid)
    del st.session_state[label._box_key(pid)]
label.label_page()
"""


def test_an_undo_whose_answer_was_corrected_since_tells_the_box_the_image_is_answered(Session, tiny_project):
    """The box shows an image again at U, at once; when someone had corrected that answer
    meanwhile, the undo takes it back and the correction stands, but the box went on showing the
    image as open, and a key for it was refused as "arrived after it was answered" (an exploratory
    session, 5 of 5). The box is told it is answered (`closed`): a key then stores nothing."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string(_PAGE_WITH_BOX_ACTION, default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "ann"
    at.run()
    item = box_data(at)["items"][0]["id"]
    at.session_state["box_action"] = {"id": "a1", "type": "label", "item": item, "class": 0}
    at.run()
    assert _labels(Session, tiny_project.id)[item] == 0
    with Session.begin() as session:
        queries.add_label(session, item, 1, annotator="bob", kind="correction")
    at.session_state["box_action"] = {"id": "u1", "type": "undo", "item": item, "of": "a1"}
    at.run()
    assert _labels(Session, tiny_project.id)[item] == 1
    assert item in box_data(at)["closed"]
    assert "answered again since" in " ".join(box_data(at)["notices"])


def test_an_image_undone_in_the_box_is_claimed_on_an_audit_turn(Session, monkeypatch):
    """U brings the image back first in the box; on an audit turn only the audit images drawn
    were claimed, so the next person's page could be given the image on this person's screen
    (review). It is claimed for this session."""
    from streamlit.testing.v1 import AppTest

    from db.models import Claim
    from labeler import projects, queue
    from tests.conftest import tiny_image_set

    project = projects.create_project(Session, "own", "folder:x", images=tiny_image_set(n=60), audit_size=10)
    monkeypatch.setattr(queue, "audit_turn", lambda *args, **kwargs: True)
    at = AppTest.from_string(_PAGE_WITH_BOX_ACTION, default_timeout=60)
    at.session_state["project_id"] = project.id
    at.session_state["annotator"] = "ann"
    at.run()
    with Session() as session:
        pool = [item.id for item in queries.items(session, project.id, POOL)]
    item = pool[-1]  # not among the audit images the box holds
    at.session_state["box_action"] = {"id": "a1", "type": "label", "item": item, "class": 0}
    at.run()
    at.session_state["box_action"] = {"id": "u1", "type": "undo", "item": item, "of": "a1"}
    at.run()
    assert not at.exception and box_data(at)["items"][0]["id"] == item
    with Session() as session:
        assert session.get(Claim, item).annotator.startswith("ann#")


def test_a_grid_page_undone_from_the_box_is_not_called_saved_already(Session, tiny_project):
    """Accept a grid page, take it back with U in the one-image box (which undoes the newest
    entry of this session: the whole page), and the page's images come round again; somebody
    else answers them all, and Accept says they were answered meanwhile, not that this page was
    saved already (it is not: it was undone)."""
    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: every tile pre-filled
    at = AppTest.from_string(_PAGE_WITH_BOX_UNDO, default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.run()
    at.radio(key="label_mode").set_value("Grid").run()
    page = set(_grid_tiles(at))
    button(at, "accept_grid").click().run()
    assert set(_labels(Session, tiny_project.id)) == page
    at.session_state["box_undo"] = min(page)
    at.run()
    assert not at.exception
    assert _labels(Session, tiny_project.id) == {}
    for _ in range(3):  # the held page (drawn after the accept) first, then the undone images
        tiles = _grid_tiles(at)
        if set(tiles) == page:
            break
        button(at, "accept_grid").click().run()
    assert set(tiles) == page, "the undone page never came back"
    for tile in tiles.values():  # undone tiles come back unanswered ("skip"): choose again
        tile.set_value(1)
    at.run()
    with Session.begin() as session:  # meanwhile somebody else answers all twelve
        for i in page:
            queries.add_label(session, i, 0, annotator="bob")
    button(at, "accept_grid").click().run()
    assert not at.exception
    message = at.success[0].value
    assert "saved already" not in message
    assert "Saved 0 labels" in message and "12 images had been answered meanwhile" in message
    stored = _labels(Session, tiny_project.id)
    assert {i: stored[i] for i in page} == dict.fromkeys(page, 0)  # Bob's answers stand


_UNSENT_THEN_PAGES = """
import streamlit as st
from labeler.ui import label
a, b, item = st.session_state["a"], st.session_state["b"], st.session_state["item"]
if "sent" not in st.session_state:  # the guard sends a key ann gave in project a, for "old name"
    st.session_state["sent"] = True
    refused = {"id": "r1", "type": "label", "item": item, "class": 0, "name": "old name", "owner": f"ann@{a}"}
    st.session_state[label.UNSENT_KEY] = {"actions": [refused]}
    label._apply_unsent()
label._next_batch(b, 4)  # project b's page draws next
st.text(repr(label._next_batch(a, 4)[0][0].id))
st.text(repr(st.session_state.get("unsent_notices")))
"""


def test_an_answer_left_in_the_tab_and_refused_comes_first_in_its_own_project(Session, tiny_project):
    """The guard stores answers of any project from any page: a refused one (its class renamed
    since the key) comes first when its project's page draws, even if another project's page drew
    in between (the list of images to show first was the last page's alone)."""
    from labeler import projects
    from tests.conftest import tiny_image_set

    other = projects.create_project(Session, "other", "test", images=tiny_image_set())
    with Session() as session:
        item = queries.items(session, tiny_project.id, "pool")[-1].id
    at = AppTest.from_string(_UNSENT_THEN_PAGES, default_timeout=60)
    for key, value in {"annotator": "ann", "a": tiny_project.id, "b": other.id, "item": item}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception
    assert at.text[0].value == repr(item)
    assert "old name" in at.text[1].value and "not saved" in at.text[1].value
    with Session() as session:
        assert queries.history(session, item) == []


def test_unsaved_anywhere_counts_the_history_changes_of_every_project(monkeypatch):
    """The guard's `unsaved` (the browser asks before a reload or a close, unsent_guard.js) counts
    the History changes waiting in every project of the session, not the current one only."""
    from labeler.ui import label

    state = {
        label._chosen_key(1): {(1, 10): "cat", (2, 11): None},
        label._chosen_key(2): {(5, 12): "dog"},
        label._seen_key(1): {(3, 13): 0},  # tiles seen, not changed
        "project_id": 2,
    }
    monkeypatch.setattr(label.st, "session_state", state)
    assert label.unsaved_anywhere() == 3 and label.unsaved_corrections(2) == 1


def test_grid_choices_anywhere_counts_the_set_tiles_of_every_held_grid_page(monkeypatch):
    """The guard also asks while grid tiles set by key or mouse wait to be accepted: those of the
    page held now in each project, once each, not those of a page before."""
    from labeler.ui import label

    state = {
        label._page_key(1): [10, 11, 12],
        label._keyed_key(1): {
            "page": "10,11,12",
            "token": "t",
            "list": [{"item": 10, "class": 0}, {"item": 10, "class": 1}],
        },
        label._choices_key(1): {11: {"page": "10,11,12", "value": 1}, 99: {"page": "98,99", "value": 0}},
        label._page_key(2): [20, 21],
        label._keyed_key(2): {"page": "7,8", "list": [{"item": 7, "class": 0}]},  # an older page's keys
        label._choices_key(2): {21: {"page": "20,21", "value": 0}},
        label._page_key(3): [],
    }
    monkeypatch.setattr(label.st, "session_state", state)
    assert label.grid_choices_anywhere() == 3


def test_the_sidebar_names_history_changes_waiting_in_another_project(tiny_project):
    """History changes wait in the session per project; with another project open nothing showed
    them (the Label page and the sidebar counted the open project's only), though a logout or a
    reload drops them. The sidebar says how many wait elsewhere, on every page."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.session_state[f"hist-chosen-{tiny_project.id + 1}"] = {(1, 10): "cat", (2, 11): None}
    at.run()
    assert not at.exception
    notes = [w.value for w in at.sidebar.warning]
    assert notes == [
        "History changes not saved yet in another project: 2. Open it on the Project page, then Label, History saves them."
    ]
    # One waits here too: the Label page says that one itself; the sidebar still names the others.
    at.session_state[f"hist-chosen-{tiny_project.id}"] = {(3, 12): None}
    at.run()
    assert any("History changes not saved yet: 1." in i.value for i in at.info)
    assert [w.value for w in at.sidebar.warning] == notes


def test_save_with_a_class_name_no_class_has_now_refuses_instead_of_failing(Session, tiny_project):
    """A browser still showing a class's old name on a History tile sends that name, which
    Streamlit hands on as it is (no option matches): Save failed with "ValueError: invalid literal
    for int()". It now says a class was renamed and saves nothing."""
    from tests.ui.ui_helpers import label_items

    (a,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    was = _labels(Session, tiny_project.id)[a]
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    tile = _history_tiles(at)[a].id
    button(at, "hist_save").click()
    states = at._tree.get_widget_states()
    for state in states.widgets:  # what a browser showing a name from before a rename sends
        if state.id == tile:
            state.string_value = "a name no class has"
    at._run(widget_state=states)
    assert not at.exception
    assert "A class was renamed since these choices were made" in at.error[0].value
    assert _labels(Session, tiny_project.id) == {a: was}


def test_the_rename_selector_reads_a_label_from_before_a_rename():
    """What a browser showing names from before a rename sends ("N: old name") still names class
    N; anything else names none (Rename then asks to choose again)."""
    from labeler.ui import label

    values = (1, "2: dark", "12: a: b", "dark", "0: dark", None)
    assert [label._rename_choice(v) for v in values] == [1, 1, 11, None, None, None]


def test_a_16_bit_image_is_shown_as_the_model_sees_it(tmp_path, monkeypatch):
    """PIL's convert clips 16-bit values at 255: a 16-bit PNG showed almost white on the Label
    page while the model saw its shapes (16-bit values scaled by 1/257)."""
    import base64
    import io

    import numpy as np

    from labeler import projects
    from labeler.data import images
    from labeler.ui import label

    values = np.full((40, 40), 20_000, dtype=np.uint16)
    values[10:30, 10:30] = 60_000  # a bright square on a mid-grey ground
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    monkeypatch.setattr(projects, "local_file", lambda p: path)
    url = label._data_url(1, 0, str(path))
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L"))
    model = images.decode_image(path.read_bytes(), 40, 1)[0]
    assert (
        abs(int(shown[0, 0]) - round(20_000 / 257)) <= 1 and abs(int(shown[-1, -1]) - int(model[-1, -1])) <= 1
    )
    middle = shown.shape[0] // 2
    assert abs(int(shown[middle, middle]) - round(60_000 / 257)) <= 1


def test_the_history_pages_through_every_answer(Session, tiny_project, monkeypatch):
    """It showed the newest 48 matching answers and nothing older: an answer further back could
    not be found or corrected. Newer / Older page through them; a new filter starts at the top."""
    monkeypatch.setattr(label, "HISTORY_ROWS", 4)
    label_items(Session, tiny_project.id, 10)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("History").run()
    with Session() as session:
        newest_first = [e.item_id for e, _ in queries.label_history(session, tiny_project.id)]
    assert list(_history_tiles(at)) == newest_first[:4]
    assert at.button(key="hist_newer").disabled and not at.button(key="hist_older").disabled
    at.button(key="hist_older").click().run()
    at.button(key="hist_older").click().run()
    assert list(_history_tiles(at)) == newest_first[8:]
    assert "Page 3 of the matching answers: 2" in " ".join(c.value for c in at.caption)
    assert at.button(key="hist_older").disabled
    at.button(key="hist_newer").click().run()
    assert list(_history_tiles(at)) == newest_first[4:8]
    at.selectbox(key="hist_class").set_value(0).run()  # another filter: its newest answers
    with Session() as session:
        class_0 = [e.item_id for e, _ in queries.label_history(session, tiny_project.id, class_index=0)]
    assert list(_history_tiles(at)) == class_0[:4]
    assert at.button(key="hist_newer").disabled
    # An answer on the page taken back before Older: the next page still starts right below.
    at.selectbox(key="hist_class").set_value(None).run()
    with Session.begin() as session:
        queries.undo_events(session, [queries.current_event(session, newest_first[0]).id], "tester")
    at.button(key="hist_older").click().run()
    assert list(_history_tiles(at)) == newest_first[4:8]  # by position it skipped newest_first[4]


def test_the_history_finds_pool_answers_the_newest_model_disagrees_with(Session, tiny_project):
    """The filter compared each answer with the guess shown when it was given, so answers given
    before any run, in bulk or to audit images never matched: deliberately wrong labels the
    newest run put in their true class 99 % sure were not found (exploratory session). Now: pool
    answers the newest run puts in another class, its guess shown; audit answers are left out."""
    from sqlalchemy import update

    from db.models import Item

    with Session.begin() as session:
        right, wrong, bulk, audit = queries.items(session, tiny_project.id, "pool")[:4]
        session.execute(update(Item).where(Item.id == audit.id).values(split=AUDIT))
        queries.add_label(session, right.id, right.truth)
        queries.add_label(session, wrong.id, 1 - wrong.truth)
        queries.add_labels(session, [bulk.id], 1 - bulk.truth, annotator="tester", kind="bulk")
        queries.add_label(session, audit.id, 1 - audit.truth)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("History").run()
    at.checkbox(key="hist_disagree").check().run()
    assert not _history_tiles(at) and "no run has finished yet" in at.info[0].value
    run_id = fake_done_run(Session, tiny_project.id)  # guesses every image's true class, 90 % sure
    with Session.begin() as session:  # a class added after the run: it cannot predict it
        session.get(Run, run_id).metrics = {"classes": 2}
        queries.add_class(session, tiny_project.id, "new")
        later = queries.items(session, tiny_project.id, "pool")[5]
        queries.add_label(session, later.id, 2)
    at.run()
    assert set(_history_tiles(at)) == {wrong.id, bulk.id}  # not `later` (review)
    captions = [image.proto.imgs[0].caption.replace("\\", "") for image in at.get("image")]  # as typed
    assert f"#{wrong.id} · model: {wrong.truth} (90%)" in captions, captions
    at.checkbox(key="hist_disagree").uncheck().run()
    assert set(_history_tiles(at)) == {right.id, wrong.id, bulk.id, audit.id, later.id}


def test_a_grid_tile_shown_as_answered_meanwhile_is_never_stored(Session, tiny_project):
    """The page said "left as it is" and drew the tile without a choice; should that answer be
    undone before A, the tile's old pre-filled guess was stored under this person's name."""
    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    taken = int(next(b for b in at.selectbox if b.key.startswith("grid-")).key.split("-")[1])
    with Session.begin() as session:
        bob = queries.add_label(session, taken, 1, annotator="bob")
    at.run()  # drawn as answered meanwhile
    with Session.begin() as session:
        queries.undo_events(session, [bob.id], "bob")  # ... and taken back before the accept
    button(at, "accept_grid").click().run()
    assert not at.exception
    assert "1 image had been answered meanwhile" in at.success[0].value
    with Session() as session:
        assert taken not in queries.current_labels(session, tiny_project.id)


def test_the_sidebar_status_says_the_database_is_away_without_a_traceback(Session, tiny_project, monkeypatch):
    """In Grid and History the sidebar's status reruns on its own, outside the page's handler."""
    from sqlalchemy.exc import OperationalError

    from labeler.ui import common

    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()

    def down(project_id):
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(label, "_training_status_lines", down)
    monkeypatch.setattr(common, "database_answers", lambda: False)
    at.run()
    assert not at.exception and not at.error  # the page itself stays
    assert any("cannot be reached" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("mode", ["One image", "Grid"])
def test_an_open_page_keeps_its_claims(Session, tiny_project, monkeypatch, mode):
    """Only page runs renewed the claims: a grid page left open longer than the claim time went
    to the next person who asked, ahead of images nobody held (an exploratory session, 12 of 12);
    so did the box's images. While the box or a grid page is open a fragment renews them."""
    from datetime import timedelta

    from sqlalchemy import update

    from db.models import Claim, utcnow

    calls = []
    real = label._keep_claims
    monkeypatch.setattr(label, "_keep_claims", lambda pid: calls.append(pid) or real(pid))
    at = page_app("label", tiny_project.id, annotator="amy")
    at.radio(key="label_mode").set_value(mode).run()
    assert calls and set(calls) == {tiny_project.id}  # drawn with the page (then every CLAIMS_EVERY_S)
    pid = tiny_project.id
    tab = f"amy#{at.session_state['claim_token']}"
    with Session() as session:
        held = {c.item_id for c in session.query(Claim).filter_by(annotator=tab)}
    with Session.begin() as session:  # four and a half minutes later: 30 s left
        session.execute(update(Claim).values(expires_at=utcnow() + timedelta(seconds=30)))

    def fragment_run(idle: float) -> list:
        """The fragment's run, `idle` seconds after the page's last run; the claims after it."""
        script = f"from labeler.ui import label\nlabel._keep_claims({pid})"
        fragment = AppTest.from_string(script, default_timeout=60)
        for key in ("project_id", "annotator", "claim_token", label._ACTIVE_AT):
            fragment.session_state[key] = at.session_state[key]
        fragment.session_state[label._ACTIVE_AT] -= idle
        fragment.run()
        assert not fragment.exception
        with Session() as session:
            return session.query(Claim).filter_by(annotator=tab).all()

    # Left open and unused for longer than KEEP_CLAIMS_IDLE_S: nothing renewed (a tab left open
    # overnight held its images for ever).
    claims = fragment_run(idle=label.KEEP_CLAIMS_IDLE_S + 60)
    assert all(c.expires_at < utcnow() + timedelta(seconds=60) for c in claims)
    claims = fragment_run(idle=60)
    assert held and {c.item_id for c in claims} == held
    assert all(c.expires_at > utcnow() + timedelta(seconds=200) for c in claims)


def test_a_history_tile_sent_with_a_name_from_before_a_rename_stays_on_its_saved_answer(
    Session, tiny_project
):
    """The browser can send a tile's class name from before a rename (its page was drawn before
    the rename reached it); Streamlit then puts the tile back on its default, which must be its
    saved answer: a default of "ignore" (the first option) would be saved as a correction."""
    from tests.ui.ui_helpers import label_items

    (a,) = label_items(Session, tiny_project.id, 1, annotator="bob")
    was = _labels(Session, tiny_project.id)[a]
    at = page_app("label", tiny_project.id, annotator="alice")
    at.radio(key="label_mode").set_value("History").run()
    old_name = _history_tiles(at)[a].options[_history_tiles(at)[a].index]
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, was, "renamed")
    at.run()  # the server draws the new names
    states = at._tree.get_widget_states()
    (tile,) = [w for w in states.widgets if w.id == _history_tiles(at)[a].id]
    tile.string_value = old_name  # what the browser, still showing the old page, sends
    at._run(widget_state=states)
    assert _history_tiles(at)[a].value == was
    button(at, "hist_save").click().run()
    assert _labels(Session, tiny_project.id)[a] == was


def _lost_page_sent(
    at,
    page_ids: list[int],
    who: str,
    keys: dict[int, int] | list[tuple[int, int]],
    session: str,
    asker: str | None = None,
    prefilled: dict[int, tuple[int, str, float]] | None = None,
    owner: str | None = None,
) -> None:
    """What label_grid.js sends after a server restart, for the page it still shows: the tiles
    set on it (item -> class), the name and the session (token tag) they were set under, and
    the guesses it showed pre-filled (item -> (class, name, confidence))."""
    lost = {
        "token": "old1",
        "page": ",".join(map(str, page_ids)),
        "who": who,
        "session": session,
        "asker": asker or _tag(at),  # the session it is sent to: this one unless said
        "owner": owner or f"{who}@{at.session_state['project_id']}",  # this project's unless said
        "list": [
            {"item": item, "class": cls, "name": str(cls)}
            for item, cls in (keys.items() if isinstance(keys, dict) else keys)
        ],
        "prefilled": [
            {"item": i, "class": c, "name": n, "confidence": p} for i, (c, n, p) in (prefilled or {}).items()
        ],
    }
    # The tab's key list of the page goes with it, as the browser sends it (keys only).
    edits = {k: lost[k] for k in ("token", "page")} | {"list": [e for e in lost["list"] if "name" in e][:1]}
    at.session_state["grid-keys"] = {"lost": lost, "edits": edits}
    at.run()


def _page(ids: list[int]) -> str:
    return ",".join(map(str, ids))


def _tag(at) -> str:
    return queries.token_tag(at.session_state["claim_token"])


def _claims(Session, project_id: int) -> dict[int, str]:
    from db.models import Claim

    with Session() as session:
        return {c.item_id: c.annotator for c in session.query(Claim).filter_by(project_id=project_id)}


def test_a_grid_page_a_restarted_server_lost_comes_back_with_its_keys(Session, tiny_project):
    """A server restart loses the session that held the grid page: the new one drew a new page
    and the tiles set on the old one were gone (exploratory, 5 of 5). The page the tab sends
    back comes back with its keys, the lost session's claims on it pass to the new one (they
    looked like another person's for five minutes) and the new page's claims are given back."""
    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")  # the session the server lost
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    after = page_app("label", pid, annotator="rosa")  # the tab, reconnected to the new server
    after.radio(key="label_mode").set_value("Grid").run()
    drawn = list(after.session_state[f"grid-page-{pid}"])
    assert not set(drawn) & set(lost)
    _lost_page_sent(after, lost, "rosa", {lost[0]: 0, lost[1]: 1}, _tag(before))
    assert list(after.session_state[f"grid-page-{pid}"]) == lost
    tiles = _grid_tiles(after)
    assert set(tiles) == set(lost) and tiles[lost[0]].value == 0 and tiles[lost[1]].value == 1
    assert "the page you were working on" in after.info[0].value
    token = after.session_state["claim_token"]
    claims = _claims(Session, pid)
    assert {claims.get(i) for i in lost} == {f"rosa#{token}"} and not set(drawn) & set(claims)
    # A key after the restore: the tab carries on the list it was given back (same token).
    carried = [{"item": lost[0], "class": 0, "name": "0"}, {"item": lost[1], "class": 1, "name": "1"}]
    carried.append({"item": lost[2], "class": 1, "name": "1"})
    after.session_state["grid-keys"] = {"edits": {"token": "old1", "page": _page(lost), "list": carried}}
    after.run()
    assert _grid_tiles(after)[lost[2]].value == 1
    button(after, "accept_grid").click().run()
    with Session() as session:
        assert queries.current_labels(session, pid) == {lost[0]: 0, lost[1]: 1, lost[2]: 1}
        assert {e.annotator for e in session.query(LabelEvent).filter_by(project_id=pid)} == {"rosa"}


def test_a_lost_grid_page_goes_to_its_own_session_only(Session):
    """Tiles set under another name (a logout, then a login in the tab) stay theirs; a page is
    taken only from the session that lost it, not from another live session of the same name;
    a page another person holds an image of is not given back, the page says so, and the
    claims taken over for it are rolled back; a page whose images were answered meanwhile comes
    back with those tiles closed."""
    from sqlalchemy import update

    from db.models import Claim
    from labeler import projects
    from tests.conftest import tiny_image_set

    pid = projects.create_project(Session, "big", "test", images=tiny_image_set(n=120)).id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost, tag = list(before.session_state[f"grid-page-{pid}"]), _tag(before)

    def reconnected(name: str):
        at = page_app("label", pid, annotator=name)
        at.radio(key="label_mode").set_value("Grid").run()
        return at, list(at.session_state[f"grid-page-{pid}"])

    for name, session in (("ivan", tag), ("rosa", "0123456789abcdef")):  # another name; session
        at, drawn = reconnected(name)
        _lost_page_sent(at, lost, "rosa", {lost[0]: 1}, session)
        assert list(at.session_state[f"grid-page-{pid}"]) == drawn and not at.info
        assert not at.warning if name == "ivan" else "could not be given back" in at.warning[0].value
    # Another person holds an image of the page (not one set).
    with Session.begin() as session:
        session.execute(update(Claim).where(Claim.item_id == lost[5]).values(annotator="ivan#other"))
    at, drawn = reconnected("rosa")
    _lost_page_sent(at, lost, "rosa", {lost[0]: 1}, tag)
    assert list(at.session_state[f"grid-page-{pid}"]) == drawn
    assert "could not be given back" in at.warning[0].value
    mine = f"rosa#{at.session_state['claim_token']}"
    assert not {i for i, who in _claims(Session, pid).items() if who == mine} & set(lost)  # rolled back
    # Answered meanwhile, the tile set on it included: the page comes back with them closed.
    with Session.begin() as session:
        session.execute(
            update(Claim)
            .where(Claim.item_id == lost[5])
            .values(annotator=f"rosa#{before.session_state['claim_token']}")
        )
        queries.add_label(session, lost[0], 0, annotator="ivan")
    at, drawn = reconnected("rosa")
    _lost_page_sent(at, lost, "rosa", {lost[0]: 1, lost[1]: 1}, tag)
    assert list(at.session_state[f"grid-page-{pid}"]) == lost
    tiles = _grid_tiles(at)
    assert tiles[lost[0]].disabled and tiles[lost[1]].value == 1
    button(at, "accept_grid").click().run()
    with Session() as session:
        assert queries.current_labels(session, pid) == {lost[0]: 0, lost[1]: 1}


def test_a_lost_grid_page_of_a_tab_still_connected_stays_there(Session, tiny_project, monkeypatch):
    """A tab duplicated in the browser gets a copy of the original's sessionStorage, and with it
    the page the original still shows: that page stays the original's (its claims and tiles),
    while a page whose session is gone comes back."""
    import json

    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")  # the original tab, still open
    before.radio(key="label_mode").set_value("Grid").run()
    lost, tag = list(before.session_state[f"grid-page-{pid}"]), _tag(before)
    monkeypatch.setattr(label, "_still_connected", lambda session: session == tag)
    copy = page_app("label", pid, annotator="rosa")
    copy.radio(key="label_mode").set_value("Grid").run()
    drawn = list(copy.session_state[f"grid-page-{pid}"])
    _lost_page_sent(copy, lost, "rosa", {lost[0]: 1}, tag)
    assert list(copy.session_state[f"grid-page-{pid}"]) == drawn and not copy.info
    assert "Your last grid page is open in another tab" in copy.warning[0].value
    assert json.loads(copy.get("bidi_component")[0].proto.json)["tried"] == [_page(lost)]  # not sent again
    assert {tag, _tag(copy)} <= set(label._SESSION_OF_TAG)  # each drawn grid's session, by its tag
    assert {_claims(Session, pid).get(i) for i in lost} == {f"rosa#{before.session_state['claim_token']}"}
    monkeypatch.setattr(label, "_still_connected", lambda session: False)  # the original closed
    again = page_app("label", pid, annotator="rosa")
    again.radio(key="label_mode").set_value("Grid").run()
    _lost_page_sent(again, lost, "rosa", {lost[0]: 1}, tag)
    assert list(again.session_state[f"grid-page-{pid}"]) == lost


def test_a_lost_grid_page_shows_the_guesses_it_showed_then(Session, tiny_project):
    """A page given back drew its untouched tiles on the newest guesses and today's threshold
    (reset by a reload): tiles the person had left on skip came back pre-filled, and A stored
    guesses nobody had seen (exploratory). It shows the guesses it showed then, those whose class
    kept its name; the grid lists the pages tried (label_grid.js keeps one until then) and the
    guesses it shows pre-filled."""
    import json

    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    assert json.loads(before.get("bidi_component")[0].proto.json)["prefilled"] == []  # no model yet
    fake_done_run(Session, pid)  # every image guessed 0.9 sure: pre-filled at the default 0.9
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    with Session() as session:
        names = queries.class_names(session, pid)
    shown_then = {lost[1]: (1, names[1], 0.8), lost[2]: (0, "renamed since", 0.95)}
    _lost_page_sent(after, lost, "rosa", {lost[0]: 0}, _tag(before), prefilled=shown_then)
    assert list(after.session_state[f"grid-page-{pid}"]) == lost
    tiles = _grid_tiles(after)
    assert {i: tiles[i].value for i in lost} == {i: {lost[0]: 0, lost[1]: 1}.get(i, -1) for i in lost}
    # Its confidence as shown then (the newest model's 90 % belongs to another guess), none beside skip.
    assert {i: tiles[i].label for i in lost} == {
        i: "Label (guess 80% sure)" if i == lost[1] else "Label" for i in lost
    }
    data = json.loads(after.get("bidi_component")[0].proto.json)
    assert data["tried"] == [_page(lost)]
    assert data["prefilled"] == [{"item": lost[1], "class": 1, "name": names[1], "confidence": 0.8}]
    # Another project's grid in between: back here, the page still shows the guesses it showed.
    from labeler import projects
    from tests.conftest import tiny_image_set

    after.session_state["project_id"] = projects.create_project(
        Session, "other", "test", images=tiny_image_set(n=40)
    ).id
    after.run()
    after.session_state["project_id"] = pid
    after.run()
    tiles = _grid_tiles(after)
    assert {i: tiles[i].value for i in lost} == {i: {lost[0]: 0, lost[1]: 1}.get(i, -1) for i in lost}
    button(after, "accept_grid").click().run()
    with Session() as session:
        assert queries.current_labels(session, pid) == {lost[0]: 0, lost[1]: 1}


def test_a_login_forgets_the_grid_pages_tried_for_the_person_before():
    """The lost pages tried, the keys they replaced, their notes and guesses belong to the person
    logged in: a login or logout clears them with the rest of that person's work in the tab."""
    from labeler.ui import account

    assert {label._RESTORED, label._REPLACED, label._RESTORE_NOTE} <= set(account._PERSONAL_KEYS)
    assert label._PREFILLED_PREFIX in account._PERSONAL_PREFIXES
    # An accept cut short would be finished onto the next person's undo list (`_saved_after_all`).
    assert label._ACCEPTING in account._PERSONAL_PREFIXES


def test_a_session_is_connected_while_streamlit_lists_it(monkeypatch):
    """`_still_connected` asks Streamlit's runtime about the session a claim tag was drawn by;
    the session asking, under an earlier tag (before a logout and a login), is no other tab."""
    from types import SimpleNamespace

    class Runtime:
        def is_active_session(self, session_id):
            return session_id in ("live", "this")

    monkeypatch.setattr(label, "_SESSION_OF_TAG", {"a": "live", "b": "gone", "mine": "this"})
    monkeypatch.setattr(label.runtime, "exists", lambda: True)
    monkeypatch.setattr(label.runtime, "get_instance", Runtime)
    monkeypatch.setattr(label, "get_script_run_ctx", lambda: SimpleNamespace(session_id="this"))
    assert [label._still_connected(tag) for tag in ("a", "b", "c", "mine")] == [True, False, False, False]
    monkeypatch.setattr(label.runtime, "exists", lambda: False)  # no server: nothing is connected
    assert not label._still_connected("a")


def test_a_lost_grid_page_drawn_again_gets_its_tiles_back(Session, tiny_project):
    """The new session can draw the very page the lost one held (its claims ran out: a login
    more than five minutes after a restart): the tab did not send it, and the tiles set on it
    were gone. It gets them back, and its other tiles show the guesses shown then (the page drawn
    anew had made its tiles on the newest guesses, which they kept: a review)."""
    from sqlalchemy import update

    from db.models import Claim, utcnow

    pid = tiny_project.id
    fake_done_run(Session, pid)  # every image guessed 0.9 sure: pre-filled at the default 0.9
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    with Session.begin() as session:  # the lost session's claims ran out
        session.execute(update(Claim).values(expires_at=utcnow()))
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    assert list(after.session_state[f"grid-page-{pid}"]) == lost  # the same page
    guess = _grid_tiles(after)[lost[5]].value  # the newest guess, pre-filled
    with Session() as session:
        names = queries.class_names(session, pid)
    shown_then = {lost[5]: (1 - guess, names[1 - guess], 0.7)}  # another guess then; the rest skip
    _lost_page_sent(after, lost, "rosa", {lost[0]: 1, lost[3]: 0}, _tag(before), prefilled=shown_then)
    tiles = _grid_tiles(after)
    wanted = {lost[0]: 1, lost[3]: 0, lost[5]: 1 - guess}
    assert {i: tiles[i].value for i in lost} == {i: wanted.get(i, -1) for i in lost}
    assert "the page you were working on" in after.info[0].value
    button(after, "accept_grid").click().run()
    with Session() as session:
        assert queries.current_labels(session, pid) == wanted


def test_a_lost_grid_page_of_another_project_is_left_for_that_projects_grid(Session, tiny_project):
    """A switch of project while the tab sent a page: the page went to the other project's grid,
    which took it as tried with a wrong note ("every image answered meanwhile"), and the tab then
    dropped it (a review). It is left for its own project's grid."""
    import json

    from labeler import projects
    from tests.conftest import tiny_image_set

    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    other = projects.create_project(Session, "other", "test", images=tiny_image_set(n=40)).id
    at = page_app("label", other, annotator="rosa")
    at.radio(key="label_mode").set_value("Grid").run()
    _lost_page_sent(at, lost, "rosa", {lost[0]: 1}, _tag(before), owner=f"rosa@{pid}")  # to the other grid
    assert not at.info and not at.warning
    assert json.loads(at.get("bidi_component")[0].proto.json)["tried"] == []


def test_a_lost_grid_page_accepted_before_the_restart_is_not_given_back(Session, tiny_project):
    """The server went after an accept was stored and before the tab was told: the tab sends the
    page back, and it came back as open ("answered meanwhile" on each of the person's own
    tiles, exploratory). It is not given back, and the page says it was saved."""
    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    _grid_tiles(before)[lost[0]].set_value(1).run()
    button(before, "accept_grid").click().run()
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    drawn = list(after.session_state[f"grid-page-{pid}"])
    _lost_page_sent(after, lost, "rosa", {lost[0]: 1, lost[1]: -1}, _tag(before))
    assert list(after.session_state[f"grid-page-{pid}"]) == drawn
    assert "Your last grid page was saved (1 label)" in after.info[0].value and not after.warning


def test_a_lost_grid_page_accepted_after_somebody_answered_one_of_its_tiles_was_saved(Session, tiny_project):
    """Another person answered one of the tiles set, then the page was accepted (that tile left
    theirs) and the tab reloaded at once: the page came back as the one to work on, every set
    tile closed (exploratory, 2 of 2). It was saved, and the page says so."""
    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    for item in lost[:3]:
        _grid_tiles(before)[item].set_value(1).run()
    with Session.begin() as session:
        queries.add_label(session, lost[0], 0, annotator="ivan")
    button(before, "accept_grid").click().run()
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    drawn = list(after.session_state[f"grid-page-{pid}"])
    _lost_page_sent(after, lost, "rosa", dict.fromkeys(lost[:3], 1), _tag(before))
    assert list(after.session_state[f"grid-page-{pid}"]) == drawn
    assert "Your last grid page was saved (2 labels)" in after.info[0].value and not after.warning


@pytest.mark.parametrize("how", ["class then skip", "skip on a pre-filled guess"])
def test_a_lost_grid_page_accepted_with_skipped_tiles_was_saved(Session, tiny_project, how):
    """What an accept stores is the guesses shown pre-filled and the tiles set, skips left out:
    a tile set to a class and then to skip counted as set to the class (its image unanswered,
    the saved page came back as open), and a page whose only choices were skips over wrong
    pre-filled guesses was never taken for saved."""
    fake_done_run(Session, tiny_project.id)  # every image guessed 0.9 sure: pre-filled
    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    with Session() as session:
        names = queries.class_names(session, pid)
    guesses = {i: _grid_tiles(before)[i].value for i in lost}
    keys = {lost[0]: 1 - guesses[lost[0]], lost[1]: -1} if how == "class then skip" else {lost[1]: -1}
    for item, cls in keys.items():
        _grid_tiles(before)[item].set_value(cls).run()
    button(before, "accept_grid").click().run()
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    drawn = list(after.session_state[f"grid-page-{pid}"])
    # As the tab lists them, in order: for "class then skip", tile 1 set to its guess first.
    sent = [(lost[1], guesses[lost[1]]), *keys.items()] if how == "class then skip" else keys
    shown = {i: (guesses[i], names[guesses[i]], 0.9) for i in lost}
    _lost_page_sent(after, lost, "rosa", sent, _tag(before), prefilled=shown)
    assert list(after.session_state[f"grid-page-{pid}"]) == drawn
    assert "Your last grid page was saved (11 labels)" in after.info[0].value


def test_a_lost_grid_page_given_back_twice_in_a_moment_comes_back_the_third_time(Session, tiny_project):
    """A second reload in the moment a page given back took to reach the tab: the tab still named
    the first session, whose claims had passed to the second, and the third refused the page as
    another tab's, its tiles lost (exploratory, 4 of 5 at 300 ms). The claims are followed to
    the session that took them over."""
    pid = tiny_project.id
    first = page_app("label", pid, annotator="rosa")
    first.radio(key="label_mode").set_value("Grid").run()
    lost, tag = list(first.session_state[f"grid-page-{pid}"]), _tag(first)
    for _ in range(2):  # the second session gives it back; the third gets it from the first's name
        at = page_app("label", pid, annotator="rosa")
        at.radio(key="label_mode").set_value("Grid").run()
        _lost_page_sent(at, lost, "rosa", {lost[0]: 1}, tag)
        assert list(at.session_state[f"grid-page-{pid}"]) == lost and not at.warning
        mine = f"rosa#{at.session_state['claim_token']}"
        assert {_claims(Session, pid).get(i) for i in lost} == {mine}


def test_a_lost_grid_page_with_one_image_answered_in_another_tab_is_not_taken_for_saved(
    Session, tiny_project
):
    """The same person's other tab accepted one image of the page (its claims had run out): the
    page was taken for accepted ("was saved") and the tiles set on the rest dropped."""
    from sqlalchemy import update

    from db.models import Claim

    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    with Session.begin() as session:  # the other tab's grid answer, and its claim run out
        queries.add_label(session, lost[3], 0, annotator="rosa", kind="grid")
        session.execute(update(Claim).where(Claim.item_id == lost[3]).values(annotator="rosa#othertab"))
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    _lost_page_sent(after, lost, "rosa", {lost[0]: 1, lost[1]: 0}, _tag(before))
    assert list(after.session_state[f"grid-page-{pid}"]) == lost and not after.warning
    assert _grid_tiles(after)[lost[3]].disabled and _grid_tiles(after)[lost[0]].value == 1


def test_a_lost_grid_page_is_answered_to_the_session_that_asked_only(Session, tiny_project):
    """The page the tab sent back stays in its component state and came with later runs: after a
    later restart, a page given back, accepted and undone meanwhile came back again and its
    undone tiles were stored (exploratory). Only the session that asked takes it; the note of a
    page not given back stays above the page drawn until that page changes."""
    pid = tiny_project.id
    before = page_app("label", pid, annotator="rosa")
    before.radio(key="label_mode").set_value("Grid").run()
    lost = list(before.session_state[f"grid-page-{pid}"])
    after = page_app("label", pid, annotator="rosa")
    after.radio(key="label_mode").set_value("Grid").run()
    drawn = list(after.session_state[f"grid-page-{pid}"])
    _lost_page_sent(after, lost, "rosa", {lost[0]: 1}, _tag(before), asker="a-session-before")
    assert list(after.session_state[f"grid-page-{pid}"]) == drawn and not after.info
    # Refused (another person holds an image): the warning stays over the runs of this page.
    from sqlalchemy import update

    from db.models import Claim

    with Session.begin() as session:
        session.execute(update(Claim).where(Claim.item_id == lost[5]).values(annotator="ivan#x"))
    _lost_page_sent(after, lost, "rosa", {lost[0]: 1}, _tag(before))
    assert "could not be given back" in after.warning[0].value
    after.run()
    assert "could not be given back" in after.warning[0].value


@pytest.mark.parametrize("mode", ["One image", "History"])
def test_accept_or_undo_coming_with_a_switch_to_another_mode_does_nothing(Session, tiny_project, mode):
    """The grid stays on screen, greyed, until the mode clicked is drawn: A meant for the box
    pressed the grid's Accept and saved the page left behind, U undid a grid page (review, in
    Chromium). A click that arrives with the switch does nothing, and says so."""
    fake_done_run(Session, tiny_project.id)  # every guess 90 % sure: all 12 tiles pre-filled
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    at.slider(key="grid_threshold").set_value(0.85).run()
    button(at, "accept_grid").click().run()
    saved = _labels(Session, tiny_project.id)
    assert len(saved) == 12
    at.radio(key="label_mode").set_value(mode)
    button(at, "accept_grid").click()
    at.run()
    assert _labels(Session, tiny_project.id) == saved
    assert any(f"A was pressed while {mode} opened" in n.value for n in at.info)
    at.radio(key="label_mode").set_value("Grid").run()
    at.radio(key="label_mode").set_value(mode)
    at.button(key="undo").click()
    at.run()
    assert _labels(Session, tiny_project.id) == saved
    assert any(f"U was pressed while {mode} opened" in n.value for n in at.info)
    at.radio(key="label_mode").set_value("Grid").run()
    at.button(key="undo").click().run()  # in Grid, U undoes the page
    assert _labels(Session, tiny_project.id) == {}


def test_the_box_shows_the_images_of_the_persons_own_grid_page_last(Session, tiny_project):
    """The grid page waits in Grid until accepted or undone, held by its person; the box showed
    its images too (the same person's claims), and a tile answered so came back "answered
    meanwhile" (exploratory). The box shows them last: when nothing else is left."""
    from streamlit.testing.v1 import AppTest

    from tests.ui.ui_helpers import box_data

    at = AppTest.from_string("from labeler.ui.label import label_page\nlabel_page()", default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.session_state["label_mode"] = "Grid"  # the box has claimed nothing yet
    at.run()
    grid = {int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")}
    assert len(grid) == 12
    at.radio(key="label_mode").set_value("One image").run()
    shown = [item["id"] for item in box_data(at)["items"]]
    assert len(shown) == 20 and not set(shown) & grid  # 32 pool images: the other 20
    claimant = f"tester#{at.session_state['claim_token']}"
    with Session() as session:  # the page still waits for this person: its claims are kept
        assert grid <= queries.claimed_by(session, tiny_project.id, claimant, queries.now(session))
    with Session.begin() as session:  # someone else answers every other image
        for item in queries.items(session, tiny_project.id, "pool"):
            if item.id not in grid:
                queries.add_label(session, item.id, item.truth, annotator="bob")
    at.run()
    assert not at.exception
    opened = {item["id"] for item in box_data(at)["items"]} - set(box_data(at)["closed"])
    assert opened and opened <= grid


def test_an_image_undone_twice_is_drawn_once(Session, tiny_project):
    """A then U, twice in quick succession: the undone images were listed to come first twice,
    and the grid drew each twice, which Streamlit refused with a traceback ("multiple elements
    with the same key"; exploratory, 2 of 2)."""
    from streamlit.testing.v1 import AppTest

    with Session() as session:
        a, b = (item.id for item in queries.items(session, tiny_project.id, "pool")[:2])
    at = AppTest.from_string("from labeler.ui.label import label_page\nlabel_page()", default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.session_state["label_mode"] = "Grid"
    at.session_state["show_first"] = [a, b, a, b]  # as two undos of one page left it
    at.run()
    assert not at.exception
    tiles = [int(box.key.split("-")[1]) for box in at.selectbox if box.key.startswith("grid-")]
    assert {a, b} <= set(tiles) and len(tiles) == len(set(tiles)) == 12
