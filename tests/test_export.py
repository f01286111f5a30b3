import zipfile

import pandas as pd
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
    image, target = folder[0]
    assert image.size == (8, 8)
    frame = pd.read_parquet(parquet_path)
    assert len(frame) == 6 and frame.image.iloc[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_safe_name_keeps_one_path_component():
    for hostile in ("../../etc/passwd", "..", ".", "/abs", "a\\b"):
        name = export.safe_name(hostile)
        assert "/" not in name and "\\" not in name and name not in (".", "..", "")
    assert "/" not in export.safe_name("a/b") and export.safe_name("") == "class"


def test_model_export_runs_without_labeler_code_as_torchscript_and_onnx(Session, tiny_project, tmp_path):
    import numpy as np
    import onnxruntime
    import torch

    from db.models import DONE, Run
    from labeler.models import save_checkpoint
    from labeler.train import train_model

    pool = _label_some(Session, tiny_project)
    with Session() as session:
        shape = (tiny_project.channels, tiny_project.height, tiny_project.width)
    rng = np.random.default_rng(0)
    x = rng.random((len(pool), *shape), dtype=np.float32)
    model = train_model("supervised", x, np.arange(len(pool)), np.arange(len(pool)) % 2, 2, steps=3)
    checkpoint = save_checkpoint(model, tmp_path / "run.pt")
    with Session.begin() as session:
        session.add(Run(project_id=tiny_project.id, model="supervised", status=DONE, checkpoint=str(checkpoint)))

    written = {p.name: p for p in export.write_model(Session, tiny_project.id, tmp_path / "out")}
    assert set(written) == {"model.pt", "model.torchscript.pt", "model.onnx", "classes.json"}
    images = rng.random((3, *shape), dtype=np.float32)  # another batch size than the export's example
    onnx_probs = onnxruntime.InferenceSession(str(written["model.onnx"])).run(None, {"images": images})[0]
    with torch.no_grad():
        script_probs = torch.jit.load(str(written["model.torchscript.pt"]))(torch.from_numpy(images)).numpy()
    assert onnx_probs.shape == (3, 2)
    np.testing.assert_allclose(onnx_probs, script_probs, atol=1e-5)
    np.testing.assert_allclose(onnx_probs, model.predict_proba(images), atol=1e-5)
