"""Baselines the semi-supervised models must beat.

- Supervised: the classifier network of M2 (nets.features + a linear layer) trained with
  cross-entropy on the labeled images only (weak views of them, augment.weak, for colour or
  larger images).
- SelfTrain: the same network; after a warm-up, unlabeled images whose predicted class has
  probability >= `threshold` join the loss with that class as a pseudo-label (Lee 2013,
  "Pseudo-Label: the simple and efficient semi-supervised learning method", ICML workshop):

      J = mean_l CE(f(x), y) + lambda * mean_u 1[max_k f_k(x) >= tau] CE(f(x), argmax_k f_k(x)).

- LabelSpread: scikit-learn's LabelSpreading (Zhou et al. 2004, "Learning with local and
  global consistency") with a k-nearest-neighbour kernel on a PCA embedding of the pool.
  It is transductive; an image outside the pool gets the mean label distribution of its k
  nearest pool neighbours in the embedding, which is exactly what LabelSpreading.predict_proba
  does for a knn kernel. The pool embedding and the spread label distributions are stored as
  tensors, so the checkpoint and the exported classifier (a torch kNN) need no scikit-learn.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment, nets
from .base import Budget, Dropout, PredictsWithClassifier, ProgressFn, SSLModel, adam, batched, uniform_proba


class ClassifierNet(nn.Module):
    """(B, C, H, W) -> (B, K) logits; `features` gives the last hidden layer (B, F)."""

    def __init__(
        self, input_shape, num_classes: int, hidden, dropout: float, polarity_invariant: bool = True
    ):
        super().__init__()
        self.features, width = nets.features(
            input_shape, hidden, classifier=True, polarity_invariant=polarity_invariant
        )
        self.out = nn.Sequential(Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@dataclass
class SupervisedConfig:
    hidden: list[int] | None = None  # None: nets.default_hidden(input shape), as M2's classifier
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    # Colour or larger images (augment.kind "colour"): train on weak views of the labeled
    # images (crops, flips); False: the images as they are. Small grey images are never
    # augmented here: measured on digits (30 labels, 60 s, seeds 0-2) 1-pixel shifts gave 0.724
    # against 0.781 without, while on shapes they are most of the gain (a CNN, 30 labels, seed
    # 0: 0.725 with, 0.465 without).
    augment: bool = True
    # Colour or larger images: the first convolution ignores the sign of its input
    # (nets.PooledConvFeatures); False: as checkpoints before it were trained.
    polarity_invariant: bool = True


@dataclass
class SelfTrainConfig(SupervisedConfig):
    unlabeled_batch: int = 100
    threshold: float = 0.95
    pseudo_weight: float = 1.0
    warmup_steps: int = 200  # labeled-only steps before pseudo-labels join


class Supervised(PredictsWithClassifier, SSLModel):
    name = "supervised"
    Config = SupervisedConfig
    legacy_config: ClassVar[dict[str, Any]] = {"polarity_invariant": False}

    def build(self) -> None:
        cfg = self.config
        hidden = cfg.hidden or nets.default_hidden(self.input_shape)
        self.modules = {
            "net": ClassifierNet(
                self.input_shape, self.num_classes, hidden, cfg.dropout, cfg.polarity_invariant
            ).to(self.device)
        }
        self.initialised(self.modules["net"]).eval()
        self.optimizers = {
            "net": adam(
                self.modules["net"].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True
            )
        }

    def _pseudo_loss(self, net: nn.Module, xu: torch.Tensor, step: int) -> tuple[torch.Tensor | None, float]:
        return None, 0.0

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        ticker = nets.Ticker(progress, budget)
        self.labels_seen = len(labeled_idx)
        if len(labeled_idx) == 0:  # nothing to learn from; predict_proba stays uniform
            ticker.tick(0, {}, force=True)
            return {}
        cfg = self.config
        rng = nets.batch_rng(self.seed, self.steps_done)
        pool = nets.pool_tensor(x, self.device)
        y_all = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        lab = nets.batches(np.arange(len(labeled_idx)), cfg.batch_size, rng)
        unlabeled_idx = np.setdiff1d(np.arange(len(x)), labeled_idx)
        unl = (
            nets.batches(unlabeled_idx, getattr(cfg, "unlabeled_batch", 1), rng)
            if len(unlabeled_idx)
            else None
        )
        net = self.modules["net"].train()
        opt = self.optimizers["net"]
        augment_views = cfg.augment and augment.kind(self.input_shape) == "colour"
        step, parts = 0, {}
        while not budget.done(step):
            pick = torch.as_tensor(next(lab), device=self.device)
            xb = pool[torch.as_tensor(labeled_idx, device=self.device)[pick]]
            loss = F.cross_entropy(
                net(augment.weak(xb, self.generator) if augment_views else xb), y_all[pick]
            )
            parts = {"cross_entropy": loss.item()}
            if unl is not None:
                extra, used = self._pseudo_loss(
                    net, pool[torch.as_tensor(next(unl), device=self.device)], self.steps_done + step
                )
                if extra is not None:
                    loss = loss + extra
                    parts.update(pseudo_loss=extra.item(), pseudo_fraction=used)
            nets.check_finite(loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ticker.tick(step, parts)
        net.eval()
        self.steps_done += step
        ticker.tick(step, parts, force=True)
        return parts

    def _own_classifier(self) -> nn.Module:
        return self.modules["net"].eval()  # the whole net is the classifier (B, C, H, W) -> (B, K)

    def embed(self, x: np.ndarray) -> np.ndarray:
        net = self.modules["net"].eval()
        return batched(net.features, x, self.device)


class SelfTrain(Supervised):
    name = "selftrain"
    Config = SelfTrainConfig

    def _pseudo_loss(self, net: nn.Module, xu: torch.Tensor, step: int) -> tuple[torch.Tensor | None, float]:
        cfg = self.config
        if step < cfg.warmup_steps:
            return None, 0.0
        logits = net(xu)  # (Bu, K)
        with torch.no_grad():
            conf, pseudo = torch.softmax(logits, 1).max(1)
            mask = (conf >= cfg.threshold).float()
        loss = (F.cross_entropy(logits, pseudo, reduction="none") * mask).mean()
        return cfg.pseudo_weight * loss, mask.mean().item()


# -- label spreading -------------------------------------------------------------------------


@dataclass
class LabelSpreadConfig:
    components: int = 50  # PCA dimensions (fewer when the pool or the image is smaller)
    neighbors: int = 7
    alpha: float = 0.2  # LabelSpreading's clamping: 0 keeps the given labels, 1 replaces them
    max_iter: int = 100


class _KNNSpread(nn.Module):
    """(B, C, H, W) -> (B, K): project with PCA, average the label distributions of k nearest pool points."""

    def __init__(
        self, mean: torch.Tensor, components: torch.Tensor, pool_z: torch.Tensor, dist: torch.Tensor, k: int
    ):
        super().__init__()
        self.register_buffer("mean", mean)  # (P,)
        self.register_buffer("components", components)  # (D, P)
        self.register_buffer("pool_z", pool_z)  # (N, D)
        self.register_buffer("dist", dist)  # (N, K)
        self.k = min(k, pool_z.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) - self.mean) @ self.components.T  # (B, D)
        d2 = torch.cdist(z, self.pool_z)  # (B, N)
        near = torch.topk(d2, self.k, dim=1, largest=False).indices  # (B, k)
        p = self.dist[near].mean(1)  # (B, K)
        return p / p.sum(1, keepdim=True).clamp_min(1e-12)


class LabelSpread(SSLModel):
    name = "labelspread"
    Config = LabelSpreadConfig

    def build(self) -> None:
        self.modules = {}
        self.knn: _KNNSpread | None = None

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        """One closed-form fit; the budget only bounds LabelSpreading's iterations by its own max_iter."""
        from sklearn.semi_supervised import LabelSpreading

        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        ticker = nets.Ticker(progress, budget)
        ticker.tick(0, {}, force=True)
        if len(labeled_idx) == 0:
            self.knn = None
            return {}
        cfg = self.config
        flat = x.reshape(len(x), -1).astype(np.float32)
        pca, z = nets.fit_pca(flat, cfg.components, self.seed)
        z = z.astype(np.float32)
        target = np.full(len(x), -1, dtype=np.int64)
        target[labeled_idx] = labels
        present = np.unique(labels)
        dist = np.zeros((len(x), self.num_classes), dtype=np.float32)
        if len(present) == 1:
            dist[:, present[0]] = 1.0
        else:
            spread = LabelSpreading(
                kernel="knn",
                n_neighbors=min(cfg.neighbors, len(x) - 1),
                alpha=cfg.alpha,
                max_iter=cfg.max_iter,
            )
            spread.fit(z, target)
            dist[:, spread.classes_] = np.nan_to_num(spread.label_distributions_, nan=0.0)
            empty = dist.sum(1) == 0  # points the graph never reached: no opinion
            dist[empty] = 1.0 / self.num_classes
        self.knn = _KNNSpread(
            torch.from_numpy(pca.mean_.astype(np.float32)),
            torch.from_numpy(pca.components_.astype(np.float32)),
            torch.from_numpy(z),
            torch.from_numpy(dist / dist.sum(1, keepdims=True)),
            cfg.neighbors,
        ).to(self.device)
        ticker.tick(1, {}, force=True)
        return {}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.knn is None:
            return uniform_proba(len(x), self.num_classes)
        return batched(self.knn, x, self.device, batch=256)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """The PCA coordinates (N, D); without a fit (no labels yet) the flattened pixels."""
        if self.knn is None:
            return x.reshape(len(x), -1).astype(np.float32)
        knn = self.knn
        return batched(lambda xb: (xb.flatten(1) - knn.mean) @ knn.components.T, x, self.device)

    def classifier_module(self) -> nn.Module:
        if self.knn is None:
            return nets.Uniform(self.num_classes)
        return copy.deepcopy(self.knn).cpu().eval()

    def extra_state(self) -> dict[str, Any]:
        if self.knn is None:
            return {}
        return {key: value.detach().cpu() for key, value in self.knn.state_dict().items()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            self.knn = None
            return
        self.knn = _KNNSpread(
            state["mean"], state["components"], state["pool_z"], state["dist"], self.config.neighbors
        ).to(self.device)
