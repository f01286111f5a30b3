"""M2: the class label as a partly observed latent variable of a conditional VAE.

Kingma, Rezende, Mohamed, Welling (2014), "Semi-supervised learning with deep generative
models", NeurIPS, model M2 ("generative semi-supervised model").

Generative story:

    p(y) = Cat(1/K),   p(z) = N(0, I),   p(x | y, z) = Bernoulli(sigmoid(f_theta(y, z)))

Inference model: the classifier q(y | x) = Cat(pi_phi(x)) and q(z | x, y) = N(mu_phi(x, y),
diag sigma_phi(x, y)^2). For a labeled pair the bound is

    -L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y)] - KL(q(z|x,y) || p(z)),

for an unlabeled image y is summed out under the classifier:

    -U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x)),

and the classifier also gets the labeled log-likelihood with weight alpha:

    J = sum_labeled L(x, y) + sum_unlabeled U(x) + alpha * sum_labeled -log q(y|x),  alpha = 0.1 N.

Minibatches: each step draws a labeled batch and an unlabeled batch (balanced, so the few labels
are seen every step) and estimates J / N without bias:

    J / N ~ (N_l / N) mean_l L + (N_u / N) mean_u U + alpha (N_l / N) mean_l -log q(y|x),

so with alpha = 0.1 N the classification term weighs 0.1 N_l per datum, as in the paper.
`labeled_weight` can raise the weight of the labeled ELBO above N_l / N (off by default: on
Fashion-MNIST with 100 labels it did not help within 300 s).

Networks (the paper's MLPs): q(y|x), q(z|x,y) and p(x|y,z) each have one hidden layer of 500
units (256 below 28x28 inputs, see nets.default_hidden), with batch norm; z has 50 dimensions
(10 below 28x28 inputs, see nets.default_latent).

Grey images of 28x28 such as Fashion-MNIST, where this differs from the paper: q(y|x) is the
invariant convolutional classifier (nets.PooledConvFeatures, `default_classifier_arch`), the
rest the MLPs above.

Colour or larger images (nets.use_conv), where this differs from the paper: q(y|x) is the
invariant convolutional classifier (nets.PooledConvFeatures) on the whole image, while x in
p(x|y,z) and q(z|x,y) is a 16x16 grey thumbnail of the image, standardised per image
(nets.GreyThumbnail, `thumbnail`), modelled with the small-image MLPs above. y stays a latent
of the generative model and U(x) still sums over it, but decoding K full colour images per
unlabeled image took most of each step (about 100 steps a minute on a loaded core), and the
colour, brightness and background that a full decoder must spend its capacity on say nothing
about the class. alpha is 1.0 N there (`conv_alpha_scale`, see M2Config). `thumbnail=0
conv_alpha_scale=0.1 polarity_invariant=0 consistency=0` gives the earlier, paper-like form.

Consistency (`consistency`, on by default; off is the paper's form): q(y|x) also gets FixMatch's term on the
unlabeled batch, with an exponential moving average of q(y|x) as the teacher (see
`augment.py`; augmentations by kind of data, strong views kept out of batch-norm statistics),
and its cross-entropy term sees weak views of the labeled images:

    J_cons = J + consistency_weight * alpha (N_l / N) * L_cons,

weighted like the classification term, and predictions and the export use the teacher. On grey
images its strong views carry no pixel noise (`grey_noise`, 0.1 for the other models).

Graph pseudo-labels (`graph`, off by default: on digits no better than the noise, on
Fashion-MNIST worse; see M2Config and graph.py): q(y|x) also learns, on the unlabeled batch, the
labels spread over a nearest-neighbour graph of its own features.

The same network also serves the stacked model M1+M2 (m1m2.py) with a Gaussian p(x | y, z)
on M1's latent codes instead of a Bernoulli on pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment, graph, nets
from .base import Budget, PredictsWithClassifier, ProgressFn, SSLModel, Stochastic, adam, batched, decay_lr

# M2's default learning rates (M2Config.lr). Grey: 3e-3 with lr_decay 0.5, measured on digits
# (30 labels, 60 s, one thread, two runs side by side, seeds 0-2): 0.910 with the 1e-3 of
# before, 0.916 with 1e-3 and the decay, 0.941 with 3e-3 alone, 0.953 with both (0.954 over
# seeds 0-4); Fashion-MNIST (100 labels, 600 s, seed 0) 0.760 with both, 0.751 before. Colour
# (shapes, the same runs): 0.912 before, 0.945 with the decay alone, 0.900 with 3e-3 and the
# decay, so the rate stays there.
GREY_LR = 3e-3
CONV_LR = 1e-3


def default_classifier_arch(input_shape: Sequence[int]) -> str:
    """The q(y|x) `classifier_arch="auto"` builds for images: the invariant convolutional
    classifier (nets.PooledConvFeatures) for colour images and for grey ones of 28x28 or larger,
    the paper's MLP for smaller grey images such as 8x8 digits. Measured on Fashion-MNIST (100
    labels, 600 s, seeds 0-2, two threads, one run at a time): 0.782 +- 0.010 with the conv
    q(y|x) (about 7,500 steps), 0.763 +- 0.029 with the MLP (about 14,000)."""
    return "conv" if nets.use_conv(input_shape) or nets.mnist_sized(input_shape) else "mlp"


@dataclass
class M2Config:
    latent_dim: int = 0  # 0: nets.default_latent(input shape): 50 at 28x28 and up (the paper), 10 below
    hidden: list[int] | None = None  # None: nets.default_hidden(input shape)
    labeled_batch: int = 100
    unlabeled_batch: int = 100
    # Adam's rate; None: GREY_LR for images up to 28x28 grey, CONV_LR for colour or larger ones
    # (nets.use_conv). A number applies to both.
    lr: float | None = None
    alpha_scale: float = 0.1  # alpha = alpha_scale * N (the paper: 0.1 N)
    warmup_steps: int = 0  # KL weight rises linearly from 0 to 1 over these steps (0: off)
    # Lower bound on the weight of the labeled ELBO term per datum (0: the unbiased N_l / N).
    # Raising it teaches the decoder what each label means from the few labeled images.
    labeled_weight: float = 0.0
    # The classifier q(y|x)'s backbone: "auto" (`default_classifier_arch`: conv for colour images
    # and grey ones of 28x28 or larger, the MLP below), "mlp" (the paper's) or "conv".
    classifier_arch: str = "auto"
    # A convolutional q(y|x)'s width (nets.PooledConvFeatures). 32 pays off in long runs only
    # (Fashion-MNIST, 100 labels, both cores, README): 1,800 s 0.802 +- 0.009 against 0.795 +-
    # 0.016 (seeds 0-2, about 15,000 steps against 23,000); 60 s 0.758 for both (seeds 0-2);
    # 600 s 0.786 +- 0.010 against 0.791 +- 0.016 (about 4,000 steps against 8,300). Predicting
    # takes about twice as long.
    classifier_width: int = 16
    # FixMatch-style consistency with an EMA teacher on q(y|x) (module docstring); False is the
    # paper's M2. Images only (M1+M2's codes are not augmented). Measured (30 labels, 60 s, one
    # shared CPU core): digits 0.893 +- 0.016 with, 0.882 +- 0.026 without (seeds 0-2); shapes
    # 0.505 with, 0.285 without (seed 0).
    consistency: bool = True
    consistency_weight: float = 1.0
    # Colour or larger images (nets.use_conv): the VAE's convolutions are this wide, and each
    # step draws this many labeled and unlabeled images. Decoding every image once per class
    # made the paper's batches of 100 and width 32 about one step a second on one CPU core
    # (shapes, 4 classes: 83 steps in 60 s); width 16 and 32 images are about ten times faster.
    conv_width: int = 16
    conv_batch: int = 32
    threshold: float = 0.95  # the teacher's confidence needed for a pseudo-label
    # The pixel noise of q(y|x)'s strong views of grey images (augment.strong; colour images keep
    # theirs); 0.1 before. Measured (Fashion-MNIST, 100 labels, both cores, seeds 0-2): 600 s
    # 0.791 +- 0.016 without, 0.784 +- 0.011 with; 1,800 s 0.795 +- 0.016 without, 0.790 +- 0.012
    # with (seeds 0 and 1 gain at both budgets, seed 2 loses); digits (30 labels, 60 s, seeds
    # 0-4) 0.957 +- 0.008 without, 0.959 +- 0.015 with. The GANs keep it (badgan without: 0.731
    # against 0.774, seed 0, 600 s).
    grey_noise: float = 0.0
    ema: float = 0.99  # the teacher's decay (lower while fewer than ~1 / (1 - ema) steps are done)
    # Wherever q(y|x) is convolutional: its first convolution ignores the sign of its input
    # (nets.PooledConvFeatures); False: the earlier backbone, as checkpoints before it were trained.
    polarity_invariant: bool = True
    # Colour or larger images: p(x|y,z) and q(z|x,y) model a grey thumbnail of this side
    # (nets.GreyThumbnail) with the small-image MLPs, while q(y|x) sees the whole image; 0: the
    # whole image, with convolutions (the form before). Summing out y decodes every unlabeled
    # image K times, which on 3x32x32 images took most of each step.
    thumbnail: int = 16
    # Colour or larger images: alpha = conv_alpha_scale * N. With the paper's 0.1 N the unlabeled
    # bound's entropy term kept q(y|x) below the teacher's threshold, so consistency taught
    # little (shapes, seed 0, 400 steps: 0.39 test accuracy, 0.91 with 1.0, 0.87 with 3.0).
    conv_alpha_scale: float = 1.0
    # Graph pseudo-labels (graph.py, Iscen et al. 2019), off by default: q(y|x)'s hidden features
    # of the pool (the teacher's with consistency) in a nearest-neighbour graph, the labels (and
    # q(y|x)'s predictions, weighted by graph_prior) spread along it, and q(y|x) learns the
    # result on the unlabeled batch, weighted like the classification term. Measured with
    # graph_prior 0: digits (30 labels, 60 s, seeds 0-2) 0.885 with, 0.860 without;
    # Fashion-MNIST (100 labels, 600 s, seed 0, side by side) 0.730 with, 0.751 without.
    graph: bool = False
    graph_weight: float = 1.0
    graph_prior: float = 0.0
    # The learning rate falls linearly to 0 over the last lr_decay of each fit's budget, as the
    # SSL-GAN's does (0: constant, the paper's); each fit starts at the full rate.
    lr_decay: float = 0.5
    # bfloat16 autocast for the training step's forward passes where q(y|x) is convolutional and
    # the device computes it natively (nets.mixed_precision: a CPU with AVX512-BF16 or AMX, a
    # GPU); the weights, the optimiser and every likelihood, softmax and loss stay float32, and
    # so do predictions. False: float32 throughout (the form before). Measured (Fashion-MNIST,
    # 100 labels, both cores, README): 1.2 to 1.3 times the steps a second (1.5 with
    # classifier_width=32); 60 s 0.754 against 0.746 (seeds 0-2); 3,000 steps 0.767 against 0.768.
    mixed_precision: bool = True


class M2Net(Stochastic):
    """q(y|x), q(z|x,y) and p(x|y,z) for images (Bernoulli) or vectors (Gaussian, for M1+M2).

    The image features h(x) are shared by q(z|x,y) across the K labels, so summing out y costs
    one encoder pass per image, K decoder passes. `classifier_arch` "auto" is
    `default_classifier_arch`, the rule M2 resolves and records too.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        latent_dim: int,
        hidden: Sequence[int],
        classifier_arch: str = "auto",
        conv_width: int = 32,
        polarity_invariant: bool = True,
        thumbnail: int = 0,
        gen_hidden: Sequence[int] | None = None,
        classifier_width: int = 16,
    ):
        super().__init__()
        self.k = num_classes
        self.vector = len(input_shape) == 1
        # What p(x|y,z) models: the image itself, or (thumbnail > 0) its GreyThumbnail.
        self.view: nn.Module = nn.Identity()
        gen_shape = input_shape
        if not self.vector and thumbnail > 0:
            self.view = nets.GreyThumbnail(input_shape, thumbnail)
            gen_shape = self.view.output_shape()
        gen_hidden = list(gen_hidden or hidden)
        if self.vector:
            d = int(input_shape[0])
            self.cls_features = mlp_features(d, hidden)
            self.enc_features = mlp_features(d, hidden)
            self.decoder = nn.Sequential(
                nets.mlp([latent_dim + num_classes, *reversed(hidden)], last_activation=True),
                nets.GaussianHead(hidden[0], d),
            )
        else:
            if classifier_arch == "auto":
                classifier_arch = default_classifier_arch(input_shape)
            self.cls_features, _ = nets.features(
                input_shape,
                hidden,
                classifier_arch,
                classifier=True,
                polarity_invariant=polarity_invariant,
                classifier_width=classifier_width,
            )
            self.enc_features, _ = nets.features(gen_shape, gen_hidden, conv_width=conv_width)
            self.decoder = nets.image_decoder(latent_dim + num_classes, gen_shape, gen_hidden, conv_width)
        self.cls_out = nn.Linear(hidden[-1], num_classes)
        # q(z|x,y): one hidden layer on [h(x), y]; its linear part is split as W_h h + W_y y so
        # that W_h h is computed once per image, not once per (image, label) pair.
        width = gen_hidden[-1]
        self.q_z_h = nn.Linear(width, width)
        self.q_z_y = nn.Linear(num_classes, width, bias=False)
        self.q_z_act = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU())
        self.q_z = nets.GaussianHead(width, latent_dim)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_out(self.cls_features(x))  # (B, K)

    def classifier(self) -> nn.Sequential:
        """q(y|x)'s layers as one module (B, ...) -> (B, K) logits, sharing this net's weights."""
        return nn.Sequential(self.cls_features, self.cls_out)

    def log_lik(self, x: torch.Tensor, out) -> torch.Tensor:
        if self.vector:
            mu, logvar = out
            return nets.gaussian_log_prob(x, mu, logvar)
        return nets.bernoulli_log_prob(out, x)

    def neg_elbo(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        y: torch.Tensor,
        rows: torch.Tensor | None = None,
        kl_weight: float = 1.0,
    ) -> torch.Tensor:
        """L(x, y) for images x (B, ...), their encoder features h (B, F), one-hot labels y (R, K)
        and `rows` (R,) saying which image each label goes with (None: row i with image i) -> (R,)."""
        pre = self.q_z_h(h)  # (B, W)
        if rows is not None:
            pre, x = pre[rows], x[rows]
        mu, logvar = self.q_z(self.q_z_act(pre + self.q_z_y(y)))  # (R, D)
        # float32 under mixed precision, for z and the KL term; the likelihood is float32 anyway
        # (autocast runs binary_cross_entropy_with_logits in float32; x is float32)
        mu, logvar = mu.float(), logvar.float()
        z = nets.reparameterize(mu, logvar, self.generator())
        out = self.decoder(torch.cat([z, y], 1))
        return -(self.log_lik(x, out) - kl_weight * nets.kl_std_normal(mu, logvar) - math.log(self.k))


