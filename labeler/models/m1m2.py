"""M1+M2: the stacked model, M2 trained on the latent codes of an M1 VAE.

Kingma, Rezende, Mohamed, Welling (2014), "Semi-supervised learning with deep generative
models", NeurIPS, "stacked generative semi-supervised model" (M1+M2).

Generative story, two layers of latent variables:

    p(y) = Cat(1/K),  p(z2) = N(0, I),  p(z1 | y, z2) = N(mu(y, z2), diag sigma(y, z2)^2),
    p(x | z1) = Bernoulli(sigmoid(f(z1)))                                        (M1's decoder)

Training is in two stages, as in the paper: first M1 (m1.VAE) maximises the ELBO of every
image; then M2 (m2.M2Net, Gaussian likelihood) is trained on codes z1 ~ q(z1 | x) drawn afresh
each step (a sample rather than the mean, so M2 sees M1's posterior uncertainty), with the
labeled/unlabeled objective of m2.py. The classifier is q(y | z1) applied to the mean of
q(z1 | x).

Time budget: the first fit spends `m1_fraction` of it on M1; warm starts, when M1 has already
trained, spend `m1_fraction_warm` (M1 keeps adapting to new images, M2 gets most of the time).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import nets
from .base import Budget, ProgressFn, SSLModel, adam, batched, uniform_proba
from .m1 import VAE, train_vae
from .m2 import M2Config, M2Net, train_m2


@dataclass
class M1M2Config:
    m1_latent_dim: int = 0  # 0: nets.default_latent(input shape), as for M1
    m1_hidden: list[int] = field(default_factory=lambda: [500, 500])
    m1_batch_size: int = 100
    m1_lr: float = 1e-3
    m1_kl_weight: float = 1.0  # see M1Config.kl_weight
    m1_fraction: float = 0.4
    m1_fraction_warm: float = 0.1
    latent_dim: int = 0  # z2; 0: nets.default_latent(input shape), as for M2
    # M2's hidden layer on the codes; None: the paper's [500] at 28x28 and up, [128] below,
    # where M1's codes have 10 dimensions (measured on digits, 30 labels, 60 s, seeds 0 and 1,
    # with 10-dimensional codes: 0.842 and 0.842 with [500], 0.847 and 0.858 with [128];
    # with the 50-dimensional codes of before, 0.791 and 0.773).
    hidden: list[int] | None = None
    labeled_batch: int = 100
    unlabeled_batch: int = 100
    lr: float = 1e-3
    alpha_scale: float = 0.1
    warmup_steps: int = 0
    labeled_weight: float = 0.0
    # Train M2 on samples z1 ~ q(z1|x), not the means: on the means, M1's unused dimensions are
    # constant, the Gaussian p(z1|y,z2) shrinks onto them and the bound runs off (seen on digits).
    sample_z1: bool = True

    def m2(self) -> M2Config:
        """M2's training settings for `train_m2` (the network is built in `M1M2.build`)."""
        return M2Config(
            labeled_batch=self.labeled_batch,
            unlabeled_batch=self.unlabeled_batch,
            lr=self.lr,
            alpha_scale=self.alpha_scale,
            warmup_steps=self.warmup_steps,
            labeled_weight=self.labeled_weight,
            lr_decay=0.0,  # M1+M2 keeps the constant rate it was measured with
            mixed_precision=False,  # and float32 (its networks on codes are small)
        )


class _StackedClassifier(nn.Module):
    """(B, C, H, W) -> (B, K): the mean of q(z1|x), then M2's q(y|z1)."""

    def __init__(self, vae: VAE, net: M2Net):
        super().__init__()
        self.features, self.q_mu = vae.features, vae.q_z.mu
        self.cls_features, self.cls_out = net.cls_features, net.cls_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.cls_out(self.cls_features(self.q_mu(self.features(x)))), dim=1)


