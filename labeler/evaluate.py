"""Accuracy, its confidence interval, confusion matrix, calibration and the learning curve.

Where an accuracy comes from matters (see DESIGN.md, "Honest accuracy"): the test split of a
built-in data set, or the audit set (a random sample the user labeled and training never saw).
Actively chosen labels are not a random sample, so they never give an accuracy estimate here.

Wilson score interval (Wilson 1927) for a proportion p^ = s/n at level 1 - alpha, z = z_{1-alpha/2}:

    centre = (p^ + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p^ (1 - p^) / n + z^2 / 4n^2)

It stays inside [0, 1] and behaves well for small n and p^ near 0 or 1, unlike p^ +- z se.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix as _sk_confusion
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AUDIT, DONE, TEST, Item, LabelEvent, Prediction, Run
from db.queries import current_answers_query


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) for the proportion successes/n; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    return _sk_confusion(np.asarray(y_true), np.asarray(y_pred), labels=list(range(num_classes)))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) recall of each class; NaN for a class with no examples."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE (Guo et al. 2017): sum_b |B|/n * |acc(B) - conf(B)| over equal-width confidence bins."""
    table = reliability_table(confidence, correct, bins)
    n = table["count"].sum()
    if n == 0:
        return float("nan")
    return float((table["count"] / n * (table["accuracy"] - table["confidence"]).abs()).fillna(0).sum())


def reliability_table(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per confidence bin: its range, count, mean confidence and accuracy (for a reliability plot)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        rows.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "count": int(mask.sum()),
                "confidence": float(confidence[mask].mean()) if mask.any() else float("nan"),
                "accuracy": float(correct[mask].mean()) if mask.any() else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def summarize(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, confidence: float = 0.95) -> dict:
    """Accuracy with its Wilson interval, the confusion matrix and per-class accuracy."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n, correct = len(y_true), int(np.sum(y_true == y_pred))
    low, high = wilson_interval(correct, n, confidence)
    return {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "low": low,
        "high": high,
        "confusion": confusion_matrix(y_true, y_pred, num_classes),
        "per_class": per_class_accuracy(y_true, y_pred, num_classes),
    }


# From the database ----------------------------------------------------------------------------


def _current_labels_of(session: Session, project_id: int) -> dict[int, int]:
    from db.queries import current_labels

    return current_labels(session, project_id)


def learning_curve(session: Session, project_id: int) -> pd.DataFrame:
    """One row per finished run, in order: labels used, model, and its honest accuracies."""
    runs = session.scalars(
        select(Run).where(Run.project_id == project_id, Run.status == DONE).order_by(Run.finished_at, Run.id)
    )
    rows = [
        {
            "run_id": run.id,
            "model": run.model,
            "labels": run.labels_used,
            "test_accuracy": run.test_accuracy,
            "audit_accuracy": run.audit_accuracy,
            "audit_low": run.audit_low,
            "audit_high": run.audit_high,
            "audit_n": run.audit_n,
            "seconds": run.seconds,
            "finished_at": run.finished_at,
        }
        for run in runs
    ]
    columns = [
        "run_id",
        "model",
        "labels",
        "test_accuracy",
        "audit_accuracy",
        "audit_low",
        "audit_high",
        "audit_n",
        "seconds",
        "finished_at",
    ]
    return pd.DataFrame(rows, columns=columns)


def run_report(
    session: Session, run_id: int, split: str = TEST, num_classes: int | None = None
) -> dict | None:
    """`summarize` of one run's predictions against the test split's truth (split="test") or
    against the user's labels on the audit set (split="audit"); None when there is nothing to
    compare with."""
    run = session.get(Run, run_id)
    if run is None:
        return None
    if num_classes is None:
        from db.queries import class_names

        num_classes = len(class_names(session, run.project_id))
    rows = session.execute(
        select(Item.id, Item.truth, Prediction.predicted)
        .join(Prediction, Prediction.item_id == Item.id)
        .where(Prediction.run_id == run_id, Item.split == split)
    ).all()
    if split == AUDIT:
        labels = _current_labels_of(session, run.project_id)
        pairs = [(labels[item_id], predicted) for item_id, _, predicted in rows if item_id in labels]
    else:
        pairs = [(truth, predicted) for _, truth, predicted in rows if truth is not None]
    if not pairs:
        return None
    y_true, y_pred = np.array(pairs).T
    return summarize(y_true, y_pred, num_classes) | {"source": split}


# The answers given with the model's guess on screen for that image: the one-image box and grid
# pages. A bulk label names one class for a whole selection, a History correction changes an
# earlier answer, and audit images never show a guess: no verdict on the guess, so left out.
_GUESS_SHOWN = ("single", "grid")


def _answers_to_guesses(session: Session, project_id: int) -> pd.DataFrame:
    """Current answers (each image's newest not undone) that were given with a model guess on
    screen (`_GUESS_SHOWN`, never on an audit image): run_id (the run that guessed), answer,
    guess; one row per answer. An answer corrected since is no verdict on the guess any more (it
    was counted: agreement stayed "13 of 15" after two such answers were corrected)."""
    rows = session.execute(
        current_answers_query(
            project_id, LabelEvent.predicted_run_id, LabelEvent.class_index, LabelEvent.predicted_index
        )
        .join(Item, Item.id == LabelEvent.item_id)
        .where(
            LabelEvent.project_id == project_id,
            LabelEvent.undone.is_(False),
            LabelEvent.predicted_index.is_not(None),
            LabelEvent.class_index >= 0,  # an "ignore" answer is no verdict on the guess
            LabelEvent.kind.in_(_GUESS_SHOWN),
            Item.split != AUDIT,
        )
    ).all()
    return pd.DataFrame(rows, columns=["run_id", "answer", "guess"])


def _agreement(agree: int, n: int, confidence: float) -> dict:
    low, high = wilson_interval(agree, n, confidence)
    return {"n": n, "agree": agree, "rate": agree / n if n else float("nan"), "low": low, "high": high}


def agreement_by_run(session: Session, project_id: int, confidence: float = 0.95) -> pd.DataFrame:
    """Agreement of the person's answers with the guesses of each run that made them, one row
    per run in run order: run_id, n, agree, rate, low, high (Wilson interval). A rise says the
    guesses shown while labeling are getting more useful (the images asked about get harder as
    the model improves, so a flat line can still hide progress)."""
    events = _answers_to_guesses(session, project_id).dropna(subset=["run_id"])
    agreed = (events["answer"] == events["guess"]).groupby(events["run_id"].astype(int)).agg(["sum", "size"])
    rows = [
        {"run_id": run_id, **_agreement(int(agree), int(n), confidence)}
        for run_id, (agree, n) in agreed.iterrows()
    ]
    return pd.DataFrame(rows, columns=["run_id", "n", "agree", "rate", "low", "high"])


def label_agreement(session: Session, project_id: int, confidence: float = 0.95) -> dict:
    """How often the person's answer equalled the model's prior guess (current labels that had a
    prediction), with a Wilson interval. On actively chosen (hard) items this understates the
    model's accuracy: it is a signal of how useful the guesses are, not an accuracy estimate."""
    events = _answers_to_guesses(session, project_id)
    return _agreement(int((events["answer"] == events["guess"]).sum()), len(events), confidence)
