"""Every UI test gets its own background worker on its own database, stopped afterwards."""

import pytest


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
