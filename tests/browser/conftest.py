"""A real `streamlit run app.py` server on a tiny project, and a headless Debian Chromium.

Session-scoped: one server and one browser for the whole browser suite. The project is made
through `labeler.projects.create_project` before the server starts, so it is the app's default.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labeler.config import data_dir_set
from labeler.latency import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def image_set(n: int = 100, test: int = 10, seed: int = 0):
    """n gray 12x12 images in two easy classes (dark and bright), the last `test` a test split."""
    import hashlib

    import numpy as np

    from labeler.data.base import ImageSet

    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    pixels = (rng.random((n, 1, 12, 12)) * 90 + truth[:, None, None, None] * 140).astype(np.uint8)
    return ImageSet(
        pixels=pixels,
        keys=[f"img/{i:03d}.png" for i in range(n)],
        sha256=[
            hashlib.sha256(p.tobytes() + i.to_bytes(4, "little")).hexdigest() for i, p in enumerate(pixels)
        ],
        truth=truth.astype(np.int64),
        splits=["test" if i >= n - test else "pool" for i in range(n)],
        classes=["dark", "bright"],
    )


def start_server(
    data_dir: Path, port: int, log_path: Path, extra: list[str] | None = None
) -> subprocess.Popen:
    env = {**os.environ, "LABELER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("LABELER_DB_URL", None)
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        *(extra or []),
    ]
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def launch_browser(playwright):
    """Debian's Chromium with the flags this closed network needs (used by screenshots.py)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium).")
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


# The server process behind each running_app url (a test that stalls one reaches it here).
SERVERS: dict[str, subprocess.Popen] = {}


@contextlib.contextmanager
def running_app(data_dir: Path) -> Iterator[str]:
    """A `streamlit run app.py` server on `data_dir` (its log in data_dir/server.log), ready to
    answer: its base url (its process in SERVERS[url]). Stopped after the block."""
    port = free_port()
    server = start_server(data_dir, port, data_dir / "server.log")
    url = f"http://127.0.0.1:{port}"
    SERVERS[url] = server
    try:
        wait_http(f"{url}/_stcore/health")
        yield url
    finally:
        SERVERS.pop(url, None)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def draw_lasso(page, path: list[tuple[float, float]]) -> None:
    """Draw a lasso on the page's first plotly chart through `path` (fractions of the plot area),
    once plotly has laid the chart out."""
    import time

    drag = page.locator(".js-plotly-plot .nsewdrag").first
    drag.wait_for()
    time.sleep(1.0)  # let plotly finish laying out
    area = drag.bounding_box()
    x0, y0, w, h = area["x"], area["y"], area["width"], area["height"]
    page.mouse.move(x0 + w * path[0][0], y0 + h * path[0][1])
    page.mouse.down()
    for fx, fy in path[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
    page.mouse.up()


def choose_in(page, field, name: str) -> None:
    """Open the select `field` and choose the option `name`, again when a rerun that lands just
    after the click closes its list (a CI run, once: the History tile's list never opened)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    option = page.get_by_role("option", name=name, exact=True)
    for attempt in range(5):
        settle(page)
        field.click()
        try:
            option.click(timeout=5_000)
            return
        except PlaywrightTimeout:
            if attempt == 4:
                raise


def choose_bulk_class(page, name: str) -> None:
    """Choose the Latent page's bulk label class (it starts on none), and wait until the button
    names it."""
    import re

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    option = page.get_by_role("option", name=name, exact=True)
    field = page.locator("[class*='st-key-bulk_class-'] input")
    button = page.locator(
        "[class*='st-key-bulk_apply-'] button", has_text=re.compile(f" as {re.escape(name)}$")
    )
    for _ in range(5):  # a rerun that lands just after the click closes the list again
        settle(page)
        field.click()
        try:
            option.wait_for(timeout=5_000)
            try:
                option.click(timeout=5_000)
            except PlaywrightTimeout:
                # The list can open below the window's edge (a note drawn above the field moved
                # it down), where no click reaches it: choose by keyboard, as a person could.
                field.fill(name)
                option.wait_for(timeout=5_000)
                page.keyboard.press("Enter")
            button.wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    button.wait_for()


def lasso_outline(page) -> tuple[list[float], list[float]]:
    """The corners (x, y in the axes' units) of the lasso plotly drew on the first chart."""
    outline = page.wait_for_function(
        "() => { const s = document.querySelector('.js-plotly-plot')._fullLayout.selections;"
        " return s && s.length && s[0].path; }"
    ).json_value()
    corners = [point.split(",") for point in outline.strip("MZ").split("L")]
    return [float(x) for x, _ in corners], [float(y) for _, y in corners]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """(base url, data folder, session factory) of a running app on the tiny project."""
    pytest.importorskip("playwright")
    import db
    from labeler import projects

    data_dir = tmp_path_factory.mktemp("browser-data")
    engine = db.make_engine(f"sqlite:///{data_dir / 'labeler.db'}")
    Session = db.session_factory(engine)
    with data_dir_set(data_dir):  # create_project writes pixels there
        project = projects.create_project(Session, "tiny", "test", images=image_set())
        with Session.begin() as session:
            from db.models import Project

            stored = session.get(Project, project.id)
            # Only the runs a test starts: no automatic retraining in the middle of another test.
            stored.settings = {
                **stored.settings,
                "auto_retrain_every": 0,
                "model": "supervised",
                "budget_s": 6,
            }
    try:
        with running_app(data_dir) as url:
            yield {"url": url, "data_dir": data_dir, "Session": Session, "project_id": project.id}
    finally:
        engine.dispose()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


# -- page helpers ----------------------------------------------------------------------------


def settle(page) -> None:
    """Wait until the script run is over, so the next key reaches the new buttons."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def notes(page) -> list[str]:
    """The texts of the notes (Streamlit's alerts) on the page now."""
    return page.eval_on_selector_all('[data-testid="stAlert"]', "els => els.map(e => e.innerText)")


def wait_note(page, text: str, timeout: float = 30_000) -> None:
    """Wait for a note saying `text`; fail naming the notes the page shows instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text).wait_for(timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"no note {text!r}; the page shows {notes(page)}") from None


def shown(page) -> int:
    """The item id of the image in the one-image box (Playwright's CSS reaches into its shadow root)."""
    image = page.locator("img.lb-img")
    image.wait_for()
    return int(image.get_attribute("data-item"))


def saved(page) -> None:
    """Wait until the one-image box says every answer reached the server."""
    page.locator('[data-testid="lb-status"]', has_text="all answers saved").wait_for()
