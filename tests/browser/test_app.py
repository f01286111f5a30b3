"""The real app in headless Chromium: label with the keys, undo, train, watch the curve, select
points in the latent view and bulk-label them, download the export and load it outside the app.

The tests share one server and run in file order (labels, then a run, then what needs a run).
"""

from __future__ import annotations

import re
import time
import zipfile
from datetime import timedelta

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from db import queries
from db import runs as run_queries
from db.models import DONE, IGNORED, Claim, LabelEvent, Prediction, Run, utcnow
from labeler.ui import latent
from tests.browser.conftest import (
    choose_bulk_class,
    choose_in,
    draw_lasso,
    lasso_outline,
    saved,
    settle,
    shown,
)

pytestmark = pytest.mark.browser


def events(Session, project_id: int) -> list[LabelEvent]:
    with Session() as session:
        return list(session.query(LabelEvent).filter_by(project_id=project_id).order_by(LabelEvent.id))


def press(page, key: str) -> None:
    """Press a shortcut on the page itself, not in an input: settle, click the title, press."""
    settle(page)
    page.locator("h1").first.click()
    page.keyboard.press(key)


def current(Session, project_id: int) -> dict[int, int]:
    with Session() as session:
        return queries.current_labels(session, project_id, ignored=True)


def test_label_with_keys_undo_skip_and_ignore(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.get_by_text("0 labeled / 90 images").wait_for()
    first = shown(page)
    page.keyboard.press("1")
    second = shown(page)
    assert second != first
    page.keyboard.press("2")
    saved(page)
    one, two = events(Session, pid)
    assert (one.item_id, one.class_index, two.item_id, two.class_index) == (first, 0, second, 1)
    assert one.kind == "single"

    page.keyboard.press("u")  # the second answer comes back on screen at once, and is taken back
    assert shown(page) == second
    saved(page)
    assert current(Session, pid) == {first: 0} and events(Session, pid)[1].undone

    page.keyboard.press("s")  # skipped: no answer, the next image shows
    assert shown(page) != second
    third = shown(page)
    page.keyboard.press("i")  # ignore: answered, in no class
    saved(page)
    assert current(Session, pid) == {first: 0, third: IGNORED}
    # Captions are opaque ids, never a file name.
    expect(page.locator('[data-testid="lb-caption"]')).to_have_text(re.compile(r"^#\d+$"))


def test_thirty_fast_keys_give_thirty_right_labels_on_the_right_images(app_server, page):
    """Keys 100 ms apart, faster than the page can be redrawn: each lands on the image that was on
    screen when it went down, none is lost, none relabels another image."""
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    before = current(Session, pid)
    with Session() as session:  # answer truthfully: a model is trained on these labels later
        truth = {item.id: item.truth for item in queries.items(session, pid)}
    pressed = []
    for _ in range(30):
        item = shown(page)
        key = str(truth[item] + 1)
        page.keyboard.press(key)
        pressed.append((item, int(key) - 1))
        page.wait_for_timeout(100)
    saved(page)
    after = current(Session, pid)
    new = {i: c for i, c in after.items() if i not in before}
    assert len({i for i, _ in pressed}) == 30
    assert new == dict(pressed)
    with Session() as session:  # one answer each, none replaced
        hist = {
            i: [(e.class_index, e.undone, e.annotator, e.kind) for e in queries.history(session, i)]
            for i, _ in pressed
        }
        assert all(sum(not e[1] for e in h) == 1 for h in hist.values()), hist


def toggle_file_names(page) -> None:
    """Rerun the page without a key in the box: flip "Show file names" and wait for the run."""
    settle(page)
    page.get_by_text("Show file names").click()
    settle(page)
    page.wait_for_timeout(1000)  # the box has drawn the new page's data by now


def test_the_image_on_screen_stays_when_a_new_page_leaves_it_out(app_server, page):
    """A new page of images from the server can leave out the image on screen (here: another
    person holds it now; also after a run re-orders the queue or when an audit turn begins). It
    used to be replaced by the new page's first image a moment after it showed, so a key meant
    for it labeled another image. It stays until a key answers it, and that key labels it."""
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    with Session() as session:
        truth = {item.id: item.truth for item in queries.items(session, pid)}
    first = shown(page)
    page.keyboard.press(str(truth[first] + 1))
    saved(page)
    settle(page)
    second = shown(page)
    assert second != first
    with Session.begin() as session:  # somebody else is given it now: the next page leaves it out
        claim = session.get(Claim, second)
        claim.annotator, claim.expires_at = "somebody else#0", utcnow() + timedelta(hours=1)
    toggle_file_names(page)
    try:
        assert shown(page) == second
        press(page, str(truth[second] + 1))
        saved(page)
        third = shown(page)
        assert third != second
        expect(page.locator('[data-testid="lb-caption"]')).to_contain_text("img/")  # the new page's
        labels = current(Session, pid)
        assert labels[second] == truth[second]
        assert third not in labels
    finally:
        toggle_file_names(page)


def test_the_image_on_screen_stays_when_somebody_else_answers_it_and_a_key_for_it_stores_nothing(
    app_server, page
):
    """The image on screen was answered elsewhere (or removed) meanwhile. It used to give way to
    the next image at once, so a key already on its way down for it labeled an image nobody had
    looked at. It stays, with a note; a key for it stores nothing and only goes on to the next
    image, and the key after that labels the image then on screen."""
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    settle(page)
    saved(page)
    item = shown(page)
    with Session() as session:
        truth = {i.id: i.truth for i in queries.items(session, pid)}
    mine = 1 - truth[item]  # not bob's class (two classes): a stored key would show in the history
    with Session() as session:  # an earlier test may have answered it and taken that back
        earlier = {e.id for e in queries.history(session, item)}
    with Session.begin() as session:  # bob, in another tab, answers it
        queries.add_label(session, item, truth[item], annotator="bob")
    toggle_file_names(page)
    try:
        page.locator('[data-testid="lb-notice"]', has_text=f"Image #{item} was answered elsewhere").wait_for()
        assert shown(page) == item
        before = current(Session, pid)
        press(page, str(mine + 1))
        page.locator('[data-testid="lb-notice"]', has_text=f"Nothing was stored for image #{item}").wait_for()
        nxt = shown(page)
        assert nxt != item
        press(page, str(truth[nxt] + 1))
        saved(page)
        settle(page)
        with Session() as session:
            stored = [
                (e.class_index, e.annotator) for e in queries.history(session, item) if e.id not in earlier
            ]
        assert stored == [(truth[item], "bob")]
        after = current(Session, pid)
        assert {i: c for i, c in after.items() if before.get(i) != c} == {nxt: truth[nxt]}
    finally:
        toggle_file_names(page)


def test_a_held_key_labels_one_image(app_server, page):
    """A key held down repeats about 30 times a second; each repeat used to answer the next
    image, unseen. Only the press counts."""
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    with Session() as session:
        truth = {item.id: item.truth for item in queries.items(session, pid)}
    before = current(Session, pid)
    first = shown(page)
    key = str(truth[first] + 1)
    settle(page)
    page.locator("h1").first.click()
    page.keyboard.down(key)
    for _ in range(5):
        page.keyboard.down(key)  # Playwright sends these with repeat set, as a held key does
        page.wait_for_timeout(50)
    page.keyboard.up(key)
    saved(page)
    new = {i: c for i, c in current(Session, pid).items() if i not in before}
    assert new == {first: truth[first]}
    assert shown(page) != first


def test_a_reload_keeps_the_project_and_the_annotator(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(f"{app_server['url']}/?annotator=carol")
    with Session() as session:
        truth = {item.id: item.truth for item in queries.items(session, pid)}
    item = shown(page)
    page.keyboard.press(str(truth[item] + 1))
    saved(page)
    assert f"project={pid}" in page.url
    page.reload()
    again = shown(page)
    assert again != item
    page.keyboard.press(str(truth[again] + 1))
    saved(page)
    mine = [e for e in events(Session, pid) if e.item_id in (item, again)]
    assert [(e.item_id, e.annotator) for e in mine] == [(item, "carol"), (again, "carol")]


def test_a_reload_on_another_page_keeps_the_annotator(app_server, page):
    """Switching pages drops the address's query: a reload on the Train page started a session
    under the server's user name, and the person's next answers went in under that name."""
    from tests.browser.test_unsent_answers import open_page

    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(f"{app_server['url']}/?annotator=dave")
    shown(page)
    open_page(page, "Train")
    settle(page)
    expect(page).to_have_url(re.compile(r"annotator=dave"))
    page.reload()
    page.locator("h1", has_text="Train").wait_for()
    open_page(page, "Label")
    with Session() as session:
        truth = {item.id: item.truth for item in queries.items(session, pid)}
    item = shown(page)
    press(page, str(truth[item] + 1))
    saved(page)
    mine = [(e.item_id, e.annotator) for e in events(Session, pid) if e.item_id == item]
    assert mine == [(item, "dave")]


def test_an_old_label_is_corrected_from_the_history(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.get_by_text("History", exact=True).click()
    newest = events(Session, pid)[-1]
    box = page.locator(f".st-key-hist-{newest.item_id}-{newest.id}")
    box.wait_for()
    target = "dark" if newest.class_index == 1 else "bright"
    choose_in(page, box, target)  # a tile clicked while the page is redrawn loses its open list
    settle(page)
    page.locator("[class*='st-key-hist_save-'] button").click()
    page.get_by_text("Corrected 1 label (").wait_for()
    last = events(Session, pid)[-1]
    assert (last.item_id, last.kind, last.class_index) == (
        newest.item_id,
        "correction",
        1 - newest.class_index,
    )


def test_train_shows_live_progress_and_a_new_curve_point(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    with Session.begin() as session:
        labeled = queries.current_labels(session, pid, ignored=True)
        for item in queries.items(session, pid, "pool")[:12]:
            if item.id not in labeled:
                queries.add_label(session, item.id, item.truth, annotator="seed")
    with Session() as session:
        expected_labels = len(run_queries.pool_labels(session, pid))
    page.goto(f"{app_server['url']}/train")
    start = page.locator(".st-key-train_start button")
    start.wait_for()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    start.click()
    page.get_by_text("is queued").wait_for()

    # The progress bar moves without a reload, then the run ends and the history shows it.
    page.get_by_text(re.compile(r"Run 1 \(supervised\): training")).wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"Run 1 \(supervised\): done, 100%")).wait_for(timeout=90_000)
    assert page.evaluate("window.__sameDocument === true")
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)  # loss curves
    with Session() as session:
        run = run_queries.list_runs(session, pid)[0]
        metrics = run_queries.run_metrics(session, run.id)
    assert run.status == "done" and run.labels_used == expected_labels and run.test_accuracy is not None
    assert metrics, "the run wrote no loss points"

    page.goto(f"{app_server['url']}/progress")
    page.get_by_text("Learning curve").wait_for()
    page.get_by_text("Accuracy on the test split: 10 images").wait_for()
    page.get_by_text(f"{run.test_accuracy:.1%}").first.wait_for()
    page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()  # curve, balance, per class, confusion


def test_enter_accepts_the_models_guess(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.locator(".lb-guess strong").wait_for()
    item = shown(page)
    with Session() as session:
        run_id = run_queries.list_runs(session, pid)[0].id
        guesses = {p.item_id: p.predicted for p in run_queries.predictions(session, run_id)}
    page.keyboard.press("Enter")
    saved(page)
    assert current(Session, pid)[item] == guesses[item]


def grid_tiles(page) -> list[tuple[int, str]]:
    """(item id, shown class) of the 12 grid tiles in page order, once the script run is over.
    Tile n sits in column n % 4, row n // 4; the page lists the columns one after another."""
    settle(page)
    found = page.eval_on_selector_all(
        '[class*="st-key-grid-"] input[role="combobox"]',
        """inputs => inputs.map(i => [i.closest('[class*="st-key-grid-"]').className, i.value])""",
    )
    # The no-class choice reads "skip" plus a no-break space (labeler.ui.label._apart): stripped.
    found = [(int(re.search(r"st-key-grid-(\d+)-", key).group(1)), value.strip()) for key, value in found]
    order = [row * 4 + column for column in range(4) for row in range(3)]
    if len(found) != len(order):  # tiles of the page before, still on screen
        return found
    return [tuple(found[order.index(n)]) for n in range(len(order))]


def wait_for_tiles(page, wanted) -> list[tuple[int, str]]:
    """Wait (up to a minute) until there are 12 tiles and `wanted(tiles)` holds; return them."""
    deadline = time.monotonic() + 60
    tiles = grid_tiles(page)
    while not (len(tiles) == 12 and wanted(tiles)) and time.monotonic() < deadline:
        page.wait_for_timeout(200)
        tiles = grid_tiles(page)
    assert len(tiles) == 12 and wanted(tiles), tiles
    return tiles


def test_grid_page_accepts_the_models_guesses_with_a_key(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.get_by_text("Grid", exact=True).click()
    page.locator("[class*='st-key-accept_grid-'] button").wait_for()
    # Pre-fill every guess: the threshold slider to 0 with the keyboard.
    slider = page.locator('.st-key-grid_threshold input[type="range"]')
    slider.focus()
    page.keyboard.press("Home")
    expect(slider).to_have_attribute("aria-valuetext", "0.00")
    # Every tile shows a class, none "skip", once the page has been redrawn with the new threshold.
    before_keys = wait_for_tiles(page, lambda tiles: all(v != "skip" for _, v in tiles))
    assert all(v != "skip" for _, v in before_keys)
    settle(page)  # the redraw over, as a person sees it
    # Keys on the tiles: the second tile (arrow right) gets the other class's key, the third
    # (focus moves on by itself) Backspace, that is "skip".
    page.locator("h1").first.click()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("2" if before_keys[1][1] == "dark" else "1")
    page.wait_for_timeout(200)
    page.keyboard.press("Backspace")
    try:
        after_keys = wait_for_tiles(
            page, lambda tiles: tiles[1][1] != before_keys[1][1] and tiles[2][1] == "skip"
        )
    except AssertionError as error:  # once in a full run: the page's state at the failure
        seen = page.evaluate(
            """() => ({boxes: window.__labelerBoxes,
                state: document.querySelector('[data-testid="stApp"]')
                    .getAttribute("data-test-script-state")})"""
        )
        raise AssertionError(f"{error} {seen}") from error
    assert [v for _, v in after_keys].count("skip") == 1 and after_keys[1][1] != before_keys[1][1]
    before = len(events(Session, pid))
    press(page, "a")
    message = page.get_by_text(re.compile(r"Saved \d+ labels\."))
    message.wait_for()
    grid = events(Session, pid)[before:]
    with Session() as session:
        run_id = run_queries.list_runs(session, pid)[0].id
        guesses = {p.item_id: p for p in run_queries.predictions(session, run_id)}
    assert len(grid) == 11 and {e.kind for e in grid} == {"grid"}  # one tile skipped
    changed = [e for e in grid if e.class_index != guesses[e.item_id].predicted]
    assert [e.item_id for e in changed] == [after_keys[1][0]]  # the rest accepted as pre-filled


def test_lasso_in_the_latent_view_labels_the_selection(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(f"{app_server['url']}/latent")
    # A lasso around the left half of the plot (its leftmost point is always in there).
    draw_lasso(page, [(0.01, 0.01), (0.5, 0.01), (0.5, 0.99), (0.01, 0.99), (0.01, 0.02)])

    heading = page.get_by_text(re.compile(r"^\d+ selected$"))
    heading.wait_for()
    n = int(heading.inner_text().split()[0])
    assert n >= 1
    # Exactly the points inside the lasso plotly drew (its path, in the axes' units: the page
    # selects from the drawn area, also points the map shows only in its picture).
    lasso_x, lasso_y = lasso_outline(page)
    with Session() as session:
        run = run_queries.latest_done_run(session, pid)
        shown_points = run_queries.predictions_frame(session, run.id)
    shown_points = shown_points[shown_points["split"].isin(["pool", "audit"])]
    inside = latent.inside_polygon(shown_points["x"], shown_points["y"], lasso_x, lasso_y)
    expected = set(shown_points["item_id"][inside].astype(int))
    assert n == len(expected)
    before = len(events(Session, pid))
    labeled_before = current(Session, pid)
    choose_bulk_class(page, "dark")  # class 0
    page.locator("[class*='st-key-bulk_apply-'] button").click()
    message = page.get_by_text(re.compile(r"Labeled \d+ images at once"))
    message.wait_for()
    k = int(re.search(r"Labeled (\d+) images", message.inner_text()).group(1))
    bulk = [e for e in events(Session, pid)[before:]]
    assert len(bulk) == k <= n and {(e.kind, e.class_index) for e in bulk} == {("bulk", 0)}
    assert not {e.item_id for e in bulk} & set(labeled_before), "a bulk label replaced an answer"
    assert {e.item_id for e in bulk} == expected - set(labeled_before), "labels on exactly the lasso's points"


def test_export_downloads_load_outside_the_app(app_server, page, tmp_path):
    import numpy as np
    import torch
    from torchvision import datasets

    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(f"{app_server['url']}/export")
    page.locator(".st-key-export_prepare button").click()
    button = page.get_by_role("button", name="Data set: ImageFolder zip")
    button.wait_for(timeout=60_000)

    with page.expect_download() as download:
        button.click()
    zip_path = tmp_path / "dataset.zip"
    download.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "dataset")
    folder = datasets.ImageFolder(str(tmp_path / "dataset"))
    with Session() as session:
        n_labels = len(queries.current_labels(session, pid))  # ignored images are in no class
        names = queries.class_names(session, pid)
    assert len(folder) == n_labels and set(folder.classes) <= set(names)
    image, _ = folder[0]
    assert image.size == (12, 12)

    with page.expect_download() as download:
        page.get_by_role("button", name=re.compile("Model: checkpoint")).click()
    model_zip = tmp_path / "model.zip"
    download.value.save_as(model_zip)
    with zipfile.ZipFile(model_zip) as archive:
        assert {"model.pt", "model.torchscript.pt", "model.onnx", "classes.json"} <= set(archive.namelist())
        archive.extractall(tmp_path / "model")
    model = torch.jit.load(str(tmp_path / "model" / "model.torchscript.pt"))
    dark = torch.full((1, 1, 12, 12), 0.15)
    bright = torch.full((1, 1, 12, 12), 0.75)
    with torch.no_grad():
        probs = model(torch.cat([dark, bright]))
    assert probs.shape == (2, 2)
    assert np.allclose(probs.sum(1).numpy(), 1.0, atol=1e-4)
    assert probs.argmax(1).tolist() == [0, 1]  # the easy classes were learned from 13 labels


def test_an_uploaded_zip_becomes_the_current_project(app_server, page, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for cls, value in (("cats", 30), ("dogs", 220)):
            for i in range(5):
                png = io.BytesIO()
                Image.fromarray(np.full((16, 16), value + i, dtype=np.uint8)).save(png, format="PNG")
                archive.writestr(f"{cls}/{i}.png", png.getvalue())
        archive.writestr("cats/notes.txt", "not an image")
    page.goto(f"{app_server['url']}/project")
    page.get_by_label("Name", exact=True).fill("uploaded")
    page.get_by_text("Upload a zip", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "pets.zip", "mimeType": "application/zip", "buffer": buffer.getvalue()}]
    )
    page.get_by_text("pets.zip").wait_for()
    page.get_by_role("button", name="Create project").click()
    page.get_by_text("Created the project 'uploaded'").wait_for(timeout=60_000)
    with app_server["Session"]() as session:
        project = queries.get_project(session, "uploaded")
        assert queries.class_names(session, project.id) == ["cats", "dogs"]
        assert queries.count_items(session, project.id) == 10
        assert [i.path for i in queries.import_issues(session, project.id)] == ["cats/notes.txt"]
    page.get_by_text("1 file was skipped when importing.").wait_for()
    assert project.source == "upload:pets.zip"  # the uploaded file's name, not the removed copy's
    page.goto(f"{app_server['url']}/")
    page.get_by_text("Label · tiny").wait_for()  # a new browser session starts on the first project


def test_a_broken_zip_upload_names_the_file_uploaded_and_leaves_no_progress_bar(app_server, page):
    """The error named the server's saved copy ("4c83...e1a627.zip is not a readable zip file"),
    not the person's file, and an empty "Importing the images..." bar stayed above it."""
    page.goto(f"{app_server['url']}/project")
    page.get_by_label("Name", exact=True).fill("broken")
    page.get_by_text("Upload a zip", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "holiday photos.zip", "mimeType": "application/zip", "buffer": b"not a zip at all"}]
    )
    page.get_by_text("holiday photos.zip").wait_for()
    page.get_by_role("button", name="Create project").click()
    page.locator(
        '[data-testid="stAlert"]', has_text="holiday photos.zip is not a readable zip file"
    ).wait_for()
    settle(page)
    assert page.get_by_text("Importing the images").count() == 0
    with app_server["Session"]() as session:
        assert queries.get_project(session, "broken") is None


