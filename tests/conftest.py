"""Shared fixtures: every test gets its own data folder and SQLite database."""

from __future__ import annotations

import hashlib
import os
import uuid

import numpy as np
import pytest
import torch
from sqlalchemy.pool import NullPool

import db
from labeler.data.base import ImageSet


def _scan_installed_components_once() -> None:
    """Streamlit's AppTest scans every installed package's metadata for components on each new
    AppTest (0.6-0.8 s here: half the time of the UI tests); the app server scans once at start.
    The installed packages do not change during a test run, so one scan serves them all."""
    import functools

    from streamlit.components.v2 import manifest_scanner

    if not hasattr(manifest_scanner.scan_component_manifests, "cache_info"):
        manifest_scanner.scan_component_manifests = functools.cache(manifest_scanner.scan_component_manifests)


_scan_installed_components_once()


def wait_for(condition, timeout: float = 60.0, every: float = 0.2):
    """Poll `condition()` until it returns something truthy; return that, or fail after `timeout`."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private data folder per test; no test touches ./labeler-data or another's database."""
    monkeypatch.setenv("LABELER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LABELER_DB_URL", raising=False)
    monkeypatch.setattr("labeler.ui.export._last_sweep", {})  # each test's Export page sweeps afresh
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'labeler.db'}"


@pytest.fixture
def Session(db_url):
    engine = db.make_engine(db_url)
    yield db.session_factory(engine)
    engine.dispose()


def tiny_image_set(n: int = 40, classes: int = 2, test: int = 0, seed: int = 0) -> ImageSet:
    """n random 1x8x8 images: class 0 dark, class 1 bright, so a model can learn them."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % classes
    pixels = (rng.random((n, 1, 8, 8)) * 100 + truth[:, None, None, None] * 120).astype(np.uint8)
    return ImageSet(
        pixels=pixels,
        keys=[f"img/{i:03d}.png" for i in range(n)],
        sha256=[hashlib.sha256(p.tobytes() + bytes([i % 256])).hexdigest() for i, p in enumerate(pixels)],
        truth=truth.astype(np.int64),
        splits=["test" if i >= n - test else "pool" for i in range(n)],
        classes=[str(c) for c in range(classes)],
    )


@pytest.fixture
def make_image_set():
    """`tiny_image_set` for test folders whose own conftest.py shadows this module's name."""
    return tiny_image_set


@pytest.fixture
def tiny_project(Session):
    from labeler import projects

    return projects.create_project(Session, "tiny", "test", images=tiny_image_set(test=8))


# Storage backends ------------------------------------------------------------------------------
# `tests/db` and `tests/safety` override `db_url` with a parametrized fixture that runs each
# storage test on `sqlite_url` and on `pg_url` (skipped unless LABELER_TEST_PG_URL is set).


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'labeler.db'}"


@pytest.fixture
def pg_url(monkeypatch):
    """A fresh, empty PostgreSQL database for this test (dropped after it), also exported as
    LABELER_DB_URL so `db.get_engine()`, the CLI and subprocesses use it."""
    base = os.environ.get("LABELER_TEST_PG_URL")
    if not base:
        pytest.skip("no PostgreSQL server: set LABELER_TEST_PG_URL (bash .ci/run starts one)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("LABELER_DB_URL", url)
    try:
        yield url
    finally:
        db.engine._cached_engine.cache_clear()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request) -> str:
    """A fresh database URL on each backend in turn (the PostgreSQL case skips without a server)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for every browser test (Playwright's sync API allows one
    running instance per thread)."""
    from pathlib import Path

    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium).")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# With pytest-xdist (`bash .ci/run` runs `-n 2 --dist loadgroup`), the tests that drive Chromium
# run in two units, each on one worker, in the order written (a module's tests build on each
# other: test_app's on the session's app server, the others on servers of their own, none on
# another module's), so the two halves run side by side (about 270 and 330 s; in one unit they
# were the critical path of the whole run, near ten minutes). The other tests go one by one to whichever
# worker is free. A scheduler of our own does it, for every distribution mode but "each": xdist
# 3.8's own `xdist_group` marks group nothing under pytest 9.2 (xdist renames `item._nodeid`,
# which pytest no longer reads), so the browser tests ran on both workers and those needing an
# earlier test's trained run failed.
BROWSER_FILES = ("tests/browser/", "tests/safety/test_browser_crash.py")
SHARED_SERVER_FILES = (  # the session's `app_server` (test_app), and three more for balance
    "tests/browser/test_app.py",
    "tests/browser/test_grid_keys.py",
    "tests/browser/test_server_stop.py",
    "tests/safety/test_browser_crash.py",
)


def work_unit(nodeid: str) -> str:
    """The unit of work a test goes to a worker in: "browser-shared" or "browser-own" for the
    browser files, else itself."""
    if nodeid.startswith(SHARED_SERVER_FILES):
        return "browser-shared"
    return "browser-own" if nodeid.startswith(BROWSER_FILES) else nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") in ("each", "no"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BrowserTestsTogether(LoadScopeScheduling):
        # Largest unit first (xdist's default reordering): the browser tests start at once.
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return BrowserTestsTogether(config, log)


def pytest_runtest_setup(item):
    """A test that opens Chromium outside BROWSER_FILES would run beside the other tests: it
    fails, saying so (at setup, so that an xdist worker reports it like any failure)."""
    if "browser" in getattr(item, "fixturenames", ()) and not work_unit(item.nodeid).startswith("browser-"):
        pytest.fail(f"A browser test outside {BROWSER_FILES}: add its file there (tests/conftest.py).")
