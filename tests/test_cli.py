"""The headless commands, called in-process (the same `main` that `python -m labeler` runs)."""

import json
import os
import sys

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
    for cls, shade in (("cat", 40), ("Étoile dog", 200)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (10, 10), shade + i).save(tmp_path / "src" / cls / f"{i}.png")
    (tmp_path / "src" / "cat" / "notes.txt").write_text("not an image")

    assert main(["import", f"folder:{tmp_path / 'src'}", "--project", "pets"]) == 0
    summary, lines = _last_json(capsys)
    assert summary == {
        "project": "pets",
        "items": 6,
        "skipped": 1,
        "classes": ["cat", "Étoile dog"],
        "audit": 1,
    }
    assert any("notes.txt" in line and "not an image" in line for line in lines)
    assert any('"Étoile dog"' in line for line in lines)  # as typed: it printed "\u00c9toile"
    assert not any("audit set has" in line for line in lines)  # the default: capped without a note

    import db
    from db import queries
    from db.models import IGNORED

    Session = db.session_factory(db.get_engine())
    with Session.begin() as session:
        project = queries.get_project(session, "pets")
        first = queries.items(session, project.id)[0]
        queries.add_label(session, first.id, 1, annotator="ann")
        queries.add_label(session, queries.items(session, project.id)[1].id, IGNORED, annotator="ann")
    capsys.readouterr()
    assert main(["projects"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("\t1/6 labeled, 1 ignored")  # was 2/6

    assert main(["export", "--project", "pets", "--out", str(tmp_path / "out"), "--what", "labels"]) == 0
    frame = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert frame[["file", "label", "annotator"]].values.tolist() == [[first.key, "Étoile dog", "ann"]]
    # --run names a finished run of the project; anything else is one line, nothing written.
    for what in ("predictions", "labels"):  # with labels only it was passed over without a word
        out = ["export", "--project", "pets", "--out", str(tmp_path / "out2"), "--what", what]
        assert main([*out, "--run", "7"]) == 2
        assert "Run 7 is not a finished run of this project" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    # An --out that cannot be written is blamed, not the data folder (it said to set LABELER_DATA_DIR).
    (tmp_path / "a-file").write_text("not a folder")
    assert (
        main(["export", "--project", "pets", "--out", str(tmp_path / "a-file" / "x"), "--what", "labels"])
        == 2
    )
    line = _one_error_line(capsys)
    assert f"Cannot write {tmp_path / 'a-file' / 'x'}" in line and "LABELER_DATA_DIR" not in line, line
    # An audit size asked for and capped says so, as the app does (it was silent on the CLI).
    assert main(["import", f"folder:{tmp_path / 'src'}", "--project", "pets2", "--audit-size", "5"]) == 0
    summary, lines = _last_json(capsys)
    assert summary["audit"] == 1
    assert "The audit set has 1 image, not 5: it is at most a fifth of the images" in " ".join(lines)
    # Class folders that differ only in case: two classes, and the import says so (exploratory).
    (tmp_path / "src" / "CAT").mkdir()
    Image.new("L", (10, 10), 99).save(tmp_path / "src" / "CAT" / "0.png")
    assert main(["import", f"folder:{tmp_path / 'src'}", "--project", "pets3"]) == 0
    summary, lines = _last_json(capsys)
    assert summary["classes"] == ["CAT", "cat", "Étoile dog"]
    assert "The classes 'CAT' and 'cat' differ only in case, so they are two classes" in " ".join(lines)


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["import", f"folder:{tmp_path / 'missing'}", "--project", "x"]) == 2
    err = capsys.readouterr().err
    assert "\nerror: The folder" in "\n" + err.split("\r")[-1].lstrip() and "Traceback" not in err
    assert main(["export", "--project", "nope", "--out", str(tmp_path)]) == 2
    assert "no project named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["import", "folder:", "--project", "x"], "folder: needs a path after it, as in folder:/data/pets."),
        (["import", "zip: ", "--project", "x"], "zip: needs a path after it, as in zip:/data/pets.zip."),
        (["export", "--project", "x", "--out", ""], "--out is empty; give it a folder"),
        (["backup", "--out", " "], "--out is empty; give it a file name"),
    ],
)
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(args, says, tmp_path, monkeypatch, capsys):
    """`import folder:` read the current folder and `export --out ''` wrote into it (exploratory)."""
    (tmp_path / "cwd" / "a").mkdir(parents=True)
    Image.new("L", (10, 10), 9).save(tmp_path / "cwd" / "a" / "0.png")
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {says}" in err and "Traceback" not in err  # after the import's progress bar
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["a"]


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "hidden=abc"], "The setting hidden of m2 must be a list of 0 to 32 layer sizes"),
        (["--config", "latent_dim=-3"], "The setting latent_dim of m2 must be between 0 and 1024, got -3."),
        (
            ["--config", "labeled_batch=-1"],
            "The setting labeled_batch of m2 must be between 1 and 4096, got -1.",
        ),
    ],
)
def test_bad_model_settings_are_one_line(capsys, argv, expected):
    assert main(["simulate", "--dataset", "digits", "--model", "m2", "--steps", "1", *argv]) == 2
    assert expected in _one_error_line(capsys)


