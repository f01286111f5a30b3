"""Stop the app's cached worker thread after each UI test."""

import pytest


@pytest.fixture(autouse=True)
def _stop_worker(db_url):
    """A page may start the app's cached worker thread for this test's database: stop it after."""
    yield
    from labeler.ui import common

    try:
        worker = common._worker(db_url)
    except Exception:  # noqa: BLE001 - never started
        return
    worker.stop(timeout=30)
    common._worker.clear()
