"""SIGKILL of the real Streamlit server while a person labels in a real browser: every label the
page acknowledged (the counter moved on) is in the database afterwards.

The other crash tests use a stand-in process; this one goes through the browser, the websocket
and the label page itself. Deselect with `-m "not browser"`.
"""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

import db
from db.models import LabelEvent
from labeler import projects

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


def test_sigkill_of_the_app_server_keeps_every_acknowledged_label(sqlite_url, make_image_set, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium).")
    engine = db.make_engine(sqlite_url)
    Session = db.session_factory(engine)
    project = projects.create_project(Session, "kill", "test", images=make_image_set(n=60, test=10))
    with Session.begin() as session:
        stored = session.get(type(project), project.id)
        stored.settings = {**stored.settings, "auto_retrain_every": 0}
    engine.dispose()

    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LABELER_DB_URL", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    clicked: list[int] = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_text("0 labeled / 50 images").wait_for()
            for k in range(1, 7):
                clicked.append(k % 2)
                page.locator(f".st-key-class-{k % 2} button").click()
                page.get_by_text(f"{k} labeled / 50 images").wait_for()  # acknowledged on screen
            # One more answer in flight, and the server dies under it.
            clicked.append(1)
            page.locator(".st-key-class-1 button").click()
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
            browser.close()
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
    assert server.returncode == -signal.SIGKILL

    acked = clicked[:-1]
    check = sqlite3.connect(sqlite_url.split("///", 1)[1])
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    engine = db.make_engine(sqlite_url)  # as the restarted server opens it
    with db.session_factory(engine)() as session:
        events = list(session.scalars(select(LabelEvent).where(LabelEvent.project_id == project.id)
                                      .order_by(LabelEvent.id)))
        assert [e.class_index for e in events][: len(acked)] == acked, "an acknowledged label was lost"
        assert len(events) in (len(acked), len(acked) + 1)
        assert len({e.item_id for e in events}) == len(events)
    engine.dispose()
