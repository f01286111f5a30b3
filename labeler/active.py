"""Acquisition: which unlabeled images to ask a person about next.

Every strategy is a pure function of the model's outputs and returns one score per item,
higher = ask first (the convention of modAL and baal):

- least confidence   s(x) = 1 - max_k p(k|x)
- margin             s(x) = 1 - (p_(1) - p_(2)), the gap between the two most likely classes
- entropy            s(x) = H[p(.|x)] = -sum_k p(k|x) log p(k|x)
- BALD               s(x) = H[E_w p(.|x,w)] - E_w H[p(.|x,w)]  (Houlsby et al. 2011; Gal et al.
                     2017), the mutual information between the label and the model's weights,
                     estimated from S stochastic forward passes (S, N, K)
- k-center           s(x) = min_{l labeled} ||e(x) - e(l)||, distance to the nearest labeled
                     image in embedding space; picking greedily gives the core-set batch of
                     Sener & Savarese (2018)
- random             s(x) ~ U(0, 1)

`select_batch` turns scores into a batch of k picks. With `diverse=True` it takes the top
m = `pool_factor` * k by score (of those, only the ones scoring at least half the k-th best:
on a small pool the top m is most of the pool) and spreads the k picks among them by greedy
k-center in the embedding space, so a grid of ten does not show ten near-copies of one
confusing image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
# A diverse batch spreads its picks only over images scoring at least this fraction of the k-th
# best score (`select_batch`).
MIN_RELATIVE_SCORE = 0.5


# Scores: pure functions -----------------------------------------------------------------------


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """(N, K) -> (N,): 1 - max_k p."""
    probs = np.asarray(probs, dtype=np.float64)
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """(N, K) -> (N,): 1 - (p_(1) - p_(2)); 1 when the top two tie, 0 when one class has all."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]  # (N, 2), descending
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy(probs: np.ndarray) -> np.ndarray:
    """(N, K) -> (N,): -sum_k p log p in nats; log K for a uniform row, 0 for a one-hot row."""
    probs = np.asarray(probs, dtype=np.float64)
    return -(probs * np.log(np.clip(probs, _EPS, 1.0))).sum(axis=1)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """(S, N, K) -> (N,): H[mean_s p_s] - mean_s H[p_s] >= 0 (mutual information)."""
    mc_probs = np.asarray(mc_probs, dtype=np.float64)
    mean = mc_probs.mean(axis=0)  # (N, K)
    expected = np.mean([entropy(p) for p in mc_probs], axis=0)  # (N,)
    return np.maximum(entropy(mean) - expected, 0.0)


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def nearest_distance(embeddings: np.ndarray, centers: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N, D), (M, D) -> (N,): Euclidean distance from each row to its nearest center (inf if M = 0)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    centers = np.asarray(centers, dtype=np.float32)
    out = np.full(len(embeddings), np.inf)
    if len(centers) == 0:
        return out
    c2 = (centers**2).sum(axis=1)  # (M,)
    for start in range(0, len(embeddings), chunk):
        e = embeddings[start : start + chunk]  # (B, D)
        # ||e - c||^2 = ||e||^2 - 2 e.c + ||c||^2, min over centers in blocks to bound memory
        best = np.full(len(e), np.inf, dtype=np.float32)
        for c_start in range(0, len(centers), chunk):
            block = centers[c_start : c_start + chunk]
            d2 = (e**2).sum(axis=1)[:, None] - 2.0 * e @ block.T + c2[c_start : c_start + chunk][None]
            best = np.minimum(best, d2.min(axis=1))
        out[start : start + chunk] = np.sqrt(np.maximum(best, 0.0))
    return out


