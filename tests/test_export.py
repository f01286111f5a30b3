import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from torchvision import datasets

from db import queries
from labeler import export


def _label_some(Session, project, n=6):
    with Session.begin() as session:
        pool = queries.items(session, project.id, "pool")[:n]
        for i, item in enumerate(pool):
            queries.add_label(session, item.id, i % 2, annotator="ann")
    return pool


def test_labels_csv_has_one_row_per_labeled_image(Session, tiny_project, tmp_path):
    pool = _label_some(Session, tiny_project)
    with Session.begin() as session:
        queries.add_label(session, pool[0].id, 1, annotator="other")  # relabel: newest wins
    path = export.write_labels_csv(Session, tiny_project.id, tmp_path)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["file", "label", "annotator", "labeled_at", "source"]
    assert len(frame) == 6
    first = frame[frame.file == pool[0].key].iloc[0]
    assert (str(first.label), first.annotator) == ("1", "other")


def test_dataset_zip_is_an_imagefolder(Session, tiny_project, tmp_path):
    _label_some(Session, tiny_project)
    zip_path, parquet_path = export.write_dataset(Session, tiny_project.id, tmp_path)
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "unzipped")
    assert {"metadata.csv", "labels.csv", "HOW_TO_USE.txt"} <= set(names)
    (tmp_path / "unzipped" / "metadata.csv").unlink()
    (tmp_path / "unzipped" / "labels.csv").unlink()
    (tmp_path / "unzipped" / "HOW_TO_USE.txt").unlink()
    folder = datasets.ImageFolder(str(tmp_path / "unzipped"))
    assert folder.classes == ["0", "1"] and len(folder) == 6
    image, _ = folder[0]
    assert image.size == (8, 8)
    frame = pd.read_parquet(parquet_path)
    assert len(frame) == 6 and frame.image.iloc[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_safe_name_keeps_one_path_component():
    for hostile in ("../../etc/passwd", "..", ".", "/abs", "a\\b"):
        name = export.safe_name(hostile)
        assert "/" not in name and "\\" not in name and name not in (".", "..", "")
    assert "/" not in export.safe_name("a/b") and export.safe_name("") == "class"
    assert [export.safe_name(n) for n in ("CON", "nul.txt", "Com1", "console")] == [
        "_CON",
        "_nul.txt",
        "_Com1",
        "console",
    ]


def test_model_export_runs_without_labeler_code_as_torchscript_and_onnx(Session, tiny_project, tmp_path):
    import numpy as np
    import onnxruntime
    import torch

    from db.models import DONE, Run
    from labeler.models import save_checkpoint
    from labeler.runspec import RunSpec
    from labeler.train import train_model

    pool = _label_some(Session, tiny_project)
    with Session() as session:
        shape = (tiny_project.channels, tiny_project.height, tiny_project.width)
    rng = np.random.default_rng(0)
    x = rng.random((len(pool), *shape), dtype=np.float32)
    model = train_model(RunSpec("supervised", steps=3), x, np.arange(len(pool)), np.arange(len(pool)) % 2, 2)
    checkpoint = save_checkpoint(model, tmp_path / "run.pt")
    with Session.begin() as session:
        session.add(
            Run(project_id=tiny_project.id, model="supervised", status=DONE, checkpoint=str(checkpoint))
        )

    with Session.begin() as session:  # a class added after the model was trained: not one of its outputs
        queries.add_class(session, tiny_project.id, "bird")
        names = queries.class_names(session, tiny_project.id)
    written = {p.name: p for p in export.write_model(Session, tiny_project.id, tmp_path / "out")}
    assert set(written) == {
        "model.pt",
        "model.torchscript.pt",
        "model.onnx",
        "classes.json",
        "prepare.py",
        "HOW_TO_USE_MODEL.txt",
    }
    assert json.loads(written["classes.json"].read_text()) == names[:2] and len(names) == 3
    # The model download, unpacked alone in an empty folder: nothing may point back to the export's.
    fresh = tmp_path / "fresh"
    with zipfile.ZipFile(io.BytesIO(export.model_zip_bytes(list(written.values())))) as archive:
        archive.extractall(fresh)
    assert sorted(p.name for p in fresh.iterdir()) == sorted(written)
    images = rng.random((3, *shape), dtype=np.float32)  # another batch size than the export's example
    onnx_probs = onnxruntime.InferenceSession(str(fresh / "model.onnx")).run(None, {"images": images})[0]
    with torch.no_grad():
        script_probs = torch.jit.load(str(fresh / "model.torchscript.pt"))(torch.from_numpy(images)).numpy()
    assert onnx_probs.shape == (3, 2)
    np.testing.assert_allclose(onnx_probs, script_probs, atol=1e-5)
    np.testing.assert_allclose(onnx_probs, model.predict_proba(images), atol=1e-5)
    assert "prepare(Image.open(p)" in (fresh / "HOW_TO_USE_MODEL.txt").read_text()


def test_the_exported_prepare_py_prepares_images_as_labeler_does_without_labeler(tmp_path):
    """An exported model came with no word on how its input was made, and a plain resize changed
    24 of 60 predictions (an exploratory session): the export ships labeler's own preprocessing
    as prepare.py, which runs with NumPy and Pillow alone."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from labeler.data import prepare
    from labeler.data.images import decode_image

    (tmp_path / "prepare.py").write_text(Path(prepare.__file__).read_text())  # as write_model does
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(tmp_path / "a.png")
    jpeg = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8), "RGB")
    exif = jpeg.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotated
    jpeg.save(tmp_path / "b.jpg", exif=exif, quality=90)
    Image.fromarray(np.tile(np.linspace(0, 65535, 25).astype(np.uint16), (9, 1))).save(tmp_path / "c.png")
    script = (
        "import sys, json; sys.path.insert(0, '.'); import numpy as np; from PIL import Image;"
        "from prepare import prepare; assert 'labeler' not in sys.modules;"
        "print(json.dumps({n: prepare(Image.open(n), 16, c).tolist()"
        " for n, c in [('a.png', 3), ('b.jpg', 3), ('c.png', 1)]}))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], check=False, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for name, got in json.loads(out.stdout).items():
        expected = decode_image((tmp_path / name).read_bytes(), 16, 1 if name == "c.png" else 3)
        np.testing.assert_array_equal(np.array(got, dtype=np.uint8), expected)


def _train_and_register(Session, project, tmp_path, n_labeled: int = 6):
    import numpy as np

    from db.models import DONE, Run
    from labeler.models import save_checkpoint
    from labeler.runspec import RunSpec
    from labeler.train import train_model

    shape = (project.channels, project.height, project.width)
    x = np.random.default_rng(0).random((n_labeled, *shape), dtype=np.float32)
    model = train_model(RunSpec("supervised", steps=2), x, np.arange(n_labeled), np.arange(n_labeled) % 2, 2)
    checkpoint = save_checkpoint(model, tmp_path / "run.pt")
    with Session.begin() as session:
        session.add(Run(project_id=project.id, model="supervised", status=DONE, checkpoint=str(checkpoint)))
    return checkpoint


def test_colliding_class_names_round_trip_through_imagefolder(Session, tmp_path, make_image_set):
    from labeler import projects

    names = ["a?b", "a*b", ".", "class", "Cat", "cat"]  # the safe forms collide in pairs
    images = make_image_set(n=60, classes=6)
    images.classes = names
    project = projects.create_project(Session, "odd", "test", images=images, audit_size=0)
    given = {}
    with Session.begin() as session:
        for i, item in enumerate(queries.items(session, project.id, "pool")[:18]):
            queries.add_label(session, item.id, i % 6, annotator="ann")
            given[item.row] = names[i % 6]
    zip_path, _ = export.write_dataset(Session, project.id, tmp_path)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped"
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    for extra in ("metadata.csv", "labels.csv", "HOW_TO_USE.txt"):
        (root / extra).unlink()

    folder = datasets.ImageFolder(str(root))
    assert len(folder.classes) == 6 and len({c.casefold() for c in folder.classes}) == 6
    # The mapping HOW_TO_USE.txt shows: folder -> exact class name, from metadata.csv.
    class_of_folder = dict(zip(meta.file_name.str.split("/").str[0], meta.label))
    assert sorted(class_of_folder[f] for f in folder.classes) == sorted(names)
    for path, target in folder.samples:
        row = int(Path(path).name.split("_")[0])
        assert class_of_folder[folder.classes[target]] == given[row]
    assert len(folder) == 18


def test_class_folders_are_unique_and_safe():
    names = ["a?b", "a*b", "a_b", ".", "class", "..", "", "Cat", "cat", "CAT", "x" * 300]
    folders = export.class_folders(names)
    assert len({f.casefold() for f in folders}) == len(names)
    assert all("/" not in f and f not in (".", "..", "") and len(f) <= 90 for f in folders)
    assert folders[:3] == ["a_b", "a_b-2", "a_b-3"]


def test_a_checkpoint_from_an_older_version_is_one_sentence_to_export(
    Session, tiny_project, tmp_path, capsys
):
    import torch

    from labeler.cli import main

    _label_some(Session, tiny_project)
    checkpoint = _train_and_register(Session, tiny_project, tmp_path)
    export.export_all(Session, tiny_project.id, tmp_path / "all", what="all")  # with the model, still fine
    assert (tmp_path / "all" / "model.pt").exists()
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["a_setting_since_removed"] = 1
    torch.save(state, checkpoint)

    with pytest.raises(export.ExportError, match=r"cannot be exported .*train it again, then export\.$"):
        export.export_all(Session, tiny_project.id, tmp_path / "model", what="model")
    notes = []
    (tmp_path / "all" / "mine.txt").write_text("the user's")
    written = export.export_all(Session, tiny_project.id, tmp_path / "all", what="all", notes=notes)
    assert {p.name for p in written} >= {"labels.csv", "dataset.zip"} and len(notes) == 1
    left = {p.name for p in (tmp_path / "all").iterdir()}
    assert not left & set(export.MODEL_FILES) and "mine.txt" in left  # no stale model beside the note
    (tmp_path / "users").mkdir()  # a folder of the user's own, with a model.pt no export wrote
    (tmp_path / "users" / "model.pt").write_text("the user's")
    with pytest.raises(export.ExportError, match=r"already has model\.pt, which no export listed"):
        export.export_all(Session, tiny_project.id, tmp_path / "users", what="all", notes=[])
    assert (tmp_path / "users" / "model.pt").read_text() == "the user's"

    capsys.readouterr()
    assert main(["export", "--project", "tiny", "--out", str(tmp_path / "cli"), "--what", "model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: The newest model (run"), err
    assert main(["export", "--project", "tiny", "--out", str(tmp_path / "cli-all")]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().startswith("note: The newest model") and "Traceback" not in captured.err
    assert (tmp_path / "cli-all" / "dataset.zip").exists()


def test_model_zip_holds_only_model_files(tmp_path):
    paths = []
    for name in ("model.pt", "model.onnx", "classes.json", "labels.csv"):
        (tmp_path / name).write_text(name)
        paths.append(tmp_path / name)
    with zipfile.ZipFile(io.BytesIO(export.model_zip_bytes(paths))) as archive:
        assert sorted(archive.namelist()) == ["classes.json", "model.onnx", "model.pt"]
    assert export.model_zip_bytes([tmp_path / "labels.csv"]) is None


def test_export_page_offers_the_data_and_says_why_the_model_is_left_out(Session, tiny_project, tmp_path):
    import torch
    from streamlit.testing.v1 import AppTest

    _label_some(Session, tiny_project)
    checkpoint = _train_and_register(Session, tiny_project, tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["a_setting_since_removed"] = 1
    torch.save(state, checkpoint)

    at = AppTest.from_string("from labeler.ui.export import export_page\nexport_page()", default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.run()
    at.button(key="export_prepare").click().run()
    assert not at.exception and not at.error
    (warning,) = at.warning
    assert "cannot be exported" in warning.value and "train it again" in warning.value
    names = {Path(p).name for p in at.session_state["export_files"]["paths"]}
    assert {"dataset.zip", "labels.csv"} <= names and not names & set(export.MODEL_FILES)


def test_dataset_is_written_a_chunk_at_a_time_with_progress(Session, tiny_project, tmp_path, monkeypatch):
    _label_some(Session, tiny_project, n=7)
    monkeypatch.setattr(export, "CHUNK", 3)  # bounded memory: one chunk of image bytes at a time
    seen = []
    zip_path, parquet_path = export.write_dataset(
        Session, tiny_project.id, tmp_path, progress=lambda done, total: seen.append((done, total))
    )
    import pyarrow.parquet as pq

    assert seen == [(3, 7), (6, 7), (7, 7)]
    parquet = pq.ParquetFile(parquet_path)
    assert parquet.num_row_groups == 3 and parquet.metadata.num_rows == 7
    frame = parquet.read().to_pandas()
    with zipfile.ZipFile(zip_path) as archive:
        assert (
            frame.file_name.tolist()
            == pd.read_csv(io.BytesIO(archive.read("metadata.csv"))).file_name.tolist()
        )
        assert all(archive.read(name) == data for name, data in zip(frame.file_name, frame.image))


def test_export_of_nothing_labeled_writes_empty_files(Session, tiny_project, tmp_path):
    zip_path, parquet_path = export.write_dataset(Session, tiny_project.id, tmp_path)
    assert len(pd.read_parquet(parquet_path)) == 0 and zipfile.ZipFile(zip_path).namelist()


def _finished_run(Session, project, tmp_path, name: str, predicted: int) -> int:
    """A DONE run with its own checkpoint and a prediction (`predicted`) for every image."""
    import numpy as np

    from db import runs as run_queries
    from db.models import DONE, Run, utcnow

    checkpoint = _train_and_register(Session, project, tmp_path / name)
    with Session.begin() as session:
        run = session.query(Run).filter_by(checkpoint=str(checkpoint)).one()
        run.finished_at, run.labels_used, run.test_accuracy = utcnow(), 6, 0.5 + predicted / 10
        ids = [item.id for item in queries.items(session, project.id)]
        n = len(ids)
        columns = {name: np.zeros(n) for name in run_queries.PREDICTION_COLUMNS}
        columns.update(item_id=np.array(ids), predicted=np.full(n, predicted))
        run_queries.store_predictions(session, run.id, columns)
        assert run.status == DONE
        return run.id


def test_an_older_finished_run_can_be_exported_instead_of_the_newest(Session, tiny_project, tmp_path):
    """A newer run is not always the better one (trained for seconds, or after an undone bulk
    label): the export took the newest, always."""
    from db import runs as run_queries

    _label_some(Session, tiny_project)
    older = _finished_run(Session, tiny_project, tmp_path, "a", predicted=1)
    newer = _finished_run(Session, tiny_project, tmp_path, "b", predicted=0)
    out = tmp_path / "out"
    export.export_all(Session, tiny_project.id, out, run_id=older)
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["run_id"]) == {older} and set(predictions["predicted_index"]) == {1}
    assert (out / "model.pt").read_bytes() == (tmp_path / "a" / "run.pt").read_bytes()
    export.export_all(Session, tiny_project.id, out)  # the newest by default
    assert set(pd.read_csv(out / "predictions.csv")["run_id"]) == {newer}
    with pytest.raises(export.ExportError, match="is not a finished run of this project"):
        export.export_all(Session, tiny_project.id, out, run_id=newer + 100)
    with Session.begin() as session:
        run_queries.prune_predictions(session, tiny_project.id, keep=1)
    with pytest.raises(export.ExportError, match=f"predictions of run {older} are no longer kept"):
        export.export_all(Session, tiny_project.id, out, what="predictions", run_id=older)


def test_the_export_page_does_not_say_it_holds_a_model_it_left_out(Session, tiny_project, tmp_path):
    """A checkpoint that does not load: the caption said "the files hold ... the model of run N"
    above the note that run N's model cannot be exported (exploratory)."""
    from streamlit.testing.v1 import AppTest

    _label_some(Session, tiny_project)
    run = _finished_run(Session, tiny_project, tmp_path, "a", predicted=1)
    checkpoint = tmp_path / "a" / "run.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])  # cut short
    at = AppTest.from_string("from labeler.ui.export import export_page\nexport_page()", default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.run()
    at.button(key="export_prepare").click().run()
    assert not at.exception
    assert "cannot be exported" in at.warning[0].value
    assert f"run {run}" not in at.caption[0].value and "the labels of that moment." in at.caption[0].value
    assert "download-model" not in [b.key for b in at.get("download_button")]


def test_the_export_page_exports_the_run_chosen(Session, tiny_project, tmp_path):
    from streamlit.testing.v1 import AppTest

    from db import runs as run_queries

    _label_some(Session, tiny_project)
    older = _finished_run(Session, tiny_project, tmp_path, "a", predicted=1)
    newer = _finished_run(Session, tiny_project, tmp_path, "b", predicted=0)
    at = AppTest.from_string("from labeler.ui.export import export_page\nexport_page()", default_timeout=60)
    at.session_state["project_id"] = tiny_project.id
    at.session_state["annotator"] = "tester"
    at.run()
    chooser = at.selectbox(key=f"export_run-{tiny_project.id}")
    assert chooser.options == [
        f"run {newer}: supervised, 6 labels, 50.0% (test) (the newest)",
        f"run {older}: supervised, 6 labels, 60.0% (test)",
    ]
    chooser.set_value(older).run()
    at.button(key="export_prepare").click().run()
    assert not at.exception and not at.error
    prepared = at.session_state["export_files"]
    assert prepared["run"] == older and f"the model of run {older}" in at.caption[0].value
    path = next(p for p in prepared["paths"] if p.endswith("predictions.csv"))
    assert set(pd.read_csv(path)["run_id"]) == {older}
    # Runs finishing before the next click push run `older` out of the newest five (the worker
    # deletes its predictions): the choice on the page went back to the newest, and that one was
    # exported while the page showed `older`. Now the export of `older` says why it cannot be.
    for n in range(4):
        _finished_run(Session, tiny_project, tmp_path, f"later{n}", predicted=0)
    with Session.begin() as session:
        run_queries.prune_predictions(session, tiny_project.id)
    at.button(key="export_prepare").click().run()
    assert not at.exception
    assert f"predictions of run {older} are no longer kept" in at.error[0].value
    assert at.session_state["export_files"]["run"] == older  # the export before it, unchanged


def test_an_export_never_writes_over_a_file_it_did_not_write(Session, tiny_project, tmp_path, capsys):
    """`export --out` into a folder with a labels.csv of the user's replaced it without a word
    (an exploratory session); asked for the model of a project with no finished run, it wrote
    nothing and exited 0, silently."""
    from labeler.cli import main

    _label_some(Session, tiny_project)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "labels.csv").write_text("my own precious file")
    assert main(["export", "--project", "tiny", "--out", str(out), "--what", "labels"]) == 2
    assert "already has labels.csv, which no export listed" in capsys.readouterr().err
    assert (out / "labels.csv").read_text() == "my own precious file"
    export.export_all(Session, tiny_project.id, tmp_path / "again", what="labels")
    export.export_all(Session, tiny_project.id, tmp_path / "again", what="labels")  # its own: written again
    assert main(["export", "--project", "tiny", "--out", str(tmp_path / "m"), "--what", "model"]) == 2
    assert "No finished run yet" in capsys.readouterr().err
    notes = []
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "model.pt").write_text("the user's")  # nothing would write over it: no run
    export.export_all(Session, tiny_project.id, tmp_path / "all", what="all", notes=notes)
    assert notes == ["No finished run yet, so no model or predictions were exported; train one first."]
    assert (tmp_path / "all" / "model.pt").read_text() == "the user's"


