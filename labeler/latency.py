"""`python -m labeler latency`: how long a person waits between an answer and the next image.

Starts the real app (`streamlit run app.py`) on a fresh project in a temporary data folder
(digits by default; `--dataset fashion-mnist` for 70,000 images), drives it in headless Chromium
(Playwright, Debian's /usr/bin/chromium) by pressing a class key, and times key press -> the next
image's caption on screen. Measured twice: with the trainer idle, and while a training run is
going in the same process. Prints a markdown table with the median, p90 and max.

`--pages` times the other pages instead, on a project after one finished run (Fashion-MNIST by
default): a click on a page's link in the sidebar -> the page's main content on screen (its
title, every chart drawn, Streamlit's script run over), several times per page, and the Export
page's "Prepare the export" click -> its download buttons.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .config import available_cores

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (also used by the browser tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, env: dict[str, str]) -> subprocess.Popen:
    """The real app (`streamlit run app.py`) on 127.0.0.1:`port`, headless, output discarded."""
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true"]
    command += ["--server.port", str(port), "--browser.gatherUsageStats", "false"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 120.0) -> None:
    """Wait until `url` answers; raise RuntimeError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"The app at {url} did not answer within {timeout:.0f} s.")


# The Label page's one-image box lives in a shadow root: look inside it.
_CAPTION_JS = (
    "() => { for (const host of document.querySelectorAll('[data-testid=\"stBidiComponentIsolated\"]')) {"
    " const c = host.shadowRoot && host.shadowRoot.querySelector('[data-testid=\"lb-caption\"]');"
    " if (c) return c.textContent; } return null; }"
)


def _caption(page) -> str | None:
    return page.evaluate(_CAPTION_JS)


def _time_answers(page, n: int, key: str = "1") -> list[float]:
    """Press `key` n times; each time, seconds until a different image caption shows."""
    times = []
    for _ in range(n):
        page.wait_for_function(f"() => ({_CAPTION_JS})() !== null", timeout=60_000)
        before = _caption(page)
        start = time.perf_counter()
        page.keyboard.press(key)
        page.wait_for_function(
            f"(before) => {{ const c = ({_CAPTION_JS})(); return c !== null && c !== before; }}",
            arg=before,
            timeout=60_000,
            polling=5,
        )
        times.append(time.perf_counter() - start)
    return times


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(page, url: str, pid: int, seconds: float = 20.0) -> list[str]:
    """Share of one core the server uses while a tab sits open on the Label and Train pages and
    nothing trains (file watching off: `.streamlit/config.toml`)."""
    rows = []
    for name, path in (("Label", "/"), ("Train", "/train")):
        page.goto(url + path)
        page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=120_000)
        time.sleep(3)
        start_cpu, start = _cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        share = (_cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)
        rows.append(f"| {name} | {seconds:.0f} | {100 * share:.1f} % |")
    page.goto(url + "/")
    return rows


def _summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {p90:.0f} | {ms[-1]:.0f} |"


