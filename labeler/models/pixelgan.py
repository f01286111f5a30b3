"""PixelGAN autoencoder with a categorical prior, semi-supervised.

Makhzani and Frey (2017), "PixelGAN autoencoders", NeurIPS, section 3 (categorical prior)
and 4 (semi-supervised learning).

The encoder gives a class code y = q(y|x) = softmax(l(x)) only; the decoder is a PixelCNN
(van den Oord et al. 2016) conditioned on y, which models each pixel given the pixels above
and to its left:

    p(x | y) = prod_i p(x_i | x_<i, y),   p(x_i | x_<i, y) = Bernoulli(sigmoid(g_i(x_<i, y))).

Because the PixelCNN can draw the local detail (stroke width, slant) by itself, the code is
left with the global, discrete information: which cluster, i.e. class. As in the adversarial
autoencoder (aae.py, whose loss terms this reuses), a discriminator D_y pushes y toward
one-hot samples of Cat(1/K), and the labeled images train q(y|x) with cross-entropy. Each step
has the paper's three phases, each with its own Adam:

1. reconstruction: encoder and PixelCNN minimise L_rec = -log p(x | y(x)), teacher-forced in
   one pass (the masks keep each pixel's logit blind to itself and the pixels after it);
2. regularisation: D_y minimises L_D, then the encoder minimises L_G;
3. semi-supervised: q(y|x) minimises the cross-entropy on the labeled batch.

What was cut from the paper's decoder, and why: the paper uses a full PixelCNN (gated layers,
vertical and horizontal stacks, 15 or so layers, location-dependent conditioning of each layer
on the code). Here the decoder is a masked 5x5 convolution (mask A) and `pixel_layers` masked
3x3 convolutions (mask B) of `pixel_width` channels with ReLU, then a 1x1 convolution to the
logits; y enters every layer as a learned bias (location-invariant conditioning). This is
small enough for many steps on two CPU cores, and its blind spot (a plain masked stack does
not see part of the region above-right) costs detail, which the code does not need. Colour
channels of one pixel are predicted together, each given only the earlier pixels (the paper
orders R, G, B within a pixel). Sampling runs the PixelCNN once per pixel (64 passes on 8x8,
784 on 28x28), each on the window the pixel can see (`pixel_logits`; 8 per class in 10 classes on one CPU
core: 0.4 s on 8x8, 4.4 s on 28x28, 7 s on 3x32x32; 130 s on 28x28 with the whole image per pass).

Consistency (`consistency`, on by default; off is the paper's form): the semi-supervised phase
gets FixMatch's term with an EMA teacher, as in the AAE (aae.py's module docstring).

The latent-space view gets the encoder's last hidden layer (y itself sits at the corners of
the simplex); `sample_images` draws each class with the PixelCNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import nets
from .aae import (
    PhasedAutoencoder,
    categorical_prior,
    discriminator,
    discriminator_loss,
    generator_loss,
    reconstruction_loss,
)
from .base import adam, batched


def causal_mask(kernel: int, include_centre: bool) -> torch.Tensor:
    """(kernel, kernel) mask: 1 above the centre row and left of the centre in its row, plus the
    centre for mask B. Mask A (first layer) hides the pixel being predicted."""
    mask = torch.zeros(kernel, kernel)
    c = kernel // 2
    mask[:c] = 1.0
    mask[c, :c] = 1.0
    if include_centre:
        mask[c, c] = 1.0
    return mask


class MaskedConv(nn.Conv2d):
    """A same-padded convolution whose kernel is multiplied by a causal mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, include_centre: bool):
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        self.register_buffer("mask", causal_mask(kernel, include_centre))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class TinyPixelCNN(nn.Module):
    """(x (B, C, H, W), y (B, K)) -> (B, C, H, W) Bernoulli logits, each pixel's from earlier pixels."""

    def __init__(self, channels: int, num_classes: int, width: int, layers: int):
        super().__init__()
        self.convs = nn.ModuleList(
            [MaskedConv(channels, width, 5, include_centre=False)]
            + [MaskedConv(width, width, 3, include_centre=True) for _ in range(layers)]
        )
        self.condition = nn.ModuleList([nn.Linear(num_classes, width, bias=False) for _ in self.convs])
        self.out = nn.Conv2d(width, channels, 1)

        # How far a logit sees: 2 rows up and 2 columns either way through the 5x5 layer, one
        # more of each through every 3x3 layer.
        self.reach = 2 + layers

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, cond in zip(self.convs, self.condition, strict=True):
            h = F.relu(conv(h) + cond(y)[:, :, None, None])  # (B, W, H, W)
        return self.out(h)

    def pixel_logits(self, x: torch.Tensor, y: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """forward(x, y)[:, :, i, j] (B, C) from the window of x that pixel (i, j) can see: the
        same numbers (outside the window every weight that reaches (i, j) is masked or padded
        away), at a fraction of the cost when sampling pixel by pixel."""
        r = self.reach
        top, left = max(0, i - r), max(0, j - r)
        window = x[:, :, top : i + 1, left : j + r + 1]
        return self.forward(window, y)[:, :, i - top, j - left]


class PixelGANNet(nn.Module):
    def __init__(
        self, input_shape, num_classes: int, hidden, conv_width: int, pixel_width: int, pixel_layers: int
    ):
        super().__init__()
        self.trunk, width = nets.features(input_shape, hidden, conv_width=conv_width)
        self.y_head = nn.Linear(width, num_classes)
        self.decoder = TinyPixelCNN(int(input_shape[0]), num_classes, pixel_width, pixel_layers)

    def classifier(self) -> nn.Sequential:
        return nn.Sequential(self.trunk, self.y_head)

    def encoder_parameters(self):
        return [*self.trunk.parameters(), *self.y_head.parameters()]


@dataclass
class PixelGANConfig:
    hidden: list[int] | None = None  # the encoder; None: nets.default_hidden(input shape)
    d_hidden: tuple[int, ...] = (256, 256)
    # The PixelCNN: channels of its layers and mask-B layers after the mask-A one. On digits
    # (30 labels, 60 s, seeds 0-2) 32 and 3 gave 0.778 +- 0.099 test accuracy in ~770 steps,
    # 16 and 2 0.797 +- 0.105 in ~1,550: within the seeds' spread.
    pixel_width: int = 32
    pixel_layers: int = 3
    labeled_batch: int = 100
    unlabeled_batch: int = 100
    lr: float = 1e-3
    d_lr: float = 1e-4
    conv_width: int = 16  # the encoder on colour or larger images (nets.use_conv)
    # FixMatch-style consistency with an EMA teacher on q(y|x), as in the AAE (aae.py's module
    # docstring); False is the paper's semi-supervised phase.
    consistency: bool = True
    consistency_weight: float = 1.0
    threshold: float = 0.95
    ema: float = 0.99
    augment_labeled: bool = False  # as in the AAE (aae.py's config)


class PixelGAN(PhasedAutoencoder):
    name = "pixelgan"
    Config = PixelGANConfig
    embed_is_body = True
    conditional_samples = True

    def build(self) -> None:
        cfg = self.config
        hidden = cfg.hidden or nets.default_hidden(self.input_shape)
        k = self.num_classes
        net = PixelGANNet(self.input_shape, k, hidden, cfg.conv_width, cfg.pixel_width, cfg.pixel_layers)
        self.modules = {
            "net": net.to(self.device).eval(),
            "d_y": discriminator(k, cfg.d_hidden).to(self.device),
        }
        for module in self.modules.values():
            self.initialised(module)
        self._add_teacher()
        self.optimizers = {
            "reconstruction": adam(net.parameters(), lr=cfg.lr),
            "discriminators": adam(self.modules["d_y"].parameters(), lr=cfg.d_lr),
            "regularisation": adam(net.encoder_parameters(), lr=cfg.lr),
            "supervised": adam(net.encoder_parameters(), lr=cfg.lr),
        }

    def _step(self, xu: torch.Tensor, xl: torch.Tensor | None, yl: torch.Tensor | None) -> dict[str, float]:
        net, d_y, opts = self.modules["net"], self.modules["d_y"], self.optimizers
        classifier = net.classifier()

        y = torch.softmax(classifier(xu), 1)
        rec = reconstruction_loss(net.decoder(xu, y), xu)
        opts["reconstruction"].zero_grad(set_to_none=True)
        rec.backward()
        opts["reconstruction"].step()

        with torch.no_grad():
            y = torch.softmax(classifier(xu), 1)
        prior = categorical_prior(len(xu), self.num_classes, self.device, self.generator)
        d_loss = discriminator_loss(d_y(prior), d_y(y))
        opts["discriminators"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["discriminators"].step()

        g_loss = generator_loss(d_y(torch.softmax(classifier(xu), 1)))
        opts["regularisation"].zero_grad(set_to_none=True)
        g_loss.backward()
        opts["regularisation"].step()

        parts = {"reconstruction": rec.item(), "discriminator": d_loss.item(), "generator": g_loss.item()}
        return self._supervised_phase(classifier, xl, yl, xu, parts)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """The last hidden layer (N, F) of q(y|x) as used for predictions."""
        return batched(self._classifier()[0], x, self.device)

    @torch.no_grad()
    def sample_images(self, n_per_class: int = 8, seed: int = 0) -> np.ndarray | None:
        """Ancestral sampling, one pixel at a time, all classes in one batch."""
        decoder = self.modules["net"].eval().decoder
        k = self.num_classes
        c, h, w = self.input_shape
        gen = torch.Generator(device=self.device).manual_seed(seed)
        y = torch.eye(k, device=self.device).repeat_interleave(n_per_class, 0)  # (K n, K)
        img = torch.zeros(k * n_per_class, c, h, w, device=self.device)
        for i in range(h):
            for j in range(w):
                p = torch.sigmoid(decoder.pixel_logits(img, y, i, j))  # (K n, C)
                img[:, :, i, j] = torch.bernoulli(p, generator=gen)
        return img.cpu().numpy().reshape(k, n_per_class, c, h, w)
