"""One active-learning round, pure: train within the budget, predict, score the queue, measure.

The app's worker (`labeler.worker`) and the simulation (`labeler.simulate`, and the benchmarks
built on it) both call `run_round`, so a benchmark measures the loop the app runs. A round sees
numpy arrays only (no database, files or Streamlit):

- `pixels` (any array-like, e.g. a memmap) holds every item's image in [0, 255] (uint8),
  (R, C, H, W); `rows` (N,) says which row is item i;
- `split` (N,): "pool" items are trained on (labeled or not) and may be offered; "test" and
  "audit" items are never shown to the model while it trains;
- `labels` (N,): each item's answer, -1 for none; pool answers are trained on, audit answers
  give the audit accuracy;
- `truth` (N,): ground truth where known (built-in test splits), -1 elsewhere; it gives the
  test accuracy and nothing else.

The result holds the model, every item's probabilities, the queue scores (`ORDER BY score DESC`
is the queue: `active.queue_scores`), and the test and audit accuracies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import active
from .evaluate import wilson_interval
from .models import Progress, SSLModel, TrainingCancelled, check_finite
from .models.base import ProgressFn
from .runspec import RunSpec

POOL, TEST, AUDIT = "pool", "test", "audit"  # the values of db.models' split constants
CHUNK = 4096  # images converted to float at once while predicting: bounds memory on big pools


@dataclass
class RoundResult:
    model: SSLModel
    probs: np.ndarray  # (N, K) float64
    embed: np.ndarray | None  # (N, D), when the strategy, the diverse batch or the map needs it
    scores: np.ndarray  # (N,) queue scores; -1 for items never offered
    xy: np.ndarray | None  # (N, 2) the latent map, with `with_map`
    labels_used: int
    steps: int
    losses: dict[str, float]
    notes: list[str]
    timing: dict[str, float]
    test_accuracy: float | None
    # On the audit answers of the round's start (what `simulate` reports); the worker measures a
    # run on those standing when it is stored instead (`runs.audit_now`).
    audit_n: int
    audit_correct: int
    audit_interval: tuple[float | None, float | None] = (None, None)

    @property
    def audit_accuracy(self) -> float | None:
        return self.audit_correct / self.audit_n if self.audit_n else None

    def prediction_columns(self) -> dict[str, np.ndarray]:
        """predicted, confidence, entropy, margin, score and the map's x, y per item."""
        probs = self.probs
        if probs.shape[1] > 1:
            top2 = -np.partition(-probs, 1, axis=1)[:, :2]
        else:
            top2 = np.c_[probs, probs * 0]
        xy = self.xy if self.xy is not None else np.zeros((len(probs), 2))
        return {
            "predicted": probs.argmax(axis=1),
            "confidence": top2[:, 0],
            "entropy": active.entropy(probs),
            "margin": top2[:, 0] - top2[:, 1],
            "score": self.scores,
            "x": xy[:, 0],
            "y": xy[:, 1],
        }


def images(pixels: Any, rows: np.ndarray) -> np.ndarray:
    """float32 (len(rows), C, H, W) in [0, 1] from pixels in [0, 255]."""
    return np.asarray(pixels[rows], dtype=np.float32) / 255.0


