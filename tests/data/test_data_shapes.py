"""The generated `shapes` benchmark: deterministic, balanced, varied, with a fixed test split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from labeler.data import DATASETS, DataError, read_source
from labeler.data.shapes import SHAPES_CLASSES, draw_shape, generate_shapes, load_shapes


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path):
    a = generate_shapes(tmp_path / "a", pool_per_class=3, test_per_class=2, seed=5)
    b = generate_shapes(tmp_path / "b", pool_per_class=3, test_per_class=2, seed=5)
    c = generate_shapes(tmp_path / "c", pool_per_class=3, test_per_class=2, seed=6)
    assert file_bytes(a) == file_bytes(b)
    images = lambda files: {k: v for k, v in files.items() if not k.endswith(".json")}
    assert images(file_bytes(a)) != images(file_bytes(c))


def test_classes_are_balanced_and_the_test_files_are_the_test_split(tmp_path):
    folder = generate_shapes(tmp_path / "s", pool_per_class=6, test_per_class=3)
    images = load_shapes(folder=folder)
    assert images.classes == SHAPES_CLASSES
    assert images.shape == (3, 32, 32)  # colour, the importer's colour working size
    per_split = Counter((split, int(t)) for split, t in zip(images.splits, images.truth))
    for k in range(len(SHAPES_CLASSES)):
        assert per_split[("pool", k)] == 6
        assert per_split[("test", k)] == 3
    assert all(
        (s == "test") == Path(key).name.startswith("test-") for s, key in zip(images.splits, images.keys)
    )


def test_the_files_mix_sizes_modes_and_formats():
    from io import BytesIO

    from PIL import Image

    modes, formats, sizes = set(), set(), set()
    for i in range(60):
        data, ext = draw_shape(SHAPES_CLASSES[i % 4], np.random.default_rng(i))
        with Image.open(BytesIO(data)) as img:
            modes.add(img.mode)
            formats.add(img.format)
            sizes.add(img.size)
            assert 40 <= max(img.size) <= 120 and max(img.size) <= 1.5 * min(img.size) + 1
        assert (ext == "jpg") == (img.format == "JPEG")
    assert modes == {"RGB", "RGBA", "L"}
    assert formats == {"PNG", "JPEG"}
    assert len(sizes) > 40


def test_it_is_a_builtin_source_written_on_first_use(tmp_path, monkeypatch):
    from labeler.data import shapes

    monkeypatch.setenv("LABELER_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(shapes, "SHAPES_POOL_PER_CLASS", 2)
    monkeypatch.setattr(shapes, "SHAPES_TEST_PER_CLASS", 1)
    monkeypatch.setattr(shapes, "generate_shapes", _small(shapes.generate_shapes))
    assert "shapes" in DATASETS and DATASETS["shapes"].offline()
    first = read_source("shapes")
    assert len(first.keys) == 12 and Counter(first.splits) == {"pool": 8, "test": 4}
    again = read_source("shapes")  # from the cache: the same images
    assert np.array_equal(first.pixels, again.pixels)


def _small(generate):
    return lambda folder, **kw: generate(folder, pool_per_class=2, test_per_class=1)


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "note.txt").write_text("keep")
    with pytest.raises(DataError, match="not a complete shapes data set"):
        load_shapes(folder=tmp_path / "mine")
    assert (tmp_path / "mine" / "note.txt").read_text() == "keep"


def test_two_processes_writing_the_data_set_at_once_both_get_it(tmp_path):
    """Two benchmarks started at once on a fresh machine both generate the folder: the one that
    finishes second keeps the first one's copy instead of failing on the rename."""
    folder = tmp_path / "s"
    other_done = []

    def meanwhile_another_process_finishes(done, total):
        if not other_done:
            other_done.append(generate_shapes(folder, pool_per_class=10, test_per_class=5))

    generate_shapes(folder, pool_per_class=10, test_per_class=5, progress=meanwhile_another_process_finishes)
    assert other_done
    assert len(list(folder.rglob("*-0*.*"))) == 4 * 15
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_different_data_set_written_meanwhile_is_not_taken_for_ours(tmp_path):
    folder = tmp_path / "s"

    def meanwhile_another_seed_is_written(done, total):
        if not folder.exists():
            generate_shapes(folder, pool_per_class=10, test_per_class=5, seed=1)

    with pytest.raises(OSError):
        generate_shapes(
            folder, pool_per_class=10, test_per_class=5, progress=meanwhile_another_seed_is_written
        )
