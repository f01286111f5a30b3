"""Export a project in forms other tools read.

- `labels.csv`: one row per labeled image (file, label, annotator, labeled_at, source).
- `dataset.zip`: ImageFolder layout (one folder per class, readable by
  `torchvision.datasets.ImageFolder`), with `metadata.csv` (file_name, label), `labels.csv`
  and `HOW_TO_USE.txt`.
- `dataset.parquet`: the same rows with the image as PNG bytes.
- `predictions.csv`: the newest model's prediction for every image.
- `model.pt` (checkpoint + config, loads with `weights_only=True`), `model.torchscript.pt` and
  `model.onnx` (each classifies a (B, C, H, W) float tensor in [0, 1] into class probabilities
  with no labeler code: PyTorch alone, or any ONNX runtime) + `classes.json`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from pathlib import Path

import pandas as pd
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Item, LabelEvent, Prediction, Project, Run

from . import projects

log = logging.getLogger(__name__)

HOW_TO_USE = """\
This zip was exported by labeler.

Images are in ImageFolder layout: one folder per class.

    from torchvision import datasets
    data = datasets.ImageFolder("path/to/unzipped/folder")

metadata.csv lists file_name,label for every image (the Hugging Face `imagefolder` layout);
labels.csv adds who labeled each image and when.

If the export included a model:

    import json, torch
    model = torch.jit.load("model.torchscript.pt")
    classes = json.load(open("classes.json"))
    probabilities = model(images)  # images: float tensor (B, {c}, {h}, {w}) in [0, 1]
    print([classes[i] for i in probabilities.argmax(1)])

