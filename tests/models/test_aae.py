"""The adversarial autoencoder: its loss terms by hand, the priors, and its codes and samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labeler.models import Budget
from labeler.models.aae import (
    AAE,
    categorical_prior,
    discriminator_loss,
    generator_loss,
    reconstruction_loss,
)


def test_reconstruction_loss_by_hand():
    logits = torch.tensor([[[[0.0, math.log(3.0)]]], [[[0.0, 0.0]]]])  # sigmoid: 0.5, 0.75 / 0.5, 0.5
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    # image 1: -log 0.5 - log 0.25 = log 8; image 2: 2 log 2 = log 4; mean = (log 8 + log 4) / 2
    assert reconstruction_loss(logits, x).item() == pytest.approx((math.log(8) + math.log(4)) / 2, rel=1e-6)


def test_discriminator_and_generator_losses_by_hand():
    # logit s: D = sigmoid(s); -log D(prior) at s = log 3 is log(4/3); -log(1 - D(code)) at s = 0 is log 2
    prior, code = torch.tensor([math.log(3.0)]), torch.tensor([0.0, -math.log(3.0)])
    expected = math.log(4 / 3) + (math.log(2) + math.log(4 / 3)) / 2
    assert discriminator_loss(prior, code).item() == pytest.approx(expected, rel=1e-6)
    # -log D(code): log 2 at s = 0, log 4 at s = -log 3
    assert generator_loss(code).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_categorical_prior_is_one_hot_and_uniform():
    y = categorical_prior(6000, 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert y.shape == (6000, 3) and set(y.sum(1).tolist()) == {1.0} and set(y.unique().tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(y.mean(0).numpy(), [1 / 3] * 3, atol=0.03)


def small_model(**kw):
    return AAE((1, 8, 8), 3, config=AAE.Config(hidden=[16], latent_dim=4, d_hidden=(8,), **kw), seed=0)


def test_codes_and_samples_have_the_documented_shapes():
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    model = small_model(labeled_batch=4, unlabeled_batch=8)
    model.fit(x, np.arange(6), np.arange(6) % 3, Budget(steps=3))
    codes = model.embed(x)
    assert codes.shape == (20, 3 + 4)
    np.testing.assert_allclose(codes[:, :3].sum(1), 1.0, atol=1e-5)  # y on the simplex
    samples = model.sample_images(5)
    assert samples.shape == (3, 5, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert not np.allclose(samples[0], samples[1])  # rows differ by their class code


def test_the_regularisation_phase_moves_the_class_code_toward_one_hot():
    # Without labels and with the reconstruction's learning rate at ~0, only the adversarial
    # phase trains the encoder: q(y|x) starts near uniform and must end sharper (lower entropy).
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 8, 8), dtype=np.float32)
    model = small_model(unlabeled_batch=32, d_lr=1e-2, lr=1e-2)
    for group in model.optimizers["reconstruction"].param_groups:
        group["lr"] = 1e-9

    def entropy():
        p = model.embed(x)[:, :3]
        return float(-(p * np.log(p + 1e-9)).sum(1).mean())

    before = entropy()
    torch.manual_seed(0)
    model.fit(x, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), Budget(steps=150))
    assert entropy() < 0.5 * before
