"""A transductive linear SVM on a fixed PCA embedding, one-vs-rest.

Joachims (1999), "Transductive inference for text classification using support vector
machines", ICML. The labels of the unlabeled images are variables of the optimisation, under a
class-balance constraint, and their weight is ramped up from almost nothing, so the early,
unreliable guesses move the hyperplane little.

The embedding is fixed: z(x) = (x - mean) V^T / s, the top D principal directions V of the
pool's pixels (fitted once, on the first fit, and kept), scaled by s so that each coordinate
has unit variance on average. For each class k a linear score f_k(z) = w_k . z + b_k separates
k from the rest (one-vs-rest, Joachims' binary problem once per class). With t_ik = +1 when the
labeled image i has class k and -1 otherwise, and y_jk in {-1, +1} the variable label of the
unlabeled image j, every class minimises

    J_k = 1/2 ||w_k||^2 + C [ sum_i l(t_ik f_k(z_i)) + u sum_j l(y_jk f_k(z_j)) ],

with the squared hinge l(m) = max(0, 1 - m)^2 (the L2-SVM: smooth, so L-BFGS fits it on
60,000 images in a few seconds), subject to the balance constraint that the share of
unlabeled images with y_jk = +1 equals the share r_k of class k among the labeled ones.

Optimisation (Joachims' algorithm, his pairwise label switches replaced by their fixed point):

1. fit w on the labeled images alone (u = 0);
2. for u = u_0, 2 u_0, 4 u_0, ... up to `unlabeled_weight` (the ramp):
   repeat: for fixed w the best labels under the constraint are y_jk = +1 for the
   round(r_k N_u) unlabeled images with the highest f_k and -1 for the rest (l(m) - l(-m)
   falls with m, so a swap of a +1 below a -1 always lowers J_k: this is where Joachims'
   pairwise switches end); refit w with those labels; until no label changes or
   `max_switches` refits.

A step of the budget is one refit of w. Predictions are softmax(`margin_scale` f(z)), the
one-vs-rest margins turned into probabilities like a multinomial logistic model.

No consistency term (augment.py's FixMatch, used by the networks here): the classifier is
linear on a PCA embedding fixed at the first fit, so a view's shift or rotation only moves its
point in that embedding, and the transductive labels already are hard pseudo-labels of every
unlabeled image under the balance constraint; what FixMatch would add is invariance learned by
a feature extractor, and this model has none to train.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import nets
from .base import Budget, ProgressFn, SSLModel, batched, uniform_proba


@dataclass
class TSVMConfig:
    components: int = 50  # PCA dimensions (fewer when the pool or the image is smaller)
    # C, the weight of the slack against 1/2 ||w||^2. On digits (30 labels, seeds 0-2): 0.814 with
    # C = 10, 0.859 with 1, 0.870 with 0.1, 0.861 with 0.01; 0.789 without the unlabeled images.
    svm_c: float = 0.1
    unlabeled_weight: float = 1.0  # u at the end of the ramp (Joachims: C* = C)
    ramp_start: float = 0.001  # u at the start of the ramp, as a fraction of unlabeled_weight
    max_switches: int = 10  # refits per ramp level while labels still change
    lbfgs_iters: int = 50  # L-BFGS iterations per refit
    margin_scale: float = 2.0  # predict_proba = softmax(margin_scale * f(z))


def squared_hinge(margins: torch.Tensor) -> torch.Tensor:
    """l(m) = max(0, 1 - m)^2, elementwise."""
    return torch.clamp(1.0 - margins, min=0.0).pow(2)


def tsvm_objective(
    scores_l: torch.Tensor,
    targets_l: torch.Tensor,
    scores_u: torch.Tensor,
    targets_u: torch.Tensor,
    weight: torch.Tensor,
    c: float,
    u: float,
) -> torch.Tensor:
    """sum_k J_k (module docstring) for scores (N, K), targets in {-1, +1} (N, K) and the
    weights w (D, K); the biases are not regularised."""
    slack = squared_hinge(targets_l * scores_l).sum()
    if len(scores_u) and u > 0:
        slack = slack + u * squared_hinge(targets_u * scores_u).sum()
    return 0.5 * weight.pow(2).sum() + c * slack


def balanced_labels(scores_u: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """The labels y (N_u, K) in {-1, +1} minimising sum_j l(y_jk f_jk) for each k under the
    constraint that round(shares_k N_u) of them are +1: those with the highest scores."""
    n, k = scores_u.shape
    y = -torch.ones_like(scores_u)
    order = torch.argsort(scores_u, dim=0, descending=True)  # (N_u, K)
    counts = torch.round(shares * n).long().clamp(0, n)  # (K,)
    for c in range(k):
        y[order[: int(counts[c]), c], c] = 1.0
    return y


def ramp(final: float, start_fraction: float) -> list[float]:
    """u_0 = final * start_fraction, doubled until it reaches `final` (the last level is `final`)."""
    levels, u = [], final * start_fraction
    while u < final:
        levels.append(u)
        u *= 2.0
    return [*levels, final]


class LinearOnPCA(nn.Module):
    """(B, C, H, W) -> (B, K) one-vs-rest margins f(z) on the fixed PCA embedding."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: float, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)  # (P,)
        self.register_buffer("components", components)  # (D, P)
        self.register_buffer("scale", torch.tensor(float(scale)))
        # Built without drawing initial weights (it starts at zero), so fitting never touches the
        # global generator that other threads share.
        self.linear = nn.utils.skip_init(nn.Linear, components.shape[0], num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.components.T / self.scale  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(x))