def test_worker_threads_are_range_checked(capsys):
    assert main(["worker", "--threads", "-3", "--once"]) == 2
    assert "--threads must be between 1 and 1024, got -3" in _one_error_line(capsys)
    for poll in ("-1", "0"):  # accepted, 0 a busy loop on the database (an exploratory session)
        assert main(["worker", "--poll-s", poll, "--once"]) == 2
        assert f"--poll-s must be between 0.1 and 3600 seconds, got {poll}." in _one_error_line(capsys)


def test_benchmark_threads_are_range_checked(capsys):
    assert main(["benchmark", "--threads", "-3"]) == 2
    assert "--threads must be between 1 and 1024, got -3" in _one_error_line(capsys)


def test_an_empty_data_dir_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELER_DATA_DIR", "")
    assert main(["projects"]) == 2
    assert "LABELER_DATA_DIR is set but empty" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == [], "nothing may be created in the current folder"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url at all", "LABELER_DB_URL is not a database URL this installation can open"),
        ("nosuchdb://user@host/db", "LABELER_DB_URL is not a database URL this installation can open"),
        # Port 9 on this machine: nothing listens, so the connection is refused at once.
        ("postgresql+psycopg://nobody@127.0.0.1:9/nothing", "Cannot use the database in LABELER_DB_URL"),
    ],
)
def test_a_wrong_or_unreachable_database_url_is_one_line(monkeypatch, capsys, url, expected):
    import db

    db.engine._cached_engine.cache_clear()
    monkeypatch.setenv("LABELER_DB_URL", url)
    assert main(["projects"]) == 2
    assert expected in _one_error_line(capsys)
    db.engine._cached_engine.cache_clear()


def test_a_data_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    import db

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for data_dir, expected in (
        (blocker / "data", "Cannot write"),
        (tmp_path / "db-is-a-folder", "Cannot use the database"),
    ):
        if "db-is-a-folder" in str(data_dir):
            (data_dir / "labeler.db").mkdir(parents=True)  # SQLite cannot open it
        db.engine._cached_engine.cache_clear()
        monkeypatch.setenv("LABELER_DATA_DIR", str(data_dir))
        assert main(["users", "list"]) == 2  # a command that makes the database (`projects` refuses to)
        line = _one_error_line(capsys)
        assert expected in line and "LABELER_DATA_DIR" in line, line
    db.engine._cached_engine.cache_clear()


def test_training_threads_default_by_cores_and_are_checked(monkeypatch):
    import os

    import pytest

    from labeler import config
    from labeler.config import SettingError, train_threads

    monkeypatch.delenv("LABELER_TRAIN_THREADS", raising=False)
    # The cores this process may use (a container's limit), not the host's count.
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert config.available_cores() == 2 and train_threads() == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    assert config.available_cores() == 64
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert config.available_cores() == 1
    # Every core on one or two (one thread alone trains about 0.6 of two's steps), all but one above.
    for cores, threads in [(1, 1), (2, 2), (3, 2), (4, 3), (16, 15)]:
        monkeypatch.setattr(config, "available_cores", lambda cores=cores: cores)
        assert train_threads() == threads
    monkeypatch.setenv("LABELER_TRAIN_THREADS", "3")
    assert train_threads() == 3
    monkeypatch.setenv("LABELER_TRAIN_THREADS", "0")
    with pytest.raises(SettingError, match="between 1 and 1024"):
        train_threads()