def test_an_imported_folder_shows_its_originals_and_audit_captions_give_nothing_away(
    app_server, page, tmp_path
):
    """A folder project whose images are all audit images: each is shown from its original file
    (160x90, not the model's small input), and with file names turned on the caption is still
    only an id: no class folder, no file name."""
    import os

    from PIL import Image
    from sqlalchemy import update

    from db.models import AUDIT, Item
    from labeler import projects

    for name, colour in (("red_square", (200, 30, 30)), ("blue_circle", (30, 30, 200))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (160, 90), tuple(c + 10 * i for c in colour)).save(
                tmp_path / "photos" / name / f"img{i}.png"
            )
    Session = app_server["Session"]
    os.environ["LABELER_DATA_DIR"] = str(app_server["data_dir"])
    try:
        photos = projects.create_project(Session, "photos", f"folder:{tmp_path / 'photos'}", audit_size=0)
    finally:
        os.environ.pop("LABELER_DATA_DIR")
    with Session.begin() as session:
        session.execute(update(Item).where(Item.project_id == photos.id).values(split=AUDIT))
    page.goto(f"{app_server['url']}/?project={photos.id}")
    image = page.locator("img.lb-img")
    image.wait_for()
    page.wait_for_function(
        "() => { for (const h of document.querySelectorAll('[data-testid=\"stBidiComponentIsolated\"]')) {"
        " const i = h.shadowRoot && h.shadowRoot.querySelector('img.lb-img'); if (i && i.complete) return true; }"
        " return false; }"
    )
    width, height = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert width >= 160 and width * 90 == height * 160  # the original's 16:9, not a square model input
    page.get_by_text("Show file names").click()
    settle(page)
    caption = page.locator('[data-testid="lb-caption"]').inner_text()
    assert re.fullmatch(r"#\d+", caption), caption
    assert not any(word in caption for word in ("red", "blue", "square", "circle", "img"))


