"""Label propagation on a nearest-neighbour graph of the images, for pseudo-labels in training.

Iscen, Tolias, Avrithis, Chum (2019), "Label propagation for deep semi-supervised learning",
CVPR; the propagation itself is Zhou et al. (2004), "Learning with local and global
consistency". Every so often during a fit (`GraphLabels.refresh`) the model's features of the
whole pool are put in a k-nearest-neighbour graph (cosine similarity s, weight s^3 for the k
nearest, symmetrised, W_n = D^-1/2 W D^-1/2), and the labels spread along it:

    Z = (I - a W_n)^-1 Y,   a = 0.9 (the paper: 0.99; with the model's own predictions among
                             the seeds, 0.9 keeps them nearer their own label),

with Y one-hot on the labeled images, and the model's own predictions, weighted by `prior`,
on the rest. Each unlabeled image gets the pseudo-label argmax Z_i with a certainty weight

    w_i = 1 - H(Z_i / |Z_i|_1) / log K,

and the models add  mean_u w_i CE(f(x_i), argmax Z_i)  to their classifier's loss on the
unlabeled batch. Images that look alike (in the features the classifier learns) thus get
the same label, beyond what the few labeled images reach directly. The network itself stays
the model: predictions and exports do not use the graph.

The features of a refresh are projected at random to 64 dimensions above 4,096 images (cosine
similarities stay close, the neighbour search gets cheaper). A refresh covers at most
`max_images` of the pool (a fresh random subset each time, the
labeled images always in it), and the model draws its unlabeled batches from that subset
until the next refresh, so every unlabeled image it trains on has a graph label. Refreshes
come at fixed fractions of each fit's budget (from `start` on, every `every`), but never
more often than keeps their cost under `max_share` of the time (`due`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, cg

from .base import Budget


@torch.no_grad()
def knn_graph(
    features: torch.Tensor, k: int = 10, chunk: int = 2048, power: float = 3.0
) -> sparse.csr_matrix:
    """The symmetric k-nearest-neighbour graph of the rows of `features` (N, D) by cosine
    similarity, weights max(s, 0)^power, as a scipy CSR matrix (N, N) with a zero diagonal."""
    n = len(features)
    k = max(1, min(int(k), n - 1))
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    rows, cols, vals = [], [], []
    for start in range(0, n, chunk):
        sim = unit[start : start + chunk] @ unit.T  # (B, N)
        idx = torch.arange(start, min(start + chunk, n), device=sim.device)
        sim[torch.arange(len(idx), device=sim.device), idx] = -2.0  # no self-loops
        top, where = sim.topk(k, dim=1)  # (B, k)
        rows.append(idx.repeat_interleave(k).cpu().numpy())
        cols.append(where.reshape(-1).cpu().numpy())
        vals.append(top.clamp_min(0).pow(power).reshape(-1).cpu().numpy())
    w = sparse.csr_matrix(
        (np.concatenate(vals).astype(np.float64), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    return (w + w.T).tocsr() * 0.5


def propagate(w: sparse.csr_matrix, seeds: np.ndarray, alpha: float = 0.99, iters: int = 20) -> np.ndarray:
    """Z = (I - alpha W_n)^-1 Y for seeds Y (N, K), by conjugate gradients, one column at a time."""
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    w_n = sparse.diags(inv_sqrt) @ w @ sparse.diags(inv_sqrt)
    n = w.shape[0]
    op = LinearOperator((n, n), matvec=lambda v: v - alpha * (w_n @ v), dtype=np.float64)
    out = np.zeros(seeds.shape, dtype=np.float64)
    for c in range(seeds.shape[1]):
        if seeds[:, c].any():
            out[:, c], _ = cg(op, seeds[:, c].astype(np.float64), maxiter=iters)
    return out


def pseudo_labels(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels argmax Z (N,) and certainty weights 1 - H(Z / |Z|_1) / log K in [0, 1] (N,)."""
    k = z.shape[1]
    if k < 2:  # one class: nothing to decide, nothing to learn
        return np.zeros(len(z), dtype=np.int64), np.zeros(len(z))
    p = np.maximum(z, 0)
    total = p.sum(axis=1, keepdims=True)
    p = np.where(total > 0, p / np.maximum(total, 1e-12), 1.0 / k)
    entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1)
    return z.argmax(axis=1), (1.0 - entropy / math.log(k)).clip(0, 1)