def mlp_features(d: int, hidden: Sequence[int]) -> nn.Module:
    return nets.mlp([d, *hidden], last_activation=True)


def unlabeled_bound(neg_elbo_per_class: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)) from L (B, K) and classifier logits (B, K) -> (B,)."""
    log_q = F.log_softmax(logits, 1)  # (B, K)
    q = log_q.exp()
    return (q * (neg_elbo_per_class + log_q)).sum(1)


def m2_loss(
    net: M2Net,
    xl: torch.Tensor,
    yl: torch.Tensor,
    xu: torch.Tensor,
    n_labeled: int,
    n_unlabeled: int,
    alpha: float,
    kl_weight: float = 1.0,
    labeled_weight: float = 0.0,
    augment_labeled: bool = False,
    graph_term: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The minibatch estimate of J / N (module docstring); xl (Bl, ...), yl (Bl,) int, xu (Bu, ...).
    `augment_labeled`: q(y|x) sees weak views of the labeled images (the ELBO the images themselves);
    `graph_term(logits of xu)`: a weighted loss on the unlabeled batch's classifier logits, added."""
    bl, bu, k = len(xl), len(xu), net.k
    n = n_labeled + n_unlabeled
    x = torch.cat([xl, xu])  # one pass, so batch norm sees labeled and unlabeled rows together
    views = torch.cat([augment.weak(xl, net.generator()), xu]) if augment_labeled and bl else x
    logits = net.logits(views).float()  # (Bl + Bu, K), float32 under mixed precision
    x = net.view(x)  # what p(x|y,z) models: the image, or its grey thumbnail
    h = net.enc_features(x)  # (Bl + Bu, F)
    eye = torch.eye(k, device=x.device)
    rows = torch.cat(
        [torch.arange(bl, device=x.device), torch.arange(bl, bl + bu, device=x.device).repeat_interleave(k)]
    )
    # (Bl + Bu K, K): the labeled rows with their labels, then every label for each unlabeled image
    rows_y = torch.cat([eye[yl], eye.repeat(bu, 1)])
    neg = net.neg_elbo(x, h, rows_y, rows, kl_weight)  # (Bl + Bu K,)
    total = torch.zeros((), device=x.device)
    parts: dict[str, float] = {}
    if bl:
        labeled = neg[:bl].mean()
        ce = F.cross_entropy(logits[:bl], yl)
        total = total + max(n_labeled / n, labeled_weight) * labeled + (n_labeled / n) * alpha * ce
        parts.update(labeled_neg_elbo=labeled.item(), cross_entropy=ce.item())
    if bu:
        unlabeled = unlabeled_bound(neg[bl:].view(bu, k), logits[bl:]).mean()
        total = total + (n_unlabeled / n) * unlabeled
        parts["unlabeled_bound"] = unlabeled.item()
        if graph_term is not None:
            extra = graph_term(logits[bl:])
            total = total + extra
            parts["graph"] = extra.item()
    parts["loss"] = total.item()
    return total, parts


