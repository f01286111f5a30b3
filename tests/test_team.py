"""Team setups: an app server can be told not to train (LABELER_WORKER=off), so only the
workers on GPU machines take the queued runs."""

from __future__ import annotations

import pytest

from labeler.config import SettingError, app_worker
from labeler.ui import common


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("on", True), (" OFF ", False)])
def test_labeler_worker_says_whether_the_app_trains(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("LABELER_WORKER", raising=False)
    else:
        monkeypatch.setenv("LABELER_WORKER", value)
    assert app_worker() is expected


def test_a_wrong_labeler_worker_is_one_sentence(monkeypatch):
    monkeypatch.setenv("LABELER_WORKER", "gpu")
    with pytest.raises(SettingError, match="LABELER_WORKER must be on or off"):
        app_worker()


def test_an_app_server_with_the_worker_off_never_starts_one(monkeypatch):
    def start(_url):
        raise AssertionError("the app started a trainer")

    monkeypatch.setattr(common, "_worker", start)
    monkeypatch.setenv("LABELER_WORKER", "off")
    common.worker().wake()  # what the pages call after queueing a run
    monkeypatch.setenv("LABELER_WORKER", "on")
    with pytest.raises(AssertionError, match="started a trainer"):
        common.worker()