class GraphLabels:
    """Pseudo-labels and weights for a subset of the pool, recomputed by `refresh` from the
    model's features and predictions (module docstring)."""

    def __init__(
        self,
        n: int,
        labeled_idx: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        k: int = 10,
        prior: float = 1.0,
        alpha: float = 0.9,
        max_images: int = 10_000,
        start: float = 0.2,
        every: float = 0.1,
        max_share: float = 0.2,
        dims: int = 64,
    ):
        self.n, self.num_classes = n, num_classes
        # One label per labeled row (its first), rows in increasing order.
        self.labeled_idx, first = np.unique(np.asarray(labeled_idx, dtype=np.int64), return_index=True)
        self.labels_given = np.asarray(labels, dtype=np.int64)[first]
        self.k, self.prior, self.alpha, self.max_images, self.dims = k, prior, alpha, max_images, dims
        self.start, self.every, self.max_share = start, every, max_share
        self.rows: np.ndarray | None = None  # (S,) the pool rows of the current subset
        self.targets: torch.Tensor | None = None  # (S,) long
        self.weights: torch.Tensor | None = None  # (S,) float; 0 on the labeled images
        self._marks = 0  # fractions of the budget passed: start, start + every, ...
        self._last_cost = 0.0
        self._last_end = -math.inf

    def _mark(self) -> float:
        return self.start + self._marks * self.every - 1e-9

    def due(self, budget: Budget, step: int) -> bool:
        """Whether to refresh at this step of a fit with `budget`. With a budget of steps alone
        the answer depends on the step alone, so a run gives the same result on any machine."""
        fraction = budget.fraction(step)
        if fraction < self._mark() or fraction >= 1.0:
            return False
        if budget.seconds is None:
            return True
        return budget.elapsed() - self._last_end >= self._last_cost * (1 - self.max_share) / self.max_share

    def _choose(self, rng: np.random.Generator) -> np.ndarray:
        """The subset of pool rows (sorted) a refresh covers: every row, or every labeled row and
        unlabeled ones up to `max_images` (at least half of `max_images` unlabeled ones, or all
        of them, when the labels alone fill it)."""
        if self.n <= self.max_images:
            return np.arange(self.n)
        others = np.setdiff1d(np.arange(self.n), self.labeled_idx)
        room = max(self.max_images - len(self.labeled_idx), self.max_images // 2)
        pick = rng.choice(others, size=min(room, len(others)), replace=False)
        return np.sort(np.concatenate([self.labeled_idx, pick]))

    def refresh(
        self,
        predict: Callable[[np.ndarray], tuple[torch.Tensor, np.ndarray]],
        budget: Budget,
        step: int,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> None:
        """Choose a subset of the pool, get its features (S, D) and probabilities (S, K) from
        `predict(rows)` and spread the labels over its graph."""
        t0 = time.monotonic()
        fraction = budget.fraction(step)
        rows = self._choose(rng)
        features, probs = predict(rows)
        if len(rows) > 4096 and features.shape[1] > self.dims:  # a random projection keeps similarities
            proj = torch.randn(features.shape[1], self.dims, generator=generator, device=generator.device)
            features = features @ proj.to(features.device)
        w = knn_graph(features, self.k)
        seeds = self.prior * np.asarray(probs, dtype=np.float64)
        where = np.searchsorted(rows, self.labeled_idx)
        seeds[where] = 0.0
        seeds[where, self.labels_given] = 1.0
        found, weights = pseudo_labels(propagate(w, seeds, self.alpha))
        weights[where] = 0.0
        self._unlabeled = np.setdiff1d(np.arange(len(rows)), where)
        self.rows = rows if len(self._unlabeled) else None  # None: the model's own batches
        self.targets = torch.as_tensor(found, dtype=torch.long, device=features.device)
        self.weights = torch.as_tensor(weights, dtype=torch.float32, device=features.device)
        self._last_cost = time.monotonic() - t0
        self._last_end = budget.elapsed()
        while self._mark() <= fraction:
            self._marks += 1

    def batch(
        self,
        size: int,
        predict: Callable[[np.ndarray], tuple[torch.Tensor, np.ndarray]],
        budget: Budget,
        step: int,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> np.ndarray | None:
        """What a model asks at each step: refresh when `due`, then `size` positions of unlabeled
        images in the subset (`draw`), or None before the first refresh and when the subset has
        none (the model then draws its own batch)."""
        if self.due(budget, step):
            self.refresh(predict, budget, step, rng, generator)
        return None if self.rows is None else self.draw(size, rng)

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """`size` random positions of unlabeled images in the current subset (index `rows` with
        them for pool rows)."""
        return self._unlabeled[rng.integers(0, len(self._unlabeled), size)]

    def loss(self, logits: torch.Tensor, positions: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """weight * mean_i w_i CE(logits_i, target_i) over subset `positions` (B,) -> scalar."""
        ce = torch.nn.functional.cross_entropy(logits, self.targets[positions], reduction="none")
        return weight * (ce * self.weights[positions]).mean()
