"""The transductive SVM: its loss terms by hand, the balanced label step, the ramp, and that the
unlabeled images move the boundary into the gap between clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.models import Budget
from labeler.models.tsvm import TSVM, balanced_labels, ramp, squared_hinge, tsvm_objective


def test_squared_hinge_by_hand():
    margins = torch.tensor([-1.0, 0.0, 0.5, 1.0, 3.0])
    # max(0, 1 - m)^2: 4, 1, 0.25, 0, 0
    torch.testing.assert_close(squared_hinge(margins), torch.tensor([4.0, 1.0, 0.25, 0.0, 0.0]))


def test_objective_by_hand():
    weight = torch.tensor([[1.0, -2.0]])  # (D=1, K=2): 1/2 ||w||^2 = 2.5
    scores_l = torch.tensor([[0.5, -2.0]])  # targets +1, -1: margins 0.5, 2 -> slack 0.25 + 0
    targets_l = torch.tensor([[1.0, -1.0]])
    scores_u = torch.tensor([[0.0, 1.0], [2.0, -0.5]])  # labels -1,+1 / +1,-1: margins 0, 1, 2, 0.5
    targets_u = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])  # slack 1 + 0 + 0 + 0.25 = 1.25
    value = tsvm_objective(scores_l, targets_l, scores_u, targets_u, weight, c=2.0, u=0.5)
    assert value.item() == pytest.approx(2.5 + 2.0 * (0.25 + 0.5 * 1.25))
    alone = tsvm_objective(scores_l, targets_l, scores_u, targets_u, weight, c=2.0, u=0.0)
    assert alone.item() == pytest.approx(2.5 + 2.0 * 0.25)


def test_balanced_labels_take_the_highest_scores_per_class():
    scores = torch.tensor([[0.9, -1.0], [0.1, 0.3], [-0.5, 0.2], [0.4, 0.8]])
    y = balanced_labels(scores, torch.tensor([0.5, 0.25]))
    # class 0: the 2 highest (rows 0 and 3); class 1: the 1 highest (row 3)
    expected = torch.tensor([[1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(y, expected)


def test_balanced_labels_minimise_the_unlabeled_slack_under_the_constraint():
    # Brute force over every labelling with two positives: the ranking is the optimum.
    from itertools import combinations

    scores = torch.tensor([[0.3], [-1.2], [2.0], [0.1], [-0.2]])
    y = balanced_labels(scores, torch.tensor([0.4]))
    best = min(
        squared_hinge(torch.tensor([[1.0 if i in pos else -1.0] for i in range(5)]) * scores).sum().item()
        for pos in combinations(range(5), 2)
    )
    assert squared_hinge(y * scores).sum().item() == pytest.approx(best)
    assert int((y > 0).sum()) == 2


def test_ramp_doubles_up_to_the_final_weight():
    assert ramp(1.0, 0.125) == [0.125, 0.25, 0.5, 1.0]
    assert ramp(1.0, 0.3) == [0.3, 0.6, 1.0]
    assert ramp(2.0, 1.0) == [2.0]


def two_long_clusters(n=200, seed=0):
    """Two clusters elongated along y, separated along x by a gap; the two labeled points sit
    slightly apart in y too, so the labeled points alone tilt the boundary across both
    clusters. (Tilted further, the ranking by the labeled-only scores is mostly by y and the
    TSVM keeps that local optimum: the ramp softens its local optima, it does not remove them.)"""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    points = np.stack(
        [np.where(y == 0, -1.5, 1.5) + 0.3 * rng.standard_normal(n), 4 * rng.standard_normal(n)], 1
    )
    points[0], points[1] = (-1.5, 0.5), (1.5, -0.5)  # y[0] = 0, y[1] = 1
    return points.reshape(n, 1, 1, 2).astype(np.float32), y


def accuracy(model, x, y):
    return float((model.predict_proba(x).argmax(1) == y).mean())


def test_the_unlabeled_images_move_the_boundary_into_the_gap():
    x, y = two_long_clusters()
    idx = np.array([0, 1])
    # C = 1: at the default 0.1, fitted for digits, margins this narrow cost more than they gain.
    inductive = TSVM((1, 1, 2), 2, config=TSVM.Config(svm_c=1.0, unlabeled_weight=0.0, lbfgs_iters=20))
    inductive.fit(x, idx, y[idx], Budget(steps=100))
    transductive = TSVM((1, 1, 2), 2, config=TSVM.Config(svm_c=1.0, lbfgs_iters=20))
    transductive.fit(x, idx, y[idx], Budget(steps=100))
    assert accuracy(inductive, x, y) < 0.9
    assert accuracy(transductive, x, y) > 0.97


def test_the_embedding_is_fitted_once_and_kept_on_warm_starts():
    x, y = two_long_clusters()
    model = TSVM((1, 1, 2), 2)
    model.fit(x, np.array([0, 1]), y[:2], Budget(steps=5))
    components = model.net.components.clone()
    model.fit(x[::-1].copy() * 2, np.array([0, 1]), np.array([1, 0]), Budget(steps=5))
    torch.testing.assert_close(model.net.components, components)
