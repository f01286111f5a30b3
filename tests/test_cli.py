"""The headless commands, called in-process (the same `main` that `python -m labeler` runs)."""

import json

import pandas as pd
import pytest
from PIL import Image

from labeler.cli import main


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1]), out


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("import", "export", "simulate", "worker", "backup", "benchmark"):
        assert command in text


def test_building_the_cli_loads_neither_torch_nor_scikit_learn():
    # `--help`, `import` and `projects` should not wait seconds for libraries they never use.
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys; from labeler.cli import build_parser; build_parser(); print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_import_folder_then_export_labels(tmp_path, capsys):
    for cls, shade in (("cat", 40), ("dog", 200)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (10, 10), shade + i).save(tmp_path / "src" / cls / f"{i}.png")
    (tmp_path / "src" / "cat" / "notes.txt").write_text("not an image")

    assert main(["import", f"folder:{tmp_path / 'src'}", "--project", "pets"]) == 0
    summary, lines = _last_json(capsys)
    assert summary == {"project": "pets", "items": 6, "skipped": 1, "classes": ["cat", "dog"]}
    assert any("notes.txt" in line and "not an image" in line for line in lines)

    import db
    from db import queries

    Session = db.session_factory(db.get_engine())
    with Session.begin() as session:
        project = queries.get_project(session, "pets")
        first = queries.items(session, project.id)[0]
        queries.add_label(session, first.id, 1, annotator="ann")

    assert main(["export", "--project", "pets", "--out", str(tmp_path / "out"), "--what", "labels"]) == 0
    frame = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert frame[["file", "label", "annotator"]].values.tolist() == [[first.key, "dog", "ann"]]


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["import", f"folder:{tmp_path / 'missing'}", "--project", "x"]) == 2
    err = capsys.readouterr().err
    assert "\nerror: The folder" in "\n" + err.split("\r")[-1].lstrip() and "Traceback" not in err
    assert main(["export", "--project", "nope", "--out", str(tmp_path)]) == 2
    assert "no project named 'nope'" in capsys.readouterr().err