def measure(
    n: int = 20,
    model: str = "m2",
    budget_s: float = 300.0,
    dataset: str = "digits",
    data_dir: Path | None = None,
) -> list[str]:
    """The table of the module docstring. With `data_dir`, the app runs on that existing data
    folder's first project (e.g. the one `millionbench --data-dir` made) and only the idle
    case is timed."""
    from playwright.sync_api import sync_playwright

    folder = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="labeler-latency-"))
    env = dict(os.environ, LABELER_DATA_DIR=str(folder))
    os.environ["LABELER_DATA_DIR"] = str(folder)
    import db
    from db import queries
    from db import runs as run_queries
    from db.models import RUNNING, Run

    from . import projects

    Session = db.session_factory(db.get_engine())
    if data_dir:
        with Session() as session:
            project = queries.list_projects(session)[0]
    else:
        project = projects.create_project(Session, dataset, dataset)
    with Session.begin() as session:  # no automatic run: "idle" means nothing trains
        from db.models import Project

        stored = session.get(Project, project.id)
        stored.settings = {**stored.settings, "auto_retrain_every": 0}
    port = free_port()
    server = start_app(port, env)
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(f"() => ({_CAPTION_JS})() !== null", timeout=120_000)
            _time_answers(page, 2)  # warm-up: first renders compile and cache
            idle = _time_answers(page, n)
            if data_dir:
                browser.close()
                return [
                    "| trainer | answers | median ms | p90 ms | max ms |",
                    "| --- | --- | --- | --- | --- |",
                    _summary("idle", idle),
                ]
            cpu_rows = idle_cpu(page, f"http://127.0.0.1:{port}", server.pid)
            page.wait_for_function(f"() => ({_CAPTION_JS})() !== null", timeout=120_000)
            with Session.begin() as session:
                run_id = run_queries.request_run(session, project.id, model, {"budget_s": budget_s}).id
            _time_answers(page, 1)  # the page starts its process' trainer when it sees a queued run
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with Session() as session:
                    if session.get(Run, run_id).status == RUNNING:
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError("The app's trainer did not start the run within 60 s.")
            time.sleep(3)  # let training get going
            busy = _time_answers(page, n)
            with Session() as session:
                still_running = session.get(Run, run_id).status == RUNNING
            browser.close()
        rows = [
            "| trainer | answers | median ms | p90 ms | max ms |",
            "| --- | --- | --- | --- | --- |",
            _summary("idle", idle),
            _summary(f"training {model}" + ("" if still_running else " (run ended mid-way)"), busy),
            "",
            "| page open, nothing training | seconds | server CPU (one core = 100 %) |",
            "| --- | --- | --- |",
            *cpu_rows,
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


# A page is on screen when Streamlit's script run is over, nothing is left stale from the page
# before, its title is the one asked for and every chart on it is drawn (WebGL ones included).
_PAGE_READY_JS = """(want) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  const main = document.querySelector('[data-testid="stMain"]');
  const title = main && main.querySelector('h1');
  if (!title || !title.textContent.startsWith(want.title)) return false;
  if (main.querySelector('[data-stale="true"]')) return false;
  const plots = main.querySelectorAll('.js-plotly-plot');
  if (plots.length < want.charts) return false;
  for (const plot of plots) {
    if (!plot.querySelector('.main-svg') || !plot._fullLayout) return false;
  }
  if (want.gl && !main.querySelector('.js-plotly-plot canvas.gl-canvas-context')) return false;
  return !want.text || main.innerText.includes(want.text);
}"""

# The Export page's "Prepared at ..." line: it changes when a new export is ready.
_PREPARED_AT_JS = (
    "() => { const m = document.querySelector('[data-testid=\"stMain\"]').innerText.match(/Prepared at [^:]*:\\d\\d:\\d\\d/);"
    " return m ? m[0] : null; }"
)

# (url path, sidebar title, page title, charts on the page, WebGL, text that must show)
PAGES = [
    ("progress", "Progress", "Progress ·", 4, False, "Confusion matrix"),
    ("latent", "Latent space", "Latent space ·", 1, False, "Colour by"),  # a PNG and SVG points
    ("export", "Export", "Export ·", 0, False, "Prepare the export"),
]


def _prepare_project(dataset: str, model: str, budget_s: float, labels: int, answers: int):
    """A project of `dataset` in the current data folder after one finished run of `model`, with
    `labels` true labels before the run and `answers` after it (so agreement has points)."""
    import db
    from db import queries
    from db import runs as run_queries
    from db.models import DONE, Project, Run

    from . import projects
    from .bigbench import _label_truth
    from .queue import next_items
    from .worker import Worker

    Session = db.session_factory(db.get_engine())
    project = projects.create_project(Session, dataset, dataset)
    with Session.begin() as session:  # nothing trains while pages are timed
        stored = session.get(Project, project.id)
        stored.settings = {**stored.settings, "auto_retrain_every": 0}
    _label_truth(Session, project.id, labels)
    with Session.begin() as session:
        run_id = run_queries.request_run(session, project.id, model, {"budget_s": budget_s}).id
    worker = Worker(Session, device="cpu")
    worker.process_one()
    with Session() as session:
        run = session.get(Run, run_id)
        if run.status != DONE:
            raise RuntimeError(f"The benchmark's training run ended {run.status}: {run.error}")
    for _ in range(answers):
        with Session.begin() as session:  # the claim counts once committed, as on the Label page
            page = next_items(session, project.id, k=1, annotator="bench")
        if not page:
            break
        item = page[0][0]
        with Session.begin() as session:
            queries.add_label(session, item.id, max(0, item.truth or 0), annotator="bench", kind="single")
    with Session() as session:
        n_items = queries.count_items(session, project.id)
    return project.id, n_items, run_id


def measure_pages(
    repeats: int = 5,
    dataset: str = "fashion-mnist",
    model: str = "m2",
    budget_s: float = 20.0,
    labels: int = 100,
    answers: int = 20,
) -> list[str]:
    """Time each of PAGES `repeats` times (sidebar click -> content on screen) and the export."""
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="labeler-pages-"))
    env = dict(os.environ, LABELER_DATA_DIR=str(folder), LABELER_TRAIN_THREADS="1")
    os.environ["LABELER_DATA_DIR"] = str(folder)
    started = time.perf_counter()
    project_id, n_items, run_id = _prepare_project(dataset, model, budget_s, labels, answers)
    setup_s = time.perf_counter() - started
    port = free_port()
    server = start_app(port, env)
    times: dict[str, list[float]] = {path: [] for path, *_ in PAGES}
    times["export: prepare"] = []
    first: dict[str, float] = {}  # the first load after the server started: caches are cold

    def record(key: str, seconds: float, repeat: int) -> None:
        if repeat:
            times[key].append(seconds)
        else:
            first[key] = seconds

    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                # WebGL in software: headless Chromium has no GPU here (the scatter is WebGL).
                args=[*CHROMIUM_ARGS, "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/?project={project_id}")
            page.wait_for_function(f"() => ({_CAPTION_JS})() !== null", timeout=300_000)
            for repeat in range(repeats + 1):  # round 0: the first load of each page, caches cold
                for path, link, title, charts, gl, text in PAGES:
                    start = time.perf_counter()
                    page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').click()
                    page.wait_for_function(
                        _PAGE_READY_JS,
                        arg={"title": title, "charts": charts, "gl": gl, "text": text},
                        timeout=300_000,
                        polling=20,
                    )
                    record(path, time.perf_counter() - start, repeat)
                before = page.evaluate(_PREPARED_AT_JS)
                start = time.perf_counter()
                page.get_by_role("button", name="Prepare the export").click()
                page.wait_for_function(
                    f"(before) => {{ const at = ({_PREPARED_AT_JS})(); return at !== null && at !== before; }}",
                    arg=before,
                    timeout=600_000,
                    polling=20,
                )
                page.get_by_role("button", name="Data set: ImageFolder zip").wait_for(timeout=60_000)
                record("export: prepare", time.perf_counter() - start, repeat)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)

    def row(name: str, key: str) -> str:
        seconds = times[key]
        return (
            f"| {name} | {first[key]:.2f} | {len(seconds)} | {statistics.median(seconds):.2f} "
            f"| {max(seconds):.2f} |"
        )

    return [
        (
            f"{dataset}: {n_items:,} images, one finished {model} run ({budget_s:.0f} s, run {run_id}), "
            f"{labels + answers} labels; set-up {setup_s:.0f} s"
        ),
        "",
        "| page | first load s | later loads | median s | max s |",
        "| --- | --- | --- | --- | --- |",
        *(row(link, path) for path, link, *_ in PAGES),
        row("Export: Prepare the export -> download buttons", "export: prepare"),
    ]