@pytest.mark.parametrize(
    "command",
    [
        ["simulate", "--dataset", "digits", "--model", "m2"],
        ["worker", "--once"],
        ["benchmark", "--mode", "models"],
        ["bigbench", "--dataset", "digits"],
    ],
)
def test_a_device_this_machine_lacks_is_one_line_and_exit_2(command, capsys, monkeypatch):
    """--device tpu (or cuda without CUDA) ended in a 25-line torch traceback, and a worker started
    on it waited for runs that could only fail; now argparse says what is allowed."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, says in (
        ("tpu", "use cpu, cuda or cuda:N"),
        ("cuda", "CUDA is not available on this machine"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main([*command, "--device", device])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --device: {'' if device == 'cuda' else repr(device) + ' '}" in err and says in err
        assert "Traceback" not in err


def test_device_arg_takes_the_devices_this_machine_has(monkeypatch):
    import argparse

    import torch

    from labeler.config import device_arg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [device_arg(d) for d in ("cpu", "CUDA", "cuda:1")] == ["cpu", "cuda", "cuda:1"]
    with pytest.raises(argparse.ArgumentTypeError, match="this machine has 2 GPU"):
        device_arg("cuda:2")
    with pytest.raises(argparse.ArgumentTypeError, match="is not a device"):
        device_arg("cuda:-1")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--datasets", "nosuch"], "Unknown data source 'nosuch'"),
        (["--datasets", "digits,folder:/no/such/folder"], "Unknown data source 'folder:/no/such/folder'"),
        (["--mode", "strategies", "--datasets", "nosuch"], "Unknown data source 'nosuch'"),
        (["--datasets", "digits", "--seeds", "0"], "--seeds must be between 1 and 1000"),
        # Each run refused these, and the table said "failed" for every run, exit 0; 0 became
        # the default (exploratory session).
        (["--datasets", "digits", "--models", "m2", "--config", "lr=abc"], "lr"),
        (["--datasets", "digits", "--budget-s", "0"], "between 1 and 86400"),
        (["--datasets", "digits", "--budget-s", "-5"], "between 1 and 86400"),
        (["--datasets", "digits", "--labels", "0"], "--labels must be between 1 and"),
        (["--mode", "strategies", "--datasets", "digits", "--budget-s", "0"], "between 1 and 86400"),
        (["--mode", "report", "--inputs", "{tmp}/other.csv"], "other.csv is not a benchmark-models.csv"),
    ],
)
def test_benchmark_refuses_impossible_inputs_before_running_anything(args, says, tmp_path, capsys):
    """An unknown data set failed once per run (36 lines for 12 models and 3 seeds) and zero seeds
    wrote an empty table, both with exit 0."""
    (tmp_path / "other.csv").write_text("name,score\nx,1\n")  # a CSV of something else
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert main(["benchmark", "--budget-s", "1", "--out-dir", str(tmp_path / "out"), *args]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _refusal_on(data_dir, monkeypatch, capsys) -> str:
    """The one line `labeler projects` prints when it refuses the data folder `data_dir`."""
    import db

    monkeypatch.setenv("LABELER_DATA_DIR", str(data_dir))
    db.engine._cached_engine.cache_clear()
    try:
        assert main(["projects"]) == 2
    finally:
        db.engine._cached_engine.cache_clear()
    return _one_error_line(capsys)


def test_an_emptied_database_beside_project_files_is_refused_and_nothing_changes(
    tmp_path, monkeypatch, capsys
):
    """A 0-byte labeler.db (a crash, a bad copy) was made afresh: a new project 1 wrote its images
    over the old project's files. The refusal says to restore a backup; no file changes."""
    files = tmp_path / "data" / "projects" / "1"
    files.mkdir(parents=True)
    (files / "pixels.npy").write_bytes(b"the old project's images")
    (tmp_path / "data" / "labeler.db").write_bytes(b"")
    line = _refusal_on(tmp_path / "data", monkeypatch, capsys)
    assert "is empty, but" in line and "restore it from a backup" in line, line
    assert (files / "pixels.npy").read_bytes() == b"the old project's images"
    assert (tmp_path / "data" / "labeler.db").stat().st_size == 0


