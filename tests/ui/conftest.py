"""Every UI test gets its own background worker on its own database, stopped afterwards."""

import pytest

from tests.ui.ui_helpers import PASSWORD


@pytest.fixture(autouse=True)
def _test_worker(monkeypatch, Session):
    """Pages reach the trainer through `common.worker()`; hand them one made for this test (only
    when a page asks for it) instead of the process-wide cached one, and stop it at the end."""
    from labeler.ui import common
    from labeler.worker import Worker

    created = []

    def worker():
        if not created:
            created.append(Worker(Session, device="cpu", poll_s=0.2).start())
        return created[0]

    monkeypatch.setattr(common, "worker", worker)
    yield created
    for w in created:
        w.stop(timeout=30)


@pytest.fixture
def accounts(Session):
    """Two accounts with PASSWORD: ada, an admin, and ann, an annotator."""
    from db import users
    from labeler import auth

    with Session.begin() as session:
        users.add_user(session, "ada", auth.hash_password(PASSWORD), "admin")
        users.add_user(session, "ann", auth.hash_password(PASSWORD), "annotator")
