"""`python -m labeler bigbench`: how a big project (Fashion-MNIST, 70,000 images) feels.

Builds the project in a temporary data folder (SQLite there by default; with `--db-url`, a
throw-away database created on that PostgreSQL server and dropped afterwards), then times,
through the project's own code:

- the import (`projects.create_project`);
- `labeler.queue.next_items` as the Label page calls it (a page of 16 for one annotator, claims
  included), each call followed by an answer to the first image, untimed, before the first run
  and after one;
- one worker run (`Worker.process_one`, predictions for every image, after the worker's
  once-per-process `warm_up`, timed apart, as `run_forever` does): the time before training
  starts, the training budget, the time after it, and of that the time storing the
  predictions and the queue (the worker's own clock, `Run.metrics["timing"]`).

Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from .config import available_cores, device_arg

PAGE = 16  # labeler.ui.label.BATCH: the Label page asks for this many images at a time


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))], 1),
        "max_ms": round(ms[-1], 1),
    }


def _time_next_items(Session, project_id: int, calls: int, annotator: str = "bench") -> dict[str, float]:
    """Time `calls` page requests; after each, answer the first image with its true class."""
    from db import queries

    from .queue import next_items

    times = []
    for _ in range(calls):
        started = time.perf_counter()
        with Session.begin() as session:  # as the Label page: the claims are committed
            page = next_items(session, project_id, k=PAGE, annotator=annotator)
        times.append(time.perf_counter() - started)
        if not page:
            break
        item = page[0][0]
        with Session.begin() as session:
            queries.add_label(session, item.id, max(0, item.truth or 0), annotator=annotator, kind="oracle")
    return _percentiles(times)


def _label_truth(Session, project_id: int, n: int) -> None:
    """Give n pool images (n // classes of each class, first by row) their true class."""
    from db import queries
    from db.models import POOL

    with Session.begin() as session:
        classes = len(queries.class_names(session, project_id))
        per_class: dict[int, int] = {}
        for item in queries.items(session, project_id, POOL):
            if item.truth is None or per_class.get(item.truth, 0) >= max(1, n // classes):
                continue
            per_class[item.truth] = per_class.get(item.truth, 0) + 1
            queries.add_label(session, item.id, item.truth, annotator="bench", kind="oracle")
            if sum(per_class.values()) >= n:
                break


class _ThrowAwayDatabase:
    """A fresh database on the server of `server_url`, dropped on exit (SQLite: a file in `folder`)."""

    def __init__(self, server_url: str | None, folder: Path):
        self.server_url = server_url
        self.folder = folder
        self.name = f"labeler_bigbench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> str:
        if self.server_url is None:
            return f"sqlite:///{self.folder / 'labeler.db'}"
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self._admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        return make_url(self.server_url).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc) -> None:
        if self.server_url is None:
            return
        from sqlalchemy import text

        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


def measure(
    db_url: str | None = None,
    dataset: str = "fashion-mnist",
    model: str = "m2",
    budget_s: float = 20.0,
    labels: int = 100,
    calls: int = 30,
    device: str | None = None,
) -> dict:
    """Build the project, time everything listed in the module docstring; return the numbers."""
    import db
    from db import runs as run_queries
    from db.models import DONE, Run

    from . import config, projects
    from .worker import Worker

    folder = Path(tempfile.mkdtemp(prefix="labeler-bigbench-"))
    try:
        with config.data_dir_set(folder), _ThrowAwayDatabase(db_url, folder) as url:
            engine = db.make_engine(url)
            try:
                Session = db.session_factory(engine)
                started = time.perf_counter()
                project = projects.create_project(Session, dataset, dataset)
                import_s = time.perf_counter() - started
                with Session() as session:
                    from db import queries

                    n_items = queries.count_items(session, project.id)
                _label_truth(Session, project.id, labels)
                before = _time_next_items(Session, project.id, calls)

                with Session.begin() as session:
                    run_id = run_queries.request_run(session, project.id, model, {"budget_s": budget_s}).id
                worker = Worker(Session, device=device)
                warm_up_s = worker.warm_up()  # as run_forever does when a worker starts
                started = time.perf_counter()
                worker.process_one()
                run_wall_s = time.perf_counter() - started
                with Session() as session:
                    run = session.get(Run, run_id)
                    if run.status != DONE:
                        raise RuntimeError(f"The benchmark's training run ended {run.status}: {run.error}")
                    timing = dict((run.metrics or {}).get("timing") or {})
                    predictions = len(run_queries.predictions(session, run_id))
                after = _time_next_items(Session, project.id, calls)
            finally:
                engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "database": "sqlite" if db_url is None else db_url.split(":", 1)[0].split("+", 1)[0],
        "dataset": dataset,
        "items": n_items,
        "import_s": round(import_s, 2),
        "next_items_before_run": before,
        "next_items_after_run": after,
        "model": model,
        "budget_s": budget_s,
        "worker_warm_up_s": round(warm_up_s, 2),
        "run_wall_s": round(run_wall_s, 2),
        "predictions": predictions,
        **{
            key: timing.get(key) for key in ("before_training_s", "training_s", "after_training_s", "store_s")
        },
    }


