"""The real app with accounts, in headless Chromium: nothing but the login form until a login,
no Export page for an annotator, and names that look like Markdown images fetch nothing.

Its own server (accounts change how every page behaves), started after the accounts exist.
"""

from __future__ import annotations

import http.server
import re
import threading

import pytest

from labeler.config import data_dir_set
from tests.browser.conftest import image_set, running_app, settle

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.browser

PASSWORD = "a long password"


class Beacon:
    """A tiny local HTTP server that counts the requests it gets, by path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        beacon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                beacon.paths.append(self.path)
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def markdown(self, what: str) -> str:
        return f"![x](http://127.0.0.1:{self.port}/{what}.png)"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def beacon():
    server = Beacon()
    yield server
    server.close()


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory, beacon):
    """A running app whose project, first class, one file and the admin account are each named
    by a Markdown image pointing at the beacon; a finished run, so every chart has data."""
    import db
    from db import queries, users
    from labeler import auth, projects
    from tests.ui.ui_helpers import fake_done_run, label_items

    data_dir = tmp_path_factory.mktemp("login-data")
    engine = db.make_engine(f"sqlite:///{data_dir / 'labeler.db'}")
    Session = db.session_factory(engine)
    images = image_set()
    images.keys[0] = beacon.markdown("file")
    with data_dir_set(data_dir):
        project = projects.create_project(Session, beacon.markdown("project"), "test", images=images)
    admin = beacon.markdown("account")
    with Session.begin() as session:
        queries.rename_class(session, project.id, 0, beacon.markdown("class"))
        stored = queries.get_project(session, beacon.markdown("project"))
        stored.settings = {**stored.settings, "auto_retrain_every": 0}
        users.add_user(session, admin, auth.hash_password(PASSWORD), "admin")
        users.add_user(session, "ann", auth.hash_password(PASSWORD), "annotator")
    label_items(Session, project.id, 6, annotator=admin)
    fake_done_run(Session, project.id)

    try:
        with running_app(data_dir) as url:
            yield {"url": url, "admin": admin}
    finally:
        engine.dispose()


def log_in(page, name: str, password: str = PASSWORD) -> None:
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def nav_links(page) -> list[str]:
    """The page titles in the sidebar navigation (each link's text starts with its icon's name)."""
    return [
        t.strip().split("\n")[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    ]


def test_every_page_asks_for_a_login_first(accounts_server, page):
    url = accounts_server["url"]
    for path in ("", "/export", "/project", "/label"):
        page.goto(f"{url}{path}")
        page.get_by_role("button", name="Log in").wait_for()
        settle(page)
        assert not page.get_by_role("heading", name=re.compile("^(Label|Export|Project)")).count()
        assert not page.locator('[data-testid="stSidebarNav"]').count()

    log_in(page, "ann", "not the password")
    page.get_by_text("Wrong name or password").wait_for()
    assert not page.locator('[data-testid="stSidebarNav"]').count()

    log_in(page, "ann")
    page.get_by_text("Logged in as ann (annotator)").wait_for()
    page.locator('[data-testid="stSidebarNav"]').wait_for()
    settle(page)
    links = nav_links(page)
    assert "Label" in links and "Project" in links and "Export" not in links
    assert not page.get_by_role("button", name="Deploy").count()  # client.toolbarMode = "viewer"

    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Log in").wait_for()
    settle(page)
    assert not page.locator('[data-testid="stSidebarNav"]').count()


def test_names_that_look_like_markdown_images_fetch_nothing(accounts_server, beacon, page):
    page.goto(accounts_server["url"])
    log_in(page, accounts_server["admin"])
    page.locator('[data-testid="stSidebarNav"]').wait_for()
    settle(page)
    assert "Export" in nav_links(page)  # an admin's navigation
    not_as_typed = []
    for title in ("Label", "Train", "Progress", "Latent space", "Export", "Project"):
        page.locator('[data-testid="stSidebarNav"] a').filter(has_text=re.compile(f"{title}$")).click()
        page.get_by_role("heading", name=re.compile(f"^{title}")).first.wait_for()
        settle(page)
        if title in ("Progress", "Latent space"):  # class and file names in the charts
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        # Shown as typed: the Markdown source is on the page as text.
        if not page.get_by_text(beacon.markdown("project")).count():
            not_as_typed.append(title)
    # The beacon works: a fetch the page makes on purpose is counted, and nothing came before it.
    page.evaluate(f"fetch('http://127.0.0.1:{beacon.port}/control').then(() => true)")
    assert beacon.paths == ["/control"]
    assert not not_as_typed, f"the project name is not shown as typed on {not_as_typed}"


def test_the_next_login_in_the_tab_opens_the_mode_its_switch_shows(accounts_server, page):
    """The mode chosen was kept through the login form's runs: the server drew the last person's
    grid while the browser's switch, drawn anew, showed One image; the grid's keys went nowhere,
    and a click on it flipped to the box (exploratory, 5 of 5 logouts)."""
    page.goto(accounts_server["url"])
    log_in(page, "ann")
    page.get_by_text("Grid", exact=True).click()
    page.locator("[class*='st-key-accept_grid-'] button").wait_for()
    settle(page)
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Log in").wait_for()
    settle(page)
    log_in(page, accounts_server["admin"])
    page.get_by_text("Logged in as").wait_for()
    settle(page)
    expect(page.get_by_role("radio", name="One image")).to_be_checked()
    assert not page.locator("[class*='st-key-accept_grid-']").count()
