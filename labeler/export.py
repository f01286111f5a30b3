"""Export a project in forms other tools read.

- `labels.csv`: one row per labeled image (file, label, annotator, labeled_at, source).
- `dataset.zip`: ImageFolder layout (one folder per class, readable by
  `torchvision.datasets.ImageFolder`), with `metadata.csv` (file_name, label), `labels.csv`
  and `HOW_TO_USE.txt`. Folder names are the class names made safe as one path component and
  unique per class, also where the safe forms collide (`a?b` and `a*b`, `.` and `class`) or
  differ only in case; `metadata.csv` gives the exact class name of every file.
- `dataset.parquet`: the same rows with the image as PNG bytes.
- `predictions.csv`: the newest model's (or a chosen finished run's) prediction for every image.
- `model.pt` (checkpoint + config, loads with `weights_only=True`), `model.torchscript.pt` and
  `model.onnx` (one self-contained file; each classifies a (B, C, H, W) float tensor in [0, 1]
  into class probabilities with no labeler code: PyTorch alone, or any ONNX runtime) +
  `classes.json` (the name of each of the model's outputs, in order: classes added after it
  trained are not among them) + `prepare.py` (labeler.data.prepare itself: how an image file
  becomes the model's input, NumPy and Pillow only) and `HOW_TO_USE_MODEL.txt`.

One snapshot: an export reads everything it needs in one transaction (`read_snapshot`) before
it writes a file, so labels given or undone meanwhile are wholly in or wholly out, and
labels.csv, the zip and the Parquet file agree with each other.

Streaming: images go into the zip and the Parquet file a chunk at a time (`CHUNK` rows per
Parquet row group), so memory does not grow with the number of labeled images, and a
`progress(done, total)` callback follows along.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import unicodedata
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import consistent_read
from db.models import DONE, Item, LabelClass, LabelEvent, Prediction, Project, Run
from db.runs import KEPT_PREDICTIONS

from . import projects
from .config import data_dir

log = logging.getLogger(__name__)

HOW_TO_USE = """\
This zip was exported by labeler.

Images are in ImageFolder layout: one folder per class.

    from torchvision import datasets
    data = datasets.ImageFolder("path/to/unzipped/folder")

metadata.csv lists file_name,label for every image (the Hugging Face `imagefolder` layout):
the label is the exact class name, the first part of file_name its folder. Folder names are
unique per class, but made safe for any file system, so they can differ from the class names:

    import pandas as pd
    meta = pd.read_csv("metadata.csv", keep_default_na=False)
    class_of_folder = dict(zip(meta.file_name.str.split("/").str[0], meta.label))
    names = [class_of_folder[folder] for folder in data.classes]

labels.csv adds who labeled each image and when.

If the export included a model:

    import json, torch
    model = torch.jit.load("model.torchscript.pt")
    classes = json.load(open("classes.json"))
    probabilities = model(images)  # images: float tensor (B, {c}, {h}, {w}) in [0, 1]
    print([classes[i] for i in probabilities.argmax(1)])

Images of your own must be prepared as labeler prepared these: see HOW_TO_USE_MODEL.txt and
prepare.py in the model download (the images in this zip are the original files).

The same classifier as ONNX (one self-contained file; input "images", output
"probabilities", any batch size):

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    probabilities = session.run(None, {{"images": images}})[0]  # images: float32 numpy array
"""


HOW_TO_USE_MODEL = """\
This model was exported by labeler. It classifies images of {c} channel(s), {h}x{w} pixels,
float values in [0, 1], into the classes of classes.json (in order).

