"""Acquisition strategies on hand-made probabilities, diverse batches, and the queue order."""

from __future__ import annotations

import numpy as np
import pytest

from labeler import active
from labeler.latent import pixel_embedding, project_2d

UNIFORM = [0.25, 0.25, 0.25, 0.25]
ONE_HOT = [1.0, 0.0, 0.0, 0.0]
TWO_WAY = [0.5, 0.5, 0.0, 0.0]
LEANING = [0.7, 0.1, 0.1, 0.1]
PROBS = np.array([ONE_HOT, UNIFORM, TWO_WAY, LEANING])


def test_entropy_is_max_for_uniform_and_zero_for_one_hot():
    h = active.entropy(PROBS)
    assert h[1] == pytest.approx(np.log(4))
    assert h[0] == pytest.approx(0.0)
    assert np.argmax(h) == 1 and np.argmin(h) == 0


def test_least_confidence_orders_by_top_probability():
    s = active.least_confidence(PROBS)
    np.testing.assert_allclose(s, [0.0, 0.75, 0.5, 0.3])


def test_margin_prefers_a_tie_between_two_classes():
    s = active.margin(PROBS)
    # The two-way tie and the uniform row both have a zero gap; the confident row the largest.
    np.testing.assert_allclose(s, [0.0, 1.0, 1.0, 0.4])


def test_bald_is_zero_when_samples_agree_and_positive_when_they_disagree():
    agree = np.repeat(np.array([[0.5, 0.5]])[None], 4, axis=0)  # (S=4, N=1, K=2)
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    s = active.bald(np.concatenate([agree, disagree], axis=1))
    assert s[0] == pytest.approx(0.0, abs=1e-9)
    assert s[1] == pytest.approx(np.log(2), rel=1e-6)  # maximal for two classes


def test_kcenter_scores_distance_to_nearest_labeled():
    e = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.0, 3.0]])
    s = active.kcenter(e, np.array([True, False, False, False]))
    np.testing.assert_allclose(s[1:], [1.0, 5.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("name", list(active.STRATEGIES))
def test_every_strategy_scores_and_never_picks_labeled(name):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=30)
    mc = rng.dirichlet(np.ones(3), size=(4, 30))
    embeddings = rng.normal(size=(30, 5))
    labeled = np.zeros(30, dtype=bool)
    labeled[:10] = True
    s = active.scores(name, probs=probs, embeddings=embeddings, labeled_mask=labeled, mc_probs=mc)
    assert s.shape == (30,) and np.all(np.isneginf(s[:10])) and np.all(s[10:] >= 0)
    picks = active.select_batch(name, 5, probs, embeddings, labeled, mc_probs=mc, seed=1)
    assert len(picks) == len(set(picks.tolist())) == 5
    assert not labeled[picks].any()


def test_uncertainty_batch_without_diversity_takes_the_top_scores():
    probs = np.array([ONE_HOT, UNIFORM, TWO_WAY, LEANING] * 5)
    picks = active.select_batch("entropy", 5, probs, None, np.zeros(20, dtype=bool), diverse=False)
    assert set(picks.tolist()) == {1, 5, 9, 13, 17}  # all the uniform rows


def test_diverse_batch_spreads_over_clusters():
    # Ten near-copies of one confusing image, and ten slightly less uncertain images far apart.
    rng = np.random.default_rng(0)
    blob = rng.normal(0, 0.01, size=(10, 2))
    spread = np.array(
        [[10.0 * np.cos(a), 10.0 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 10, endpoint=False)]
    )
    embeddings = np.concatenate([blob, spread])
    probs = np.concatenate([np.tile([0.5, 0.5], (10, 1)), np.tile([0.6, 0.4], (10, 1))])
    labeled = np.zeros(20, dtype=bool)
    plain = active.select_batch("entropy", 5, probs, embeddings, labeled, diverse=False)
    diverse = active.select_batch("entropy", 5, probs, embeddings, labeled, diverse=True)
    assert set(plain.tolist()) <= set(range(10))  # all from the blob
    assert np.sum(diverse < 10) == 1  # one from the blob, the rest spread out
    assert (
        np.min(
            np.linalg.norm(embeddings[diverse][:, None] - embeddings[diverse][None], axis=-1)
            + np.eye(5) * 1e9
        )
        > 1.0
    )


def test_a_diverse_batch_on_a_small_pool_asks_only_about_uncertain_images():
    """On a pool of 200 the top m = 10 k was the whole pool, and k-center spread the picks over
    images the model was sure of (an exploratory session: 12 to 14 of the first 20 at 99 %+)."""
    rng = np.random.default_rng(0)
    sure = np.tile([0.999, 0.0005, 0.0005], (170, 1))
    unsure = rng.dirichlet(np.full(3, 20.0), size=30)  # near uniform
    probs = np.concatenate([sure, unsure])
    embeddings = np.concatenate([rng.normal(0, 10, (170, 2)), rng.normal(0, 0.1, (30, 2))])
    picks = active.select_batch("entropy", 20, probs, embeddings, np.zeros(200, dtype=bool), seed=0)
    assert len(set(picks.tolist())) == 20 and np.all(picks >= 170)


def test_cold_start_is_random_or_spread_but_never_file_order():
    labeled = np.zeros(200, dtype=bool)
    picks = active.select_batch("entropy", 10, None, None, labeled, seed=3)
    assert len(set(picks.tolist())) == 10 and sorted(picks.tolist()) != list(range(10))
    x = np.random.default_rng(0).random((200, 1, 4, 4))
    spread = active.select_batch("entropy", 10, None, pixel_embedding(x, dim=4), labeled, seed=3)
    assert len(set(spread.tolist())) == 10 and sorted(spread.tolist()) != list(range(10))
    again = active.select_batch("entropy", 10, None, None, labeled, seed=3)
    np.testing.assert_array_equal(picks, again)  # seeded


def test_candidate_mask_limits_picks_and_queue_scores_mark_others():
    probs = np.tile(UNIFORM, (6, 1))
    labeled = np.array([True, False, False, False, False, False])
    pool = np.array([True, True, True, False, False, True])
    picks = active.select_batch("entropy", 6, probs, None, labeled, candidate_mask=pool)
    assert set(picks.tolist()) == {1, 2, 5}
    s = active.queue_scores("entropy", probs, np.eye(6), labeled, pool, diverse_batch=2)
    assert s[0] == s[3] == s[4] == -1.0
    assert np.all(s[[1, 2, 5]] > 0)


def test_unknown_strategy_says_which_exist():
    from labeler.config import SettingError

    with pytest.raises(SettingError, match="The strategy must be one of .*entropy"):
        active.get_strategy("nope")


def test_project_2d_shapes():
    assert project_2d(np.random.default_rng(0).normal(size=(50, 8))).shape == (50, 2)
    assert project_2d(np.ones((1, 8))).shape == (1, 2)
    assert project_2d(np.random.default_rng(0).normal(size=(20, 1))).shape == (20, 2)