def test_the_guess_on_screen_is_the_one_enter_accepts(app_server, page):
    """A run that finishes while an image is on screen brings a new guess for it: the screen kept
    the image but showed the new guess, which could change just before Enter. The image keeps the
    guess it was shown with, and Enter stores that one. (A newer run here flips every guess.)"""
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.locator(".lb-guess strong").wait_for()
    item = shown(page)
    was = page.locator(".lb-guess strong").inner_text()
    with Session.begin() as session:
        old = run_queries.latest_done_run(session, pid)
        now = utcnow()
        run = Run(
            project_id=pid,
            model=old.model,
            status=DONE,
            created_at=now,
            started_at=now,
            finished_at=now,
            progress=1.0,
            labels_used=old.labels_used,
            test_accuracy=old.test_accuracy,
            seconds=1.0,
        )
        session.add(run)
        session.flush()
        for p in run_queries.predictions(session, old.id):
            session.add(
                Prediction(
                    run_id=run.id,
                    item_id=p.item_id,
                    predicted=1 - p.predicted,
                    confidence=p.confidence,
                    entropy=p.entropy,
                    margin=p.margin,
                    score=p.score,
                    x=p.x,
                    y=p.y,
                )
            )
        session.flush()
        run_queries.store_queue(session, run.id)
        flipped = {p.item_id: 1 - p.predicted for p in run_queries.predictions(session, old.id)}
    toggle_file_names(page)
    try:
        assert shown(page) == item
        expect(page.locator(".lb-guess strong")).to_have_text(was)
        press(page, "Enter")
        saved(page)
        assert current(Session, pid)[item] == 1 - flipped[item]  # the guess shown, not the new run's
        with Session() as session:  # kept with the answer as the guess shown (Progress's agreement)
            event = queries.current_event(session, item)
            assert (event.predicted_run_id, event.predicted_index) == (old.id, 1 - flipped[item])
    finally:
        toggle_file_names(page)


def test_adding_a_class_keeps_every_key(app_server, page):
    """Last: it changes the shared project's classes."""
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.get_by_text("Classes: keys, add or rename").click()
    page.get_by_label("New class").fill("third")
    page.locator(".st-key-add_class button").click()
    # The class's key button, not the notice: the next page run (the box's, a run finishing in
    # the shared server's worker) may replace the notice before it is seen (once in a full run).
    page.locator('button.lb-class[data-index="2"]', has_text="third").wait_for()
    with Session() as session:
        assert queries.class_names(session, pid)[2] == "third"
    keys = [page.locator(f'button.lb-class[data-index="{i}"] kbd').inner_text() for i in range(3)]
    assert keys == ["1", "2", "3"]
    a = shown(page)
    page.keyboard.press("1")
    b = shown(page)
    page.keyboard.press("3")
    saved(page)
    labels = current(Session, pid)
    assert (labels[a], labels[b]) == (0, 2)
