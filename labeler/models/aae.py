"""Semi-supervised adversarial autoencoder.

Makhzani, Shlens, Jaitly, Goodfellow, Frey (2015), "Adversarial autoencoders", arXiv:1511.05644,
section 5 (semi-supervised adversarial autoencoders).

One encoder gives two codes of an image x: the class code y = q(y|x) = softmax(l(x)), K values
on the simplex, and the style code z = q(z|x), D values (deterministic, as in the paper). The
decoder reconstructs x from (y, z):

    x_hat = sigmoid(g(y, z)),   L_rec = -sum_d [x_d log x_hat_d + (1 - x_d) log(1 - x_hat_d)]

(the Bernoulli likelihood of the other models here, on intensities in [0, 1]). Two small
discriminators impose the priors: D_y tells one-hot samples of p(y) = Cat(1/K) from y, D_z
samples of p(z) = N(0, I) from z. With s = the discriminator's logit,

    L_D = E_prior softplus(-s) + E_q softplus(s)          (-log D(prior) - log(1 - D(q)))
    L_G = E_q softplus(-s)                                (-log D(q): the encoder fools D)

so y is pushed to one-hot vectors used equally often (the clusters) and z to a class-free
Gaussian style. The labeled images train q(y|x) with the cross-entropy L_sup = -log y_label.

Each step takes the paper's three phases, each with its own Adam, on an unlabeled batch (every
pool image) and a labeled batch:

1. reconstruction: encoder and decoder minimise L_rec;
2. regularisation: D_y and D_z minimise L_D, then the encoder minimises L_G (both codes);
3. semi-supervised: the encoder's q(y|x) minimises L_sup on the labeled batch.

Sizes: the encoder and decoder are the project's backbones (nets.features / nets.image_decoder,
the MLP of `nets.default_hidden` below 28x28, convolutions for colour or larger images), z has
`nets.default_latent` dimensions (10 below 28x28; the paper's MNIST model also uses a
10-dimensional style); the discriminators have two hidden layers (the paper: 1000-1000 on
MNIST; smaller here so the three phases fit many steps into a CPU budget). Adam with one
learning rate for all phases (the paper: SGD with momentum and per-phase rates).

Consistency (`consistency`, on by default; off is the paper's form), as in m2.py: the
semi-supervised phase also gives q(y|x) FixMatch's term on the unlabeled batch, with an
exponential moving average of q(y|x) as the teacher (see `augment.py`; strong views kept out
of batch-norm statistics):

    L_sup,cons = -log y_label(x_l) + consistency_weight * L_cons,

with the labeled images as they are (`augment_labeled` gives the cross-entropy weak views, as
m2 does; it hurt here, see the config), and predictions and the export use the teacher. The
reconstruction and regularisation phases are the paper's either way.

The latent-space view gets (y, z); `sample_images` decodes one-hot y with shared z draws,
so each row shows one class in the same styles.
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
from .base import Budget, PredictsWithClassifier, ProgressFn, SSLModel, adam, batched

# -- loss terms ------------------------------------------------------------------------------


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L_rec: mean over the batch of the Bernoulli negative log-likelihood summed over pixels."""
    return -nets.bernoulli_log_prob(logits, x).mean()


def discriminator_loss(prior_logits: torch.Tensor, code_logits: torch.Tensor) -> torch.Tensor:
    """L_D = mean softplus(-s_prior) + mean softplus(s_code): -log D(prior) - log(1 - D(code))."""
    return F.softplus(-prior_logits).mean() + F.softplus(code_logits).mean()


def generator_loss(code_logits: torch.Tensor) -> torch.Tensor:
    """L_G = mean softplus(-s_code) = -log D(code): the encoder's codes taken for prior samples."""
    return F.softplus(-code_logits).mean()


def categorical_prior(n: int, k: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """(n, K) one-hot samples of Cat(1/K)."""
    return F.one_hot(torch.randint(k, (n,), device=device, generator=generator), k).float()


# -- networks --------------------------------------------------------------------------------


class AAENet(nn.Module):
    """Encoder x -> (class logits (B, K), style z (B, D)) and decoder (y, z) -> x logits."""

    def __init__(self, input_shape, num_classes: int, latent_dim: int, hidden, conv_width: int):
        super().__init__()
        self.trunk, width = nets.features(input_shape, hidden, conv_width=conv_width)
        self.y_head = nn.Linear(width, num_classes)
        self.z_head = nn.Linear(width, latent_dim)
        self.decoder = nets.image_decoder(num_classes + latent_dim, input_shape, hidden, conv_width)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)  # (B, F)
        return self.y_head(h), self.z_head(h)  # (B, K), (B, D)

    def decode(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([y, z], 1))  # (B, C, H, W) logits

    def classifier(self) -> nn.Sequential:
        return nn.Sequential(self.trunk, self.y_head)

    def encoder_parameters(self):
        return [*self.trunk.parameters(), *self.y_head.parameters(), *self.z_head.parameters()]


