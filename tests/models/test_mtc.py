"""The manifold tangent classifier: its loss terms by hand and against autograd's Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.models import Budget
from labeler.models.mtc import MTC, contractive_penalty, encoder_tangents, tangent_penalty


def test_contractive_penalty_by_hand():
    h = torch.tensor([[0.5, 0.9]])  # h (1 - h): 0.25, 0.09
    weight = torch.tensor([[1.0, 2.0], [0.0, 3.0]])  # row sums of squares: 5, 9
    expected = 0.25**2 * 5 + 0.09**2 * 9
    assert contractive_penalty(h, weight).item() == pytest.approx(expected, rel=1e-6)


def test_contractive_penalty_is_the_frobenius_norm_of_the_encoders_jacobian():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    h = torch.sigmoid(layer(x))
    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(lambda v: torch.sigmoid(layer(v)), x[i])  # (3, 5)
        assert contractive_penalty(h[i : i + 1], layer.weight).item() == pytest.approx(
            jacobian.pow(2).sum().item(), rel=1e-5
        )


def test_tangents_are_the_leading_right_singular_vectors_of_the_jacobian():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    x = torch.randn(3, 6)
    tangents = encoder_tangents(torch.sigmoid(layer(x)), layer.weight, 2)  # (3, 2, 6)
    assert tangents.shape == (3, 2, 6)
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda v: torch.sigmoid(layer(v)), x[i])  # (4, 6)
        torch.testing.assert_close(tangents[i] @ tangents[i].T, torch.eye(2), atol=1e-5, rtol=0)
        s = torch.linalg.svdvals(jacobian)
        # ||J v_t|| is the t-th singular value: the directions the code changes along most
        torch.testing.assert_close((jacobian @ tangents[i].T).norm(dim=0), s[:2], atol=1e-5, rtol=1e-4)


def test_tangent_penalty_by_hand_for_a_linear_map():
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0]])  # f(x) = x A^T: J_f = A
    x = torch.zeros(2, 2)
    tangents = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])  # (B=2, T=1, P=2)
    # A v: (1, 0) and (2.2, -0.8): squared norms 1 and 4.84 + 0.64; mean over the batch
    value = tangent_penalty(lambda v: v @ a.T, x, tangents)
    assert value.item() == pytest.approx((1.0 + 4.84 + 0.64) / 2, rel=1e-6)


def test_the_penalty_makes_the_classifier_flat_along_the_tangents():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = np.clip(rng.random((60, 1, 8, 8)) * 0.5 + 0.25 * y[:, None, None, None], 0, 1).astype(np.float32)
    idx = np.arange(12)

    def flatness(weight):
        # the penalty at the tangents fitted for the classifier's phase, on the last batch
        torch.manual_seed(0)
        model = MTC(
            (1, 8, 8), 3, config=MTC.Config(hidden=[16], tangent_weight=weight, batch_size=20), seed=0
        )
        return model.fit(x, idx, y[idx], Budget(steps=200))["tangent"]

    assert flatness(100.0) < 0.1 * flatness(0.0)