def cmd_latency(args) -> int:
    import platform

    import torch

    args.dataset_given = args.dataset is not None
    args.dataset = args.dataset or "digits"
    if args.pages:
        dataset = args.dataset if args.dataset_given else "fashion-mnist"
        rows = measure_pages(repeats=args.repeats, dataset=dataset, model=args.model, budget_s=args.run_s)
        what = "Sidebar click -> page on screen"
    else:
        rows = measure(
            n=args.answers,
            model=args.model,
            budget_s=args.budget_s,
            dataset=args.dataset,
            data_dir=args.data_dir,
        )
        what = f"Answer -> next image; {args.data_dir or args.dataset}"
    print(
        f"{what} in headless Chromium; {platform.platform()}, load {os.getloadavg()[0]:.1f}, "
        f"{available_cores()} CPUs, torch {torch.__version__}, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print("\n".join(rows))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "latency", help="time answer -> next image in the real app, idle and while training"
    )
    p.add_argument("--answers", type=int, default=20, help="answers timed in each condition")
    p.add_argument("--model", default="m2", help="model trained during the second measurement")
    p.add_argument("--budget-s", type=float, default=300.0, help="length of that training run")
    p.add_argument(
        "--dataset",
        default=None,
        help="built-in data set of the project (default digits; fashion-mnist for --pages)",
    )
    p.add_argument(
        "--pages",
        action="store_true",
        help="time the Progress, Latent space and Export pages after one finished run instead",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="time the idle Label page on the first project of this existing data folder instead",
    )
    p.add_argument("--repeats", type=int, default=5, help="loads of each page timed (--pages)")
    p.add_argument("--run-s", type=float, default=20.0, help="training time of the one run (--pages)")
    p.set_defaults(func=cmd_latency)
