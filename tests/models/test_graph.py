"""Graph pseudo-labels (labeler/models/graph.py): the graph, the propagation, the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.models import MODELS, Budget
from labeler.models.graph import GraphLabels, knn_graph, propagate, pseudo_labels
from tests.models.test_randomness import small_config
from tests.models.test_registry import tiny_data


def two_clusters(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Points around two far-apart directions; (2n, 5) features and their cluster (2n,)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]])
    truth = np.repeat([0, 1], n)
    points = centres[truth] + 0.1 * rng.standard_normal((2 * n, 5))
    return torch.as_tensor(points, dtype=torch.float32), truth


def refresh(graph: GraphLabels, features: torch.Tensor, budget: Budget | None = None, step: int = 2) -> None:
    """One refresh on `features` (N, D) of the whole pool, the model undecided (uniform)."""
    graph.refresh(
        lambda rows: (features[rows], np.full((len(rows), graph.num_classes), 1.0 / graph.num_classes)),
        budget or Budget(steps=10),
        step,
        np.random.default_rng(0),
        torch.Generator(),
    )


def test_knn_graph_is_symmetric_without_self_loops_and_stays_in_its_cluster():
    features, truth = two_clusters()
    w = knn_graph(features, k=5, chunk=7)  # chunks that do not divide the rows
    assert (abs(w - w.T) > 1e-12).nnz == 0
    assert w.diagonal().sum() == 0
    rows, cols = w.nonzero()
    assert (truth[rows] == truth[cols]).all()
    assert (np.diff(w.indptr) >= 5).all()  # every point keeps at least its own k neighbours


def test_one_label_per_cluster_spreads_to_the_whole_cluster():
    features, truth = two_clusters()
    seeds = np.zeros((len(truth), 2))
    seeds[0, 0] = seeds[len(truth) - 1, 1] = 1.0
    found, weights = pseudo_labels(propagate(knn_graph(features, k=5), seeds, alpha=0.99))
    assert (found == truth).all()
    assert ((weights > 0) & (weights <= 1)).all()


def test_pseudo_labels_weigh_an_undecided_row_zero_and_a_certain_one_one():
    found, weights = pseudo_labels(np.array([[0.5, 0.5], [2.0, 0.0], [0.0, 0.0]]))
    assert found[1] == 0
    np.testing.assert_allclose(weights, [0.0, 1.0, 0.0], atol=1e-9)


def test_graph_labels_follow_the_features_and_skip_the_labeled_rows():
    features, truth = two_clusters()
    labeled = np.array([3, 50])
    graph = GraphLabels(len(truth), labeled, truth[labeled], 2, k=5, prior=0.0)
    refresh(graph, features)
    assert (graph.targets.numpy() == truth).all()
    assert (graph.weights[labeled] == 0).all()
    drawn = graph.draw(500, np.random.default_rng(1))
    assert not set(graph.rows[drawn]) & set(labeled.tolist())  # batches come from unlabeled rows


def test_a_subset_keeps_every_labeled_row():
    labeled = np.array([0, 5, 999])
    graph = GraphLabels(1000, labeled, np.array([0, 1, 0]), 2, max_images=100)
    rows = graph._choose(np.random.default_rng(0))
    assert len(rows) == 100 and set(labeled) <= set(rows.tolist()) and (np.diff(rows) > 0).all()


def test_with_a_step_budget_the_refreshes_depend_on_the_steps_alone():
    graph = GraphLabels(10, np.array([0]), np.array([0]), 2, start=0.2, every=0.1)
    budget = Budget(steps=100)
    features = torch.eye(10)
    due = []
    for step in range(100):
        if graph.due(budget, step):
            due.append(step)
            refresh(graph, features, budget, step)
    assert due == [20, 30, 40, 50, 60, 70, 80, 90]


@pytest.mark.parametrize("name", ["m2", "sslgan", "badgan"])
def test_a_model_trains_on_graph_labels_and_repeats_itself_with_a_step_budget(name, monkeypatch):
    x, idx, labels = tiny_data(n=60)
    refreshes = []
    real = GraphLabels.refresh

    def counted(self, *args, **kwargs):
        refreshes.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GraphLabels, "refresh", counted)

    def run() -> tuple[np.ndarray, dict]:
        config = MODELS[name].Config(**small_config(name), graph=True)
        model = MODELS[name](x.shape[1:], 3, config=config, seed=5)
        losses = model.fit(x, idx, labels, Budget(steps=30))
        return model.predict_proba(x), losses

    first, losses = run()
    assert len(refreshes) == 8  # at 20 %, 30 %, ... 90 % of the steps
    assert "graph" in losses and np.isfinite(losses["graph"])
    again, _ = run()
    np.testing.assert_array_equal(first, again)


def test_a_subset_of_a_bigger_pool_labels_its_own_rows():
    features, truth = two_clusters(n=50)  # 100 pool rows, a subset of 30 per refresh
    labeled = np.array([3, 60])
    graph = GraphLabels(len(truth), labeled, truth[labeled], 2, k=3, prior=0.0, max_images=30)
    refresh(graph, features)
    assert len(graph.rows) == 30 and {3, 60} <= set(graph.rows.tolist())
    positions = graph.draw(200, np.random.default_rng(1))
    rows = graph.rows[positions]
    assert not set(rows.tolist()) & {3, 60}
    assert (graph.targets[positions].numpy() == truth[rows]).all()  # targets follow rows[positions]


def test_labels_that_fill_the_subset_still_leave_unlabeled_rows_to_draw():
    features, truth = two_clusters(n=50)
    labeled = np.arange(0, 100, 4)  # 25 labels, and duplicates of two of them
    labels = truth[labeled]
    graph = GraphLabels(100, np.r_[labeled, 0, 4], np.r_[labels, labels[0], labels[1]], 2, k=3, max_images=20)
    refresh(graph, features)
    assert len(graph.rows) == 25 + 10 and len(np.unique(graph.rows)) == len(graph.rows)
    assert not set(graph.rows[graph.draw(100, np.random.default_rng(1))].tolist()) & set(labeled.tolist())


def test_one_class_gives_no_weight():
    found, weights = pseudo_labels(np.ones((4, 1)))
    assert (found == 0).all() and (weights == 0).all()


@pytest.mark.parametrize("name", ["m2", "sslgan", "badgan"])
def test_the_default_settings_never_build_a_graph(name, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a graph was built with graph off")

    monkeypatch.setattr(GraphLabels, "__init__", refuse)
    x, idx, labels = tiny_data(n=60)
    model = MODELS[name](x.shape[1:], 3, config=MODELS[name].Config(**small_config(name)), seed=5)
    model.fit(x, idx, labels, Budget(steps=20))