class _Probabilities(nn.Module):
    def __init__(self, net: LinearOnPCA, margin_scale: float):
        super().__init__()
        self.net = net
        self.margin_scale = margin_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.margin_scale * self.net(x), dim=1)


class TSVM(SSLModel):
    name = "tsvm"
    Config = TSVMConfig

    def build(self) -> None:
        self.modules = {}
        self.net: LinearOnPCA | None = None
        self.labels_seen = 0
        self.steps_done = 0

    def _fit_pca(self, x: np.ndarray) -> None:
        flat = x.reshape(len(x), -1).astype(np.float32)
        if len(flat) < 2:  # no directions to find: the embedding is one constant coordinate
            mean, components, scale = flat.mean(0), np.zeros((1, flat.shape[1]), np.float32), 1.0
        else:
            pca, z = nets.fit_pca(flat, self.config.components, self.seed)
            mean, components = pca.mean_, pca.components_
            scale = float(np.sqrt(max(np.mean(z**2), 1e-12)))  # unit variance per coordinate on average
        self.net = LinearOnPCA(
            torch.from_numpy(mean.astype(np.float32)),
            torch.from_numpy(components.astype(np.float32)),
            scale,
            self.num_classes,
        ).to(self.device)
        self.modules = {"net": self.net}

    def _refit(self, z_l, t_l, z_u, y_u, u: float) -> float:
        cfg = self.config
        linear = self.net.linear
        opt = torch.optim.LBFGS(
            linear.parameters(), lr=1.0, max_iter=cfg.lbfgs_iters, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = tsvm_objective(linear(z_l), t_l, linear(z_u), y_u, linear.weight, cfg.svm_c, u)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return float(tsvm_objective(linear(z_l), t_l, linear(z_u), y_u, linear.weight, cfg.svm_c, u))

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        ticker = nets.Ticker(progress, budget)
        ticker.tick(0, {}, force=True)
        self.labels_seen = len(labeled_idx)
        if len(labeled_idx) == 0:
            return {}
        cfg = self.config
        if self.net is None:
            self._fit_pca(x)
        with torch.no_grad():
            z = batched(self.net.embed, x, self.device)
        z = torch.as_tensor(z, device=self.device)
        unlabeled = np.setdiff1d(np.arange(len(x)), labeled_idx)
        z_l, z_u = z[torch.as_tensor(labeled_idx)], z[torch.as_tensor(unlabeled)]
        y = torch.as_tensor(labels, device=self.device)
        t_l = 2.0 * nn.functional.one_hot(y, self.num_classes).float() - 1.0  # (N_l, K)
        shares = torch.bincount(y, minlength=self.num_classes).float() / len(y)  # (K,)
        y_u = torch.zeros(len(unlabeled), self.num_classes, device=self.device)

        step, parts = 0, {}
        levels = [0.0] + (ramp(cfg.unlabeled_weight, cfg.ramp_start) if len(unlabeled) else [])
        for u in levels:
            for _ in range(1 if u == 0 else cfg.max_switches):
                if budget.done(step):
                    break
                if u > 0:
                    with torch.no_grad():
                        new = balanced_labels(self.net.linear(z_u), shares)
                    switched = int((new != y_u).any(1).sum())
                    if switched == 0 and step > 0 and parts.get("u") == u:
                        break
                    y_u = new
                    parts = {"switched": float(switched)}
                loss = self._refit(z_l, t_l, z_u, y_u, u)
                nets.check_finite(torch.tensor(loss), step)
                step += 1
                parts = {**parts, "objective": loss, "u": u}
                ticker.tick(step, parts)
        self.steps_done += step
        ticker.tick(step, parts, force=True)
        return {key: value for key, value in parts.items() if key != "u"}

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.net is None or self.labels_seen == 0:
            return uniform_proba(len(x), self.num_classes)
        module = _Probabilities(self.net.eval(), self.config.margin_scale)
        return batched(module, x, self.device)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """The scaled PCA coordinates (N, D); before the first fit the flattened pixels."""
        if self.net is None:
            return x.reshape(len(x), -1).astype(np.float32)
        return batched(self.net.embed, x, self.device)

    def classifier_module(self) -> nn.Module:
        if self.net is None or self.labels_seen == 0:
            return nets.Uniform(self.num_classes)
        return _Probabilities(copy.deepcopy(self.net).cpu().eval(), self.config.margin_scale).eval()

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"labels_seen": self.labels_seen, "steps_done": self.steps_done}
        if self.net is not None:
            state["net"] = {key: value.detach().cpu() for key, value in self.net.state_dict().items()}
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.labels_seen = int(state.get("labels_seen", 0))
        self.steps_done = int(state.get("steps_done", 0))
        saved = state.get("net")
        if saved is None:
            self.net, self.modules = None, {}
            return
        self.net = LinearOnPCA(
            saved["mean"], saved["components"], float(saved["scale"]), self.num_classes
        ).to(self.device)
        self.net.load_state_dict(saved)
        self.modules = {"net": self.net}
