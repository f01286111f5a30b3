"""The real app in headless Chromium: label with the keys, undo, train, watch the curve, select
points in the latent view and bulk-label them, download the export and load it outside the app.

The tests share one server and run in file order (labels, then a run, then what needs a run).
"""

from __future__ import annotations

import re
import time
import zipfile

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from db import queries
from db import runs as run_queries
from db.models import Item, LabelEvent

pytestmark = pytest.mark.browser




def events(Session, project_id: int) -> list[LabelEvent]:
    with Session() as session:
        return list(session.query(LabelEvent).filter_by(project_id=project_id).order_by(LabelEvent.id))


def settle(page) -> None:
    """Wait until the script run is over, so the next key reaches the new buttons."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def press(page, key: str) -> None:
    """Press a shortcut on the page itself, not in an input: settle, click the title, press."""
    settle(page)
    page.locator("h1").first.click()
    page.keyboard.press(key)


def test_label_with_keys_and_undo(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.locator(".st-key-class-0 button").wait_for()
    page.get_by_text("0 labeled / 50 images").wait_for()

    press(page, "1")
    page.get_by_text("1 labeled / 50 images").wait_for()
    press(page, "2")
    page.get_by_text("2 labeled / 50 images").wait_for()
    first, second = events(Session, pid)
    assert (first.class_index, second.class_index) == (0, 1)
    assert first.item_id != second.item_id and first.kind == "single"

    press(page, "u")
    page.get_by_text("1 labeled / 50 images").wait_for()
    with Session() as session:
        assert queries.current_labels(session, pid) == {first.item_id: 0}
    assert events(Session, pid)[1].undone

    # The undone image is shown again; s skips it without a label.
    with Session() as session:
        undone_key = session.get(Item, second.item_id).key
    caption = page.locator('[data-testid="stImageCaption"]').first
    expect(caption).to_have_text(undone_key)
    press(page, "s")
    page.get_by_text("Skipped").wait_for()
    expect(caption).not_to_have_text(undone_key)
    with Session() as session:
        assert queries.label_count(session, pid) == 1


def test_train_shows_live_progress_and_a_new_curve_point(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    with Session.begin() as session:
        labeled = queries.current_labels(session, pid)
        for item in queries.items(session, pid, "pool")[:12]:
            if item.id not in labeled:
                queries.add_label(session, item.id, item.truth, annotator="seed")
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
    assert run.status == "done" and run.labels_used == 13 and run.test_accuracy is not None
    assert metrics, "the run wrote no loss points"

    page.goto(f"{app_server['url']}/progress")
    page.get_by_text("Learning curve").wait_for()
    page.get_by_text("Accuracy on the test split: 10 images").wait_for()
    page.get_by_text(f"{run.test_accuracy:.1%}").first.wait_for()
    page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()  # curve, balance, per class, confusion


def test_grid_page_accepts_the_models_guesses_with_a_key(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(app_server["url"])
    page.get_by_text("Grid", exact=True).click()
    page.locator(".st-key-accept_grid button").wait_for()
    before = len(events(Session, pid))
    press(page, "a")
    page.get_by_text(re.compile(r"Saved \d+ labels\.")).wait_for()
    grid = events(Session, pid)[before:]
    with Session() as session:
        guesses = {p.item_id: p.predicted for p in run_queries.predictions(session, run_queries.list_runs(session, pid)[0].id)}
    assert len(grid) == 12 and {e.kind for e in grid} == {"grid"}
    assert all(e.class_index == guesses[e.item_id] for e in grid)  # accepted as pre-filled


def test_lasso_in_the_latent_view_labels_the_selection(app_server, page):
    Session, pid = app_server["Session"], app_server["project_id"]
    page.goto(f"{app_server['url']}/latent")
    page.locator(".js-plotly-plot .nsewdrag").first.wait_for()
    time.sleep(1.0)  # let plotly finish laying out
    area = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    x0, y0, w, h = area["x"], area["y"], area["width"], area["height"]
    # A lasso around the left half of the plot (its leftmost point is always in there).
    path = [(0.01, 0.01), (0.5, 0.01), (0.5, 0.99), (0.01, 0.99), (0.01, 0.02)]
    page.mouse.move(x0 + w * path[0][0], y0 + h * path[0][1])
    page.mouse.down()
    for fx, fy in path[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
    page.mouse.up()

    heading = page.get_by_text(re.compile(r"^\d+ selected$"))
    heading.wait_for()
    n = int(heading.inner_text().split()[0])
    assert n >= 1
    before = len(events(Session, pid))
    page.locator(".st-key-bulk_apply button").click()
    page.get_by_text(f"Labeled {n} images at once.").wait_for()
    bulk = [e for e in events(Session, pid)[before:]]
    assert len(bulk) == n and {(e.kind, e.class_index) for e in bulk} == {("bulk", 0)}


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
        n_labels = queries.label_count(session, pid)
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
    assert str(app_server["data_dir"]) in project.source  # saved under the data folder
    page.goto(f"{app_server['url']}/")
    page.get_by_text("Label · tiny").wait_for()  # a new browser session starts on the first project
