"""Semi-supervised GAN with a K-class discriminator and feature matching.

Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen. "Improved Techniques for Training GANs",
NeurIPS 2016 (section 5, semi-supervised learning); Odena, "Semi-Supervised Learning with
Generative Adversarial Networks", 2016.

The discriminator outputs K logits l_1..l_K for the K real classes; the fake class K+1 is
implicit with its logit fixed at 0, so with Z(x) = sum_k exp(l_k(x)):

    p(y = k | x, real) = softmax(l(x))_k
    D(x) = p(real | x) = Z(x) / (Z(x) + 1)

and, writing lse = log Z,

    L_sup   = -E_{(x,y) labeled} log softmax(l(x))_y                         (cross-entropy)
    L_unsup = -E_{x unlabeled} log D(x) - E_{z} log(1 - D(G(z)))
            =  E_x [softplus(lse(x)) - lse(x)] + E_z [softplus(lse(G(z)))]
    L_D     =  L_sup + w * L_unsup                  (w = 1/2 in the authors' code)
    L_G     =  || E_x f(x) - E_z f(G(z)) ||^2       (feature matching, f = last hidden layer)

What makes it work on a handful of labels (kept from the authors' MNIST code): Gaussian noise
on the discriminator's input (std 0.3) and after every hidden layer (std 0.5); weight
normalization (Salimans & Kingma 2016) with data-dependent initialization; a D of
784-1000-500-250-250-250-K (two hidden layers of 250 below 28x28, see `default_d_hidden`) and a
G of 100-500-500-784 with batch norm and softplus, uniform z, sigmoid output; Adam(lr 0.003,
beta1 0.5) with the learning rate decayed linearly to zero at the end; the small labeled set
repeated to fill a batch, while every pool image serves as an unlabeled one. That MLP is the
default only for grey images smaller than 28x28 (`arch="mlp"` forces it): colour images and
those of 28x28 or more use a small convolutional variant of the same design (`default_arch`,
`ConvDiscriminator`), which measured better on Fashion-MNIST; where it differs from the paper:
the discriminator sees the per-image normalised luminance, its first convolution ignores the
sign of its input (`polarity_invariant`), and it has no dropout (`conv_dropout`), each measured
on the shapes benchmark (see SSLGANConfig); it is twice as wide on 28x28 grey images as on colour
ones (`default_conv_width`), and the generator keeps its own width (`gen_width`).

Consistency (`consistency`, on by default; off is the paper's form): the discriminator's real-class logits also
get FixMatch's term on the unlabeled batch (see `augment.py`), with D's weight average (`ema`)
as the teacher on weak views and D itself on strong views, and the labeled batch is weakly
augmented:

    L_D = L_sup + w L_unsup + consistency_weight * L_cons.

The discriminator has no batch norm, so the strong views need no keeping out of its statistics.

Graph pseudo-labels (`graph`, off by default: measured worse on digits; see SSLGANConfig and
graph.py): D also learns, on the unlabeled batch, the labels spread over a nearest-neighbour
graph of its weight average's features.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment, graph, nets
from .base import (
    Budget,
    Dropout,
    Progress,
    ProgressFn,
    SSLModel,
    Stochastic,
    TrainingCancelled,
    adam,
    batched,
    batched_proba_and_features,
    check_finite,
    decay_lr,
    to_tensor,
)

# -- loss terms (testable free functions) ---------------------------------------------------


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_sup of Salimans et al. 2016, eq. (5): cross-entropy over the K real classes.

    logits (B, K), labels (B,) -> scalar. The fake class drops out: p(y|x, y<K+1) = softmax(l)_y.
    """
    return F.cross_entropy(logits, labels)


def unsupervised_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """L_unsup of Salimans et al. 2016, eq. (5), with D(x) = Z(x) / (Z(x) + 1).

    -log D(x) = softplus(lse) - lse and -log(1 - D(x)) = softplus(lse), lse = logsumexp(l).
    logits_real (B, K) from unlabeled images, logits_fake (B', K) from G(z) -> scalar.
    """
    lse_real = torch.logsumexp(logits_real, dim=1)  # (B,)
    lse_fake = torch.logsumexp(logits_fake, dim=1)  # (B',)
    return (F.softplus(lse_real) - lse_real).mean() + F.softplus(lse_fake).mean()