def table(result: dict) -> list[str]:
    """The numbers as markdown rows."""
    before, after = result["next_items_before_run"], result["next_items_after_run"]

    def s(value) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    return [
        "| what | measured | target |",
        "| --- | --- | --- |",
        f"| import {result['items']:,} images | {s(result['import_s'])} | |",
        f"| `next_items` before the first run (median / p90) | {before['median_ms']:.1f} / {before['p90_ms']:.1f} ms | |",
        f"| `next_items` after one run (median / p90) | {after['median_ms']:.1f} / {after['p90_ms']:.1f} ms | <= 20 ms median |",
        f"| worker start-up, once per process (PyTorch's lazy imports) | {s(result.get('worker_warm_up_s'))} | |",
        f"| run: before training starts | {s(result['before_training_s'])} | <= 5 s |",
        f"| run: training ({result['model']}, budget {result['budget_s']:.0f} s) | {s(result['training_s'])} | |",
        f"| run: after training (predict, 2-D map, store) | {s(result['after_training_s'])} | |",
        f"| of that, storing {result['predictions']:,} predictions and the queue | {s(result['store_s'])} | <= 3 s |",
        f"| run: wall time | {s(result['run_wall_s'])} | |",
    ]


def cmd_bigbench(args) -> int:
    import torch

    from .runspec import check_threads

    if args.threads is not None:
        torch.set_num_threads(check_threads(args.threads))
    result = measure(
        db_url=args.db_url,
        dataset=args.dataset,
        model=args.model,
        budget_s=args.budget_s,
        labels=args.labels,
        calls=args.calls,
        device=args.device,
    )
    print(
        f"{result['dataset']} on {result['database']}; {platform.platform()}, {available_cores()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device "
        f"{args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}"
    )
    print("\n".join(table(result)))
    print(json.dumps(result))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bigbench",
        help="time import, the queue and a training run's set-up and store on a 70,000-image project",
    )
    p.add_argument(
        "--db-url",
        help="a PostgreSQL server URL: the benchmark creates a throw-away database there and drops it "
        "(default: SQLite in a temporary folder)",
    )
    p.add_argument("--dataset", default="fashion-mnist", help="built-in data set (default fashion-mnist)")
    p.add_argument("--model", default="m2", help="model of the one training run")
    p.add_argument("--budget-s", type=float, default=20.0, help="training time of that run")
    p.add_argument("--labels", type=int, default=100, help="true labels given before the run")
    p.add_argument("--calls", type=int, default=30, help="next_items calls timed before and after the run")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument(
        "--device", default=None, type=device_arg, help="cpu or cuda (default: cuda when available)"
    )
    p.set_defaults(func=cmd_bigbench)
