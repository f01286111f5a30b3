"""The shared store (LABELER_STORAGE_URL): an app and a worker in separate data folders share
pixels, original files and checkpoints through a real S3-protocol server (moto) or a shared
folder, never through a disk both can see."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import db
from db import queries
from db import runs as run_queries
from db.models import DONE, FAILED, Item, Run
from labeler import export, projects, storage
from labeler.worker import Worker
from tests.conftest import tiny_image_set

BUCKET = "labeler-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def s3_server():
    """moto's S3 server on a free local port, with one empty bucket; yields its endpoint URL."""
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _use_s3(monkeypatch, endpoint: str) -> None:
    monkeypatch.setenv("LABELER_STORAGE_URL", f"s3://{BUCKET}/team")
    monkeypatch.setenv(
        "LABELER_STORAGE_OPTIONS",
        json.dumps({"endpoint_url": endpoint, "key": "testing", "secret": "testing"}),
    )


@pytest.fixture
def shared_store(request, monkeypatch, tmp_path):
    """LABELER_STORAGE_URL set to a moto S3 bucket ("s3", the default), or to a plain folder
    (a mounted share)."""
    if getattr(request, "param", "s3") == "s3":
        _use_s3(monkeypatch, request.getfixturevalue("s3_server"))
    else:
        monkeypatch.setenv("LABELER_STORAGE_URL", (tmp_path / "share").as_uri())
        monkeypatch.delenv("LABELER_STORAGE_OPTIONS", raising=False)
    return request.param


@pytest.fixture
def shared_db(request, tmp_path):
    """The database every machine reaches: a SQLite file outside every data folder (the
    default), or PostgreSQL ("postgres", skipped without LABELER_TEST_PG_URL)."""
    if getattr(request, "param", "sqlite") == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = db.make_engine(url)
    yield db.session_factory(engine)
    engine.dispose()


def _on_machine(monkeypatch, folder: Path) -> Path:
    monkeypatch.setenv("LABELER_DATA_DIR", str(folder))
    return folder


def _unplug(folder: Path) -> None:
    """Take a machine's data folder out of reach: the paths it wrote into the database must not
    be opened by the others, as on separate machines."""
    folder.rename(folder.with_name(folder.name + "-elsewhere"))


def _image_set_with_files(folder: Path, n: int = 40):
    """`tiny_image_set` whose images also exist as original PNG files in `folder`."""
    images = tiny_image_set(n=n, test=8)
    folder.mkdir(parents=True)
    for row, (key, array) in enumerate(zip(images.keys, images.pixels)):
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array[0]).save(path)
        images.files[row] = str(path)
    return images


def _create_labeled_project(Session, source: Path):
    project = projects.create_project(
        Session, "shared", "test", images=_image_set_with_files(source), audit_size=0
    )
    with Session.begin() as session:
        for item in queries.items(session, project.id, split="pool")[:12]:
            queries.add_label(session, item, item.truth)
    return project


def _queue(Session, project_id: int) -> int:
    with Session.begin() as session:
        return run_queries.request_run(session, project_id, "supervised", {"steps": 5}).id


def _run(Session, run_id: int) -> Run:
    with Session() as session:
        return session.get(Run, run_id)


