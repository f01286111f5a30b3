"""Make the README's screenshots from the real app: assets/screenshot-<page>.png.

    python tests/browser/screenshots.py [--out assets] [--budget-s 10]

A fresh data folder gets the built-in digits project; an oracle labels 20, 40 and 80 pool images
(their ground truth) with an M2 run after each round, so the learning curve has three points;
then `streamlit run app.py` serves it and headless Chromium photographs every page. Takes about
a minute plus 3 x budget-s of training on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _browser_helpers():
    spec = importlib.util.spec_from_file_location("browser_helpers", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(data_dir: Path, budget_s: float, rounds=(20, 40, 80)) -> int:
    """The digits project with oracle labels and one finished M2 run per round; its id."""
    os.environ["LABELER_DATA_DIR"] = str(data_dir)
    import torch

    import db
    from db import queries
    from db import runs as run_queries
    from db.models import Project
    from labeler import projects, queue
    from labeler.config import available_cores
    from labeler.worker import Worker

    torch.set_num_threads(max(1, available_cores() // 2))
    Session = db.session_factory(db.make_engine(f"sqlite:///{data_dir / 'labeler.db'}"))
    project = projects.create_project(Session, "digits", "digits")
    with Session.begin() as session:
        stored = session.get(Project, project.id)
        stored.settings = {**stored.settings, "model": "m2", "budget_s": budget_s, "auto_retrain_every": 0}
    worker = Worker(Session, device="cpu")
    for target in rounds:
        with Session.begin() as session:
            have = queries.label_count(session, project.id)
            # The queue's order: what an annotator would have been shown.
            for item, _ in queue.next_items(session, project.id, k=target - have):
                queries.add_label(session, item.id, item.truth, annotator="demo")
        with Session.begin() as session:
            run_queries.request_run(session, project.id, "m2", {"budget_s": budget_s})
        worker.process_one()
    with Session.begin() as session:  # a few answers after the last run: the agreement metric
        for item, _ in queue.next_items(session, project.id, k=6):
            queries.add_label(session, item.id, item.truth, annotator="demo")
    return project.id


def shoot(url: str, out: Path, helpers) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as playwright:
        browser = helpers.launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)

        def save(name: str, settle: float = 1.5, height: int = 1000) -> None:
            # Streamlit scrolls inside its own container, so a taller window shows more.
            page.set_viewport_size({"width": 1400, "height": height})
            time.sleep(settle)
            path = out / f"screenshot-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)

        page.goto(url)
        page.locator("img.lb-img").wait_for()
        page.locator(".lb-guess strong").wait_for()
        save("label")
        page.get_by_text("Grid", exact=True).click()
        page.locator("[class*='st-key-accept_grid-'] button").wait_for()
        save("label-grid", height=1700, settle=2)

        page.goto(f"{url}/train")
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        save("train", height=1500, settle=3)

        page.goto(f"{url}/progress")
        page.get_by_text("Learning curve").wait_for()
        page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for()
        save("progress", height=2300, settle=3)

        page.goto(f"{url}/latent")
        page.locator(".js-plotly-plot .nsewdrag").first.wait_for()
        page.get_by_text("Prediction", exact=True).click()
        time.sleep(2.0)
        drag = page.locator(".js-plotly-plot .nsewdrag").first
        drag.wait_for()
        time.sleep(1.5)
        box = drag.bounding_box()
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        page.mouse.move(x0 + 0.05 * w, y0 + 0.05 * h)
        page.mouse.down()
        for fx, fy in [(0.35, 0.05), (0.35, 0.45), (0.05, 0.45), (0.05, 0.06)]:
            page.mouse.move(x0 + fx * w, y0 + fy * h, steps=8)
        page.mouse.up()
        page.get_by_text(re.compile(r"^\d+ selected$")).wait_for()
        save("latent", height=1550, settle=3)

        page.goto(f"{url}/export")
        page.locator(".st-key-export_prepare button").click()
        page.get_by_role("button", name="Data set: ImageFolder zip").wait_for()
        save("export")

        page.goto(f"{url}/project")
        page.get_by_text("Import report").wait_for()
        save("project", height=1500, settle=2)
        browser.close()
    return saved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "assets"))
    parser.add_argument("--budget-s", type=float, default=10.0, help="training seconds per round")
    args = parser.parse_args(argv)
    helpers = _browser_helpers()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        prepare(data_dir, args.budget_s)
        port = helpers.free_port()
        server = helpers.start_server(
            data_dir, port, data_dir / "server.log", extra=["--client.toolbarMode", "viewer"]
        )
        try:
            helpers.wait_http(f"http://127.0.0.1:{port}/_stcore/health")
            for path in shoot(f"http://127.0.0.1:{port}", out, helpers):
                print(path)
        finally:
            server.terminate()
            server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
