"""The real Streamlit server in a real browser: class names show as typed, and a SIGKILL of the
server while a person labels keeps every label the page acknowledged (the counter moved on).

The other crash tests use a stand-in process; this one goes through the browser, the websocket
and the label page itself. One server for the file; the kill test comes last. Deselect with
`-m "not browser"`.
"""

import os
import signal
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

import db
from db import queries
from db.models import LabelEvent, Project
from labeler import projects
from labeler.config import data_dir_set
from labeler.latency import free_port, wait_http
from tests.browser.conftest import start_server
from tests.conftest import tiny_image_set

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
NAMES = ["<script>alert(1)</script>", "**bold** _it_ `code` $x^2$ :smile:"]


@pytest.fixture(scope="module")
def app(tmp_path_factory, browser):
    data = tmp_path_factory.mktemp("app-data")
    url = f"sqlite:///{data / 'labeler.db'}"
    engine = db.make_engine(url)
    Session = db.session_factory(engine)
    with data_dir_set(data):  # create_project writes the pixels there
        project = projects.create_project(Session, "kill", "test", images=tiny_image_set(n=60, test=10))
    with Session.begin() as session:
        for index, name in enumerate(NAMES):
            queries.rename_class(session, project.id, index, name)
        stored = session.get(Project, project.id)
        stored.settings = {**stored.settings, "auto_retrain_every": 0}
    engine.dispose()

    port = free_port()
    server = start_server(data, port, data / "server.log")  # the browser suite's own launcher
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"http://127.0.0.1:{port}")
        page.get_by_text("0 labeled / 50 images").wait_for()
        yield {"page": page, "server": server, "url": url, "project_id": project.id}
        context.close()
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def test_class_names_show_as_typed_in_the_browser(app):
    page = app["page"]
    shown = [page.locator(f'button.lb-class[data-index="{i}"] span').inner_text() for i in range(len(NAMES))]
    assert shown == NAMES


def test_sigkill_of_the_app_server_keeps_every_acknowledged_label(app):
    page, server = app["page"], app["server"]
    clicked: list[int] = []
    for k in range(1, 7):
        clicked.append(k % 2)
        page.locator(f'button.lb-class[data-index="{k % 2}"]').click()
        page.get_by_text(f"{k} labeled / 50 images").wait_for()  # acknowledged on screen
    # One more answer in flight, and the server dies under it.
    clicked.append(1)
    page.locator('button.lb-class[data-index="1"]').click()
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    assert server.returncode == -signal.SIGKILL

    acked = clicked[:-1]
    check = sqlite3.connect(app["url"].split("///", 1)[1])
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    engine = db.make_engine(app["url"])  # as the restarted server opens it
    with db.session_factory(engine)() as session:
        events = list(
            session.scalars(
                select(LabelEvent).where(LabelEvent.project_id == app["project_id"]).order_by(LabelEvent.id)
            )
        )
    engine.dispose()
    assert [e.class_index for e in events][: len(acked)] == acked, "an acknowledged label was lost"
    assert len(events) in (len(acked), len(acked) + 1)
    assert len({e.item_id for e in events}) == len(events)
