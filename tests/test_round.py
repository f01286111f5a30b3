"""One active-learning round: pure, the same for the worker and the simulation."""

from __future__ import annotations

import numpy as np
import pytest

from db import runs as run_queries
from db.models import Prediction
from labeler import projects
from labeler import train as train_module
from labeler.models import MODELS, Budget
from labeler.models.baselines import Supervised
from labeler.round import predict, queue_head, run_round
from labeler.runspec import RunSpec
from labeler.worker import Worker
from tests.conftest import tiny_image_set

SMALL = {"hidden": [8], "batch_size": 8}


def items(n=30, test=6, audit=4):
    images = tiny_image_set(n=n, test=test)
    split = np.array(images.splits, dtype=object)
    split[n - test - audit : n - test] = "audit"
    labels = np.full(n, -1)
    labels[:8] = images.truth[:8]  # pool answers
    labels[n - test - audit : n - test - 2] = images.truth[n - test - audit : n - test - 2]  # audit answers
    truth = np.where(split == "test", images.truth, -1)
    return images, split.astype(str), labels, truth


def test_a_round_trains_on_pool_answers_and_measures_on_test_and_audit(monkeypatch):
    images, split, labels, truth = items()
    seen = {}
    real = train_module.train_model

    def spy(spec, x, labeled_idx, labels_, num_classes, **kw):
        seen.update(rows=len(x), labeled=len(labeled_idx))
        return real(spec, x, labeled_idx, labels_, num_classes, **kw)

    monkeypatch.setattr(train_module, "train_model", spy)
    spec = RunSpec("supervised", steps=5, config=SMALL)
    result = run_round(spec, images.pixels, split, labels, truth, 2)
    assert seen == {"rows": int(np.sum(split == "pool")), "labeled": 8}  # no test or audit image seen
    assert result.labels_used == 8 and result.steps == 5
    assert result.audit_n == 2 and result.audit_interval[0] is not None
    predicted = result.probs.argmax(1)
    test = split == "test"
    assert result.test_accuracy == pytest.approx(np.mean(predicted[test] == truth[test]))
    offered = result.scores >= 0
    assert np.array_equal(offered, (split == "pool") & (labels < 0))  # answered, test, audit: never
    head = queue_head(result.scores, 5)
    assert len(head) == 5 and all(offered[head])


def test_a_round_reports_the_end_of_training_before_it_predicts(monkeypatch):
    """Predicting every image after the budget took minutes on 70,000 images (an exploratory
    session: 191 s after a 20 s budget), while the status said "training, 96 %", frozen (a time
    budget's last report comes before its end). The round reports fraction 1.0, without losses,
    once fitting ends, so the worker writes it and the page says so; a cancel then stops it."""
    import labeler.round as round_module
    from labeler.models import TrainingCancelled
    from labeler.ui import parts

    images, split, labels, truth = items()
    order = []
    real = round_module.predict
    monkeypatch.setattr(round_module, "predict", lambda *a, **k: order.append("predict") or real(*a, **k))
    spec = RunSpec("supervised", steps=5, config=SMALL)

    def round_with(progress):
        return run_round(spec, images.pixels, split, labels, truth, 2, progress=progress)

    round_with(lambda p: order.append((p.fraction, bool(p.losses))))
    assert order[-3:] == [(1.0, True), (1.0, False), "predict"]  # the fit's last report, then the round's
    order.clear()
    with pytest.raises(TrainingCancelled):  # cancelled as training ends: no minutes of predicting
        round_with(lambda p: p.fraction >= 1.0 and not p.losses)
    assert "predict" not in order

    class Running:  # a run row as the status line reads it
        id, model, status, progress, step, seconds, cancel_requested = 7, "m2", "running", 1.0, 5, 21.0, False

    assert "trained (5 steps, 21 s); now predicting every image" in parts.status_line([Running()])


def test_the_same_spec_gives_the_same_round():
    images, split, labels, truth = items()
    spec = RunSpec("supervised", steps=5, seed=3, config=SMALL)
    first, second = (run_round(spec, images.pixels, split, labels, truth, 2) for _ in range(2))
    np.testing.assert_array_equal(first.probs, second.probs)
    np.testing.assert_array_equal(first.scores, second.scores)


@pytest.mark.parametrize(("strategy", "passes"), [("bald", 1), ("entropy", 0)])
def test_mc_samples_only_when_the_strategy_needs_them(monkeypatch, strategy, passes):
    images, split, labels, truth = items()
    calls = []
    real = Supervised.mc_proba
    monkeypatch.setattr(
        Supervised, "mc_proba", lambda self, x, samples=8: calls.append(samples) or real(self, x, samples)
    )
    spec = RunSpec("supervised", steps=2, strategy=strategy, mc_samples=3, config=SMALL)
    run_round(spec, images.pixels, split, labels, truth, 2)
    assert calls == [3] * passes


def test_the_worker_stores_the_round(Session):
    # The worker is claim -> load -> round -> store: what it stores is what the round computes
    # from the same inputs.
    project = projects.create_project(Session, "tiny", "test", images=tiny_image_set(n=30, test=6))
    with Session.begin() as session:
        from db import queries

        for item in queries.items(session, project.id, split="pool")[:8]:
            queries.add_label(session, item, item.truth)
        run_id = run_queries.request_run(
            session, project.id, "supervised", {"steps": 4, "seed": 2, "config": SMALL}
        ).id
    assert Worker(Session, device="cpu", name="t").process_one()
    with Session() as session:
        inputs = run_queries.round_inputs(session, run_id)
        stored = dict(
            session.query(Prediction.item_id, Prediction.score).filter(Prediction.run_id == run_id).all()
        )
    spec = RunSpec.parse({**inputs.run_settings, "model": inputs.model}, inputs.project_settings)
    result = run_round(
        spec,
        projects.pixels(project.id),
        np.array(inputs.splits),
        np.array(inputs.labels),
        np.array(inputs.truth),
        inputs.num_classes,
        rows=np.array(inputs.rows),
    )
    np.testing.assert_allclose([stored[i] for i in inputs.item_ids], result.scores)


@pytest.mark.parametrize("embed", [True, False])
def test_predict_reads_the_images_once_for_probabilities_and_features(embed, monkeypatch):
    rng = np.random.default_rng(0)
    pixels = (rng.random((30, 1, 8, 8)) * 255).astype(np.uint8)
    x = pixels.astype(np.float32) / 255.0
    model = MODELS["sslgan"]((1, 8, 8), 3, seed=0)
    model.fit(x, np.arange(6), np.arange(6) % 3, Budget(steps=2))
    want_probs, want_features = model.predict_proba(x), model.embed(x)
    calls: list[str] = []
    for name in ("predict_proba", "embed", "predict_and_embed"):
        method = getattr(model, name)
        monkeypatch.setattr(model, name, lambda x, method=method, name=name: calls.append(name) or method(x))
    probs, features, _ = predict(model, pixels, np.arange(30), embed=embed)
    assert calls == (["predict_and_embed"] if embed else ["predict_proba"])
    np.testing.assert_array_equal(probs, want_probs)
    if embed:
        np.testing.assert_array_equal(features, want_features)
    else:
        assert features is None
