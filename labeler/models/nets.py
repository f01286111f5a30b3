"""Shared building blocks for the model families: backbones, decoders, likelihoods, training helpers.

Backbone choice (one rule for every model, with two exceptions below): images with one channel
and at most 28x28 pixels get the MLP of the papers (Kingma et al. 2014 use one or two hidden layers of 500 units on
flattened MNIST); anything else (colour, or larger than 28x28) gets convolutions, because an
MLP on 3x32x32 pixels is slow and ignores locality. There the classifiers (`features(...,
classifier=True)`: M2's q(y|x), the supervised and self-training baselines) use
`PooledConvFeatures`: per-image normalisation of the luminance inside the module, 3x3 convolutions and max
pooling, so that neither an image's brightness, contrast and colour cast nor an object's
position decide its class. A person's own photos vary in exactly these; on the generated
`shapes` benchmark (labeler/data/shapes.py) the stride-2 encoder below was at chance. The VAE
encoders and decoders keep the stride-2 `ConvFeatures` / `ConvImage` (they must keep brightness
to reconstruct the image); M2's instead model a small grey thumbnail (`GreyThumbnail`, see m2.py).
The classifiers' first convolution also ignores the sign of its input (`AbsConv2d`): an
object may be lighter or darker than its background.

The two exceptions, measured better on Fashion-MNIST: M2's q(y|x) (`m2.default_classifier_arch`)
and the GAN discriminator (`sslgan.default_arch`) are convolutional on grey images of 28x28 too.

Likelihoods work on intensities in [0, 1]:

    log p(x | logits) = sum_d  x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d))     (Bernoulli)
    log N(x | mu, sigma^2) = -1/2 sum_d [ log 2 pi + log sigma_d^2 + (x_d - mu_d)^2 / sigma_d^2 ]
    KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum_d [ 1 + log sigma_d^2 - mu_d^2 - sigma_d^2 ]
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Progress, ProgressFn, TrainingCancelled, check_finite  # noqa: F401 - models call nets.check_finite

LOG_2PI = math.log(2 * math.pi)


def use_conv(input_shape: Sequence[int]) -> bool:
    """True when the image is colour or larger than 28x28 (see the module docstring)."""
    c, h, w = input_shape
    return not (c == 1 and h * w <= 28 * 28)


def checkpoint_arch(
    config: dict[str, Any], state: dict[str, Any], key: str, default: Callable[[Sequence[int]], str]
) -> tuple[dict[str, Any], str]:
    """For a model whose architecture setting `key` defaults to "auto" and resolves by
    `default(input shape)`: the checkpoint's settings with `key` pinned where its "auto" built
    something other than what "auto" builds now, and the architecture it built. That is read from
    the checkpoint's extra state under `key`, or for checkpoints that did not record it, from the
    rule "auto" followed before (`use_conv`). A pinned setting makes a later run with "auto" see
    changed settings and train the new default afresh."""
    arch = config.get(key, "auto")
    if arch == "auto":
        shape = tuple(state["input_shape"])
        arch = state.get("extra", {}).get(key) or ("conv" if use_conv(shape) else "mlp")
        if arch != default(shape):
            config = {**config, key: arch}
    return config, arch


def mnist_sized(input_shape: Sequence[int]) -> bool:
    """True for inputs of at least 28x28 values, where the papers' MNIST network sizes apply;
    the size defaults (`default_hidden`, `default_latent`, the GAN discriminator, M1+M2's M2)
    shrink below it, and M2's q(y|x) and the GAN discriminator are convolutional from it up on
    grey images too (`m2.default_classifier_arch`, `sslgan.default_arch`)."""
    return int(np.prod(input_shape)) >= 28 * 28


def default_hidden(input_shape: Sequence[int]) -> list[int]:
    """One hidden layer of 500 units (the papers' MNIST size) for 28x28 and larger inputs; 256 for
    smaller ones such as 8x8 digits, where 500 units only slow each step (measured on digits with
    30 labels and 60 s: 0.84 test accuracy with 500 units, 0.88 with 256, from more steps)."""
    return [500] if mnist_sized(input_shape) else [256]


def default_latent(input_shape: Sequence[int]) -> int:
    """The VAEs' z: 50 dimensions (the paper's MNIST size) for 28x28 and larger inputs, 10 for
    smaller ones. On 8x8 digits a 50-dimensional z explains the image without M2's label, so its
    classifier learns little from unlabeled images, and M1's means are spread over many nearly
    unused dimensions (measured, 30 labels, 60 s, seeds 0 and 1: M2 0.891 and 0.847 test
    accuracy with 50 dimensions, 0.927 and 0.951 with 10; M1 0.804 and 0.860, then 0.840 and 0.887)."""
    return 50 if mnist_sized(input_shape) else 10


def mlp(sizes: Sequence[int], batchnorm: bool = True, last_activation: bool = False) -> nn.Sequential:
    """Linear layers between consecutive `sizes`, each hidden one followed by BatchNorm and ReLU."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ConvFeatures(nn.Module):
    """(B, C, H, W) -> (B, out_dim): three stride-2 convolutions, then a linear layer."""

    def __init__(self, input_shape: Sequence[int], out_dim: int, width: int = 32):
        super().__init__()
        c, h, w = input_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
            nn.BatchNorm2d(4 * width),
            nn.LeakyReLU(0.2),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x))


