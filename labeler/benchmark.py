"""Benchmarks built on `simulate`: `python -m labeler benchmark ...`.

Two modes:

- `models`: each model x data set x seed trained once (`simulate --step 0`) on a fixed number
  of balanced random labels within a time budget; the table gives test accuracy, mean +- std
  over seeds. Defaults per data set: digits and shapes 30 labels / 60 s, Fashion-MNIST and MNIST
  100 labels / 600 s (hours in all on a CPU: choose subsets and budgets for a short run).
- `strategies`: one model on one data set, active learning from `--initial` labels in steps of
  `--step`; the target is random sampling's mean accuracy at `--target-labels` (100), and the
  table gives the labels each strategy needs to reach it (first round at or above it, mean +-
  std over the seeds that reached it) and its accuracy at the target's label count.

Writes `<out>/benchmark-<mode>.csv` (one row per run or round, as soon as it ends),
`.md` (the table, also printed) and `.html` (a plotly chart; `.png` too when kaleido is
installed). Every number comes from a run made here; the machine line says where.
"""

from __future__ import annotations

import csv
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import SettingError, check_int, default_device, device_arg
from .data import check_source
from .runspec import RunSpec, check_model, check_strategy

PRESETS: dict[str, dict[str, float]] = {
    "digits": {"labels": 30, "budget_s": 60},
    "fashion-mnist": {"labels": 100, "budget_s": 600},
    "mnist": {"labels": 100, "budget_s": 600},
    "shapes": {"labels": 30, "budget_s": 60},
}
# The test accuracy the project aims for with the preset's labels and budget (a dashed line in
# the chart); see the README's Benchmarks section.
TARGETS: dict[str, float] = {"digits": 0.90, "fashion-mnist": 0.82, "shapes": 0.90}
DEFAULT_PRESET = {"labels": 100, "budget_s": 600}


def machine(device: str) -> str:
    import torch

    name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return (
        f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} CPU threads, device {name}"
    )


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=np.float64)
    return f"{a[0]:.3f}" if len(a) == 1 else f"{a.mean():.3f} ± {a.std(ddof=1):.3f}"


