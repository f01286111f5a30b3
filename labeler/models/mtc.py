"""Manifold tangent classifier: a contractive autoencoder's tangents, and tangent propagation.

Rifai, Dauphin, Vincent, Bengio, Muller (2011), "The manifold tangent classifier", NeurIPS.

1. Contractive autoencoder (Rifai et al. 2011, ICML) on every pool image, with one sigmoid
   layer h(x) = sigmoid(W x + b) (W: H x P) and a decoder g(h) = sigmoid(W' h + b'):

       L_CAE = -sum_d [x_d log g_d + (1 - x_d) log(1 - g_d)] + lambda ||J_h(x)||_F^2,
       J_h(x) = diag(h (1 - h)) W,   ||J_h(x)||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2.

   The contraction makes h insensitive to every direction except those the data vary along,
   so the leading right singular vectors of J_h(x) span the tangent plane of the data
   manifold at x: B(x) = {v_1, ..., v_T}, J_h(x) = U S V^T, v_t = the t-th row of V^T.

2. Classifier: o(x) = softmax(A h(x) + c), its first layer the CAE's encoder, fine-tuned
   (the paper's CAE-initialised network), trained on the labeled images with
   cross-entropy plus the tangent-propagation penalty (Simard et al. 1992):

       L = mean_labeled [ -log o_y(x) + beta sum_{v in B(x)} ||J_o(x) v||^2 ],

   where J_o(x) v is the directional derivative of the class probabilities o along v (one
   forward-mode product per tangent), so the classifier stays flat along the manifold at each
   labeled image. On the probabilities, as in the paper, not on the logits: flat logits along
   5 tangents at 30 labeled 8x8 digits span most of the 64 input directions and leave a
   constant classifier (digits, seed 0, 20 s: 0.45 test accuracy with beta = 0.1 on the
   logits; 0.756 on the probabilities, 0.758 without the penalty).

The budget: the first `cae_fraction` trains the CAE, the rest the classifier; the labeled
images' tangents are computed once when the classifier's phase starts (T of them from an SVD of
an H x P Jacobian per labeled image: cheap for the few labeled images; the paper's stacked
CAE+H, its 2,000-unit layers and its higher-order term are cut for CPU budgets: one layer of
`nets.default_hidden` units). `hidden` beyond its first entry adds ReLU layers between the
encoder and the output. The latent-space view gets h(x).

Consistency (`consistency`, on by default; off is the paper's form), as in m2.py: in the
classifier's phase each step also draws an unlabeled batch, and the classifier gets FixMatch's
term on it with an exponential moving average of the classifier as the teacher (see
`augment.py`); the labeled images enter as they are (`augment_labeled` gives the
cross-entropy weak views, as m2 does; it hurt here, see the config; the tangent penalty stays
at the images themselves either way, where their tangents were computed):

    L_cons = L + consistency_weight * L_cons(FixMatch),

and predictions and the export use the teacher. The network has no batch norm, so the strong
views need no freezing.
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


def contractive_penalty(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """||J_h(x)||_F^2 for a sigmoid layer, per image: h (B, H), weight W (H, P) -> (B,)."""
    return (h * (1 - h)).pow(2) @ weight.pow(2).sum(1)


def encoder_tangents(h: torch.Tensor, weight: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` leading right singular vectors of J_h(x) = diag(h (1 - h)) W for each image:
    h (B, H), W (H, P) -> (B, T, P), orthonormal rows, T = min(count, H, P)."""
    jacobian = (h * (1 - h)).unsqueeze(2) * weight.unsqueeze(0)  # (B, H, P)
    _, _, vh = torch.linalg.svd(jacobian, full_matrices=False)  # (B, min(H, P), P)
    return vh[:, :count]


def tangent_penalty(f, x: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
    """mean_b sum_t ||J_f(x_b) v_bt||^2 for f: (N, P) -> (N, K), x (B, P), tangents (B, T, P)."""
    b, t, p = tangents.shape
    points = x.unsqueeze(1).expand(b, t, p).reshape(b * t, p)
    _, directional = torch.func.jvp(f, (points,), (tangents.reshape(b * t, p),))  # (B T, K)
    return directional.pow(2).sum() / b


# -- networks --------------------------------------------------------------------------------


class MTCNet(nn.Module):
    """The CAE (encoder, decoder) and the classifier on its code; all on flattened images."""

    def __init__(self, input_shape, num_classes: int, hidden):
        super().__init__()
        p = int(np.prod(input_shape))
        self.shape = tuple(int(s) for s in input_shape)
        self.encoder = nn.Linear(p, hidden[0])
        self.decoder = nn.Linear(hidden[0], p)
        layers: list[nn.Module] = []
        width = hidden[0]
        for size in hidden[1:]:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.head = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x.flatten(1)))  # (B, H)

    def logits_flat(self, flat: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.encoder(flat)))  # (B, K)

    def proba_flat(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits_flat(flat), 1)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_flat(x.flatten(1))


@dataclass
class MTCConfig:
    hidden: list[int] | None = None  # None: nets.default_hidden(input shape); first = the CAE's code
    contraction: float = 0.1  # lambda
    tangents: int = 5  # T per labeled image
    tangent_weight: float = 1.0  # beta
    cae_fraction: float = 0.5  # of the budget for the CAE, the rest for the classifier
    batch_size: int = 100  # CAE batches
    labeled_batch: int = 100
    lr: float = 1e-3
    # FixMatch-style consistency with an EMA teacher on the classifier (module docstring); False
    # is the paper's classifier phase.
    consistency: bool = True
    consistency_weight: float = 1.0
    unlabeled_batch: int = 100
    threshold: float = 0.95  # the teacher's confidence needed for a pseudo-label
    ema: float = 0.99  # the teacher's decay (lower while fewer than ~1 / (1 - ema) steps are done)
    # The cross-entropy on weak views of the labeled images, as m2 does. Off: on digits (seed 0,
    # 5,000 steps) 0.796 test accuracy without, 0.704 with.
    augment_labeled: bool = False