def kcenter(embeddings: np.ndarray, labeled_mask: np.ndarray) -> np.ndarray:
    """(N, D), (N,) bool -> (N,): distance to the nearest labeled row (inf when none is labeled)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labeled_mask = np.asarray(labeled_mask, dtype=bool)
    return nearest_distance(embeddings, embeddings[labeled_mask])


# The registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    name: str
    needs: str  # "probs" | "mc_probs" | "embeddings" | "nothing": what the model must supply
    description: str
    score: Callable[..., np.ndarray]  # (probs, embeddings, labeled_mask, mc_probs, seed) -> (N,)


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(
        "random",
        "nothing",
        "Random: a uniform sample, the honest baseline",
        lambda probs, embeddings, labeled_mask, mc_probs, seed: random_scores(len(labeled_mask), seed),
    ),
    "least-confidence": Strategy(
        "least-confidence",
        "probs",
        "Least confidence: lowest top-class probability first",
        lambda probs, embeddings, labeled_mask, mc_probs, seed: least_confidence(probs),
    ),
    "margin": Strategy(
        "margin",
        "probs",
        "Margin: smallest gap between the two likeliest classes first",
        lambda probs, embeddings, labeled_mask, mc_probs, seed: margin(probs),
    ),
    "entropy": Strategy(
        "entropy",
        "probs",
        "Entropy: most uncertain prediction first",
        lambda probs, embeddings, labeled_mask, mc_probs, seed: entropy(probs),
    ),
    "bald": Strategy(
        "bald",
        "mc_probs",
        "BALD: where stochastic passes disagree most (Houlsby et al. 2011)",
        lambda probs, embeddings, labeled_mask, mc_probs, seed: bald(mc_probs),
    ),
    "kcenter": Strategy(
        "kcenter",
        "embeddings",
        "k-center: farthest from every labeled image (Sener & Savarese 2018)",
        lambda probs, embeddings, labeled_mask, mc_probs, seed: kcenter(embeddings, labeled_mask),
    ),
}


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; a SettingError (a ValueError) with runspec's one message if none is."""
    from .runspec import check_strategy

    return STRATEGIES[check_strategy(name)]


def scores(
    strategy: str,
    probs: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labeled_mask: np.ndarray | None = None,
    mc_probs: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N,) acquisition scores of `strategy`, higher = ask first. Labeled rows get -inf."""
    spec = get_strategy(strategy)
    n = _length(probs, embeddings, labeled_mask, mc_probs)
    labeled_mask = np.zeros(n, dtype=bool) if labeled_mask is None else np.asarray(labeled_mask, dtype=bool)
    if spec.needs == "probs" and probs is None:
        raise ValueError(f"The {strategy} strategy needs the model's probabilities.")
    if spec.needs == "mc_probs" and mc_probs is None:
        raise ValueError("The bald strategy needs several stochastic predictions (mc_probs).")
    if spec.needs == "embeddings" and embeddings is None:
        raise ValueError("The kcenter strategy needs embeddings.")
    result = np.asarray(spec.score(probs, embeddings, labeled_mask, mc_probs, seed), dtype=np.float64)
    result = np.where(np.isfinite(result) | (result > 0), result, 0.0)  # NaN -> 0, keep +inf
    result[labeled_mask] = -np.inf
    return result


def _length(*arrays) -> int:
    for i, array in enumerate(arrays):
        if array is not None:
            return np.asarray(array).shape[1] if i == 3 else len(array)
    raise ValueError("Give at least one of probs, embeddings, labeled_mask or mc_probs.")


# Batches --------------------------------------------------------------------------------------


def greedy_kcenter(
    embeddings: np.ndarray, k: int, candidates: np.ndarray, centers: np.ndarray, first: int | None = None
) -> list[int]:
    """Pick k of `candidates` (indices into embeddings), each the farthest from `centers` (M, D)
    and the picks so far. `first` (optional) is taken first regardless of distance."""
    candidates = np.asarray(candidates, dtype=np.int64)
    k = min(int(k), len(candidates))
    if k <= 0:
        return []
    e = np.asarray(embeddings, dtype=np.float32)[candidates]  # (M, D)
    dist = nearest_distance(e, centers)  # (M,)
    picked: list[int] = []
    for _ in range(k):
        if first is not None and not picked:
            j = int(np.flatnonzero(candidates == first)[0])
        elif np.all(np.isinf(dist)):
            j = 0  # no centers yet: candidates come in score order, start with the best
        else:
            j = int(np.argmax(np.where(dist >= 0, dist, -np.inf)))
        picked.append(int(candidates[j]))
        dist = np.minimum(dist, np.sqrt(((e - e[j]) ** 2).sum(axis=1)))
        dist[j] = -1.0  # never pick twice
    return picked


def select_batch(
    strategy: str,
    k: int,
    probs: np.ndarray | None,
    embeddings: np.ndarray | None,
    labeled_mask: np.ndarray,
    mc_probs: np.ndarray | None = None,
    diverse: bool = True,
    seed: int = 0,
    pool_factor: int = 10,
    candidate_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of up to k unlabeled rows to ask about, best first.

    Before any model exists (`probs`, `mc_probs` and `embeddings` all None, or a strategy whose
    input is missing) the batch is random, or spread by k-center over `embeddings` when those
    are given (e.g. a PCA of the pixels), never the file order. `candidate_mask` limits picks
    further (e.g. to the pool split).
    """
    labeled_mask = np.asarray(labeled_mask, dtype=bool)
    allowed = (
        ~labeled_mask if candidate_mask is None else (~labeled_mask & np.asarray(candidate_mask, dtype=bool))
    )
    candidates = np.flatnonzero(allowed)
    k = min(int(k), len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    spec = get_strategy(strategy)
    have = {
        "probs": probs is not None,
        "mc_probs": mc_probs is not None,
        "embeddings": embeddings is not None,
        "nothing": True,
    }
    centers = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)[labeled_mask]

    if spec.name == "random" or not have[spec.needs]:
        if embeddings is not None and diverse and spec.name != "random":
            # Cold start: spread the first picks over the data rather than taking a blob.
            order = rng.permutation(candidates)
            return np.asarray(
                greedy_kcenter(embeddings, k, order, centers, first=int(order[0])), dtype=np.int64
            )
        return rng.choice(candidates, size=k, replace=False).astype(np.int64)

    if spec.name == "kcenter":
        # Greedy k-center is already diverse; a random first pick if nothing is labeled yet.
        first = None if centers is not None and len(centers) else int(rng.choice(candidates))
        return np.asarray(greedy_kcenter(embeddings, k, candidates, centers, first=first), dtype=np.int64)

    s = scores(
        strategy, probs=probs, embeddings=embeddings, labeled_mask=labeled_mask, mc_probs=mc_probs, seed=seed
    )
    # Random tie-break so equal scores do not fall back to the file order.
    order = candidates[np.lexsort((rng.random(len(candidates)), -s[candidates]))]
    if not diverse or embeddings is None or k == 1:
        return order[:k].astype(np.int64)
    top = order[: max(k, pool_factor * k)]
    # Only images at least half as uncertain as the k-th most uncertain: on a small pool the
    # top m is most of the pool, and spreading the picks over it asked about images the model
    # was sure of (an exploratory session, 261 images: 12 to 14 of the first 20 at 99 % or more).
    # The first k by score always stay (sorted), so a batch is never short.
    top = top[s[top] >= MIN_RELATIVE_SCORE * s[order[k - 1]]]
    # Spread among the top-m by distance to each other only: labeled images are not the
    # point here (the scores already cover what the model knows).
    empty = np.zeros((0, np.asarray(embeddings).shape[1]), dtype=np.float32)
    return np.asarray(greedy_kcenter(embeddings, k, top, empty, first=int(top[0])), dtype=np.int64)


