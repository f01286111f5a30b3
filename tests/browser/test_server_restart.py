"""The app server killed (kill -9) and started again while a tab stays open on a grid page."""

from __future__ import annotations

import contextlib

import pytest

from labeler import config, projects
from labeler.latency import free_port, wait_http
from tests.browser.conftest import image_set, settle, start_server
from tests.browser.test_app import events, wait_for_tiles

PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

pytestmark = pytest.mark.browser


def test_grid_tiles_set_before_a_server_kill_come_back_and_are_saved(tmp_path, page):
    """Streamlit reconnects the tab to the new server, which has lost the session that held the
    grid page: it drew a new page, all on skip, without a word, and the tiles set on the old one
    were gone (exploratory, 5 of 5). The tab now sends back the page it shows, its keys and the
    tiles chosen with the mouse, and the same page comes back with them; A saves them under the
    same name."""
    import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'labeler.db'}")
    Session = db.session_factory(engine)
    with config.data_dir_set(tmp_path):
        project = projects.create_project(Session, "restart", "test", images=image_set(seed=7))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port, tmp_path / "server.log")
    try:
        wait_http(f"{url}/_stcore/health")
        page.goto(f"{url}/?annotator=rosa")
        page.get_by_text("Grid", exact=True).click()
        page.locator("[class*='st-key-accept_grid-'] button").wait_for()
        tiles = wait_for_tiles(page, lambda tiles: True)
        settle(page)
        page.locator("h1").first.click()
        for key in ("1", "2", "2"):  # tiles 0-2: dark, bright, bright
            page.keyboard.press(key)
        wanted = {tiles[0][0]: "dark", tiles[1][0]: "bright", tiles[2][0]: "bright"}
        wait_for_tiles(page, lambda now: {item: shown for item, shown in now[:3]} == wanted)
        mouse = tiles[6][0]  # and one chosen with the mouse
        page.locator(f'[class*="st-key-grid-{mouse}-"] input').click()
        page.keyboard.type("bright")
        page.keyboard.press("Enter")
        wanted[mouse] = "bright"
        wait_for_tiles(page, lambda now: {i: shown for i, shown in now if i in wanted} == wanted)

        # The server lists mouse choices as of its last drawing: wait for the run the choice
        # started (the tile shows it at once, before that run) to be over.
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_selector('[data-test-script-state="running"]', timeout=5_000)
        settle(page)
        server.kill()  # SIGKILL: nothing is saved on the way out
        server.wait(timeout=60)
        server = start_server(tmp_path, port, tmp_path / "server2.log")
        wait_http(f"{url}/_stcore/health")

        try:
            page.get_by_text("this is the page you were working on").wait_for(timeout=120_000)
        except Exception as error:  # what the page shows instead, and both servers' logs
            logs = [(tmp_path / name).read_text()[-3000:] for name in ("server.log", "server2.log")]
            raise AssertionError((page.inner_text("body")[:3000], logs)) from error
        back = wait_for_tiles(page, lambda now: {i: shown for i, shown in now if i in wanted} == wanted)
        assert [item for item, _ in back] == [item for item, _ in tiles]  # the same page, in order
        page.locator("h1").first.click()
        for key in ("ArrowRight", "ArrowRight", "ArrowRight", "ArrowRight", "1"):  # a key after: tile 4
            page.keyboard.press(key)
        wanted[tiles[4][0]] = "dark"
        wait_for_tiles(page, lambda now: {i: shown for i, shown in now if i in wanted} == wanted)
        page.keyboard.press("a")
        page.get_by_text("Saved 5 labels").wait_for(timeout=60_000)
        stored = {e.item_id: (e.class_index, e.annotator) for e in events(Session, project.id)}
        assert stored == {item: (0 if name == "dark" else 1, "rosa") for item, name in wanted.items()}
    finally:
        server.kill()
        server.wait(timeout=60)
        engine.dispose()
