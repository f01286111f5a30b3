"""Baselines: label spreading matches scikit-learn, self-training uses only confident pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.models import Budget
from labeler.models.baselines import LabelSpread, SelfTrain, Supervised


def blobs(n=60, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = np.clip(rng.random((n, 1, 8, 8)) * 0.3 + 0.35 * y[:, None, None, None], 0, 1).astype(np.float32)
    return x, y


def test_labelspread_matches_scikit_learn_on_new_images():
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    x, y = blobs()
    new, _ = blobs(n=12, seed=1)
    idx = np.array([0, 1, 2, 3, 4, 5])
    model = LabelSpread((1, 8, 8), 3, config=LabelSpread.Config(components=5, neighbors=8), seed=0)
    model.fit(x, idx, y[idx], Budget(steps=1))

    pca = PCA(n_components=5, random_state=0).fit(x.reshape(60, -1))
    target = np.full(60, -1)
    target[idx] = y[idx]
    ref = LabelSpreading(kernel="knn", n_neighbors=8, alpha=0.2, max_iter=100).fit(
        pca.transform(x.reshape(60, -1)), target
    )
    want = ref.predict_proba(pca.transform(new.reshape(12, -1)))
    assert np.isfinite(want).all()  # the graph reaches every point, so both agree exactly
    np.testing.assert_allclose(model.predict_proba(new), want, atol=1e-4)
    assert (model.predict_proba(x).argmax(1) == y).mean() > 0.9


def test_labelspread_with_one_class_predicts_it():
    x, _ = blobs(n=20)
    model = LabelSpread((1, 8, 8), 3, config=LabelSpread.Config(components=3, neighbors=3), seed=0)
    model.fit(x, np.array([0, 5]), np.array([2, 2]), Budget(steps=1))
    assert (model.predict_proba(x).argmax(1) == 2).all()


def test_selftrain_pseudo_labels_respect_the_threshold():
    model = SelfTrain(
        (1, 8, 8), 3, config=SelfTrain.Config(hidden=[8], threshold=0.9, warmup_steps=0), seed=0
    )
    net = model.modules["net"]
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    loss, used = model._pseudo_loss(net, torch.rand(10, 1, 8, 8), step=5)
    assert used == 0.0 and loss.item() == 0.0  # uniform predictions: nothing is confident
    model.config.threshold = 0.3
    loss, used = model._pseudo_loss(net, torch.rand(10, 1, 8, 8), step=5)
    assert used == 1.0 and loss.item() == pytest.approx(np.log(3), rel=1e-5)
    assert model._pseudo_loss(net, torch.rand(10, 1, 8, 8), step=0)[0] is not None
    model.config.warmup_steps = 10
    assert model._pseudo_loss(net, torch.rand(10, 1, 8, 8), step=5)[0] is None


@pytest.mark.parametrize("cls", [Supervised, SelfTrain])
def test_network_baselines_learn_easy_classes(cls):
    x, y = blobs()
    model = cls((1, 8, 8), 3, config=cls.Config(hidden=[32]), seed=0)
    model.fit(x, np.arange(9), y[:9], Budget(steps=300))
    assert (model.predict_proba(x[:9]).argmax(1) == y[:9]).all()
    assert (model.predict_proba(x).argmax(1) == y).mean() > 0.75  # chance: 1/3


def test_supervised_without_labels_stays_uniform():
    x, _ = blobs(n=10)
    model = Supervised((1, 8, 8), 4, config=Supervised.Config(hidden=[8]), seed=0)
    assert model.fit(x, np.zeros(0, int), np.zeros(0, int), Budget(steps=5)) == {}
    np.testing.assert_allclose(model.predict_proba(x), 0.25)