def test_an_export_stopped_halfway_is_replaced_by_the_next(Session, tiny_project, tmp_path, monkeypatch):
    """The list of an export's files was written at the end only: an export stopped halfway (a
    full disk, Ctrl-C) left labels.csv unlisted, and every retry refused it as a file of the
    user's (review)."""
    _label_some(Session, tiny_project)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(export, "write_dataset", full_disk)
        with pytest.raises(OSError):
            export.export_all(Session, tiny_project.id, tmp_path / "out", what="all")
    assert (tmp_path / "out" / "labels.csv").exists()
    written = export.export_all(Session, tiny_project.id, tmp_path / "out", what="all")
    assert {p.name for p in written} >= {"labels.csv", "dataset.zip"}


def test_the_export_says_what_it_writes_after_the_data_set(Session, tiny_project, tmp_path):
    """The bar stayed at "N of N images" for seconds while the predictions and the model were
    written (an exploratory session): `stage` names each; without a run there is neither."""
    from tests.ui.ui_helpers import fake_done_run

    _label_some(Session, tiny_project)
    stages: list[str] = []
    export.export_all(Session, tiny_project.id, tmp_path / "none", notes=[], stage=stages.append)
    assert stages == []
    fake_done_run(Session, tiny_project.id)
    export.export_all(Session, tiny_project.id, tmp_path / "run", notes=[], stage=stages.append)
    assert stages == ["the predictions", "the model (checkpoint, TorchScript and ONNX)"]