def feature_matching_loss(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """Feature matching, Salimans et al. 2016, section 3.1: ||E f(x) - E f(G(z))||^2.

    Averaged over the D feature dimensions as in the authors' code. (B, D), (B', D) -> scalar.
    """
    return (features_real.mean(dim=0) - features_fake.mean(dim=0)).pow(2).mean()


# -- building blocks -------------------------------------------------------------------------


class GaussianNoise(Stochastic):
    """Adds N(0, std^2) noise in training mode only; `mc_proba` switches it on for BALD."""

    def __init__(self, std: float):
        super().__init__()
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return (
                x
                + torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=self.generator()) * self.std
            )
        return x


class _WeightNorm(nn.Module):
    """w = g * v / ||v|| per output unit (Salimans & Kingma 2016), with data-dependent init:
    on one batch, g and b are set so every pre-activation has mean 0 and std `init_scale`."""

    def __init__(self, v_shape: tuple[int, ...], init_scale: float = 1.0):
        super().__init__()
        self.v = nn.Parameter(torch.zeros(v_shape))  # drawn by `init_parameters` from the model's generator
        self.g = nn.Parameter(torch.ones(v_shape[0]))
        self.b = nn.Parameter(torch.zeros(v_shape[0]))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self.init_scale = init_scale
        self.init_pending = False  # set by `data_dependent_init`

    def init_parameters(self, generator: torch.Generator) -> None:
        self.v.normal_(0.0, 0.05, generator=generator)

    def weight(self) -> torch.Tensor:
        norm = self.v.flatten(1).norm(dim=1).clamp_min(1e-12)  # (out,)
        shape = (-1,) + (1,) * (self.v.dim() - 1)
        return self.v * (self.g / norm).view(shape)

    def _apply_init(self, pre: torch.Tensor, center: bool = True) -> torch.Tensor:
        dims = [d for d in range(pre.dim()) if d != 1]
        mean, std = pre.mean(dim=dims), pre.std(dim=dims, correction=0)  # (out,)
        if not center:  # a layer without bias: scale only
            mean = torch.zeros_like(mean)
        # A unit that does not vary over the init batch (e.g. a one-image pool) keeps scale 1:
        # dividing by its ~0 spread would blow the layer up.
        std = torch.where(std > 1e-3, std, torch.ones_like(std))
        with torch.no_grad():
            self.g.mul_(self.init_scale / std)
            self.b.copy_(-mean * self.init_scale / std)
            self.initialized.fill_(1)
        self.init_pending = False
        shape = (1, -1) + (1,) * (pre.dim() - 2)
        return (pre - mean.view(shape)) * (self.init_scale / std).view(shape)


class WNLinear(_WeightNorm):
    def __init__(self, n_in: int, n_out: int, init_scale: float = 1.0):
        super().__init__((n_out, n_in), init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight(), self.b)
        return self._apply_init(out) if self.init_pending else out

    def export(self) -> nn.Linear:
        layer = nn.Linear(self.v.shape[1], self.v.shape[0])
        layer.weight.data.copy_(self.weight().detach())
        layer.bias.data.copy_(self.b.detach())
        return layer