class MTC(PredictsWithClassifier, SSLModel):
    name = "mtc"
    Config = MTCConfig
    # Checkpoints from before the consistency term were trained without it.
    legacy_config: ClassVar[dict[str, Any]] = {"consistency": False}

    def build(self) -> None:
        cfg = self.config
        hidden = cfg.hidden or nets.default_hidden(self.input_shape)
        net = MTCNet(self.input_shape, self.num_classes, hidden).to(self.device)
        self.modules = {"net": self.initialised(net).eval()}
        if cfg.consistency:
            # An EMA of the classifier: the consistency term's teacher, and what predicts and is exported.
            self.modules["teacher"] = copy.deepcopy(net).requires_grad_(False).eval()
        self.optimizers = {
            "cae": adam([*net.encoder.parameters(), *net.decoder.parameters()], lr=cfg.lr),
            "classifier": adam([*net.encoder.parameters(), *net.head.parameters()], lr=cfg.lr),
        }

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        labeled_idx, labels = nets.check_labels(labeled_idx, labels, len(x), self.num_classes)
        cfg = self.config
        ticker = nets.Ticker(progress, budget)
        rng = nets.batch_rng(self.seed, self.steps_done)
        pool = nets.pool_tensor(x, self.device).flatten(1)  # (N, P)
        net = self.modules["net"].train()
        step, parts = 0, {}

        cae_budget = nets.sub_budget(budget, cfg.cae_fraction) if len(labeled_idx) else budget
        unl = nets.batches(np.arange(len(x)), cfg.batch_size, rng)
        while not cae_budget.done(step) and not budget.done(step):
            xb = pool[torch.as_tensor(next(unl), device=self.device)]
            h = torch.sigmoid(net.encoder(xb))
            rec = -nets.bernoulli_log_prob(net.decoder(h), xb).mean()
            contraction = contractive_penalty(h, net.encoder.weight).mean()
            loss = rec + cfg.contraction * contraction
            nets.check_finite(loss, step)
            self.optimizers["cae"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["cae"].step()
            step += 1
            parts = {"reconstruction": rec.item(), "contraction": contraction.item()}
            ticker.tick(step, parts)

        if len(labeled_idx):
            xl = pool[torch.as_tensor(labeled_idx, device=self.device)]
            y = torch.as_tensor(labels, dtype=torch.long, device=self.device)
            with torch.no_grad():
                tangents = encoder_tangents(net.code(xl), net.encoder.weight, cfg.tangents)  # (N_l, T, P)
            lab = nets.batches(np.arange(len(labeled_idx)), cfg.labeled_batch, rng)
            teacher = self.modules.get("teacher")
            unlabeled_idx = np.setdiff1d(np.arange(len(x)), labeled_idx)
            unl_cls = None
            if teacher is not None:
                # The CAE phase has just moved the encoder: the teacher starts from the net as it is.
                teacher.load_state_dict(net.state_dict())
                if len(unlabeled_idx):
                    unl_cls = nets.batches(unlabeled_idx, cfg.unlabeled_batch, rng)
            images = (-1, *net.shape)  # the augmentations work on (B, C, H, W)
            rest = nets.rest_budget(budget, step)
            cls_steps = 0
            while not rest.done(cls_steps):
                pick = torch.as_tensor(next(lab), device=self.device)
                views = xl[pick]
                if teacher is not None and cfg.augment_labeled:
                    views = augment.weak(views.view(images), self.generator).flatten(1)
                ce = F.cross_entropy(net.logits_flat(views), y[pick])
                tangent = tangent_penalty(net.proba_flat, xl[pick], tangents[pick])
                loss = ce + cfg.tangent_weight * tangent
                cons_parts = {}
                if unl_cls is not None:
                    xu = pool[torch.as_tensor(next(unl_cls), device=self.device)].view(images)
                    with torch.no_grad():
                        teacher_logits = teacher(augment.weak(xu, self.generator))  # (B, K)
                    student_logits = net(augment.strong(xu, self.generator))  # (B, K)
                    cons, confident = augment.fixmatch_loss(student_logits, teacher_logits, cfg.threshold)
                    loss = loss + cfg.consistency_weight * cons
                    cons_parts = {"consistency": cons.item(), "confident": confident.item()}
                nets.check_finite(loss, step)
                self.optimizers["classifier"].zero_grad(set_to_none=True)
                loss.backward()
                self.optimizers["classifier"].step()
                if teacher is not None:
                    done = cls_steps + 1
                    augment.ema_update(teacher, net, min(cfg.ema, done / (done + 10)))
                step += 1
                cls_steps += 1
                parts = {**parts, "cross_entropy": ce.item(), "tangent": tangent.item(), **cons_parts}
                ticker.tick(step, parts)

        net.eval()
        self.steps_done += step
        self.labels_seen = len(labeled_idx)
        ticker.tick(step, parts, force=True)
        return parts

    def _own_classifier(self) -> MTCNet:
        return self.modules["net"].eval()  # the whole net is the classifier (B, C, H, W) -> (B, K)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """The code h(x) (N, H) of the classifier's encoder (the CAE's, fine-tuned)."""
        return batched(self._classifier().code, x, self.device)
