"""Headless active learning with an oracle: `python -m labeler simulate ...`.

Purely in memory (no database): the data set's pool is the unlabeled pool, its test split the
evaluation set, and an oracle answers every query with the ground truth. Each round trains the
model within `budget_s` seconds (or `steps` steps), warm-starting from the previous round's
model as the app does (M2 trains afresh, see `SSLModel.warm_starts`), measures test accuracy,
and asks for `step` more labels chosen by the strategy, until `max_labels`. `step=0` is one round on the initial labels (what benchmarks use to compare
models at a fixed number of labels).

The initial labels are drawn at random, balanced over the classes (as in the semi-supervised
literature's "100 labels" settings), never in file order. A data set without a test split
(e.g. folder:PATH with class sub-folders) gets a stratified random 20 % of its pool held out.

Output: one CSV row per round (labels, test_accuracy, seconds, ...) and, last on stdout, one
JSON line for the final round, the shape benchmarks parse:
{"dataset": ..., "model": ..., "strategy": ..., "labels": 100, "test_accuracy": 0.83, "seconds": 612.4}
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .active import STRATEGIES
from .config import SettingError, default_device, device_arg
from .data.base import DataError, ImageSet
from .runspec import RunSpec

CSV_FIELDS = [
    "labels",
    "test_accuracy",
    "seconds",
    "round",
    "train_seconds",
    "train_steps",
    "fit_seconds",
    "dataset",
    "model",
    "strategy",
    "seed",
]


def balanced_initial(truth: np.ndarray, n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n random indices of `truth`, as close to n / K per class as the classes allow."""
    n = min(int(n), len(truth))
    by_class = [rng.permutation(np.flatnonzero(truth == k)) for k in range(num_classes)]
    quota = np.full(num_classes, n // num_classes)
    quota[rng.choice(num_classes, size=n % num_classes, replace=False)] += 1
    picked = [members[:q] for members, q in zip(by_class, quota)]
    chosen = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    if len(chosen) < n:  # a class had too few examples: fill at random from the rest
        rest = np.setdiff1d(np.arange(len(truth)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=n - len(chosen), replace=False)])
    return rng.permutation(chosen).astype(np.int64)