def discriminator(in_dim: int, hidden) -> nn.Sequential:
    """(B, in_dim) -> (B,) logit of "a prior sample"; no batch norm, which would let D compare
    rows of one batch."""
    return nn.Sequential(nets.mlp([in_dim, *hidden, 1], batchnorm=False), nn.Flatten(0))


@dataclass
class AAEConfig:
    latent_dim: int = 0  # 0: nets.default_latent(input shape)
    hidden: list[int] | None = None  # None: nets.default_hidden(input shape)
    d_hidden: tuple[int, ...] = (256, 256)  # both discriminators
    labeled_batch: int = 100
    unlabeled_batch: int = 100
    lr: float = 1e-3  # every phase's Adam
    # The discriminators' Adam; slower than the autoencoder's (digits, 30 labels, 60 s, seeds
    # 0-2: 0.879 +- 0.016 with 1e-4, 0.859 +- 0.019 with 1e-3).
    d_lr: float = 1e-4
    conv_width: int = 16  # colour or larger images (nets.use_conv)
    # FixMatch-style consistency with an EMA teacher on q(y|x) (module docstring); False is the
    # paper's semi-supervised phase.
    consistency: bool = True
    consistency_weight: float = 1.0
    threshold: float = 0.95  # the teacher's confidence needed for a pseudo-label
    ema: float = 0.99  # the teacher's decay (lower while fewer than ~1 / (1 - ema) steps are done)
    # The cross-entropy on weak views of the labeled images, as m2 does. Off: on digits (seed 0,
    # 400 steps) it took q(y|x) from 0.909 to 0.573 test accuracy (0.900 without consistency).
    augment_labeled: bool = False