The same classifier as ONNX (input "images", output "probabilities", any batch size):

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    probabilities = session.run(None, {{"images": images}})[0]  # images: float32 numpy array
"""


def safe_name(name: str) -> str:
    """A class name as a safe single path component (the label itself stays exact in the CSVs)."""
    cleaned = re.sub(r"[^\w\-. ]+", "_", name, flags=re.UNICODE).strip(" .")
    return cleaned or "class"


def labels_frame(session: Session, project_id: int) -> pd.DataFrame:
    """One row per currently labeled image, with who labeled it and when."""
    names = queries.class_names(session, project_id)
    current = queries.current_labels(session, project_id)
    if not current:
        return pd.DataFrame(columns=["file", "label", "label_index", "annotator", "labeled_at", "source", "split", "row"])
    newest = {}
    events = session.scalars(
        select(LabelEvent)
        .where(LabelEvent.project_id == project_id, LabelEvent.undone.is_(False))
        .order_by(LabelEvent.id)
    )
    for event in events:
        newest[event.item_id] = event
    items = {item.id: item for item in session.scalars(select(Item).where(Item.id.in_(list(current))))}
    rows = []
    for item_id in sorted(current, key=lambda i: items[i].row):
        event, item = newest[item_id], items[item_id]
        rows.append(
            {
                "file": item.key,
                "label": names[event.class_index],
                "label_index": event.class_index,
                "annotator": event.annotator,
                "labeled_at": event.created_at.isoformat(timespec="seconds"),
                "source": event.kind,
                "split": item.split,
                "row": item.row,
            }
        )
    return pd.DataFrame(rows)


def _image_bytes(project_id: int, item_row: int, path: str | None) -> tuple[bytes, str]:
    """The original file where one was imported, else a PNG made from the stored pixels."""
    if path and Path(path).exists():
        return Path(path).read_bytes(), Path(path).suffix.lower() or ".png"
    buffer = io.BytesIO()
    Image.fromarray(projects.image(project_id, item_row)).save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def write_labels_csv(Session: sessionmaker[Session], project_id: int, out: Path) -> Path:
    with Session() as session:
        frame = labels_frame(session, project_id)
    path = Path(out) / "labels.csv"
    frame[["file", "label", "annotator", "labeled_at", "source"]].to_csv(path, index=False)
    return path


def write_dataset(Session: sessionmaker[Session], project_id: int, out: Path) -> list[Path]:
    """The ImageFolder zip and the Parquet file."""
    with Session() as session:
        frame = labels_frame(session, project_id)
        project = session.get(Project, project_id)
        paths = {i.row: i.path for i in queries.items(session, project_id)}
    out = Path(out)
    zip_path, parquet_path = out / "dataset.zip", out / "dataset.parquet"
    file_names, images = [], []
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for record in frame.itertuples():
            data, suffix = _image_bytes(project_id, record.row, paths.get(record.row))
            stem = safe_name(Path(record.file).stem)[:80]
            name = f"{safe_name(record.label)}/{record.row:06d}_{stem}{suffix}"
            archive.writestr(name, data)
            file_names.append(name)
            images.append(data)
        meta = pd.DataFrame({"file_name": file_names, "label": frame["label"].tolist()})
        archive.writestr("metadata.csv", meta.to_csv(index=False))
        labels = frame[["file", "label", "annotator", "labeled_at", "source"]]
        archive.writestr("labels.csv", labels.to_csv(index=False))
        c, h, w = project.shape
        archive.writestr("HOW_TO_USE.txt", HOW_TO_USE.format(c=c, h=h, w=w))
    table = frame.drop(columns=["row"]).assign(file_name=file_names, image=images)
    table.to_parquet(parquet_path, index=False)
    return [zip_path, parquet_path]


def write_predictions(Session: sessionmaker[Session], project_id: int, out: Path) -> Path | None:
    with Session() as session:
        run_id = queries.latest_done_run_id(session, project_id)
        if run_id is None:
            return None
        names = queries.class_names(session, project_id)
        rows = session.execute(
            select(Item.key, Item.split, Prediction.predicted, Prediction.confidence, Prediction.entropy)
            .join(Prediction, Prediction.item_id == Item.id)
            .where(Prediction.run_id == run_id)
            .order_by(Item.row)
        ).all()
    frame = pd.DataFrame(rows, columns=["file", "split", "predicted_index", "confidence", "entropy"])
    frame.insert(2, "predicted", [names[i] if i < len(names) else "" for i in frame["predicted_index"]])
    frame = frame.assign(run_id=run_id)
    path = Path(out) / "predictions.csv"
    frame.to_csv(path, index=False)
    return path


def write_model(Session: sessionmaker[Session], project_id: int, out: Path) -> list[Path]:
    """The newest finished run's checkpoint, its classifier as TorchScript and as ONNX, and the
    class names."""
    import torch

    from .models import load_checkpoint

    with Session() as session:
        run_id = queries.latest_done_run_id(session, project_id)
        run = session.get(Run, run_id) if run_id is not None else None
        names = queries.class_names(session, project_id)
    if run is None or not run.checkpoint or not Path(run.checkpoint).exists():
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(run.checkpoint, device="cpu")
    checkpoint = out / "model.pt"
    checkpoint.write_bytes(Path(run.checkpoint).read_bytes())
    module = model.classifier_module().eval().cpu()
    example = torch.zeros((1, *model.input_shape))
    with torch.no_grad():
        try:
            scripted = torch.jit.script(module)
        except Exception:  # noqa: BLE001 - fall back to tracing for modules script cannot parse
            scripted = torch.jit.trace(module, example)
    scripted_path = out / "model.torchscript.pt"
    scripted.save(str(scripted_path))
    written = [checkpoint, scripted_path]
    try:
        written.append(write_onnx(module, model.input_shape, out / "model.onnx"))
    except Exception:  # noqa: BLE001 - the checkpoint and TorchScript still serve; say why in the log
        log.warning("The ONNX export of run %s failed; the other model files are written.", run_id, exc_info=True)
    classes = out / "classes.json"
    classes.write_text(json.dumps(names, ensure_ascii=False, indent=1))
    return [*written, classes]


def write_onnx(module, input_shape: tuple[int, ...], path: Path) -> Path:
    """`module` ((B, C, H, W) -> (B, K) probabilities) as an ONNX graph with a dynamic batch
    size: input "images", output "probabilities". torch.onnx's progress lines are kept quiet."""
    import contextlib
    import warnings

    import torch

    example = torch.zeros((2, *input_shape))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["images"], output_names=["probabilities"],
        )
    return path


def export_all(
    Session: sessionmaker[Session], project_id: int, out: str | Path, what: str = "all"
) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if what in ("all", "labels"):
        written.append(write_labels_csv(Session, project_id, out))
    if what in ("all", "dataset"):
        written += write_dataset(Session, project_id, out)
    if what in ("all", "predictions"):
        path = write_predictions(Session, project_id, out)
        written += [path] if path else []
    if what in ("all", "model"):
        written += write_model(Session, project_id, out)
    return written


def zip_bytes(paths: list[Path]) -> bytes:
    """Bundle exported files into one zip for a browser download."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in paths:
            archive.write(path, arcname=Path(path).name)
    return buffer.getvalue()

