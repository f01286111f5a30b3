"""The app server stopped as systemd, docker or `kill` stop it (SIGTERM) while its trainer runs."""

from __future__ import annotations

import signal

import pytest

from labeler.latency import free_port, wait_http
from tests.browser.conftest import image_set, settle, start_server
from tests.conftest import wait_for

pytestmark = pytest.mark.browser


def test_sigterm_to_the_app_server_mid_run_marks_the_run_interrupted(tmp_path, page):
    """The process aborted ("terminate called without an active exception", exit -6) with the
    run left "running", a Cancel button that did nothing, until another worker noticed."""
    import db
    from db import queries
    from db import runs as run_queries
    from db.models import INTERRUPTED, RUNNING, Run
    from labeler import projects
    from labeler.config import data_dir_set

    engine = db.make_engine(f"sqlite:///{tmp_path / 'labeler.db'}")
    Session = db.session_factory(engine)
    with data_dir_set(tmp_path):
        project = projects.create_project(Session, "tiny", "test", images=image_set())
    with Session.begin() as session:
        for item in queries.items(session, project.id)[:6]:
            queries.add_label(session, item.id, item.truth, annotator="ann")
        run_id = run_queries.request_run(session, project.id, "supervised", {"budget_s": 300}).id
    port = free_port()
    server = start_server(tmp_path, port, tmp_path / "server.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        page.goto(f"http://127.0.0.1:{port}/")  # the page starts the process' trainer
        settle(page)

        def training() -> bool:
            with Session() as session:
                return session.get(Run, run_id).status == RUNNING

        wait_for(training, timeout=120)
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with Session() as session:
        run = session.get(Run, run_id)
        assert run.status == INTERRUPTED and "start training again" in run.error
    assert code == 0, (tmp_path / "server.log").read_text()[-2000:]
    engine.dispose()