class M1M2(SSLModel):
    name = "m1m2"
    Config = M1M2Config
    conditional_samples = True

    def build(self) -> None:
        cfg = self.config
        self.m1_latent_dim = cfg.m1_latent_dim or nets.default_latent(self.input_shape)
        self.latent_dim = cfg.latent_dim or nets.default_latent(self.input_shape)
        hidden = cfg.hidden or ([500] if nets.mnist_sized(self.input_shape) else [128])
        self.modules = {
            "vae": VAE(self.input_shape, self.m1_latent_dim, cfg.m1_hidden).to(self.device),
            "net": M2Net((self.m1_latent_dim,), self.num_classes, self.latent_dim, hidden).to(self.device),
        }
        for module in self.modules.values():
            self.initialised(module).eval()
        self.optimizers = {
            "vae": adam(self.modules["vae"].parameters(), lr=cfg.m1_lr),
            "net": adam(self.modules["net"].parameters(), lr=cfg.lr),
        }
        self.labels_seen = 0
        self.m1_steps = 0
        self.m2_steps = 0

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        cfg = self.config
        rng = nets.batch_rng(self.seed, self.m1_steps + self.m2_steps)
        ticker = nets.Ticker(progress, budget)
        vae, net = self.modules["vae"], self.modules["net"]
        pool = nets.pool_tensor(x, self.device)

        first = nets.sub_budget(budget, cfg.m1_fraction if self.m1_steps == 0 else cfg.m1_fraction_warm)
        steps1, neg_elbo = train_vae(
            vae,
            pool,
            first,
            ticker,
            rng,
            cfg.m1_batch_size,
            cfg.m1_lr,
            0,
            cfg.m1_kl_weight,
            self.optimizers["vae"],
        )
        self.m1_steps += steps1

        with torch.no_grad():
            codes = [vae.encode(pool[i : i + 1024]) for i in range(0, len(pool), 1024)]
        mu = torch.cat([c[0] for c in codes])  # (N, D1)
        std = torch.exp(0.5 * torch.cat([c[1] for c in codes]))

        def draw(idx: np.ndarray) -> torch.Tensor:
            rows = torch.as_tensor(idx, device=self.device)
            if cfg.sample_z1:
                noise = torch.randn(std[rows].shape, device=self.device, generator=self.generator)
                return mu[rows] + std[rows] * noise
            return mu[rows]

        unlabeled_idx = np.setdiff1d(np.arange(len(x)), labeled_idx)
        rest = nets.rest_budget(budget, steps1)
        steps2, parts = train_m2(
            net,
            draw,
            labeled_idx,
            labels,
            unlabeled_idx,
            cfg.m2(),
            rest,
            ticker,
            rng,
            self.device,
            steps1,
            self.m2_steps,
            self.optimizers["net"],
        )
        self.m2_steps += steps2
        self.labels_seen = len(labeled_idx)
        parts = {"m1_neg_elbo": neg_elbo, **parts}
        ticker.tick(steps1 + steps2, parts, force=True)
        return parts

    def _logits(self, xb: torch.Tensor, sample: bool = False) -> torch.Tensor:
        vae, net = self.modules["vae"].eval(), self.modules["net"].eval()
        mu, logvar = vae.encode(xb)
        z1 = nets.reparameterize(mu, logvar, self.generator) if sample else mu
        return net.logits(z1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.labels_seen == 0:
            return uniform_proba(len(x), self.num_classes)
        return batched(lambda xb: torch.softmax(self._logits(xb), 1), x, self.device)

    def mc_proba(self, x: np.ndarray, samples: int = 8) -> np.ndarray:
        """(S, N, K): q(y | z1) for S samples z1 ~ q(z1 | x)."""
        if self.labels_seen == 0:
            return super().mc_proba(x, samples)
        return np.stack(
            [
                batched(lambda xb: torch.softmax(self._logits(xb, True), 1), x, self.device)
                for _ in range(samples)
            ]
        )

    def embed(self, x: np.ndarray) -> np.ndarray:
        """M1's posterior means (N, D1): the continuous code that M2 classifies."""
        vae = self.modules["vae"].eval()
        return batched(lambda xb: vae.encode(xb)[0], x, self.device)

    def classifier_module(self) -> nn.Module:
        if self.labels_seen == 0:
            return nets.Uniform(self.num_classes)
        vae = copy.deepcopy(self.modules["vae"]).cpu().eval()
        net = copy.deepcopy(self.modules["net"]).cpu().eval()
        return _StackedClassifier(vae, net).eval()

    @torch.no_grad()
    def sample_images(self, n_per_class: int = 8, seed: int = 0) -> np.ndarray | None:
        vae, net = self.modules["vae"].eval(), self.modules["net"].eval()
        k = self.num_classes
        gen = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n_per_class, self.latent_dim, generator=gen).repeat(k, 1).to(self.device)
        y = torch.eye(k, device=self.device).repeat_interleave(n_per_class, 0)
        z1, _ = net.decoder(torch.cat([z2, y], 1))  # the mean of p(z1 | y, z2)
        img = torch.sigmoid(vae.decoder(z1))
        return img.cpu().numpy().reshape(k, n_per_class, *self.input_shape)

    def extra_state(self) -> dict[str, Any]:
        return {"labels_seen": self.labels_seen, "m1_steps": self.m1_steps, "m2_steps": self.m2_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.labels_seen = int(state.get("labels_seen", 0))
        self.m1_steps = int(state.get("m1_steps", 0))
        self.m2_steps = int(state.get("m2_steps", 0))
