"""Shared fixtures: every test gets its own data folder and SQLite database."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import db
from labeler.data.base import ImageSet


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private data folder per test; no test touches ./labeler-data or another's database."""
    monkeypatch.setenv("LABELER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LABELER_DB_URL", raising=False)
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
def tiny_project(Session):
    from labeler import projects

    return projects.create_project(Session, "tiny", "test", images=tiny_image_set(test=8))