def train_m2(
    net: M2Net,
    draw: Callable[[np.ndarray], torch.Tensor],
    labeled_idx: np.ndarray,
    labels: np.ndarray,
    unlabeled_idx: np.ndarray,
    cfg: M2Config,
    budget: Budget,
    ticker: nets.Ticker,
    rng: np.random.Generator,
    device: torch.device,
    step0: int = 0,
    trained_before: int = 0,
    opt: torch.optim.Optimizer | None = None,
    teacher: nn.Module | None = None,
    graph_labels: graph.GraphLabels | None = None,
    predict: Callable[[np.ndarray], tuple[torch.Tensor, np.ndarray]] | None = None,
) -> tuple[int, dict[str, float]]:
    """Adam on `m2_loss` with a labeled and an unlabeled batch per step until `budget` ends.

    `draw(idx)` returns the inputs of those pool rows (pixels, or sampled M1 codes); `step0` is
    where this loop starts within the caller's fit (for progress), `trained_before` how many M2
    steps earlier fits made (for the KL warm-up), `opt` the model's Adam (None: a fresh one),
    `teacher` the EMA copy of `net.classifier()` for the consistency term (None: off);
    `graph_labels` the graph pseudo-labels (None: off), refreshed with `predict(rows)` (the
    features and probabilities of those pool rows), whose subset the unlabeled batches then
    come from.
    """
    n_l, n_u = len(labeled_idx), len(unlabeled_idx)
    alpha = cfg.alpha_scale * (n_l + n_u)
    net.train()
    lr = cfg.lr if cfg.lr is not None else GREY_LR  # M2 passes its resolved rate
    opt = opt or adam(net.parameters(), lr=lr)
    for group in opt.param_groups:  # the full rate, whatever the last fit's decay left
        group["lr"] = lr
    lab = nets.batches(np.arange(n_l), cfg.labeled_batch, rng) if n_l else None
    unl = nets.batches(unlabeled_idx, cfg.unlabeled_batch, rng) if n_u else None
    y_all = torch.as_tensor(labels, dtype=torch.long, device=device)
    student = net.classifier()
    cons_weight = cfg.consistency_weight * alpha * n_l / max(1, n_l + n_u)
    graph_weight = cfg.graph_weight * alpha * n_l / max(1, n_l + n_u)
    step, parts = 0, {}
    while not budget.done(step):
        empty = np.zeros(0, dtype=np.int64)
        pick = next(lab) if lab else empty
        graph_term = None
        positions = None
        if graph_labels is not None:
            positions = graph_labels.batch(cfg.unlabeled_batch, predict, budget, step, rng, net.generator())
        if positions is not None:
            ub = graph_labels.rows[positions]
            graph_term = functools.partial(
                graph_labels.loss, positions=torch.as_tensor(positions, device=device), weight=graph_weight
            )
        else:
            ub = next(unl) if unl else empty
        xl, yl = draw(labeled_idx[pick]), y_all[torch.as_tensor(pick, device=device)]
        xu = draw(ub)
        kl_weight = min(1.0, (trained_before + step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        with nets.mixed_precision(device, cfg.mixed_precision):
            loss, parts = m2_loss(
                net,
                xl,
                yl,
                xu,
                n_l,
                n_u,
                alpha,
                kl_weight,
                cfg.labeled_weight,
                augment_labeled=teacher is not None,
                graph_term=graph_term,
            )
            if teacher is not None and len(xu) and n_l:
                with torch.no_grad():
                    teacher_logits = teacher(augment.weak(xu, net.generator())).float()
                with augment.frozen_batchnorm(student):
                    student_logits = student(augment.strong(xu, net.generator(), cfg.grey_noise)).float()
                cons, confident = augment.fixmatch_loss(student_logits, teacher_logits, cfg.threshold)
                loss = loss + cons_weight * cons
                parts.update(consistency=cons.item(), confident=confident.item())
        nets.check_finite(loss, step0 + step)
        decay_lr((opt,), lr, budget, step, cfg.lr_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if teacher is not None:
            done = trained_before + step + 1
            augment.ema_update(teacher, student, min(cfg.ema, done / (done + 10)))
        step += 1
        ticker.tick(step0 + step, parts)
    net.eval()
    return step, parts


class M2(PredictsWithClassifier, SSLModel):
    name = "m2"
    Config = M2Config
    embed_is_body = True
    legacy_config: ClassVar[dict[str, Any]] = {
        "consistency": False,
        "conv_width": 32,
        "conv_batch": 100,
        "polarity_invariant": False,
        "thumbnail": 0,
        "conv_alpha_scale": 0.1,
        "lr_decay": 0.0,
        "grey_noise": augment.GREY_NOISE,
        "mixed_precision": False,
    }
    conditional_samples = True
    # Each run trains a fresh M2 (train.warm_start_model). Continuing from the last run's weights
    # carried its confident early pseudo-labels into every later round: Fashion-MNIST (20 then 10
    # random labels per round, 60 s rounds, seed 0) 0.685 at 100 labels warm-started, 0.731 fresh;
    # digits (5 s rounds, seeds 0-1) entropy sampling 0.966 warm, 0.974 fresh (README, Active
    # learning).
    warm_starts = False

    @classmethod
    def checkpoint_config(cls, config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint saved with classifier_arch "auto" rebuilds the q(y|x) it was trained with
        (recorded in its extra state). Where that is no longer what "auto" builds (an MLP of
        28x28 grey images from before `default_classifier_arch`), classifier_arch is pinned to
        it: the checkpoint loads and predicts as trained, and a later run with "auto" trains the
        new default afresh (nets.checkpoint_arch)."""
        return nets.checkpoint_arch(config, state, "classifier_arch", default_classifier_arch)[0]

    def build(self) -> None:
        cfg = self.config
        hidden = cfg.hidden or nets.default_hidden(self.input_shape)
        self.classifier_arch = (
            default_classifier_arch(self.input_shape)
            if cfg.classifier_arch == "auto"
            else cfg.classifier_arch
        )
        thumbnail = cfg.thumbnail if nets.use_conv(self.input_shape) else 0
        gen_shape = (
            (1, *nets.GreyThumbnail(self.input_shape, thumbnail).size) if thumbnail else self.input_shape
        )
        self.latent_dim = cfg.latent_dim or nets.default_latent(gen_shape)
        self.modules = {
            "net": M2Net(
                self.input_shape,
                self.num_classes,
                self.latent_dim,
                hidden,
                self.classifier_arch,
                cfg.conv_width,
                cfg.polarity_invariant,
                thumbnail,
                cfg.hidden or nets.default_hidden(gen_shape),
                cfg.classifier_width,
            ).to(self.device)
        }
        self.initialised(self.modules["net"]).eval()
        if cfg.consistency:
            # An EMA of q(y|x): the consistency term's teacher, and what predicts and is exported.
            self.modules["teacher"] = (
                copy.deepcopy(self.modules["net"].classifier()).requires_grad_(False).eval()
            )
        self.optimizers = {"net": adam(self.modules["net"].parameters(), lr=self._training_config().lr)}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "classifier_arch": self.classifier_arch}

    def _training_config(self) -> M2Config:
        """The settings `train_m2` runs with: the conv_* ones for colour or larger images, and
        the learning rate for these images when none is set; mixed precision only with the conv
        q(y|x) (the MLPs of 8x8 digits took as long per step in bfloat16)."""
        cfg = self.config
        cfg = dataclasses.replace(cfg, mixed_precision=cfg.mixed_precision and self.classifier_arch == "conv")
        if not nets.use_conv(self.input_shape):
            return dataclasses.replace(cfg, lr=GREY_LR if cfg.lr is None else cfg.lr)
        return dataclasses.replace(
            cfg,
            labeled_batch=cfg.conv_batch,
            unlabeled_batch=cfg.conv_batch,
            alpha_scale=cfg.conv_alpha_scale,
            lr=CONV_LR if cfg.lr is None else cfg.lr,
        )

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        rng = nets.batch_rng(self.seed, self.steps_done)
        unlabeled_idx = np.setdiff1d(np.arange(len(x)), labeled_idx)
        pool = nets.pool_tensor(x, self.device)
        ticker = nets.Ticker(progress, budget)
        net = self.modules["net"]

        def draw(idx: np.ndarray) -> torch.Tensor:
            return pool[torch.as_tensor(idx, device=self.device)]

        cfg = self._training_config()
        graph_labels = None
        if cfg.graph and len(labeled_idx) and len(unlabeled_idx):
            graph_labels = graph.GraphLabels(
                len(x), labeled_idx, labels, self.num_classes, prior=cfg.graph_prior
            )

        @torch.no_grad()
        def predict(rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
            training = net.training
            classifier = self._classifier()  # in eval mode (the net's own switches the net)
            feats = batched(classifier[0], x[rows], self.device)
            probs = batched(lambda f: torch.softmax(classifier[1](f), 1), feats, self.device)
            net.train(training)
            return torch.as_tensor(feats, device=self.device), probs

        steps, parts = train_m2(
            net,
            draw,
            labeled_idx,
            labels,
            unlabeled_idx,
            cfg,
            budget,
            ticker,
            rng,
            self.device,
            trained_before=self.steps_done,
            opt=self.optimizers["net"],
            teacher=self.modules.get("teacher"),
            graph_labels=graph_labels,
            predict=predict,
        )
        self.steps_done += steps
        self.labels_seen = len(labeled_idx)
        ticker.tick(steps, parts, force=True)
        return parts

    def embed(self, x: np.ndarray) -> np.ndarray:
        """The classifier's last hidden layer (B, F): M2's z is class-free style, useless to plot by class."""
        return batched(self._classifier()[0], x, self.device)

    @torch.no_grad()
    def sample_images(self, n_per_class: int = 8, seed: int = 0) -> np.ndarray | None:
        net = self.modules["net"].eval()
        k, d = self.num_classes, self.latent_dim
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n_per_class, d, generator=gen).repeat(k, 1).to(self.device)  # same styles per class
        y = torch.eye(k, device=self.device).repeat_interleave(n_per_class, 0)
        img = torch.sigmoid(net.decoder(torch.cat([z, y], 1)))  # (K n, C', H', W')
        c, h, w = self.input_shape
        if tuple(img.shape[1:]) != (c, h, w):  # a grey thumbnail, shown at the image's size
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False).expand(-1, c, -1, -1)
        return img.cpu().numpy().reshape(k, n_per_class, c, h, w)
