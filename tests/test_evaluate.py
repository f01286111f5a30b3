"""Accuracy, the Wilson interval, confusion matrix, calibration, learning curve, agreement."""

from __future__ import annotations

import numpy as np
import pytest

from db import queries
from db.models import DONE, Prediction, Run, utcnow
from labeler import evaluate


def test_wilson_interval_known_values():
    # 8 of 10 at 95 %: the textbook Wilson interval is (0.490, 0.943).
    low, high = evaluate.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert evaluate.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = evaluate.wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and 0.6 < low < 0.75  # never above 1, not degenerate
    assert evaluate.wilson_interval(50, 100, 0.99)[0] < evaluate.wilson_interval(50, 100, 0.9)[0]


def test_confusion_and_per_class_accuracy():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    cm = evaluate.confusion_matrix(y_true, y_pred, 4)
    assert cm.shape == (4, 4) and cm[0, 1] == 1 and cm[1, 1] == 2 and cm.sum() == 6
    per = evaluate.per_class_accuracy(y_true, y_pred, 4)
    np.testing.assert_allclose(per[:3], [0.5, 2 / 3, 1.0])
    assert np.isnan(per[3])
    assert evaluate.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    s = evaluate.summarize(y_true, y_pred, 4)
    assert s["n"] == 6 and s["low"] < s["accuracy"] < s["high"]


def test_calibration_error_zero_when_confidence_matches_accuracy():
    confidence = np.array([0.75] * 4 + [0.25] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    assert evaluate.expected_calibration_error(confidence, correct) == pytest.approx(0.0)
    assert evaluate.expected_calibration_error(np.ones(4), np.zeros(4)) == pytest.approx(1.0)


def test_learning_curve_report_and_agreement(Session, tiny_project):
    pid = tiny_project.id
    with Session.begin() as session:
        items = queries.items(session, pid)
        test_items = [i for i in items if i.split == "test"]
        pool = [i for i in items if i.split == "pool"]
        for labels, acc in ((10, 0.6), (20, 0.8)):
            run = Run(
                project_id=pid,
                model="m2",
                status=DONE,
                labels_used=labels,
                test_accuracy=acc,
                finished_at=utcnow(),
            )
            session.add(run)
            session.flush()
        # Predictions of the newest run: right on every test item but the first.
        for item in items:
            wrong = item.id == test_items[0].id
            predicted = (item.truth + 1) % 2 if wrong else item.truth
            session.add(
                Prediction(
                    run_id=run.id,
                    item_id=item.id,
                    predicted=predicted,
                    confidence=0.9,
                    entropy=0.1,
                    margin=0.8,
                )
            )
        session.flush()
        queries.add_label(session, pool[0], pool[0].truth)  # agrees with the prediction
        queries.add_label(session, pool[1], (pool[1].truth + 1) % 2)  # disagrees
    with Session() as session:
        curve = evaluate.learning_curve(session, pid)
        assert curve["labels"].tolist() == [10, 20] and curve["test_accuracy"].tolist() == [0.6, 0.8]
        report = evaluate.run_report(session, run.id)
        assert report["n"] == len(test_items)
        assert report["accuracy"] == pytest.approx((len(test_items) - 1) / len(test_items))
        assert evaluate.run_report(session, run.id, split="audit") is None  # no audit labels here
        agreement = evaluate.label_agreement(session, pid)
        assert agreement["n"] == 2 and agreement["agree"] == 1 and agreement["low"] < 0.5 < agreement["high"]
    with Session.begin() as session:
        pool = [i for i in queries.items(session, pid) if i.split == "pool"]
        # No guess on screen for these: a bulk label, a History correction, an audit image.
        queries.add_label(session, pool[2], (pool[2].truth + 1) % 2, kind="bulk")
        queries.add_label(session, pool[0], (pool[0].truth + 1) % 2, kind="correction")
        pool[3].split = "audit"  # an audit image: its guess is never shown
        queries.add_label(session, pool[3], (pool[3].truth + 1) % 2)
    with Session() as session:
        # None of them is a verdict on a guess shown, and the corrected answer (it agreed) is no
        # verdict any more: it was counted, "13 of 15" after two such corrections (exploratory).
        now = evaluate.label_agreement(session, pid)
        assert (now["n"], now["agree"]) == (1, 0)
