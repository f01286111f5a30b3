"""The app server killed (kill -9) and started again while a tab stays open on a grid page."""

from __future__ import annotations

import contextlib

import pytest

from labeler import config, projects
from labeler.latency import free_port, wait_http
from tests.browser.conftest import image_set, settle, start_server
from tests.browser.test_app import events, wait_for_tiles
from tests.browser.test_login import log_in

PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

pytestmark = pytest.mark.browser


def _set_tiles(page) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """On the grid page shown: keys on tiles 0-2 and a mouse choice on tile 6, each drawn and its
    run over; the page's tiles as drawn first and the tiles set (item -> class name)."""
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
    return tiles, wanted


def _page_back_and_saved(page, tiles, wanted, Session, project_id: int, logs) -> None:
    """The page comes back with its tiles; a key after it sets tile 4; A saves the five under rosa."""
    try:
        page.get_by_text("the page you were working on before").wait_for(timeout=120_000)
    except Exception as error:  # what the page shows instead, and the servers' logs
        raise AssertionError(
            (page.inner_text("body")[:3000], [p.read_text()[-3000:] for p in logs])
        ) from error
    back = wait_for_tiles(page, lambda now: {i: shown for i, shown in now if i in wanted} == wanted)
    assert [item for item, _ in back] == [item for item, _ in tiles]  # the same page, in order
    page.locator("h1").first.click()
    for key in ("ArrowRight", "ArrowRight", "ArrowRight", "ArrowRight", "1"):  # a key after: tile 4
        page.keyboard.press(key)
    wanted = {**wanted, tiles[4][0]: "dark"}
    wait_for_tiles(page, lambda now: {i: shown for i, shown in now if i in wanted} == wanted)
    page.keyboard.press("a")
    page.get_by_text("Saved 5 labels").wait_for(timeout=60_000)
    stored = {e.item_id: (e.class_index, e.annotator) for e in events(Session, project_id)}
    assert stored == {item: (0 if name == "dark" else 1, "rosa") for item, name in wanted.items()}


@pytest.fixture
def restart_project(tmp_path):
    """A project on its own database in tmp_path, with an account rosa when asked (indirect)."""
    import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'labeler.db'}")
    Session = db.session_factory(engine)
    with config.data_dir_set(tmp_path):
        project = projects.create_project(Session, "restart", "test", images=image_set(seed=7))
    try:
        yield Session, project.id
    finally:
        engine.dispose()


@pytest.mark.parametrize("accounts", [False, True], ids=["no-accounts", "password-accounts"])
def test_grid_tiles_set_before_a_server_kill_come_back_and_are_saved(
    tmp_path, page, restart_project, accounts
):
    """Streamlit reconnects the tab to the new server, which has lost the session that held the
    grid page: it drew a new page, all on skip, without a word, and the tiles set on the old one
    were gone (exploratory, 5 of 5). The tab now sends back the page it shows, its keys and the
    tiles chosen with the mouse, and the same page comes back with them; A saves them under the
    same name. With password accounts the new session asks for a login first, and the grid
    drawn after it is new in the tab: the page comes from the tab's sessionStorage."""
    from db import users
    from labeler import auth

    Session, project_id = restart_project
    if accounts:
        with Session.begin() as session:
            for name in ("rosa", "bob"):
                users.add_user(session, name, auth.hash_password("a long password"), "annotator")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = [tmp_path / "server.log", tmp_path / "server2.log"]
    server = start_server(tmp_path, port, logs[0])
    try:
        wait_http(f"{url}/_stcore/health")
        if accounts:
            page.goto(url)
            log_in(page, "rosa", "a long password")
            page.get_by_text("Logged in as rosa").wait_for()
        else:
            page.goto(f"{url}/?annotator=rosa")
        tiles, wanted = _set_tiles(page)
        server.kill()  # SIGKILL: nothing is saved on the way out
        server.wait(timeout=60)
        server = start_server(tmp_path, port, logs[1])
        wait_http(f"{url}/_stcore/health")
        if accounts:
            # Somebody else logs in first in this tab (a grid of their own), then rosa again:
            # the first grid of rosa's in the session asked for nothing (exploratory, 3 of 3).
            for name in ("bob", "rosa"):
                page.get_by_role("button", name="Log in").wait_for(timeout=120_000)
                settle(page)
                log_in(page, name, "a long password")
                page.get_by_text(f"Logged in as {name}").wait_for()
                page.get_by_text("Grid", exact=True).click()
                if name == "bob":
                    page.locator("[class*='st-key-accept_grid-'] button").wait_for()
                    settle(page)
                    page.get_by_role("button", name="Log out").click()
        _page_back_and_saved(page, tiles, wanted, Session, project_id, logs)
    finally:
        server.kill()
        server.wait(timeout=60)


@contextlib.contextmanager
def _one_server(tmp_path):
    """A server on tmp_path for the block: its url and its log (a list, as the restart tests)."""
    port = free_port()
    logs = [tmp_path / "server.log"]
    server = start_server(tmp_path, port, logs[0])
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        yield f"http://127.0.0.1:{port}", logs
    finally:
        server.kill()
        server.wait(timeout=60)


def test_grid_tiles_set_before_a_reload_come_back_and_are_saved(tmp_path, page, restart_project):
    """A reload (the browser asks first) ended the session that held the grid page, and its tiles
    were gone. The tab keeps the page in its sessionStorage: the grid drawn after the reload
    gets it back."""
    Session, project_id = restart_project
    with _one_server(tmp_path) as (url, logs):
        page.goto(f"{url}/?annotator=rosa")
        tiles, wanted = _set_tiles(page)
        page.once("dialog", lambda dialog: dialog.accept())  # "Leave site?": yes
        page.reload()
        # Away from the grid before its first run is over: the tab dropped the page it kept as
        # the new page drew, before the server had taken it (exploratory, 3 of 3).
        page.get_by_text("Grid", exact=True).click()
        page.get_by_text("One image", exact=True).click()
        settle(page)
        page.get_by_text("Grid", exact=True).click()
        _page_back_and_saved(page, tiles, wanted, Session, project_id, logs)


def test_grid_tiles_come_back_on_the_same_page_drawn_again_after_a_reload(tmp_path, page, restart_project):
    """The page's claims ran out before the reload, so the new session drew the very same page:
    the tab, mounted anew, kept its own empty key list for it and then dropped the kept page,
    and a key after that replaced the tiles given back with their guesses (a review). The tab
    takes the page's list from the server."""
    from sqlalchemy import update

    from db.models import Claim, utcnow

    Session, project_id = restart_project
    with _one_server(tmp_path) as (url, logs):
        page.goto(f"{url}/?annotator=rosa")
        tiles, wanted = _set_tiles(page)
        with Session.begin() as session:  # the claims ran out
            session.execute(update(Claim).values(expires_at=utcnow()))
        page.once("dialog", lambda dialog: dialog.accept())  # "Leave site?": yes
        page.reload()
        page.get_by_text("Grid", exact=True).click()
        _page_back_and_saved(page, tiles, wanted, Session, project_id, logs)
        page.once("dialog", lambda dialog: dialog.accept())  # nothing waits: no question
        page.reload()
        page.get_by_text("Grid", exact=True).click()
        page.locator("[class*='st-key-accept_grid-'] button").wait_for()
        settle(page)
        assert not page.get_by_text("the page you were working on before").count()  # saved: not kept