class _CsvLog:
    """Append rows to a CSV as they come, so a long benchmark stopped midway keeps its results."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writeheader()

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)


def _load(dataset: str, cache: dict):
    if dataset not in cache:
        from .data import read_source

        cache[dataset] = read_source(dataset)
    return cache[dataset]


def _save_figure(fig, stem: Path) -> list[Path]:
    """Write the chart as self-contained HTML, and as PNG (kaleido, else a headless Chromium
    screenshot of the HTML, else no PNG)."""
    html, png = stem.with_suffix(".html"), stem.with_suffix(".png")
    fig.write_html(html, include_plotlyjs=True)  # self-contained: opens offline
    written = [html]
    try:
        import kaleido  # noqa: F401

        fig.write_image(png)
        return written + [png]
    except Exception as error:  # noqa: BLE001 - fall back to the browser
        print(f"kaleido gave no PNG ({type(error).__name__}); trying headless Chromium", file=sys.stderr)
    try:
        _screenshot(html, png)
        written.append(png)
    except Exception as error:  # noqa: BLE001 - PNG is optional
        print(f"no PNG ({type(error).__name__}: {error}); the HTML has the chart", file=sys.stderr)
    return written


def _screenshot(html: Path, png: Path, width: int = 1000, height: int = 560) -> None:
    from playwright.sync_api import sync_playwright

    from .latency import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(html.resolve().as_uri())
        page.wait_for_selector(".main-svg", timeout=30_000)
        page.screenshot(path=str(png))
        browser.close()


def run_models(
    models: list[str],
    datasets: list[str],
    seeds: list[int],
    out_dir: Path,
    device: str,
    labels: int | None = None,
    budget_s: float | None = None,
    steps: int | None = None,
    config: dict[str, Any] | None = None,
    log=print,
) -> tuple[list[dict], str]:
    """The `models` mode; returns the per-run records and the markdown table. `config` overrides
    model settings (as `--config`; every model must know every key)."""
    from .simulate import simulate

    fields = [
        "dataset",
        "model",
        "seed",
        "labels",
        "budget_s",
        "test_accuracy",
        "seconds",
        "train_steps",
        "fit_seconds",
        "config",
        "error",
    ]
    config_text = json.dumps(config, sort_keys=True) if config else ""
    csv_log = _CsvLog(out_dir / "benchmark-models.csv", fields)
    cache: dict = {}
    records: list[dict] = []
    for dataset in datasets:
        preset = PRESETS.get(dataset, DEFAULT_PRESET)
        n_labels = int(_given(labels, preset["labels"]))
        budget = float(_given(budget_s, preset["budget_s"]))
        for model in models:
            for seed in seeds:
                record = {
                    "dataset": dataset,
                    "model": model,
                    "seed": seed,
                    "labels": n_labels,
                    "budget_s": budget,
                    "test_accuracy": None,
                    "seconds": None,
                    "train_steps": None,
                    "fit_seconds": None,
                    "config": config_text,
                    "error": None,
                }
                try:
                    spec = RunSpec(
                        model, budget_s=budget, steps=steps, strategy="random", seed=seed, config=config or {}
                    )
                    rows = simulate(
                        dataset,
                        spec,
                        initial=n_labels,
                        step=0,
                        device=device,
                        images=_load(dataset, cache),
                        log=lambda _: None,
                    )
                    record.update(
                        test_accuracy=rows[-1]["test_accuracy"],
                        seconds=rows[-1]["seconds"],
                        train_steps=rows[-1]["train_steps"],
                        fit_seconds=rows[-1]["fit_seconds"],
                    )
                except Exception as error:  # noqa: BLE001 - one broken model must not end the benchmark
                    record["error"] = f"{type(error).__name__}: {error}"
                records.append(record)
                csv_log.write(record)
                log(
                    f"{dataset} {model} seed {seed}: "
                    + (
                        f"accuracy {record['test_accuracy']:.4f} in {record['seconds']:.1f} s, "
                        f"{record['train_steps']} steps"
                        if record["error"] is None
                        else f"failed ({record['error']})"
                    )
                )

    table = models_table(records, models, datasets)
    models_figure(records, models, datasets, out_dir / "benchmark-models")
    return records, table


def _budget_cell(records: list[dict], dataset: str) -> str:
    mine = [r for r in records if r["dataset"] == dataset]
    labels = sorted({int(float(r["labels"])) for r in mine})
    budgets = sorted({float(r["budget_s"]) for r in mine})
    return f"{dataset} ({'/'.join(map(str, labels))} labels, {'/'.join(f'{b:g}' for b in budgets)} s)"


def _accuracies(records: list[dict], model: str, dataset: str) -> tuple[list[float], int]:
    mine = [r for r in records if r["model"] == model and r["dataset"] == dataset]
    accs = [float(r["test_accuracy"]) for r in mine if not r.get("error")]
    return accs, len(mine) - len(accs)


def models_table(records: list[dict], models: list[str], datasets: list[str]) -> str:
    """Markdown: one row per model, one column per data set, mean ± std (n) of test accuracy."""
    lines = [
        "| model | " + " | ".join(_budget_cell(records, d) for d in datasets) + " |",
        "|" + " --- |" * (len(datasets) + 1),
    ]
    for model in models:
        cells = []
        for dataset in datasets:
            accs, failed = _accuracies(records, model, dataset)
            done = [
                r
                for r in records
                if r["model"] == model
                and r["dataset"] == dataset
                and not r.get("error")
                and r.get("train_steps") not in (None, "")
            ]
            steps = [float(r["train_steps"]) for r in done]
            # Steps per second of the fit alone; CSVs from before fit_seconds have none.
            speed = [
                float(r["train_steps"]) / float(r["fit_seconds"])
                for r in done
                if r.get("fit_seconds") not in (None, "") and float(r["fit_seconds"]) > 0
            ]
            cell = (
                mean_std(accs)
                + f" (n={len(accs)}"
                + (f", {np.mean(steps):,.0f} steps" if steps else "")
                + (f", {np.mean(speed):,.1f} steps/s" if speed else "")
                + ")"
                if accs or failed
                else "not run"
            )
            cells.append(cell + (f", {failed} failed" if failed else ""))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def models_figure(records: list[dict], models: list[str], datasets: list[str], stem: Path) -> list[Path]:
    import plotly.graph_objects as go

    fig = go.Figure()
    for dataset in datasets:
        means, stds = [], []
        for model in models:
            accs, _ = _accuracies(records, model, dataset)
            means.append(float(np.mean(accs)) if accs else None)
            stds.append(float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0)
        fig.add_bar(
            name=_budget_cell(records, dataset), x=models, y=means, error_y={"type": "data", "array": stds}
        )
        if dataset in TARGETS:
            fig.add_hline(
                y=TARGETS[dataset],
                line_dash="dash",
                line_width=1,
                annotation_text=f"{dataset} target",
                annotation_position="top left",
            )
    fig.update_layout(
        barmode="group",
        title="Test accuracy (mean ± std over seeds)",
        yaxis_title="test accuracy",
        yaxis_range=[0, 1],
        legend={"orientation": "h", "y": -0.15},
    )
    return _save_figure(fig, stem)


def report(csv_files: list[Path], out_dir: Path) -> str:
    """Merge `benchmark-models.csv` files of several runs into one table and one chart."""
    records: list[dict] = []
    needed = {"dataset", "model", "labels", "budget_s", "test_accuracy", "error"}
    for path in csv_files:
        try:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                missing = sorted(needed - set(reader.fieldnames or ()))
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise SettingError(f"Cannot read {path} ({error}); give benchmark-models.csv files.") from None
        # Another CSV (a strategies one, any file) ended in a KeyError (exploratory session).
        if missing:
            raise SettingError(
                f"{path} is not a benchmark-models.csv (it has no {', '.join(missing)} "
                f"{'column' if len(missing) == 1 else 'columns'}); "
                "give the CSVs that `benchmark --mode models` writes."
            )
        records += rows
    if not records:
        held = "holds" if len(csv_files) == 1 else "hold"
        raise SettingError(f"{', '.join(map(str, csv_files))} {held} no runs; nothing to report.")
    models = list(dict.fromkeys(r["model"] for r in records))
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    out_dir.mkdir(parents=True, exist_ok=True)
    models_figure(records, models, datasets, out_dir / "benchmark-models")
    return models_table(records, models, datasets)


def run_strategies(
    dataset: str,
    model: str,
    strategies: list[str],
    seeds: list[int],
    out_dir: Path,
    device: str,
    initial: int = 20,
    step: int = 10,
    max_labels: int = 300,
    target_labels: int = 100,
    budget_s: float = 60.0,
    steps: int | None = None,
    log=print,
) -> tuple[list[dict], str]:
    """The `strategies` mode; returns the per-round records and the markdown table."""
    from .simulate import simulate

    if "random" not in strategies:
        strategies = ["random", *strategies]
    if target_labels > max_labels or target_labels < initial or (target_labels - initial) % max(step, 1):
        raise SettingError(
            "--target-labels must be a round's label count: initial + a multiple of step, at most max-labels."
        )
    fields = [
        "dataset",
        "model",
        "strategy",
        "seed",
        "round",
        "labels",
        "test_accuracy",
        "seconds",
        "train_steps",
        "fit_seconds",
        "error",
    ]
    csv_log = _CsvLog(out_dir / "benchmark-strategies.csv", fields)
    images = _load(dataset, {})
    curves: dict[tuple[str, int], list[dict]] = {}
    for strategy in strategies:
        for seed in seeds:
            try:
                spec = RunSpec(model, budget_s=budget_s, steps=steps, strategy=strategy, seed=seed)
                rows = simulate(
                    dataset,
                    spec,
                    initial=initial,
                    step=step,
                    max_labels=max_labels,
                    device=device,
                    images=images,
                    log=lambda _: None,
                )
            except Exception as error:  # noqa: BLE001
                rows = []
                csv_log.write(
                    {
                        "dataset": dataset,
                        "model": model,
                        "strategy": strategy,
                        "seed": seed,
                        "error": f"{type(error).__name__}: {error}",
                    }
                )
                log(f"{strategy} seed {seed}: failed ({type(error).__name__}: {error})")
            for row in rows:
                csv_log.write(row | {"error": None})
            curves[(strategy, seed)] = rows
            if rows:
                log(
                    f"{strategy} seed {seed}: "
                    + ", ".join(f"{r['labels']}:{r['test_accuracy']:.3f}" for r in rows)
                )

    def accuracy_at(strategy: str, labels: int) -> list[float]:
        return [
            r["test_accuracy"]
            for seed in seeds
            for r in curves.get((strategy, seed), [])
            if r["labels"] == labels
        ]

    random_at_target = accuracy_at("random", target_labels)
    target = float(np.mean(random_at_target)) if random_at_target else float("nan")
    lines = [
        (
            f"Target: random sampling's mean test accuracy at {target_labels} labels = {target:.3f} "
            f"({dataset}, {model}, {budget_s:g} s per round, initial {initial}, step {step}, {len(seeds)} seeds)."
        ),
        "",
        f"| strategy | labels to reach the target | accuracy at {target_labels} labels |",
        "| --- | --- | --- |",
    ]
    for strategy in strategies:
        needed = []
        for seed in seeds:
            hit = [r["labels"] for r in curves.get((strategy, seed), []) if r["test_accuracy"] >= target]
            if hit:
                needed.append(hit[0])
        missed = len(seeds) - len(needed)
        cell = (
            f"{np.mean(needed):.0f} ± {np.std(needed, ddof=1) if len(needed) > 1 else 0:.0f}"
            if needed
            else "-"
        )
        if missed:
            cell += f" ({missed} of {len(seeds)} seeds did not reach it by {max_labels})"
        lines.append(f"| {strategy} | {cell} | {mean_std(accuracy_at(strategy, target_labels))} |")
    # Steps, as the models table has them: a time budget buys fewer on a busy machine.
    steps_per_round = [
        int(r["train_steps"]) for rows in curves.values() for r in rows if r.get("train_steps") is not None
    ]
    if steps_per_round:
        median, low, high = int(np.median(steps_per_round)), min(steps_per_round), max(steps_per_round)
        lines += [
            "",
            f"Training steps per round: median {median:,} ({low:,} to {high:,}, {len(steps_per_round)} rounds).",
        ]
    table = "\n".join(lines)

    import plotly.graph_objects as go

    fig = go.Figure()
    for strategy in strategies:
        labels_axis = sorted({r["labels"] for seed in seeds for r in curves.get((strategy, seed), [])})
        fig.add_scatter(
            name=strategy,
            x=labels_axis,
            y=[float(np.mean(accuracy_at(strategy, n))) for n in labels_axis],
            mode="lines+markers",
        )
    if np.isfinite(target):
        fig.add_hline(y=target, line_dash="dot", annotation_text=f"random at {target_labels}")
    fig.update_layout(
        title=f"Active learning on {dataset} with {model} (mean over seeds)",
        xaxis_title="labels",
        yaxis_title="test accuracy",
    )
    _save_figure(fig, out_dir / "benchmark-strategies")
    records = [r for rows in curves.values() for r in rows]
    return records, table


def _given(value, default):
    """`value` unless it was not given: 0 is given (refused by the checks) where `or` made it the
    default (`--budget-s 0` trained 60 s; exploratory session)."""
    return default if value is None else value


def _split_list(text: str | None, default: list[str]) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] if text else default


def cmd_benchmark(args) -> int:
    import torch

    from .active import STRATEGIES
    from .models import MODELS
    from .runspec import check_threads

    if args.threads is not None:
        torch.set_num_threads(check_threads(args.threads))
    device = args.device or default_device()
    out_dir = Path(args.out_dir)
    seeds = list(range(check_int("--seeds", args.seeds, 1, 1000)))
    log = lambda line: print(line, file=sys.stderr, flush=True)
    start = time.monotonic()
    if args.mode == "report":
        inputs = [Path(p) for p in _split_list(args.inputs, [])]
        if not inputs:
            raise SettingError("--mode report needs --inputs: comma-separated benchmark-models.csv files.")
        table = report(inputs, out_dir)
    elif args.mode == "models":
        models = _split_list(args.models, list(MODELS))
        for model in models:
            check_model(model)
        datasets = _split_list(args.datasets, ["digits", "shapes", "fashion-mnist"])
        for dataset in datasets:
            check_source(dataset)  # before hours of runs, not one failure per run
        from .simulate import parse_overrides

        config = parse_overrides(args.config)
        # The settings too, once, before any run: each run refused them, the table said "failed"
        # for every one, exit 0, over the last benchmark-models.csv (exploratory session).
        if args.labels is not None:
            check_int("--labels", args.labels, 1, 1_000_000)
        for model in models:
            RunSpec(
                model,
                budget_s=_given(args.budget_s, 60.0),
                steps=args.steps,
                strategy="random",
                config=config,
            )
        _, table = run_models(
            models,
            datasets,
            seeds,
            out_dir,
            device,
            labels=args.labels,
            budget_s=args.budget_s,
            steps=args.steps,
            config=config,
            log=log,
        )
    else:
        strategies = _split_list(args.strategies, list(STRATEGIES))
        for strategy in strategies:
            check_strategy(strategy)
        datasets = _split_list(args.datasets, ["digits"])
        check_source(datasets[0])
        model = _split_list(args.models, ["supervised"])[0]
        RunSpec(model, budget_s=_given(args.budget_s, 60.0), steps=args.steps, strategy="random")
        _, table = run_strategies(
            datasets[0],
            model,
            strategies,
            seeds,
            out_dir,
            device,
            initial=args.initial,
            step=args.step,
            max_labels=args.max_labels,
            target_labels=args.target_labels,
            budget_s=_given(args.budget_s, 60.0),
            steps=args.steps,
            log=log,
        )
    if args.mode == "report":
        text = f"{table}\n\nMerged from {', '.join(str(p) for p in inputs)}; each run's machine is in its own .md.\n"
    else:
        text = f"{table}\n\nMachine: {machine(device)}; total {time.monotonic() - start:.0f} s.\n"
    (out_dir / f"benchmark-{args.mode}.md").write_text(text)
    print(text)
    print(
        json.dumps(
            {"mode": args.mode, "out_dir": str(out_dir), "seconds": round(time.monotonic() - start, 1)}
        )
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="compare models (or strategies) over data sets and seeds")
    p.add_argument(
        "--mode",
        choices=["models", "strategies", "report"],
        default="models",
        help="report: merge the CSVs of earlier models runs (--inputs) into one table and chart",
    )
    p.add_argument("--inputs", help="report mode: comma-separated benchmark-models.csv files")
    p.add_argument(
        "--models",
        help="comma-separated (models mode: default all; strategies mode: the first, default supervised)",
    )
    p.add_argument(
        "--datasets", help="comma-separated (default digits,shapes,fashion-mnist; strategies mode: the first)"
    )
    p.add_argument(
        "--strategies", help="comma-separated (strategies mode; default all, random always included)"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1")
    p.add_argument(
        "--labels", type=int, default=None, help="models mode: labels per run (default per data set)"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="training seconds per run or round (default per data set; 60 for strategies)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per run or round (whichever ends first)"
    )
    p.add_argument("--initial", type=int, default=20, help="strategies mode: first labels")
    p.add_argument("--step", type=int, default=10, help="strategies mode: labels per round")
    p.add_argument("--max-labels", type=int, default=300, help="strategies mode: stop here")
    p.add_argument(
        "--target-labels", type=int, default=100, help="strategies mode: random's accuracy here is the target"
    )
    p.add_argument("--out-dir", default="benchmark-results")
    p.add_argument(
        "--device", default=None, type=device_arg, help="cuda, cuda:N or cpu (default: cuda when present)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--config",
        action="append",
        metavar="KEY=VALUE",
        help="models mode: a model setting for every model run (repeatable)",
    )
    p.set_defaults(func=cmd_benchmark)