def queue_scores(
    strategy: str,
    probs: np.ndarray | None,
    embeddings: np.ndarray | None,
    labeled_mask: np.ndarray,
    candidate_mask: np.ndarray,
    mc_probs: np.ndarray | None = None,
    diverse_batch: int = 0,
    seed: int = 0,
    not_offered: float = -1.0,
) -> np.ndarray:
    """(N,) scores to store with a run's predictions so that `ORDER BY score DESC` is the queue.

    Candidates get the strategy's score (>= 0 for every strategy); the first `diverse_batch`
    picks of `select_batch` are lifted above all others, in pick order, so the first grid the
    annotator sees is spread out. Everything else (labeled, test, audit) gets `not_offered`.
    """
    labeled_mask = np.asarray(labeled_mask, dtype=bool)
    candidate_mask = np.asarray(candidate_mask, dtype=bool) & ~labeled_mask
    out = np.full(len(labeled_mask), float(not_offered))
    if not candidate_mask.any():
        return out
    s = scores(
        strategy, probs=probs, embeddings=embeddings, labeled_mask=labeled_mask, mc_probs=mc_probs, seed=seed
    )
    finite = np.isfinite(s) & candidate_mask
    top = s[finite].max() if finite.any() else 0.0
    s = np.where(np.isinf(s) & candidate_mask, top + 1.0, s)  # k-center with nothing labeled
    out[candidate_mask] = s[candidate_mask]
    if diverse_batch > 0:
        picks = select_batch(
            strategy,
            diverse_batch,
            probs,
            embeddings,
            labeled_mask,
            mc_probs=mc_probs,
            diverse=True,
            seed=seed,
            candidate_mask=candidate_mask,
        )
        ceiling = out[candidate_mask].max()
        for rank, i in enumerate(picks):
            out[i] = ceiling + (len(picks) - rank)
    return out