class PerImageNorm(nn.Module):
    """(B, C, H, W) -> (B, 1, H, W): the luminance (0.299 R + 0.587 G + 0.114 B; one channel
    as it is), shifted and scaled to mean 0 and variance 1 over each image's pixels, so a
    uniform change of brightness, contrast or colour cast leaves the output unchanged. A flat
    image (variance ~0) stays ~0 rather than amplifying noise.

    Colour itself is dropped: measured on the shapes benchmark (a CNN with max pooling and
    weak augmentation, 30 labels, 1,000 steps, seed 0), luminance input gave 0.755 test
    accuracy, the three colour channels each normalised 0.440, the raw pixels without
    normalisation far less (the stride-2 encoder at chance). The price: classes that differ only
    in colour are not separable by these classifiers."""

    def __init__(self, eps: float = 1e-2):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (B, 1, H, W)
        mean = x.mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
        var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps**2)


class AbsConv2d(nn.Conv2d):
    """|conv(x)|: a convolution whose output does not change when its input changes sign.

    After `PerImageNorm` a sign change is an object lighter instead of darker than its
    surroundings, so the first layer of a polarity-invariant backbone sees an edge and its
    negative alike. Same weights (and state-dict keys) as the nn.Conv2d it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias).abs()


class PooledConvFeatures(nn.Module):
    """(B, C, H, W) -> (B, out_dim): per-image normalisation, then four stages of a 3x3
    convolution, batch norm and ReLU, each of the first three followed by 2x2 max pooling, then
    global max pooling (any image size; what matters is whether a pattern occurs, not where)
    and a linear layer. Widths w, 2w, 4w, 4w; w = 16 makes about 3.5 M multiply-adds per 32x32
    image, cheap enough for many steps on a CPU core.

    `polarity_invariant`: the first convolution is an `AbsConv2d`, so an object lighter than its
    background and the same object darker give the same features. Measured on the shapes
    benchmark (this backbone alone, weak views, 30 labels, 600 steps, seed 0): 0.77 test
    accuracy without, 0.935 with (0.87 with the absolute value after batch norm instead of
    before it); over seeds 1 and 2, 0.94 and 0.925 with it."""

    def __init__(
        self, input_shape: Sequence[int], out_dim: int, width: int = 16, polarity_invariant: bool = True
    ):
        super().__init__()
        c = 1  # PerImageNorm's luminance
        w1, w2, w3 = width, 2 * width, 4 * width
        stage = lambda a, b: [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        first = AbsConv2d if polarity_invariant else nn.Conv2d
        self.convs = nn.Sequential(
            PerImageNorm(),
            first(c, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            *stage(w1, w2),
            nn.MaxPool2d(2, ceil_mode=True),
            *stage(w2, w3),
            nn.MaxPool2d(2, ceil_mode=True),
            *stage(w3, w3),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        # Channels-last weights make every feature map channels-last (the memory layout follows
        # the weights), which made a training step of this network about 1.5 times faster on one
        # CPU core (batch 96, 32x32; most of it in max pooling).
        self.convs.to(memory_format=torch.channels_last)
        self.head = nn.Sequential(nn.Linear(w3, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x))


class GreyThumbnail(nn.Module):
    """(B, C, H, W) -> (B, 1, s, s) in [0, 1]: the luminance, averaged down to s x s (at most
    H x W) and standardised per image, mapped to 0.5 + v / 4 and clipped (mean 0.5, two
    standard deviations to either end), so that a generative model of it spends nothing on
    colour, brightness or contrast and its decoder makes s*s values instead of C*H*W."""

    def __init__(self, input_shape: Sequence[int], size: int, eps: float = 1e-2):
        super().__init__()
        _, h, w = (int(v) for v in input_shape)
        self.size = (min(size, h), min(size, w))
        self.eps = eps

    def output_shape(self) -> tuple[int, int, int]:
        return (1, *self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (B, 1, H, W)
        v = F.adaptive_avg_pool2d(x, self.size)  # (B, 1, s, s)
        mean = v.mean(dim=(2, 3), keepdim=True)
        std = torch.sqrt((v - mean).pow(2).mean(dim=(2, 3), keepdim=True) + self.eps**2)
        return (0.5 + (v - mean) / (4 * std)).clamp(0, 1)


class ConvImage(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits: a linear layer to a small map, then transposed convolutions.

    The map starts at ceil(H/8) x ceil(W/8) and is cropped to (H, W) at the end.
    """

    def __init__(self, in_dim: int, input_shape: Sequence[int], width: int = 32):
        super().__init__()
        c, h, w = input_shape
        self.shape = (int(c), int(h), int(w))
        self.h0, self.w0 = -(-h // 8), -(-w // 8)
        self.width = width
        self.fc = nn.Sequential(nn.Linear(in_dim, 4 * width * self.h0 * self.w0), nn.ReLU())
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        out = self.deconvs(self.fc(z).view(-1, 4 * self.width, self.h0, self.w0))
        return out[:, :, :h, :w]


class MLPImage(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits through an MLP."""

    def __init__(self, in_dim: int, input_shape: Sequence[int], hidden: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in input_shape)
        self.net = mlp([in_dim, *hidden, int(np.prod(self.shape))])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        return self.net(z).view(-1, c, h, w)


def features(
    input_shape: Sequence[int],
    hidden: Sequence[int],
    arch: str = "auto",
    classifier: bool = False,
    conv_width: int = 32,
    polarity_invariant: bool = True,
    classifier_width: int = 16,
) -> tuple[nn.Module, int]:
    """An image encoder (B, C, H, W) -> (B, F) and its F: an MLP of `hidden`, or convolutions
    ending in hidden[-1] units: `PooledConvFeatures` for a classifier, `ConvFeatures` for a VAE
    encoder (see the module docstring), of widths `classifier_width` and `conv_width` respectively.

    `arch` "auto" follows `use_conv`; "mlp" or "conv" force one."""
    if arch not in ("auto", "mlp", "conv"):
        raise ValueError(f"Unknown architecture {arch!r}; use 'auto', 'mlp' or 'conv'.")
    if arch == "conv" or (arch == "auto" and use_conv(input_shape)):
        if classifier:
            features = PooledConvFeatures(
                input_shape, hidden[-1], width=classifier_width, polarity_invariant=polarity_invariant
            )
            return features, hidden[-1]
        return ConvFeatures(input_shape, hidden[-1], conv_width), hidden[-1]
    d = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), mlp([d, *hidden], last_activation=True)), hidden[-1]


def image_decoder(
    in_dim: int, input_shape: Sequence[int], hidden: Sequence[int], conv_width: int = 32
) -> nn.Module:
    """(B, in_dim) -> (B, C, H, W) Bernoulli logits, mirroring `features`."""
    if use_conv(input_shape):
        return ConvImage(in_dim, input_shape, conv_width)
    return MLPImage(in_dim, input_shape, list(reversed(hidden)))


# -- mixed precision -------------------------------------------------------------------------


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere autocast emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def mixed_precision(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for a training step's forward passes where `enabled` and the device
    computes bfloat16 natively (`fast_bf16`), else nothing. Weights, gradients and the optimiser's
    state stay float32; callers cast what feeds a likelihood, a softmax or a loss back to float32."""
    if enabled and fast_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- likelihoods and divergences -------------------------------------------------------------


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, ...) logits and targets in [0, 1] -> (B,) log-likelihood summed over all but dim 0."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B,) log N(x | mu, exp(logvar)) summed over D."""
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar)).sum(1)


def kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B,) KL(N(mu, exp(logvar)) || N(0, I))."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + noise * torch.exp(0.5 * logvar)


class GaussianHead(nn.Module):
    """(B, F) -> mean and log-variance, each (B, D); the log-variance is clamped for stability."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mu = nn.Linear(in_dim, out_dim)
        self.logvar = nn.Linear(in_dim, out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(h), self.logvar(h).clamp(-8.0, 8.0)


# -- classifier export -----------------------------------------------------------------------


class Uniform(nn.Module):
    """(B, ...) -> (B, K) uniform probabilities: the honest answer of a model that saw no labels."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], self.num_classes), 1.0 / self.num_classes, device=x.device)


class SoftmaxOf(nn.Module):
    """Wrap a logits network so it returns probabilities."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


# -- training helpers ------------------------------------------------------------------------


class Ticker:
    """Calls the progress callback about every `every_s` seconds and raises TrainingCancelled
    when it returns True. (Non-finite losses: `check_finite`, in the training loops and on every
    progress report in `round.run_round`.)"""

    def __init__(self, progress: ProgressFn | None, budget, every_s: float = 0.5):
        self.progress, self.budget, self.every_s = progress, budget, every_s
        self.last = -math.inf

    def tick(self, step: int, losses: dict[str, float], force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            report = Progress(
                step=step, seconds=self.budget.elapsed(), fraction=self.budget.fraction(step), losses=losses
            )
            if self.progress(report):
                raise TrainingCancelled()


def batch_rng(seed: int, steps_done: int) -> np.random.Generator:
    """The numpy generator of one fit's batch order: from the run's seed and the steps already
    trained, so a warm start does not replay the batches of the fit before it."""
    return np.random.default_rng(seed + 7919 * steps_done)


def batches(idx: np.ndarray, size: int, rng: np.random.Generator):
    """An endless stream of index batches drawn from `idx`: shuffled epochs, no repeats within one
    (except when `idx` holds a single item, which is then repeated)."""
    idx = np.asarray(idx)
    size = max(2, min(size, len(idx)))  # batch norm needs two rows in training mode
    while True:
        perm = rng.permutation(idx)
        if len(perm) < size:  # fewer items than a batch: repeat them
            perm = np.resize(perm, size)
        for i in range(0, len(perm) - size + 1, size):
            yield perm[i : i + size]


def sub_budget(budget, fraction: float):
    """A Budget taking `fraction` of the steps and of the seconds still left in `budget`."""
    from .base import Budget

    steps = None if budget.steps is None else max(1, int(budget.steps * fraction))
    seconds = None if budget.seconds is None else max(0.0, budget.seconds - budget.elapsed()) * fraction
    return Budget(steps=steps, seconds=seconds)


def rest_budget(budget, steps_used: int):
    """A Budget holding what is left of `budget` after `steps_used` steps and the time spent."""
    from .base import Budget

    steps = None if budget.steps is None else max(0, budget.steps - steps_used)
    seconds = None if budget.seconds is None else max(0.0, budget.seconds - budget.elapsed())
    return Budget(steps=steps, seconds=seconds)


def fit_pca(flat: np.ndarray, components: int, seed: int):
    """A PCA fitted to the rows of `flat` (N, P) with `components` directions, or as many as the
    rows allow (one at least): (the PCA, the coordinates (N, D))."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=max(1, min(components, flat.shape[0] - 1, flat.shape[1])), random_state=seed)
    return pca, pca.fit_transform(flat)


def pool_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """The pool as one float32 tensor on `device` (no copy on the CPU)."""
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


def check_labels(
    labeled_idx: np.ndarray, labels: np.ndarray, n: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    labeled_idx = np.asarray(labeled_idx, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labeled_idx) != len(labels):
        raise ValueError(
            f"{len(labeled_idx)} labeled indices but {len(labels)} labels; give one label per index."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels must lie in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}.")
    if len(labeled_idx) and (labeled_idx.min() < 0 or labeled_idx.max() >= n):
        raise ValueError(f"Labeled indices must lie in 0..{n - 1}.")
    return labeled_idx, labels