def test_a_damaged_database_file_says_to_restore_a_backup(tmp_path, monkeypatch, capsys):
    """It said to make the folder writable, which does not help a damaged file."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labeler.db").write_bytes(b"not a database at all, " * 400)
    line = _refusal_on(tmp_path / "data", monkeypatch, capsys)
    assert "is damaged" in line and "restore it from a backup" in line and "writable" not in line, line


def test_projects_counts_the_images_a_person_can_label(tmp_path, capsys):
    """`projects` counted a built-in set's test split, which is never shown ("45/1797 labeled"
    where the Label page said "/ 1347 images"; an exploratory session)."""
    import db
    from labeler import config, projects
    from tests.conftest import tiny_image_set

    Session = db.session_factory(db.get_engine())
    with config.data_dir_set(config.data_dir()):
        projects.create_project(Session, "split", "test", images=tiny_image_set(n=40, test=8))
    capsys.readouterr()
    assert main(["projects"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("split\t"))
    assert line.endswith("\t0/32 labeled"), line


def test_reading_commands_on_a_data_folder_with_no_database_say_so(tmp_path, monkeypatch, capsys):
    """`projects` and `export` on a mistyped LABELER_DATA_DIR made an empty database there without
    a word, then found no project (an exploratory session); they refuse and make nothing."""
    import db

    missing = tmp_path / "mistyped"
    monkeypatch.setenv("LABELER_DATA_DIR", str(missing))
    db.engine._cached_engine.cache_clear()
    try:
        for argv in (["projects"], ["export", "--project", "x", "--out", str(tmp_path / "out")]):
            assert main(argv) == 2
            assert f"There is no labeler database at {missing / 'labeler.db'}" in _one_error_line(capsys)
        assert not missing.exists()
        monkeypatch.setenv("LABELER_DB_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
        db.engine._cached_engine.cache_clear()
        assert main(["projects"]) == 2
        assert "elsewhere.db; check LABELER_DB_URL" in _one_error_line(capsys)  # the setting used
    finally:
        db.engine._cached_engine.cache_clear()


def test_a_write_error_blames_the_data_folder_only_for_paths_of_it(tmp_path, monkeypatch):
    """An --out path outside the data folder is named as the problem; the data folder, or a folder
    it lies in that could not be made, still points at LABELER_DATA_DIR (review)."""
    from labeler.config import user_error

    monkeypatch.setenv("LABELER_DATA_DIR", str(tmp_path / "lab" / "data"))
    for path, blamed in (
        (tmp_path / "lab", True),
        (tmp_path / "lab" / "data" / "x.db", True),
        (tmp_path / "out", False),
    ):
        message = user_error(PermissionError(13, "Permission denied", str(path)))
        assert ("LABELER_DATA_DIR" in message) is blamed, message


def test_a_command_stopped_by_sigterm_ends_with_143_and_by_ctrl_c_with_130(monkeypatch, capsys):
    """The worker stopped by SIGTERM ended with 130, Ctrl-C's status (exploratory session)."""
    from labeler import cli
    from labeler.config import Terminated

    for stop, status, said in ((Terminated(), 143, "terminated"), (KeyboardInterrupt(), 130, "interrupted")):

        def stopped(args, stop=stop):
            raise stop

        monkeypatch.setattr(cli, "cmd_projects", stopped)
        assert main(["projects"]) == status
        assert capsys.readouterr().err.strip() == said


def test_a_reader_that_leaves_early_ends_the_command_without_an_error(monkeypatch, capsys):
    """`labeler projects | head -1` said "error: Cannot use (Broken pipe); check the path"."""
    from labeler import cli

    def piped(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_projects", piped)
    # Standard output healthy: another pipe broke (a subprocess's), a fault with its traceback
    # (review: every broken pipe was swallowed).
    with pytest.raises(BrokenPipeError):
        main(["projects"])

    read, write = os.pipe()  # standard output a pipe whose reader left
    os.close(read)
    monkeypatch.setattr(sys, "stdout", os.fdopen(write, "w"))
    assert main(["projects"]) == 1
    assert capsys.readouterr().err == ""


def test_an_out_that_cannot_be_written_is_named_not_a_hidden_file_of_ours(tmp_path, monkeypatch, capsys):
    """A read-only --out folder was reported as its `.labeler-export.json`, and a backup's as the
    copy's temporary `.b.db.qm3nghkt.tmp` (exploratory session, a read-only mount)."""
    import tempfile
    from pathlib import Path

    from labeler import export

    assert main(["import", "digits", "--project", "d"]) == 0
    capsys.readouterr()
    write_text = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.name == export.MANIFEST:
            raise PermissionError(30, "Read-only file system", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    out = tmp_path / "mounted"
    assert main(["export", "--project", "d", "--out", str(out), "--what", "labels"]) == 2
    line = _one_error_line(capsys)
    assert f" {out} (Read-only file system)" in line and export.MANIFEST not in line, line

    def no_temp(*args, **kwargs):
        raise PermissionError(30, "Read-only file system", str(tmp_path / ".b.db.qm3nghkt.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    assert main(["backup", "--out", str(tmp_path / "b.db")]) == 2
    line = _one_error_line(capsys)
    assert f" {tmp_path / 'b.db'} (Read-only file system)" in line and ".tmp" not in line, line