class WNConv2d(_WeightNorm):
    """`absolute`: the output is |conv(x)| without a bias (`b` stays 0), as in nets.AbsConv2d,
    so that conv(-x) = -conv(x) and the output ignores the sign of the input."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        init_scale: float = 1.0,
        absolute: bool = False,
    ):
        super().__init__((n_out, n_in, kernel, kernel), init_scale)
        self.stride, self.padding = stride, padding
        self.absolute = absolute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.absolute else self.b
        out = F.conv2d(x, self.weight(), bias, stride=self.stride, padding=self.padding)
        out = self._apply_init(out, center=not self.absolute) if self.init_pending else out
        return out.abs() if self.absolute else out

    def export(self) -> nn.Conv2d:
        out_c, in_c, k, _ = self.v.shape
        conv = nets.AbsConv2d if self.absolute else nn.Conv2d
        layer = conv(in_c, out_c, k, stride=self.stride, padding=self.padding)
        layer.weight.data.copy_(self.weight().detach())
        layer.bias.data.copy_(self.b.detach())
        return layer


@torch.no_grad()
def data_dependent_init(module: nn.Module, *inputs: torch.Tensor) -> None:
    """Initialize every weight-normed layer of `module` in order, from one forward pass."""
    layers = [m for m in module.modules() if isinstance(m, _WeightNorm)]
    for layer in layers:
        layer.init_pending = True
    was_training = module.training
    module.train()
    module(*inputs)
    module.train(was_training)
    for layer in layers:
        layer.init_pending = False


def _export_layers(layers: nn.Sequential) -> list[nn.Module]:
    """Plain-PyTorch copies of the eval-mode network (noise layers drop out)."""
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, (WNLinear, WNConv2d)):
            out.append(layer.export())
        elif isinstance(layer, (GaussianNoise, Dropout)):
            continue
        else:
            out.append(layer)
    return out


# -- networks ---------------------------------------------------------------------------------


class MLPDiscriminator(nn.Module):
    """Salimans et al.'s MNIST discriminator: noise(0.3), [WN dense, ReLU, noise(0.5)] per
    hidden layer, then a WN dense layer to K logits. `features` is the last hidden layer."""

    def __init__(
        self, n_in: int, hidden: tuple[int, ...], num_classes: int, input_noise: float, hidden_noise: float
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), GaussianNoise(input_noise)]
        for width in hidden:
            layers += [WNLinear(n_in, width), nn.ReLU(), GaussianNoise(hidden_noise)]
            n_in = width
        # the noise after the last hidden layer is kept for the logits but not for f(x)
        self.body = nn.Sequential(*layers[:-1])
        self.head = nn.Sequential(layers[-1], WNLinear(n_in, num_classes))
        self.feature_dim = n_in

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)  # (B, D)
        return self.head(features), features  # (B, K), (B, D)


class MLPGenerator(nn.Module):
    """z ~ U(0,1)^100 -> [dense, batch norm, softplus] x 2 -> WN dense -> sigmoid."""

    def __init__(self, z_dim: int, hidden: tuple[int, ...], output_shape: tuple[int, int, int]):
        super().__init__()
        layers: list[nn.Module] = []
        n_in = z_dim
        for width in hidden:
            layers += [nn.Linear(n_in, width, bias=False), nn.BatchNorm1d(width), nn.Softplus()]
            n_in = width
        layers += [WNLinear(n_in, int(np.prod(output_shape))), nn.Sigmoid(), nn.Unflatten(1, output_shape)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, C, H, W)


class ConvDiscriminator(nn.Module):
    """A small version of Salimans et al.'s CIFAR-10 discriminator for 2 CPU cores.

    `invariant` (the default): the per-image normalised luminance (nets.PerImageNorm), Gaussian input
    noise, then three stages of a WN 3x3 convolution with leaky ReLU and 2x2 max pooling (the
    first two with dropout), a WN 1x1 convolution and global max pooling, so brightness,
    contrast, colour cast and position do not decide the class (see nets' module docstring).
    Otherwise the earlier form: Gaussian input noise, WN 3x3 convolutions with leaky ReLU, two
    stride-2 stages with dropout, global mean pooling. Either works for any image size and
    ends in a WN dense layer to K logits.

    `polarity_invariant` (invariant form only): the first convolution's output is taken in
    absolute value, as in nets.PooledConvFeatures, so an object lighter or darker than its
    background gives the same features."""

    def __init__(
        self,
        channels: int,
        width: int,
        num_classes: int,
        input_noise: float,
        dropout: float,
        invariant: bool = True,
        polarity_invariant: bool = True,
    ):
        super().__init__()
        w1, w2 = width, 2 * width
        act = lambda: nn.LeakyReLU(0.2)
        if invariant:
            self.body = nn.Sequential(
                nets.PerImageNorm(),  # (B, 1, H, W): normalised luminance
                GaussianNoise(input_noise),
                WNConv2d(1, w1, 3, padding=1, absolute=polarity_invariant),
                nn.Identity() if polarity_invariant else act(),  # |.| is never negative
                nn.MaxPool2d(2, ceil_mode=True),
                Dropout(dropout),
                WNConv2d(w1, w2, 3, padding=1),
                act(),
                nn.MaxPool2d(2, ceil_mode=True),
                Dropout(dropout),
                WNConv2d(w2, w2, 3, padding=1),
                act(),
                nn.MaxPool2d(2, ceil_mode=True),
                WNConv2d(w2, w2, 1),
                act(),
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Sequential(WNLinear(w2, num_classes))
            self.feature_dim = w2
            self.body.to(memory_format=torch.channels_last)  # see nets.PooledConvFeatures
            return
        self.body = nn.Sequential(
            GaussianNoise(input_noise),
            WNConv2d(channels, w1, 3, padding=1),
            act(),
            WNConv2d(w1, w1, 3, stride=2, padding=1),
            act(),
            Dropout(dropout),
            WNConv2d(w1, w2, 3, padding=1),
            act(),
            WNConv2d(w2, w2, 3, stride=2, padding=1),
            act(),
            Dropout(dropout),
            WNConv2d(w2, w2, 3, padding=0),
            act(),
            WNConv2d(w2, w2, 1),
            act(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(WNLinear(w2, num_classes))
        self.feature_dim = w2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)  # (B, D)
        return self.head(features), features  # (B, K), (B, D)


class ConvGenerator(nn.Module):
    """z -> dense to (4w, H/4, W/4), batch norm, ReLU -> two stride-2 transposed convolutions
    (the last weight-normed, sigmoid) -> resized to (H, W) when H or W is not a multiple of 4."""

    def __init__(self, z_dim: int, width: int, output_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = output_shape
        self.h0, self.w0 = math.ceil(h / 4), math.ceil(w / 4)
        self.size = (h, w)
        w4, w2 = 4 * width, 2 * width
        self.fc = nn.Sequential(
            nn.Linear(z_dim, w4 * self.h0 * self.w0, bias=False),
            nn.BatchNorm1d(w4 * self.h0 * self.w0),
            nn.ReLU(),
        )
        self.net = nn.Sequential(
            nn.Unflatten(1, (w4, self.h0, self.w0)),
            nn.ConvTranspose2d(w4, w2, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.ConvTranspose2d(w2, c, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(self.fc(z))  # (B, C, 4*h0, 4*w0)
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return out  # (B, C, H, W)


class _Classifier(nn.Module):
    """Standalone export: (B, C, H, W) in [0, 1] -> (B, K) softmax over the real classes."""

    def __init__(self, body: list[nn.Module], head: list[nn.Module]):
        super().__init__()
        self.net = nn.Sequential(*body, *head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


# -- the model ----------------------------------------------------------------------------------


def default_d_hidden(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The MLP discriminator's hidden sizes: Salimans et al.'s MNIST sizes (1000, 500, 250, 250,
    250) for 28x28 inputs, two layers of 250 for smaller ones such as 8x8 digits, where the
    smaller network makes three times the steps in the same time (measured, digits, 30 labels,
    60 s, seeds 0 and 1: sslgan 0.860 and 0.851 with the paper's sizes, 0.893 and 0.904 with
    (250, 250); badgan 0.889 and 0.847, then 0.913 and 0.849)."""
    return (1000, 500, 250, 250, 250) if nets.mnist_sized(input_shape) else (250, 250)


def default_arch(input_shape: tuple[int, ...]) -> str:
    """The discriminator `arch="auto"` builds: the conv one for colour images and for grey ones of
    28x28 or larger, the papers' MLP for smaller grey images such as 8x8 digits. Measured on
    Fashion-MNIST (100 labels, 600 s, seeds 0-2, one thread, two runs side by side): sslgan
    0.756 +- 0.013 with the conv discriminator at width 16 (about 7,200 steps), 0.732 +- 0.005
    with the MLP (about 5,300); badgan 0.752 +- 0.003 and 0.740 +- 0.012."""
    return "conv" if nets.use_conv(input_shape) or nets.mnist_sized(input_shape) else "mlp"


def default_conv_width(input_shape: tuple[int, ...]) -> int:
    """The conv discriminator's width when `conv_width` is None: 32 for 28x28 grey images, 16
    for every other image (the first stage has this many channels, the later ones twice as
    many).
    Measured on Fashion-MNIST (sslgan, 100 labels, 600 s, seeds 0-2, one thread, two runs side by
    side): 0.756 +- 0.013 at width 16 (about 7,200 steps), 0.765 +- 0.015 at 32 (about 3,700);
    at 48, 0.747 on seed 0 (2,393 steps) against 0.774 at 32. Colour images keep the cheaper 16:
    the shapes benchmark's 60 s rounds are short of steps (width 32 not measured there)."""
    return 32 if nets.mnist_sized(input_shape) and not nets.use_conv(input_shape) else 16


@dataclass
class SSLGANConfig:
    # "auto": `default_arch` (the conv discriminator, except the MLP for grey images smaller than
    # 28x28); "mlp" (the papers' form) or "conv" force one.
    arch: str = "auto"
    z_dim: int = 100
    d_hidden: tuple[int, ...] = ()  # (): default_d_hidden(input shape)
    g_hidden: tuple[int, ...] = (500, 500)
    input_noise: float = 0.3
    hidden_noise: float = 0.5
    # The conv discriminator's first stage has this many channels, the later ones twice as many;
    # None: `default_conv_width` (32 for 28x28 grey images, 16 otherwise; sized for 2 CPU cores).
    conv_width: int | None = None
    # The conv generator's width: 4x and 2x this many channels. Measured (Fashion-MNIST, sslgan,
    # seeds 0-2, 600 s, discriminator width 32): 0.765 +- 0.015 (about 3,700 steps) with 16,
    # 0.766 +- 0.007 (about 3,100) with 32, so the cheaper one.
    gen_width: int = 16
    conv_input_noise: float = 0.15
    # Dropout in the conv discriminator. 0.5 (Salimans et al.'s CIFAR-10 value) left this
    # 16-channel network unable to fit even the labeled images within a few hundred steps
    # (shapes, seed 0, 300 steps: sslgan 0.36, badgan 0.36 test accuracy; 0.80 and 0.80 without).
    conv_dropout: float = 0.0
    # The conv discriminator normalises each image and max-pools (ConvDiscriminator); False
    # restores the earlier stride-2, mean-pooled form (at chance on the shapes benchmark).
    conv_invariant: bool = True
    # The invariant conv discriminator's first convolution ignores the sign of its input
    # (ConvDiscriminator); False: as checkpoints before it were trained.
    polarity_invariant: bool = True
    batch_size: int = 100  # labeled, unlabeled and generated images per step each (MLP)
    conv_batch_size: int = 50  # the same for the conv variant
    # The conv variant's generated images per step (in D's loss and in feature matching, with as
    # many real ones); 0: conv_batch_size. Fewer leave more of each step to the classifier.
    # Measured (shapes, sslgan, seed 0, 150 steps, two runs side by side): 16 took 45 s and
    # reached 0.705 test accuracy, 50 (conv_batch_size) 58 s and 0.680.
    conv_fake_batch_size: int = 16
    lr: float = 0.001  # the paper: 0.003; 0.001 measured better in short budgets (see report)
    beta1: float = 0.5
    unlabeled_weight: float = 0.5  # w in L_D = L_sup + w L_unsup (the authors' code)
    # Decay lr linearly to 0 over this last fraction of each fit's budget (the authors' code
    # decays it linearly over the last epochs; measured on digits, 30 labels, 60 s, 3 seeds:
    # sslgan 0.898 mean with and without, badgan 0.902 without and 0.910 with).
    lr_decay: float = 0.5
    ema: float = 0.99  # > 0: predict with an exponential moving average of D's weights
    # FixMatch-style consistency (augment.py): D's weight average labels weak views of the
    # unlabeled batch, D learns those labels on strong views, and the labeled batch is weakly
    # augmented; False is the paper's form. Measured (30 labels, 60 s, one shared CPU core,
    # seeds 0-2) on digits: sslgan 0.919 +- 0.023 with, 0.881 +- 0.006 without; badgan 0.923 +-
    # 0.013 with, 0.879 +- 0.016 without. On shapes (seed 0, under 200 steps) within noise:
    # sslgan 0.310 with, 0.355 without; badgan 0.390 with, 0.365 without.
    consistency: bool = True
    consistency_weight: float = 1.0
    threshold: float = 0.95
    # Graph pseudo-labels (graph.py, Iscen et al. 2019), off by default: the EMA discriminator's
    # features of the pool in a nearest-neighbour graph, its predictions (weighted by
    # graph_prior) and the labels spread along it, and D learns the result on the unlabeled
    # batch, each label weighted by its certainty. Measured on digits (30 labels, 60 s, seeds
    # 0-2, two runs side by side): sslgan 0.944 without, 0.933 with graph_prior 1, 0.926 with 0;
    # badgan 0.940 without, 0.909 with graph_prior 1 (seed 2 fell to 0.833).
    graph: bool = False
    graph_weight: float = 1.0
    graph_prior: float = 1.0
    progress_every_s: float = 0.5


class SSLGAN(SSLModel):
    name = "sslgan"
    Config = SSLGANConfig
    legacy_config: ClassVar[dict[str, Any]] = {
        "conv_invariant": False,
        "consistency": False,
        "polarity_invariant": False,
        "conv_fake_batch_size": 0,
    }

    @classmethod
    def checkpoint_config(cls, config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint saved with arch "auto" rebuilds the discriminator it was trained with
        (recorded in its extra state). Where that is no longer what "auto" builds (an MLP of
        28x28 grey images from before `default_arch`), arch is pinned to it, so a later run with
        "auto" sees changed settings and trains the new default afresh.

        One saved before `gen_width` had one `conv_width` for both networks. With conv networks
        the generator keeps it, and so does the discriminator, as None where that is what None
        builds today (every image but 28x28 grey), so those warm-start as before; a 28x28 grey
        one keeps its explicit 16, and the next run with the defaults trains width 32 afresh. An
        MLP checkpoint built neither: both take today's defaults."""
        shape = tuple(state["input_shape"])
        config, arch = nets.checkpoint_arch(config, state, "arch", default_arch)
        if "gen_width" not in config:
            width = config["conv_width"]
            conv = arch == "conv"
            config = {
                **config,
                "conv_width": width if conv and width != default_conv_width(shape) else None,
                "gen_width": width if conv else cls.Config.gen_width,
            }
        return config

    def build(self) -> None:
        cfg = self.config
        c, h, w = self.input_shape
        arch = cfg.arch if cfg.arch != "auto" else default_arch(self.input_shape)
        if arch not in ("mlp", "conv"):
            raise ValueError(f"Unknown GAN architecture {cfg.arch!r}; use 'auto', 'mlp' or 'conv'.")
        self.arch = arch
        if arch == "mlp":
            d_hidden = tuple(cfg.d_hidden) or default_d_hidden(self.input_shape)
            disc = MLPDiscriminator(c * h * w, d_hidden, self.num_classes, cfg.input_noise, cfg.hidden_noise)
            gen = MLPGenerator(cfg.z_dim, tuple(cfg.g_hidden), self.input_shape)
        else:
            disc = ConvDiscriminator(
                c,
                default_conv_width(self.input_shape) if cfg.conv_width is None else cfg.conv_width,
                self.num_classes,
                cfg.conv_input_noise,
                cfg.conv_dropout,
                cfg.conv_invariant,
                cfg.polarity_invariant,
            )
            gen = ConvGenerator(cfg.z_dim, cfg.gen_width, self.input_shape)
        self.modules = {"disc": disc.to(self.device), "gen": gen.to(self.device)}
        self.initialised(disc), self.initialised(gen)
        if cfg.ema > 0:
            self.modules["disc_ema"] = copy.deepcopy(self.modules["disc"]).requires_grad_(False)
        self.opt_d = adam(disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.opt_g = adam(gen.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.optimizers = {"disc": self.opt_d, "gen": self.opt_g}
        self._fits = 0
        self._steps = 0

    @property
    def disc(self) -> nn.Module:
        return self.modules["disc"]

    @property
    def gen(self) -> nn.Module:
        return self.modules["gen"]

    @property
    def classifier(self) -> nn.Module:
        """The discriminator used for predictions: its weight average when `ema` > 0."""
        return self.modules.get("disc_ema", self.modules["disc"])

    def _update_ema(self, decay: float) -> None:
        augment.ema_update(self.modules["disc_ema"], self.modules["disc"], decay)

    def _z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = self.generator if generator is None else generator
        return torch.rand(n, self.config.z_dim, device=self.device, generator=generator)  # (n, Z)

    # hooks the Bad GAN overrides
    def extra_d_loss(self, logits_unl: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def generator_loss(
        self, feat_real: torch.Tensor, feat_fake: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"fm": feature_matching_loss(feat_real.detach(), feat_fake)}

    def fit(
        self, x, labeled_idx, labels, budget: Budget, progress: ProgressFn | None = None
    ) -> dict[str, float]:
        cfg = self.config
        if len(x) == 0:
            raise ValueError("There are no images to train on; add images to the project first.")
        self._fits += 1
        self.generator.manual_seed(self.seed * 1000 + self._fits)
        rng = np.random.default_rng(self.seed * 1000 + self._fits)
        xt = to_tensor(x, self.device)  # (N, C, H, W)
        labeled_idx = np.asarray(labeled_idx, dtype=np.int64)
        yt = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)  # (L,)
        if len(yt) and (int(yt.min()) < 0 or int(yt.max()) >= self.num_classes):
            raise ValueError(
                f"Labels must lie in 0..{self.num_classes - 1}; relabel the out-of-range images."
            )
        x_lab = xt[torch.as_tensor(labeled_idx, device=self.device)] if len(labeled_idx) else None
        n, bs = len(x), (cfg.batch_size if self.arch == "mlp" else cfg.conv_batch_size)
        fb = bs if self.arch == "mlp" else (cfg.conv_fake_batch_size or bs)  # generated images per pass
        disc, gen = self.disc, self.gen
        disc.train(), gen.train()

        if not bool(disc.head[-1].initialized):
            init_rows = torch.as_tensor(rng.choice(n, size=min(n, 500), replace=False), device=self.device)
            data_dependent_init(disc, xt[init_rows])
            data_dependent_init(gen, self._z(max(bs, 2)))
            if "disc_ema" in self.modules:
                self._update_ema(0.0)

        if "disc_ema" in self.modules:
            self.modules["disc_ema"].eval()  # the teacher predicts without noise or dropout
        lab_order = np.zeros(0, dtype=np.int64)
        graph_labels = None
        if cfg.graph and x_lab is not None and len(np.unique(labeled_idx)) < n:
            graph_labels = graph.GraphLabels(
                n, labeled_idx, yt.cpu().numpy(), self.num_classes, prior=cfg.graph_prior
            )
        losses: dict[str, float] = {}
        step, last_report = 0, -math.inf  # report after the first step, then every progress_every_s
        while not budget.done(step):
            decay_lr((self.opt_d, self.opt_g), cfg.lr, budget, step, cfg.lr_decay)

            # discriminator: labeled (repeated), unlabeled and generated batches
            terms: dict[str, torch.Tensor] = {}
            positions = None
            if graph_labels is not None:
                positions = graph_labels.batch(
                    bs, lambda rows: self._features_and_proba(x, rows), budget, step, rng, self.generator
                )
            if positions is not None:
                unl = xt[torch.as_tensor(graph_labels.rows[positions], device=self.device)]
            else:
                unl = xt[torch.as_tensor(rng.integers(0, n, bs), device=self.device)]  # (B, C, H, W)
            with torch.no_grad():
                fake = gen(self._z(fb))  # (Bf, C, H, W)
            if x_lab is not None:
                if len(lab_order) < bs:  # repeat the labeled set in shuffled passes
                    reps = math.ceil(bs / len(labeled_idx)) + 1
                    lab_order = np.concatenate(
                        [lab_order] + [rng.permutation(len(labeled_idx)) for _ in range(reps)]
                    )
                pick, lab_order = lab_order[:bs], lab_order[bs:]
                pick_t = torch.as_tensor(pick, device=self.device)
                xl = x_lab[pick_t]
                if cfg.consistency:
                    xl = augment.weak(xl, self.generator)
                    with torch.no_grad():
                        teacher_logits = self._logits(augment.weak(unl, self.generator))
                    logits_all, _ = disc(torch.cat([xl, unl, fake, augment.strong(unl, self.generator)]))
                    logits_lab, logits_unl, logits_fake, logits_strong = logits_all.split([bs, bs, fb, bs])
                    cons, _ = augment.fixmatch_loss(logits_strong, teacher_logits, cfg.threshold)
                    terms["cons"] = cfg.consistency_weight * cons
                else:
                    logits_all, _ = disc(torch.cat([xl, unl, fake]))
                    logits_lab, logits_unl, logits_fake = logits_all.split([bs, bs, fb])  # (B or Bf, K)
                terms["sup"] = supervised_loss(logits_lab, yt[pick_t])
            else:
                logits_all, _ = disc(torch.cat([unl, fake]))
                logits_unl, logits_fake = logits_all.split([bs, fb])
            terms["unsup"] = cfg.unlabeled_weight * unsupervised_loss(logits_unl, logits_fake)
            if positions is not None:
                at = torch.as_tensor(positions, device=self.device)
                terms["graph"] = cfg.graph_weight * graph_labels.loss(logits_unl, at)
            terms.update(self.extra_d_loss(logits_unl))
            loss_d = sum(terms.values())
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            if "disc_ema" in self.modules:
                # With consistency the average is also the teacher, so it must not lag far
                # behind in the first steps: the mean teacher's ramp min(ema, t / (t + 10)).
                t = self._steps + step + 1
                self._update_ema(min(cfg.ema, t / (t + 10)) if cfg.consistency else cfg.ema)

            # generator: feature matching on a fresh unlabeled batch
            unl2 = xt[torch.as_tensor(rng.integers(0, n, fb), device=self.device)]
            fake = gen(self._z(fb))
            _, feats = disc(torch.cat([unl2, fake]))
            feat_real, feat_fake = feats.split(fb)  # (Bf, D) each
            g_terms = self.generator_loss(feat_real, feat_fake, unl2, fake)
            loss_g = sum(g_terms.values())
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            step += 1

            check_finite({"discriminator loss": loss_d, "generator loss": loss_g}, step)
            now = time.monotonic()
            if progress is not None and now - last_report >= cfg.progress_every_s:
                last_report = now
                losses = {k: float(v.detach()) for k, v in {**terms, **g_terms}.items()}
                if progress(Progress(step, budget.elapsed(), budget.fraction(step), losses)):
                    raise TrainingCancelled()
        if step:
            losses = {k: float(v.detach()) for k, v in {**terms, **g_terms}.items()}
            if progress is not None:  # the last throttled report may be up to progress_every_s old
                progress(Progress(step, budget.elapsed(), budget.fraction(step), losses))
        losses["steps"] = float(step)
        self._steps += step
        disc.eval(), gen.eval()
        return losses

    # -- inference ----------------------------------------------------------------------------

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)[0]

    @torch.no_grad()
    def _features_and_proba(self, x: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The prediction discriminator's features (S, D) and probabilities (S, K) of pool rows."""
        training = self.classifier.training
        probs, feats = self.predict_and_embed(x[rows])
        self.classifier.train(training)
        return torch.as_tensor(feats, device=self.device), probs

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.classifier.eval()
        return batched(lambda b: torch.softmax(self._logits(b), dim=1), x, self.device)

    def embed(self, x: np.ndarray) -> np.ndarray:
        self.classifier.eval()
        return batched(lambda b: self.classifier(b)[1], x, self.device)

    def predict_and_embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass of the discriminator for both: its softmax and features side by side."""
        if not len(x):
            return super().predict_and_embed(x)
        self.classifier.eval()
        return batched_proba_and_features(self.classifier, x, self.device, self.num_classes)

    def mc_proba(self, x: np.ndarray, samples: int = 8) -> np.ndarray:
        """(S, N, K): S passes with the discriminator's noise (and dropout) switched on."""
        self.generator.manual_seed(self.seed)
        self.classifier.train()
        try:
            out = np.stack(
                [
                    batched(lambda b: torch.softmax(self._logits(b), dim=1), x, self.device)
                    for _ in range(samples)
                ]
            )
        finally:
            self.classifier.eval()
        return out

    @torch.no_grad()
    def sample_images(self, n_per_class: int = 8, seed: int = 0) -> np.ndarray:
        self.gen.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        images = self.gen(self._z(n_per_class, generator))  # (n, C, H, W)
        return images.cpu().numpy()[None]  # (1, n, C, H, W)

    def classifier_module(self) -> nn.Module:
        body = _export_layers(self.classifier.body)
        head = _export_layers(self.classifier.head)
        module = _Classifier(body, head).to(self.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    def extra_state(self) -> dict:
        return {"arch": self.arch, "fits": self._fits, "steps": self._steps}

    def load_extra_state(self, state: dict) -> None:
        self._fits = int(state.get("fits", 0))
        self._steps = int(state.get("steps", 0))