def _project_with_originals(Session, tmp_path, make_image_set, suffix: str = ".png"):
    """A project whose 8x8 images were imported from 16x16 originals (so a data set made from
    the stored pixels tells itself apart), six of them labeled."""
    from PIL import Image

    from labeler import projects

    images = make_image_set(n=20, test=4)
    source = tmp_path / "source"
    images.keys = [str(Path(key).with_suffix(suffix)) for key in images.keys]
    for row, (key, array) in enumerate(zip(images.keys, images.pixels)):
        path = source / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array[0]).resize((16, 16)).save(path)
        images.files[row] = str(path)
    project = projects.create_project(Session, "originals", "test", images=images, audit_size=0)
    _label_some(Session, project)
    return project


def _zip_image_sizes(zip_path):
    from PIL import Image

    with zipfile.ZipFile(zip_path) as archive:
        return {
            name: Image.open(io.BytesIO(archive.read(name))).size
            for name in archive.namelist()
            if "/" in name
        }


def test_an_export_after_the_data_folder_moved_has_the_originals_and_the_model(
    Session, tmp_path, make_image_set, monkeypatch
):
    import shutil

    import numpy as np

    from db.models import DONE, Run
    from labeler import projects
    from labeler.config import data_dir
    from labeler.models import save_checkpoint
    from labeler.runspec import RunSpec
    from labeler.train import train_model

    project = _project_with_originals(Session, tmp_path, make_image_set)
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    model = train_model(RunSpec("supervised", steps=2), x, np.arange(6), np.arange(6) % 2, 2)
    runs = data_dir() / "projects" / str(project.id) / "runs"
    runs.mkdir(parents=True)
    checkpoint = save_checkpoint(model, runs / "1.pt")
    with Session.begin() as session:
        session.add(Run(project_id=project.id, model="supervised", status=DONE, checkpoint=str(checkpoint)))
    # The data folder moved (a restore elsewhere, a volume mounted at another path): the paths
    # stored name the old place. The database stays open where it was (same contents).
    moved = tmp_path / "moved"
    shutil.copytree(data_dir(), moved)
    shutil.rmtree(data_dir() / "projects")
    monkeypatch.setenv("LABELER_DATA_DIR", str(moved))
    assert np.array_equal(projects.pixels(project.id)[0], make_image_set(n=20, test=4).pixels[0])

    notes: list[str] = []
    written = {p.name for p in export.export_all(Session, project.id, tmp_path / "out", notes=notes)}
    assert notes == []
    sizes = _zip_image_sizes(tmp_path / "out" / "dataset.zip")
    assert len(sizes) == 6 and set(sizes.values()) == {(16, 16)}  # the originals, not the pixels
    assert {"model.pt", "model.onnx"} <= written
    assert (tmp_path / "out" / "model.pt").read_bytes() == (
        moved / checkpoint.relative_to(tmp_path / "data")
    ).read_bytes()


