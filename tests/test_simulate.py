"""The headless simulation: rounds, CSV rows, the final JSON line, and the benchmark on a tiny budget."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from labeler import simulate as sim
from labeler.cli import main
from labeler.runspec import RunSpec
from tests.conftest import tiny_image_set


def test_balanced_initial_is_balanced_random_and_unique():
    truth = np.repeat(np.arange(4), 25)
    rng = np.random.default_rng(0)
    picks = sim.balanced_initial(truth, 20, 4, rng)
    assert len(set(picks.tolist())) == 20
    assert np.bincount(truth[picks], minlength=4).tolist() == [5, 5, 5, 5]
    assert sorted(picks.tolist()) != list(range(20))
    # A class too small for its share: the rest is filled from the others.
    truth = np.array([0] * 2 + [1] * 50)
    picks = sim.balanced_initial(truth, 10, 2, rng)
    assert len(set(picks.tolist())) == 10 and np.sum(truth[picks] == 0) == 2


@pytest.mark.parametrize("strategy", ["entropy", "kcenter"])
def test_simulate_on_digits_writes_a_row_per_round(tmp_path, strategy):
    out = tmp_path / "curve.csv"
    rows = sim.simulate(
        "digits",
        RunSpec("supervised", strategy=strategy, budget_s=30, steps=20, seed=0),
        initial=20,
        step=10,
        max_labels=40,
        out=out,
        device="cpu",
        log=lambda _: None,
    )
    assert [r["labels"] for r in rows] == [20, 30, 40]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert rows[-1]["test_accuracy"] > 0.3  # 10 classes: far above chance after 40 labels
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert [int(r["labels"]) for r in written] == [20, 30, 40]
    assert {"labels", "test_accuracy", "seconds"} <= set(written[0])


def test_step_zero_is_one_round_and_cli_prints_the_json_line(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--dataset",
            "digits",
            "--model",
            "labelspread",
            "--strategy",
            "random",
            "--initial",
            "30",
            "--step",
            "0",
            "--budget-s",
            "30",
            "--steps",
            "10",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "c.csv"),
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert list(result) == ["dataset", "model", "strategy", "labels", "test_accuracy", "seconds"]
    assert result["dataset"] == "digits" and result["labels"] == 30 and 0.3 < result["test_accuracy"] <= 1.0


def test_a_set_without_test_split_holds_out_a_stratified_part():
    images = tiny_image_set(n=60, classes=2, test=0)
    messages = []
    rows = sim.simulate(
        "tiny",
        RunSpec("supervised", strategy="margin", budget_s=30, steps=5),
        initial=4,
        step=4,
        max_labels=8,
        device="cpu",
        images=images,
        log=messages.append,
    )
    assert [r["labels"] for r in rows] == [4, 8]
    assert any("holding out" in m for m in messages)
    # Each round's line says how many labels each class has (the initial ones are balanced).
    counts = [re.search(r"labels per class ([\d/]+)", m) for m in messages if m.startswith("round")]
    per_class = [[int(c) for c in found.group(1).split("/")] for found in counts]
    assert per_class[0] == [2, 2] and sum(per_class[1]) == 8 and len(per_class[1]) == 2
    assert all(after >= before for before, after in zip(per_class[0], per_class[1]))  # labels stay


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="strategy"):
        RunSpec("supervised", strategy="nope")
    with pytest.raises(ValueError, match="max-labels"):
        sim.simulate("digits", RunSpec("supervised"), initial=50, step=10, max_labels=20, log=lambda _: None)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sim.parse_overrides(["lr"])
    assert sim.parse_overrides(["lr=0.1", "name=x"]) == {"lr": 0.1, "name": "x"}


def test_benchmark_models_mode_on_a_tiny_budget(tmp_path, capsys):
    code = main(
        [
            "benchmark",
            "--mode",
            "models",
            "--models",
            "supervised,labelspread",
            "--datasets",
            "digits",
            "--seeds",
            "2",
            "--labels",
            "20",
            "--steps",
            "10",
            "--budget-s",
            "30",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    text = (tmp_path / "benchmark-models.md").read_text()
    assert "| supervised | " in text and "Machine:" in text
    with open(tmp_path / "benchmark-models.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(not r["error"] for r in rows)
    supervised = [r for r in rows if r["model"] == "supervised"]
    assert [r["train_steps"] for r in supervised] == ["10", "10"]
    # The speed is the fit's own: steps over the fit's seconds, not the round's.
    assert all(
        0 < float(r["fit_seconds"]) <= float(r["seconds"]) + 0.05 for r in supervised
    )  # seconds: 0.1 s steps
    speed = np.mean([10 / float(r["fit_seconds"]) for r in supervised])
    assert f"(n=2, 10 steps, {speed:,.1f} steps/s)" in text
    assert (tmp_path / "benchmark-models.html").exists()


def test_benchmark_strategies_mode_reports_steps(tmp_path, capsys):
    """The strategies table and CSV said nothing of steps (exploratory session): a time budget
    buys fewer on a busy machine, so every benchmark reports them."""
    args = ["benchmark", "--mode", "strategies", "--models", "supervised", "--datasets", "digits"]
    args += [
        "--strategies",
        "entropy",
        "--seeds",
        "1",
        "--initial",
        "20",
        "--step",
        "10",
        "--max-labels",
        "30",
    ]
    args += ["--target-labels", "30", "--steps", "7", "--budget-s", "30", "--device", "cpu"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    with open(tmp_path / "benchmark-strategies.csv") as f:
        rows = list(csv.DictReader(f))
    assert (
        len(rows) == 4
        and {r["train_steps"] for r in rows} == {"7"}
        and all(float(r["fit_seconds"]) > 0 for r in rows)
    )
    assert (
        "Training steps per round: median 7 (7 to 7, 4 rounds)."
        in (tmp_path / "benchmark-strategies.md").read_text()
    )


def test_benchmark_report_merges_runs(tmp_path):
    from labeler.benchmark import report

    fields = "dataset,model,seed,labels,budget_s,test_accuracy,seconds,error\n"
    (tmp_path / "a.csv").write_text(fields + "digits,m2,0,30,60,0.90,60,\ndigits,m2,1,30,60,0.80,60,\n")
    (tmp_path / "b.csv").write_text(
        fields + "fashion-mnist,m2,0,100,600,0.7,600,\ndigits,sslgan,0,30,60,,1,Boom\n"
    )
    table = report([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out")
    lines = table.splitlines()
    assert lines[0] == "| model | digits (30 labels, 60 s) | fashion-mnist (100 labels, 600 s) |"
    assert lines[2] == "| m2 | 0.850 ± 0.071 (n=2) | 0.700 (n=1) |"
    assert lines[3] == "| sslgan | - (n=0), 1 failed | not run |"
    html = (tmp_path / "out" / "benchmark-models.html").read_text()
    assert "digits target" in html and "fashion-mnist target" in html  # the dashed target lines