@pytest.mark.parametrize(
    ("shared_store", "shared_db"),
    [("s3", "sqlite"), ("folder", "sqlite"), pytest.param("s3", "postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_a_worker_elsewhere_trains_from_the_store_and_the_app_loads_its_checkpoint(
    shared_store, shared_db, tmp_path, monkeypatch
):
    Session = shared_db
    app = _on_machine(monkeypatch, tmp_path / "app")
    project = _create_labeled_project(Session, tmp_path / "source")
    first = _queue(Session, project.id)

    worker_folder = _on_machine(monkeypatch, tmp_path / "worker")
    assert not worker_folder.exists()
    assert Worker(Session, device="cpu", name="gpu-box").process_one() is True
    run = _run(Session, first)
    assert run.status == DONE, run.error
    # The pixels came from the store, not from the app's folder; the worker needed no original file.
    fetched = worker_folder / "projects" / str(project.id) / "pixels.npy"
    assert np.array_equal(np.load(fetched), np.load(app / "projects" / str(project.id) / "pixels.npy"))
    assert not (worker_folder / "projects" / str(project.id) / "files").exists()
    assert Path(run.checkpoint).is_relative_to(worker_folder)
    assert storage.store().exists(f"projects/{project.id}/runs/{first}.pt")
    _unplug(worker_folder)

    # A second worker on a third machine warm-starts from the first worker's checkpoint.
    second = _queue(Session, project.id)
    other_worker = _on_machine(monkeypatch, tmp_path / "worker2")
    Worker(Session, device="cpu", name="gpu-box-2").process_one()
    run2 = _run(Session, second)
    assert run2.status == DONE, run2.error
    assert not any("from scratch" in note for note in run2.metrics["notes"]), run2.metrics["notes"]
    assert (other_worker / "projects" / str(project.id) / "runs" / f"{first}.pt").exists()
    newest = Path(run2.checkpoint).read_bytes()
    _unplug(other_worker)

    # Back on the app server: the newest checkpoint, written elsewhere, exports through the store.
    _on_machine(monkeypatch, app)
    assert not (app / "projects" / str(project.id) / "runs").exists()
    # The ONNX export has its own tests and costs more than all of this one; the checkpoint is what counts here.
    monkeypatch.setattr(export, "write_onnx", lambda module, shape, path: path)
    written = export.write_model(Session, project.id, tmp_path / "export")
    assert written, "the model export found no checkpoint"
    assert (tmp_path / "export" / "model.pt").read_bytes() == newest
    _unplug(app)

    # A second app server that never saw the import shows the original file, not the pixels.
    other_app = _on_machine(monkeypatch, tmp_path / "app2")
    with Session() as session:
        item = session.query(Item).filter_by(project_id=project.id, row=3).one()
        key, path = item.key, item.path
    data, suffix, lost = export._image_bytes(project.id, 3, path)
    assert suffix == ".png" and not lost
    assert data == (tmp_path / "source" / key).read_bytes()
    assert (other_app / "projects" / str(project.id) / "files" / key).exists()


def test_without_a_store_url_nothing_leaves_the_data_folder(Session, tmp_path, monkeypatch):
    import fsspec.core

    monkeypatch.delenv("LABELER_STORAGE_URL", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the default opened a store")

    monkeypatch.setattr(fsspec.core, "url_to_fs", refuse)
    assert storage.store() is None
    project = _create_labeled_project(Session, tmp_path / "source")
    run_id = _queue(Session, project.id)
    Worker(Session, device="cpu").process_one()
    assert _run(Session, run_id).status == DONE
    data = tmp_path / "data"
    folder = data / "projects" / str(project.id)
    assert sorted(p.name for p in folder.iterdir()) == ["files", "pixels.npy", "runs"]
    # A file that is gone stays gone (the page falls back to the pixels), with no store to ask.
    missing = folder / "files" / "img" / "003.png"
    missing.unlink()
    assert projects.local_file(missing) is None


def test_an_unreachable_store_refuses_the_import_in_one_sentence_and_leaves_nothing(
    Session, tmp_path, monkeypatch
):
    _use_s3(monkeypatch, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    with pytest.raises(
        storage.StorageError, match=r"^Cannot use the store in LABELER_STORAGE_URL=s3://"
    ) as caught:
        _create_labeled_project(Session, tmp_path / "source")
    assert "\n" not in str(caught.value)
    with Session() as session:
        assert queries.list_projects(session) == []
    assert not (tmp_path / "data" / "projects" / "1").exists()


def test_a_worker_that_cannot_reach_the_store_fails_the_run_with_the_reason(
    s3_server, shared_db, tmp_path, monkeypatch
):
    _use_s3(monkeypatch, s3_server)
    _on_machine(monkeypatch, tmp_path / "app")
    project = _create_labeled_project(shared_db, tmp_path / "source")
    run_id = _queue(shared_db, project.id)
    _on_machine(monkeypatch, tmp_path / "worker")
    _use_s3(monkeypatch, f"http://127.0.0.1:{_free_port()}")
    worker = Worker(shared_db, device="cpu")
    worker.process_one()
    run = _run(shared_db, run_id)
    assert run.status == FAILED
    assert run.error.startswith("Cannot use the store in LABELER_STORAGE_URL=")


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        ("nosuchprotocol://bucket/x", None, "is not a store this installation can open"),
        ("s3://", None, "names no bucket or folder"),
        ("s3://bucket/x", "[1, 2]", "LABELER_STORAGE_OPTIONS must be a JSON object"),
    ],
)
def test_a_malformed_store_setting_is_one_sentence(monkeypatch, url, options, expected):
    monkeypatch.setenv("LABELER_STORAGE_URL", url)
    if options is None:
        monkeypatch.delenv("LABELER_STORAGE_OPTIONS", raising=False)
    else:
        monkeypatch.setenv("LABELER_STORAGE_OPTIONS", options)
    with pytest.raises(storage.StorageError, match=expected) as caught:
        storage.store()
    assert "\n" not in str(caught.value)


def test_storage_key_finds_the_key_of_a_path_written_on_another_machine(tmp_path):
    other = "/srv/elsewhere/projects/7/labeler-data/projects/7/files/projects/7/a.png"
    assert projects.storage_key(other) == "projects/7/files/projects/7/a.png"
    assert projects.storage_key("/x/projects/7/runs/3.pt") == "projects/7/runs/3.pt"
    assert (
        projects.storage_key(tmp_path / "data" / "projects" / "2" / "pixels.npy") == "projects/2/pixels.npy"
    )
    assert projects.storage_key("/tmp/somewhere/else.pt") is None


@pytest.mark.parametrize("shared_store", ["folder", "s3"], indirect=True)
def test_old_exports_leave_the_store_too(shared_store, shared_db, tmp_path, monkeypatch):
    """Each preparation writes a folder of its own: the session's previous one, those older
    than a day (made on any machine) and files of the layout before folders leave the store,
    when the page opens and when an export is prepared."""
    from streamlit.testing.v1 import AppTest

    Session = shared_db
    monkeypatch.setenv("LABELER_DB_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    _on_machine(monkeypatch, tmp_path / "app")
    project = _create_labeled_project(Session, tmp_path / "source")
    shared = storage.store()
    prefix = f"projects/{project.id}/exports"
    (tmp_path / "old.csv").write_text("old")
    for name in ("20200101-000000-aaaa/labels.csv", "labels.csv", "29990101-000000-bbbb/labels.csv"):
        shared.put(tmp_path / "old.csv", f"{prefix}/{name}")  # a day old elsewhere; old layout; recent
    at = AppTest.from_string("from labeler.ui.export import export_page\nexport_page()", default_timeout=60)
    at.session_state["project_id"] = project.id
    at.run()  # opening the page sweeps (at most hourly)
    assert not at.exception and shared.names(prefix) == ["29990101-000000-bbbb"]
    for name in ("20200101-000000-aaaa/labels.csv", "labels.csv"):
        shared.put(tmp_path / "old.csv", f"{prefix}/{name}")  # again, for the sweep on preparing
    at.button(key="export_prepare").click().run()
    first = Path(at.session_state["export_files"]["folder"]).name
    assert not at.exception and shared.names(prefix) == sorted([first, "29990101-000000-bbbb"])
    at.button(key="export_prepare").click().run()
    second = Path(at.session_state["export_files"]["folder"]).name
    assert second != first and shared.names(prefix) == sorted([second, "29990101-000000-bbbb"])
    assert shared.exists(f"{prefix}/{second}/labels.csv")


@pytest.mark.parametrize("shared_store", ["folder"], indirect=True)
def test_a_streamed_folder_import_and_an_export_go_through_the_store(
    shared_store, shared_db, tmp_path, monkeypatch
):
    from streamlit.testing.v1 import AppTest

    Session = shared_db
    monkeypatch.setenv("LABELER_DB_URL", f"sqlite:///{tmp_path / 'shared.db'}")  # the page's database too
    source = tmp_path / "source"
    _image_set_with_files(source)  # source/img/*.png: a flat folder below one wrapper folder
    app = _on_machine(monkeypatch, tmp_path / "app")
    project = projects.create_project(Session, "folder", f"folder:{source}", classes=["a", "b"], audit_size=0)
    with Session.begin() as session:
        for item in queries.items(session, project.id)[:6]:
            queries.add_label(session, item, item.truth if item.truth is not None else 0)
    at = AppTest.from_string("from labeler.ui.export import export_page\nexport_page()", default_timeout=60)
    at.session_state["project_id"] = project.id
    at.run()
    at.button(key="export_prepare").click().run()
    assert not at.exception and not at.error
    shared = storage.store()
    exported = {Path(p).name: Path(p) for p in at.session_state["export_files"]["paths"]}
    for name in ("labels.csv", "dataset.zip", "dataset.parquet"):
        key = projects.storage_key(exported[name])
        assert key.startswith(f"projects/{project.id}/exports/") and shared.exists(key)
    _unplug(app)

    other = _on_machine(monkeypatch, tmp_path / "other")
    assert np.array_equal(
        projects.pixels(project.id),
        np.load(tmp_path / "app-elsewhere" / "projects" / str(project.id) / "pixels.npy"),
    )
    with Session() as session:
        item = queries.items(session, project.id)[5]
    assert projects.local_file(item.path).read_bytes() == (source / "img" / item.key).read_bytes()
    assert projects.local_file(exported["labels.csv"]).is_relative_to(other)