Prepare each image exactly as labeler did when it trained, with prepare.py (NumPy and Pillow
only): it letterboxes the image into a square (the longer side resized, the rest filled with
the border's median colour), applies EXIF orientation and puts transparent pixels on white.
A plain resize instead gives other predictions for many images.

    import json
    import numpy as np
    import torch
    from PIL import Image
    from prepare import prepare  # the prepare.py beside this file

    paths = ["a.jpg", "b.png"]
    x = np.stack([prepare(Image.open(p), size={h}, channels={c}) for p in paths])
    images = torch.from_numpy(x).float() / 255  # (B, {c}, {h}, {w}) in [0, 1]
    model = torch.jit.load("model.torchscript.pt")
    classes = json.load(open("classes.json"))
    probabilities = model(images)
    print([classes[i] for i in probabilities.argmax(1)])

The same classifier as ONNX (input "images", output "probabilities", any batch size):

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    probabilities = session.run(None, {{"images": images.numpy()}})[0]

model.pt is labeler's own checkpoint (settings and weights; `torch.load(..., weights_only=True)`).
"""


LABEL_COLUMNS = ["file", "label", "label_index", "annotator", "labeled_at", "source", "split", "row"]
CSV_COLUMNS = ["file", "label", "annotator", "labeled_at", "source"]
PREDICTION_COLUMNS = ["file", "split", "predicted_index", "confidence", "entropy"]
# What the model download holds; model.onnx.data only appears if an ONNX export ever keeps
# its weights beside the graph (write_onnx asks for one file).
MODEL_FILES = (
    "model.pt",
    "model.torchscript.pt",
    "model.onnx",
    "model.onnx.data",
    "classes.json",
    "prepare.py",
    "HOW_TO_USE_MODEL.txt",
)
PARTS = ("labels", "dataset", "predictions", "model")
# What each part may write: an export removes an earlier export's (listed in MANIFEST) first.
MANIFEST = ".labeler-export.json"
PART_FILES = {
    "labels": ("labels.csv",),
    "dataset": ("dataset.zip", "dataset.parquet"),
    "predictions": ("predictions.csv",),
    "model": MODEL_FILES,
}
CHUNK = 2000  # images per Parquet row group: bounded memory however many are labeled

Progress = Callable[[int, int], None]


class ExportError(ValueError):
    """Something cannot be exported; the message says why and what to do, in one sentence."""


# Names Windows will not create as files or folders, with any extension.
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def safe_name(name: str) -> str:
    """A class name as a safe single path component (the label itself stays exact in the CSVs)."""
    cleaned = re.sub(r"[^\w\-. ]+", "_", name, flags=re.UNICODE).strip(" .")
    if cleaned.split(".")[0].upper() in _RESERVED:
        cleaned = f"_{cleaned}"
    return cleaned or "class"


def class_folders(names: list[str]) -> list[str]:
    """One folder name per class, in class order: `safe_name` (at most 80 characters), with
    -2, -3, ... added where it would equal an earlier class's folder. Equal means equal after
    Unicode normalisation and ignoring case, as macOS and Windows file systems compare names,
    so no two classes ever share a folder once unzipped."""
    taken: set[str] = set()
    folders = []
    for name in names:
        base = safe_name(name)[:80]
        folder, n = base, 1
        while _fold(folder) in taken:
            n += 1
            folder = f"{base}-{n}"
        taken.add(_fold(folder))
        folders.append(folder)
    return folders


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


@dataclass
class Snapshot:
    """What an export reads from the database, all from one transaction."""

    project_id: int
    shape: tuple[int, int, int]
    names: list[str]
    labels: pd.DataFrame  # LABEL_COLUMNS + path, one row per labeled image, by row
    run_id: int | None = None  # the newest finished run, or the one chosen
    newest: bool = True  # run_id is the newest finished run
    checkpoint: str | None = None
    predictions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS))


def read_snapshot(
    Session: sessionmaker[Session], project_id: int, parts=PARTS, run_id: int | None = None
) -> Snapshot:
    """Read what the export `parts` need in one transaction (see `consistent_read`): the model
    and predictions of finished run `run_id` of this project (None: the newest)."""
    with consistent_read(Session) as session:
        project = session.get(Project, project_id)
        if project is None:
            raise ExportError(f"Project {project_id} does not exist any more; choose another project.")
        snapshot = Snapshot(
            project_id=project_id,
            shape=project.shape,
            names=queries.class_names(session, project_id),
            labels=labels_frame(session, project_id, with_path=True)
            if {"labels", "dataset"} & set(parts)
            else pd.DataFrame(columns=LABEL_COLUMNS),
        )
        if run_id is not None:  # checked whatever is exported: a wrong one was passed over with labels only
            _check_run(session, project_id, run_id)
        if {"predictions", "model"} & set(parts):
            newest = queries.latest_done_run_id(session, project_id)
            snapshot.run_id = newest if run_id is None else run_id
            snapshot.newest = snapshot.run_id == newest
        if snapshot.run_id is not None and "model" in parts:
            snapshot.checkpoint = session.get(Run, snapshot.run_id).checkpoint
        if snapshot.run_id is not None and "predictions" in parts:
            rows = session.execute(
                select(Item.key, Item.split, Prediction.predicted, Prediction.confidence, Prediction.entropy)
                .join(Prediction, Prediction.item_id == Item.id)
                .where(Prediction.run_id == snapshot.run_id)
                .order_by(Item.row)
            ).all()
            snapshot.predictions = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
            if not rows and not snapshot.newest:
                raise ExportError(
                    f"The predictions of run {snapshot.run_id} are no longer kept (the newest "
                    f"{KEPT_PREDICTIONS} finished runs keep theirs); choose a newer run."
                )
    return snapshot


def _check_run(session: Session, project_id: int, run_id: int) -> int:
    """`run_id`, checked to be a finished run of this project."""
    run = session.get(Run, run_id)
    if run is None or run.project_id != project_id or run.status != DONE:
        raise ExportError(
            f"Run {run_id} is not a finished run of this project; the Train page lists its runs."
        )
    return run_id


def model_name(snapshot: Snapshot) -> str:
    """How notes name the exported model."""
    return (
        f"The newest model (run {snapshot.run_id})"
        if snapshot.newest
        else f"The model of run {snapshot.run_id}"
    )


def labels_frame(session: Session, project_id: int, with_path: bool = False) -> pd.DataFrame:
    """One row per currently labeled image, with who labeled it and when (LABEL_COLUMNS, and
    the stored file's `path` when `with_path`). One statement, so one snapshot even outside
    `consistent_read`: an undo or a new label cannot land between two reads."""
    newest = queries._current_event_ids(project_id)
    rows = session.execute(
        select(
            Item.key,
            LabelClass.name,
            LabelEvent.class_index,
            LabelEvent.annotator,
            LabelEvent.created_at,
            LabelEvent.kind,
            Item.split,
            Item.row,
            Item.path,
        )
        .select_from(LabelEvent)
        .join(newest, LabelEvent.id == newest.c.event_id)
        .join(Item, Item.id == LabelEvent.item_id)
        # An inner join: answers outside the classes (an "ignore") are in no class folder.
        .join(
            LabelClass,
            and_(LabelClass.project_id == LabelEvent.project_id, LabelClass.index == LabelEvent.class_index),
        )
        .order_by(Item.row)
    ).all()
    frame = pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "path"])
    frame["labeled_at"] = [t.isoformat(timespec="seconds") for t in frame["labeled_at"]]
    return frame if with_path else frame.drop(columns=["path"])


# The extensions torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS,
# checked in the tests). An original of another kind the app imports (GIF) goes into the data
# set as PNG: ImageFolder skipped it without a word, and refused a class of GIFs only.
IMAGE_FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_bytes(project_id: int, item_row: int, path: str | None) -> tuple[bytes, str, bool]:
    """The original file where one was imported (re-encoded as PNG where ImageFolder does not
    read its kind), else a PNG made from the stored pixels; and whether an original named by
    `path` was not found (so the PNG is of the working size)."""
    local = projects.local_file(path)
    if local is not None:
        suffix = local.suffix.lower() or ".png"
        if suffix in IMAGE_FOLDER_EXTENSIONS:
            return local.read_bytes(), suffix, False
        buffer = io.BytesIO()
        try:
            with Image.open(local) as original:  # a GIF: its first frame, as the import read it
                original.seek(0)
                original.save(buffer, format="PNG")
            return buffer.getvalue(), ".png", False
        except (OSError, ValueError, EOFError):  # damaged since the import: as if missing
            local = None
    buffer = io.BytesIO()
    Image.fromarray(projects.image(project_id, item_row)).save(buffer, format="PNG")
    return buffer.getvalue(), ".png", bool(path)


def write_labels_csv(
    Session: sessionmaker[Session], project_id: int, out: Path, snapshot: Snapshot | None = None
) -> Path:
    snapshot = snapshot or read_snapshot(Session, project_id, ("labels",))
    path = Path(out) / "labels.csv"
    snapshot.labels[CSV_COLUMNS].to_csv(path, index=False)
    return path


def write_dataset(
    Session: sessionmaker[Session],
    project_id: int,
    out: Path,
    snapshot: Snapshot | None = None,
    progress: Progress | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """The ImageFolder zip and the Parquet file, written side by side a chunk at a time; a
    sentence in `notes` when originals imported were not found (their stored pixels go in)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    snapshot = snapshot or read_snapshot(Session, project_id, ("dataset",))
    frame = snapshot.labels
    folders = class_folders(snapshot.names)
    out = Path(out)
    zip_path, parquet_path = out / "dataset.zip", out / "dataset.parquet"
    columns = frame.drop(columns=["row", "path"])
    file_names: list[str] = []  # names only: the image bytes of one chunk at a time are held
    missing: list[str] = []  # the originals not found
    writer = None
    try:
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for start in range(0, max(len(frame), 1), CHUNK):
                chunk = frame.iloc[start : start + CHUNK]
                names, images = [], []
                for record in chunk.itertuples():
                    data, suffix, lost = _image_bytes(project_id, record.row, record.path)
                    if lost:
                        missing.append(record.path)
                    stem = safe_name(Path(record.file).stem)[:80]
                    name = f"{folders[record.label_index]}/{record.row:06d}_{stem}{suffix}"
                    archive.writestr(name, data)
                    names.append(name)
                    images.append(data)
                rows = columns.iloc[start : start + CHUNK].assign(file_name=names, image=images)
                table = pa.Table.from_pandas(rows, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(parquet_path, table.schema)
                writer.write_table(table.cast(writer.schema))
                file_names += names
                if progress is not None:
                    progress(min(start + CHUNK, len(frame)), len(frame))
            meta = pd.DataFrame({"file_name": file_names, "label": frame["label"].tolist()})
            archive.writestr("metadata.csv", meta.to_csv(index=False))
            archive.writestr("labels.csv", frame[CSV_COLUMNS].to_csv(index=False))
            c, h, w = snapshot.shape
            archive.writestr("HOW_TO_USE.txt", HOW_TO_USE.format(c=c, h=h, w=w))
    finally:
        if writer is not None:
            writer.close()
    if missing and notes is not None:
        key = projects.storage_key(missing[0])  # where it is looked for now (the data folder moved)
        example = data_dir() / key if key else missing[0]
        notes.append(
            f"{len(missing)} of the {len(frame)} labeled images' original "
            f"{'file was' if len(missing) == 1 else 'files were'} not found (e.g. {example}); "
            "the data set has their stored pixels instead, at the project's working size. "
            "Restore the data folder's projects/ files to export the originals."
        )
    return [zip_path, parquet_path]


def write_predictions(
    Session: sessionmaker[Session], project_id: int, out: Path, snapshot: Snapshot | None = None
) -> Path | None:
    snapshot = snapshot or read_snapshot(Session, project_id, ("predictions",))
    if snapshot.run_id is None:
        return None
    names = snapshot.names
    frame = snapshot.predictions.copy()
    frame.insert(2, "predicted", [names[i] if 0 <= i < len(names) else "" for i in frame["predicted_index"]])
    frame = frame.assign(run_id=snapshot.run_id)
    path = Path(out) / "predictions.csv"
    frame.to_csv(path, index=False)
    return path


def write_model(
    Session: sessionmaker[Session], project_id: int, out: Path, snapshot: Snapshot | None = None
) -> list[Path]:
    """The snapshot's run's checkpoint (the newest finished run's by default), its classifier as
    TorchScript and as ONNX, and the class names. Raises ExportError when the checkpoint does not load (e.g. from an older
    version whose settings this one no longer knows)."""
    import torch

    from .models import CheckpointError
    from .train import load_model

    snapshot = snapshot or read_snapshot(Session, project_id, ("model",))
    if snapshot.run_id is None:
        return []
    local = projects.local_file(snapshot.checkpoint)
    if local is None:  # it wrote nothing and said nothing
        raise ExportError(
            f"{model_name(snapshot)} cannot be exported because its checkpoint file is missing "
            f"({snapshot.checkpoint or 'none was recorded'}); restore the data folder's projects/ "
            "files, or train it again, then export."
        )
    try:
        model = load_model(local, device="cpu")
    except CheckpointError as error:
        raise ExportError(
            f"{model_name(snapshot)} cannot be exported because its checkpoint does not load "
            f"({str(error).rstrip('.')}); train it again, then export."
        ) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.pt"
    checkpoint.write_bytes(local.read_bytes())
    module = model.classifier_module().eval().cpu()
    example = torch.zeros((1, *model.input_shape))
    with torch.no_grad(), warnings.catch_warnings():
        # PyTorch 2.14 deprecates TorchScript in a FutureWarning at every export, in the server
        # log; the file is still what other tools load (HOW_TO_USE_MODEL.txt), beside ONNX.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        try:
            scripted = torch.jit.script(module)
        except Exception:  # noqa: BLE001 - fall back to tracing for modules script cannot parse
            scripted = torch.jit.trace(module, example)
    scripted_path = out / "model.torchscript.pt"
    scripted.save(str(scripted_path))
    written = [checkpoint, scripted_path]
    try:
        written.append(write_onnx(module, model.input_shape, out / "model.onnx"))
        weights = out / "model.onnx.data"
        written += [weights] if weights.exists() else []
    except Exception:  # the checkpoint and TorchScript still serve; the log says why
        log.warning(
            "The ONNX export of run %s failed; the other model files are written.",
            snapshot.run_id,
            exc_info=True,
        )
    classes = out / "classes.json"
    # The model's outputs, under today's names: a class added since it trained is not one of them
    # (class indices only grow, so its K outputs are the first K classes).
    names = snapshot.names[: model.num_classes]
    classes.write_text(json.dumps(names, ensure_ascii=False, indent=1))
    # The preprocessing the model was trained with, as code outside labeler needs it.
    from .data import prepare

    prepare_py = out / "prepare.py"
    prepare_py.write_text(Path(prepare.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    how_to = out / "HOW_TO_USE_MODEL.txt"
    c, h, w = model.input_shape
    how_to.write_text(HOW_TO_USE_MODEL.format(c=c, h=h, w=w), encoding="utf-8")
    return [*written, classes, prepare_py, how_to]


def write_onnx(module, input_shape: tuple[int, ...], path: Path) -> Path:
    """`module` ((B, C, H, W) -> (B, K) probabilities) as an ONNX graph with a dynamic batch
    size: input "images", output "probabilities". torch.onnx's progress lines are kept quiet."""
    import torch

    example = torch.zeros((2, *input_shape))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["images"],
            output_names=["probabilities"],
            # One file: with the weights in a model.onnx.data beside it, a copy of model.onnx
            # alone does not load.
            external_data=False,
        )
    return path


def export_all(
    Session: sessionmaker[Session],
    project_id: int,
    out: str | Path,
    what: str = "all",
    notes: list[str] | None = None,
    progress: Progress | None = None,
    run_id: int | None = None,
    stage: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write `what` ("all" or one of PARTS) into folder `out`, all from one snapshot; the files
    those parts write (PART_FILES) that an earlier export left there (MANIFEST, which lists what
    each export wrote) are removed from `out` first; other files are left alone.

    With "all", a model that cannot be exported does not stop the rest: the reason is added
    to `notes` (when given; else ExportError is raised after the other files are written).
    progress: called as progress(done, total) with the images written to the data set.
    run_id: the finished run whose model and predictions are exported (None: the newest).
    stage: called with what is written next after the data set ("the predictions", "the model"):
    they took seconds with the bar at "N of N images" (an exploratory session).
    """
    parts = PARTS if what == "all" else (what,)
    if not set(parts) <= set(PARTS):
        raise ExportError(f"Nothing called {what!r} can be exported; choose all, {', '.join(PARTS)}.")
    snapshot = read_snapshot(Session, project_id, parts, run_id=run_id)
    no_run = "No finished run yet, so no model or predictions were exported; train one first."
    if snapshot.run_id is None and {"model", "predictions"} & set(parts):
        if what != "all":  # asked for nothing but them: it wrote nothing and said nothing
            raise ExportError(no_run)
        if notes is not None:
            notes.append(no_run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # An earlier export's files of these parts (a model this one leaves out) must not pass as this
    # one's; only files an export wrote (its manifest) are removed, never a file of the user's,
    # and none is written over: a labels.csv of the user's was replaced without a word.
    earlier = _manifest(out)
    ours = {name for part in parts for name in PART_FILES[part]}
    # Only the parts this export can write: without a finished run no model or predictions (a
    # model.pt of the user's does not stop the labels then).
    writing = {part for part in parts if snapshot.run_id is not None or part not in ("model", "predictions")}
    theirs = sorted(
        name for part in writing for name in PART_FILES[part] if name not in earlier and (out / name).exists()
    )
    if theirs:
        raise ExportError(
            f"{out} already has {', '.join(theirs)}, which no export listed in {MANIFEST} there "
            "(so it may be a file of yours); choose another folder, or move those files away."
        )
    for name in earlier & ours:
        (out / name).unlink(missing_ok=True)
    # Listed before any is written: an export stopped halfway (Ctrl-C, a full disk) leaves files
    # the next one knows as an export's, and replaces (the list was written at the end only, and
    # the retry refused them as the user's).
    coming = {name for part in writing for name in PART_FILES[part]}
    try:
        (out / MANIFEST).write_text(json.dumps(sorted(earlier | coming), indent=1))
    except OSError as error:  # the folder is named: the message named our hidden list file
        raise OSError(error.errno, error.strerror, str(out)) from None
    written: list[Path] = []
    if "labels" in parts:
        written.append(write_labels_csv(Session, project_id, out, snapshot))
    if "dataset" in parts:
        written += write_dataset(Session, project_id, out, snapshot, progress=progress, notes=notes)
    if "predictions" in parts and snapshot.run_id is not None and stage is not None:
        stage("the predictions")
    if "predictions" in parts:
        path = write_predictions(Session, project_id, out, snapshot)
        written += [path] if path else []
    if "model" in parts and snapshot.run_id is not None and stage is not None:
        stage("the model (checkpoint, TorchScript and ONNX)")
    if "model" in parts:
        try:
            written += write_model(Session, project_id, out, snapshot)
        except ExportError as error:
            if what != "all" or notes is None:
                raise
            notes.append(str(error))
    listed = sorted((earlier - ours) | {path.name for path in written})
    (out / MANIFEST).write_text(json.dumps(listed, indent=1))
    return written


def _manifest(out: Path) -> set[str]:
    """The file names the last export into `out` wrote (none when it has no readable manifest)."""
    try:
        names = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    known = {name for files in PART_FILES.values() for name in files}
    return {name for name in names if name in known} if isinstance(names, list) else set()


def model_zip_bytes(paths: list[Path]) -> bytes | None:
    """The model download: the MODEL_FILES among `paths` in one zip (None when there are none),
    enough to run the classifier with PyTorch or ONNX Runtime in an empty folder."""
    chosen = [Path(p) for p in paths if Path(p).name in MODEL_FILES]
    return zip_bytes(chosen) if chosen else None


def zip_bytes(paths: list[Path]) -> bytes:
    """Bundle exported files into one zip for a browser download."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in paths:
            archive.write(path, arcname=Path(path).name)
    return buffer.getvalue()