def test_an_export_says_which_originals_and_which_checkpoint_it_could_not_find(
    Session, tmp_path, make_image_set
):
    import shutil

    from labeler.config import data_dir

    project = _project_with_originals(Session, tmp_path, make_image_set)
    _train_and_register(Session, project, tmp_path)
    files = data_dir() / "projects" / str(project.id) / "files"
    shutil.rmtree(files)
    (tmp_path / "run.pt").unlink()

    notes: list[str] = []
    written = {p.name for p in export.export_all(Session, project.id, tmp_path / "out", notes=notes)}
    sizes = _zip_image_sizes(tmp_path / "out" / "dataset.zip")
    assert len(sizes) == 6 and set(sizes.values()) == {(8, 8)}  # the stored pixels, as said:
    originals, model = notes
    assert originals.startswith(f"6 of the 6 labeled images' original files were not found (e.g. {files}/")
    assert "cannot be exported because its checkpoint file is missing" in model
    assert str(tmp_path / "run.pt") in model and not written & set(export.MODEL_FILES)
    with pytest.raises(export.ExportError, match="checkpoint file is missing"):
        export.export_all(Session, project.id, tmp_path / "model-only", what="model")


def test_gif_originals_go_into_the_imagefolder_zip_as_png(Session, tmp_path, make_image_set):
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(export.IMAGE_FOLDER_EXTENSIONS) == set(IMG_EXTENSIONS)
    project = _project_with_originals(Session, tmp_path, make_image_set, suffix=".gif")
    zip_path, parquet_path = export.write_dataset(Session, project.id, tmp_path)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unzipped")
        meta = pd.read_csv(io.BytesIO(archive.read("metadata.csv")))
    for extra in ("metadata.csv", "labels.csv", "HOW_TO_USE.txt"):
        (tmp_path / "unzipped" / extra).unlink()
    folder = datasets.ImageFolder(str(tmp_path / "unzipped"))
    assert len(folder) == 6 and folder[0][0].size == (16, 16)
    assert all(name.endswith(".png") for name in meta.file_name)
    assert pd.read_parquet(parquet_path).image.iloc[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_a_gif_original_damaged_since_the_import_goes_in_as_its_pixels_with_a_note(
    Session, tmp_path, make_image_set
):
    from labeler.config import data_dir

    project = _project_with_originals(Session, tmp_path, make_image_set, suffix=".gif")
    files = sorted((data_dir() / "projects" / str(project.id) / "files").rglob("*.gif"))
    for file in files:
        file.write_bytes(b"GIF89a" + bytes(10))  # truncated
    notes: list[str] = []
    export.export_all(Session, project.id, tmp_path / "out", what="dataset", notes=notes)
    sizes = _zip_image_sizes(tmp_path / "out" / "dataset.zip")
    assert len(sizes) == 6 and set(sizes.values()) == {(8, 8)}
    assert notes and notes[0].startswith("6 of the 6 labeled images' original files were not found")