def _split(images: ImageSet, seed: int, log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(images.truth)
    splits = np.asarray(images.splits)
    pool = np.flatnonzero((splits == "pool") & (truth >= 0))
    test = np.flatnonzero((splits == "test") & (truth >= 0))
    if len(pool) == 0:
        raise DataError(
            "simulate needs ground truth for the pool: use a built-in data set or a folder with class sub-folders."
        )
    if len(test) == 0:
        rng = np.random.default_rng(seed + 1)
        held = []
        for k in np.unique(truth[pool]):
            members = rng.permutation(pool[truth[pool] == k])
            held.append(members[: max(1, len(members) // 5)])
        test = np.sort(np.concatenate(held))
        pool = np.setdiff1d(pool, test)
        log(
            f"no test split: holding out a stratified random {len(test)} of {len(test) + len(pool)} images as the test set"
        )
    return pool, test


def simulate(
    dataset: str,
    spec: RunSpec,
    initial: int = 20,
    step: int = 10,
    max_labels: int = 100,
    out: str | Path | None = None,
    device: str | None = None,
    images: ImageSet | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the loop with `spec` (the model, the budget per round, the strategy, its diverse
    batch, the seed: round r trains with seed + r) and return one dict per round (see
    CSV_FIELDS); write them to `out` as CSV. Each round is the app's (`run_round`), and the
    oracle answers the head of its queue, as a person on the Label page would."""
    from .round import POOL, TEST, queue_head, run_round

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    device = device or default_device()
    if initial < 1:
        raise SettingError(f"--initial must be at least 1, got {initial}.")
    if step < 0:
        raise SettingError(f"--step must be 0 (one round) or more, got {step}.")
    if step > 0 and max_labels < initial:
        raise SettingError(f"--max-labels ({max_labels}) must be at least --initial ({initial}).")

    if images is None:
        from .data import read_source

        images = read_source(dataset)
    num_classes = max(len(images.classes), int(np.max(images.truth)) + 1)
    pool, test = _split(images, spec.seed, log)
    if initial > len(pool):
        raise SettingError(f"--initial ({initial}) is more than the {len(pool)} images in the pool.")
    rows = np.concatenate([pool, test])  # items: the pool, then the test split
    split = np.array([POOL] * len(pool) + [TEST] * len(test))
    y_pool = np.asarray(images.truth[pool], dtype=np.int64)
    truth = np.concatenate([np.full(len(pool), -1), images.truth[test]]).astype(np.int64)

    rng = np.random.default_rng(spec.seed)
    labeled = np.zeros(len(rows), dtype=bool)
    labeled[balanced_initial(y_pool, initial, num_classes, rng)] = True

    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writeheader()

    rows_out: list[dict[str, Any]] = []
    current = None
    start = time.monotonic()
    for round_ in itertools.count():
        labels = np.where(
            labeled, np.concatenate([y_pool, np.full(len(test), -1)]), -1
        )  # the oracle's answers
        result = run_round(
            # Round r draws from seed + r (the app's runs are separate runs with the project's seed).
            spec.with_seed(spec.seed + round_),
            images.pixels,
            split,
            labels,
            truth,
            num_classes,
            rows=rows,
            device=device,
            warm_start=current,
        )
        current = result.model
        train_seconds = result.timing["before_training_s"] + result.timing["training_s"]
        accuracy = result.test_accuracy
        row = {
            "labels": int(labeled.sum()),
            "test_accuracy": round(accuracy, 4),
            "seconds": round(time.monotonic() - start, 1),
            "round": round_,
            "train_seconds": round(train_seconds, 1),
            "train_steps": result.steps,
            "fit_seconds": round(result.timing["training_s"], 3),  # the fit alone: steps / this = speed
            "dataset": dataset,
            "model": spec.model,
            "strategy": spec.strategy,
            "seed": spec.seed,
        }
        rows_out.append(row)
        if out is not None:  # row by row, so a long run stopped midway keeps its rounds
            with open(out, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        per_class = np.bincount(y_pool[labeled[: len(pool)]], minlength=num_classes)  # (K,)
        log(
            f"round {round_}: {row['labels']} labels, test accuracy {accuracy:.4f}, "
            f"trained {train_seconds:.1f} s ({result.steps} steps), total {row['seconds']:.1f} s, "
            f"labels per class {'/'.join(map(str, per_class))}" + "".join(f" ({n})" for n in result.notes)
        )
        if step == 0 or labeled.sum() >= max_labels or labeled[: len(pool)].all():
            break
        k = int(min(step, max_labels - labeled.sum()))
        labeled[queue_head(result.scores, k)] = True  # the oracle answers the queue's head
    return rows_out


def final_json(rows: list[dict[str, Any]]) -> str:
    last = rows[-1]
    return json.dumps(
        {key: last[key] for key in ("dataset", "model", "strategy", "labels", "test_accuracy", "seconds")}
    )


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """["lr=0.001", "hidden=[256,128]"] -> {"lr": 0.001, "hidden": [256, 128]} (JSON values, else text)."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"--config takes KEY=VALUE, got {pair!r}.")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def cmd_simulate(args) -> int:
    import torch

    spec = RunSpec(
        args.model,
        budget_s=args.budget_s,
        steps=args.steps,
        strategy=args.strategy,
        seed=args.seed,
        config=parse_overrides(args.config),
        diverse_batch=0 if args.no_diverse else RunSpec.diverse_batch,
        threads=args.threads,
    )
    if spec.threads:
        torch.set_num_threads(spec.threads)
    rows = simulate(
        args.dataset,
        spec,
        initial=args.initial,
        step=args.step,
        max_labels=args.max_labels,
        out=args.out,
        device=args.device,
    )
    print(final_json(rows), flush=True)
    return 0


def register(subparsers) -> None:
    from .models import MODELS

    p = subparsers.add_parser("simulate", help="active learning with a ground-truth oracle, no database")
    p.add_argument("--dataset", required=True, help="digits, fashion-mnist, mnist or folder:PATH")
    p.add_argument("--model", required=True, choices=list(MODELS))
    p.add_argument("--strategy", default="entropy", choices=list(STRATEGIES))
    p.add_argument(
        "--initial", type=int, default=20, help="labels before the first round (balanced per class)"
    )
    p.add_argument("--step", type=int, default=10, help="labels added per round; 0 = one round on --initial")
    p.add_argument("--max-labels", type=int, default=100)
    p.add_argument("--budget-s", type=float, default=60.0, help="training seconds per round")
    p.add_argument("--steps", type=int, default=None, help="training steps per round (whichever ends first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV file: one row per round")
    p.add_argument("--device", default=None, type=device_arg, help="cuda or cpu (default: cuda when present)")
    p.add_argument(
        "--config", action="append", metavar="KEY=VALUE", help="model setting override (repeatable)"
    )
    p.add_argument(
        "--no-diverse", action="store_true", help="take the top-k scores without spreading the batch"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_simulate)