def predict(
    model: SSLModel, pixels: Any, rows: np.ndarray, embed: bool, mc_samples: int = 0
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Probabilities (N, K), embeddings (N, D) or None, MC samples (S, N, K) or None of the
    items at `rows`, CHUNK images at a time."""
    probs, embeds, mc = [], [], []
    for start in range(0, len(rows), CHUNK):
        x = images(pixels, rows[start : start + CHUNK])
        if embed:
            p, e = model.predict_and_embed(x)
            embeds.append(np.asarray(e, dtype=np.float32).reshape(len(x), -1))
        else:
            p = model.predict_proba(x)
        probs.append(np.asarray(p, dtype=np.float64))
        if mc_samples:
            mc.append(np.asarray(model.mc_proba(x, samples=mc_samples), dtype=np.float64))
    k = model.num_classes
    out_probs = np.concatenate(probs) if probs else np.zeros((0, k))
    out_embed = (np.concatenate(embeds) if embeds else np.zeros((0, 1), np.float32)) if embed else None
    out_mc = (np.concatenate(mc, axis=1) if mc else np.zeros((mc_samples, 0, k))) if mc_samples else None
    check_finite(out_probs, what="predictions")
    return out_probs, out_embed, out_mc


def run_round(
    spec: RunSpec,
    pixels: Any,
    split: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    rows: np.ndarray | None = None,
    device: str = "cpu",
    warm_start: str | Path | SSLModel | None = None,
    progress: ProgressFn | None = None,
    with_map: bool = False,
    notes: list[str] | None = None,
) -> RoundResult:
    """Train `spec.model` on the pool within `spec`'s budget (warm-starting when it fits and the
    model warm-starts), then predict every item and score the queue by `spec.strategy` (see the module docstring).

    `notes` (optional) receives the reasons for training fresh as they arise, so a caller keeps
    them when the round fails later. Raises what `train_model` raises: TrainingCancelled,
    TrainingDiverged, SettingError."""
    from .train import train_model

    start = time.monotonic()
    split = np.asarray(split)
    labels = np.asarray(labels, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    rows = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    pool = np.flatnonzero(split == POOL)
    trained = labels[pool] >= 0
    x = images(pixels, rows[pool])  # (P, C, H, W)
    seen: dict[str, Any] = {"step": 0, "losses": {}}

    def on_progress(report: Progress) -> bool:
        check_finite(report.losses, report.step)
        if "fit_started" not in seen:
            # The model's own clock starts when fitting does: what came before is set-up.
            seen["fit_started"] = time.monotonic() - report.seconds
        seen.update(step=max(seen["step"], int(report.step)), losses=dict(report.losses))
        return bool(progress(report)) if progress is not None else False

    notes = [] if notes is None else notes
    model = train_model(
        spec,
        x,
        np.flatnonzero(trained),
        labels[pool][trained],
        num_classes,
        device=device,
        progress=on_progress,
        warm_start=warm_start,
        notes=notes,
    )
    del x
    fit_ended = time.monotonic()
    if progress is not None:  # trained: the rest (predicting every image) shows as its own phase
        fit_seconds = fit_ended - seen.get("fit_started", start)
        # No losses: the fit's last report stored them (a second loss point at the same step).
        if progress(Progress(step=seen["step"], seconds=fit_seconds, fraction=1.0, losses={})):
            raise TrainingCancelled()  # a cancel now spares minutes of predicting

    needs = active.STRATEGIES[spec.strategy].needs
    want_embed = with_map or needs == "embeddings" or spec.diverse_batch > 0
    mc_samples = spec.mc_samples if needs == "mc_probs" else 0
    probs, embed, mc = predict(model, pixels, rows, want_embed, mc_samples)
    answered = labels >= 0
    scores = active.queue_scores(
        spec.strategy,
        probs,
        embed,
        answered,
        split == POOL,
        mc_probs=mc,
        diverse_batch=spec.diverse_batch,
        seed=spec.seed,
    )
    xy = None
    if with_map:
        from .latent import project_2d

        xy = project_2d(embed, seed=spec.seed)

    predicted = probs.argmax(axis=1)
    test = (split == TEST) & (truth >= 0)
    test_accuracy = float(np.mean(predicted[test] == truth[test])) if test.any() else None
    audit = (split == AUDIT) & answered
    audit_n, audit_correct = int(audit.sum()), int(np.sum(predicted[audit] == labels[audit]))
    interval = wilson_interval(audit_correct, audit_n) if audit_n else (None, None)
    now = time.monotonic()
    fit_started = seen.get("fit_started", start)
    return RoundResult(
        model=model,
        probs=probs,
        embed=embed,
        scores=scores,
        xy=xy,
        labels_used=int(trained.sum()),
        steps=int(seen["step"]),
        losses=seen["losses"],
        notes=notes,
        timing={
            "before_training_s": round(fit_started - start, 3),
            "training_s": round(fit_ended - fit_started, 3),
            "after_training_s": round(now - fit_ended, 3),
        },
        test_accuracy=test_accuracy,
        audit_n=audit_n,
        audit_correct=audit_correct,
        audit_interval=interval,
    )


def queue_head(scores: np.ndarray, k: int) -> np.ndarray:
    """The first k items of the queue (what the Label page offers next), best first."""
    offered = np.flatnonzero(scores >= 0)
    order = offered[np.argsort(-scores[offered], kind="stable")]
    return order[:k]
