"""`python -m labeler import zip:...` with a hostile zip, end to end: the good images are
imported, every bad entry is refused or skipped with a reason, and nothing is written outside
the data folder. (The importer's own tests cover each check in detail.)"""

import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ["../escaped.png", "absolute-escape.png", "cat/../../escaped2.png", "link.png"]


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _hostile_zip(path: Path, outside: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(6):
            archive.writestr(f"cat/{i}.png", _png(10 + i))
            archive.writestr(f"dog/{i}.png", _png(200 - i))
        archive.writestr("../escaped.png", _png(1))
        archive.writestr(f"{outside}/absolute-escape.png", _png(2))
        archive.writestr("cat/../../escaped2.png", _png(3))
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3  # unix, so the mode bits below mean a symlink
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, str(outside / "target.png"))


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_hostile_zip_import_writes_nothing_outside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    work = tmp_path / "work" / "deep"
    outside = tmp_path / "outside"
    for folder in (work, outside):
        folder.mkdir(parents=True)
    (outside / "target.png").write_bytes(_png(99))
    archive = tmp_path / "hostile.zip"
    _hostile_zip(archive, outside)
    before = _files(tmp_path)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "labeler",
            "import",
            f"zip:{archive}",
            "--project",
            "hostile",
            "--audit-size",
            "0",
        ],
        cwd=work,
        env=dict(os.environ, PYTHONPATH=str(ROOT), LABELER_DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    new_outside = {p for p in _files(tmp_path) - before if not p.is_relative_to(data)}
    assert new_outside == set(), f"written outside the data folder: {new_outside}"
    assert not [p for p in tmp_path.rglob("*escape*") if not p.is_relative_to(data)]

    if result.returncode == 0:
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["items"] == 12 and sorted(summary["classes"]) == ["cat", "dog"]
        assert summary["skipped"] == len(HOSTILE)
        skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped ")]
        for name in HOSTILE:
            line = next(line for line in skipped if name in line)
            assert line.rsplit(": ", 1)[1].strip(), f"no reason given for {name}"
    else:
        # Refusing the whole zip is fine too, with one clear line saying why.
        assert result.returncode == 2 and result.stderr.strip().startswith("error: "), result.stderr