class PhasedAutoencoder(PredictsWithClassifier, SSLModel):
    """What the adversarial autoencoders here share: the training loop over the paper's phases
    (each subclass's `_step`: reconstruction, regularisation, then the supervised phase) and its
    supervised phase; predictions and the state kept with a checkpoint come from
    `PredictsWithClassifier`, by `modules["net"].classifier()`."""

    def _step(self, xu: torch.Tensor, xl: torch.Tensor | None, yl: torch.Tensor | None) -> dict[str, float]:
        raise NotImplementedError

    # Checkpoints from before the consistency term were trained without it.
    legacy_config: ClassVar[dict[str, Any]] = {"consistency": False}

    def _add_teacher(self) -> None:
        """With consistency: an EMA copy of q(y|x), the consistency term's teacher and what
        predicts and is exported (`build` calls it after initialising the networks)."""
        if self.config.consistency:
            self.modules["teacher"] = (
                copy.deepcopy(self.modules["net"].classifier()).requires_grad_(False).eval()
            )

    def _supervised_phase(self, classify, xl, yl, xu, parts: dict[str, float]) -> dict[str, float]:
        """Cross-entropy of `classify(xl)` on the labeled batch (when there is one), with
        consistency the FixMatch term on `xu` and the teacher's update (module docstring); then a
        check that every loss of the step is finite."""
        teacher = self.modules.get("teacher")
        if xl is not None:
            views = (
                augment.weak(xl, self.generator)
                if teacher is not None and self.config.augment_labeled
                else xl
            )
            loss = ce = F.cross_entropy(classify(views), yl)
            if teacher is not None:
                student = self.modules["net"].classifier()
                with torch.no_grad():
                    teacher_logits = teacher(augment.weak(xu, self.generator))  # (B, K)
                with augment.frozen_batchnorm(student):
                    student_logits = student(augment.strong(xu, self.generator))  # (B, K)
                cons, confident = augment.fixmatch_loss(student_logits, teacher_logits, self.config.threshold)
                loss = ce + self.config.consistency_weight * cons
                parts.update(consistency=cons.item(), confident=confident.item())
            self.optimizers["supervised"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["supervised"].step()
            parts["cross_entropy"] = ce.item()
            if teacher is not None:
                done = self.steps_done + 1
                augment.ema_update(teacher, student, min(self.config.ema, done / (done + 10)))
        for value in parts.values():
            nets.check_finite(torch.tensor(value), self.steps_done)
        return parts

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        cfg = self.config
        ticker = nets.Ticker(progress, budget)
        rng = nets.batch_rng(self.seed, self.steps_done)
        pool = nets.pool_tensor(x, self.device)
        y_all = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        lab_idx = torch.as_tensor(labeled_idx, device=self.device)
        lab = nets.batches(np.arange(len(labeled_idx)), cfg.labeled_batch, rng) if len(labeled_idx) else None
        # Every pool image is an unlabeled one for the autoencoder and the priors (as in the paper).
        unl = nets.batches(np.arange(len(x)), cfg.unlabeled_batch, rng)
        for key, module in self.modules.items():
            module.train(key != "teacher")
        step, parts = 0, {}
        while not budget.done(step):
            xu = pool[torch.as_tensor(next(unl), device=self.device)]
            xl = yl = None
            if lab is not None:
                pick = torch.as_tensor(next(lab), device=self.device)
                xl, yl = pool[lab_idx[pick]], y_all[pick]
            parts = self._step(xu, xl, yl)
            step += 1
            self.steps_done += 1
            ticker.tick(step, parts)
        for module in self.modules.values():
            module.eval()
        self.labels_seen = len(labeled_idx)
        ticker.tick(step, parts, force=True)
        return parts


class AAE(PhasedAutoencoder):
    name = "aae"
    Config = AAEConfig
    conditional_samples = True

    def build(self) -> None:
        cfg = self.config
        hidden = cfg.hidden or nets.default_hidden(self.input_shape)
        self.latent_dim = cfg.latent_dim or nets.default_latent(self.input_shape)
        k = self.num_classes
        net = AAENet(self.input_shape, k, self.latent_dim, hidden, cfg.conv_width).to(self.device)
        self.modules = {
            "net": net.eval(),
            "d_y": discriminator(k, cfg.d_hidden).to(self.device),
            "d_z": discriminator(self.latent_dim, cfg.d_hidden).to(self.device),
        }
        for module in self.modules.values():
            self.initialised(module)
        self._add_teacher()
        disc = [*self.modules["d_y"].parameters(), *self.modules["d_z"].parameters()]
        self.optimizers = {
            "reconstruction": adam(net.parameters(), lr=cfg.lr),
            "discriminators": adam(disc, lr=cfg.d_lr),
            "regularisation": adam(net.encoder_parameters(), lr=cfg.lr),
            "supervised": adam(net.classifier().parameters(), lr=cfg.lr),
        }

    def _step(self, xu: torch.Tensor, xl: torch.Tensor | None, yl: torch.Tensor | None) -> dict[str, float]:
        net, d_y, d_z, opts = self.modules["net"], self.modules["d_y"], self.modules["d_z"], self.optimizers
        k = self.num_classes

        logits, z = net.encode(xu)
        rec = reconstruction_loss(net.decode(torch.softmax(logits, 1), z), xu)
        opts["reconstruction"].zero_grad(set_to_none=True)
        rec.backward()
        opts["reconstruction"].step()

        with torch.no_grad():
            logits, z = net.encode(xu)
            y = torch.softmax(logits, 1)
        prior_y = categorical_prior(len(xu), k, self.device, self.generator)
        prior_z = torch.randn(z.shape, device=z.device, generator=self.generator)
        d_loss = discriminator_loss(d_y(prior_y), d_y(y)) + discriminator_loss(d_z(prior_z), d_z(z))
        opts["discriminators"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["discriminators"].step()

        logits, z = net.encode(xu)
        g_loss = generator_loss(d_y(torch.softmax(logits, 1))) + generator_loss(d_z(z))
        opts["regularisation"].zero_grad(set_to_none=True)
        g_loss.backward()
        opts["regularisation"].step()

        parts = {"reconstruction": rec.item(), "discriminators": d_loss.item(), "generator": g_loss.item()}
        return self._supervised_phase(lambda xb: net.encode(xb)[0], xl, yl, xu, parts)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(N, K + D): the class code y = q(y|x) beside the style code z."""
        net = self.modules["net"].eval()

        def codes(xb: torch.Tensor) -> torch.Tensor:
            logits, z = net.encode(xb)
            return torch.cat([torch.softmax(logits, 1), z], 1)

        return batched(codes, x, self.device)

    @torch.no_grad()
    def sample_images(self, n_per_class: int = 8, seed: int = 0) -> np.ndarray | None:
        net = self.modules["net"].eval()
        k = self.num_classes
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n_per_class, self.latent_dim, generator=gen).repeat(k, 1).to(self.device)
        y = torch.eye(k, device=self.device).repeat_interleave(n_per_class, 0)
        img = torch.sigmoid(net.decode(y, z))
        return img.cpu().numpy().reshape(k, n_per_class, *self.input_shape)
