"""Augmentations chosen by the kind of data, and the consistency term that uses them.

Used in training only: no exported classifier ever holds an augmentation (the tests check that
the exported module's output does not change with `consistency` on).

Two kinds of data (`kind`):

- "grey": one channel and at most 28x28 pixels (digits, MNIST, Fashion-MNIST). Weak view:
  an integer shift of up to `s` pixels, s = max(1, round(H / 14)) (1 px on 8x8 digits, 2 px on
  28x28). Strong view: shifts of up to 2s, rotation up to 15 degrees, scale 0.9-1.1, contrast
  0.7-1.3, Gaussian pixel noise (std `grey_noise`: 0.1 unless the model says otherwise; M2
  uses none, measured in m2.M2Config).
- "colour": everything else (a person's photos). Weak view: a random crop shifted by up to
  1/8 of the size and a horizontal flip. Strong view: the same plus rotation up to 30
  degrees, scale 0.8-1.2, brightness, contrast and saturation jitter, greyscale with
  probability 0.3, Gaussian noise and a cut-out square of 1/4 of the side.

The consistency term is FixMatch's (Sohn et al. 2020, "FixMatch: simplifying semi-supervised
learning with consistency and confidence"), with the teacher an exponential moving average of
the student's weights (Tarvainen & Valpola 2017, "Mean teachers are better role models"):

    L_cons = mean_u 1[max_k t_k(weak(x)) >= tau] CE(s(strong(x)), argmax_k t_k(weak(x)))

where t is the teacher's and s the student's softmax. The student's strong views are kept out
of batch-norm statistics (`frozen_batchnorm`): with them in, the statistics drift towards
the strong views and the clean predictions collapse (reported in issue 18: 0.50 on
Fashion-MNIST).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LUMA = (0.299, 0.587, 0.114)


def kind(input_shape: Sequence[int]) -> str:
    """ "grey" for one channel of at most 28x28 pixels, else "colour" (see the module docstring)."""
    c, h, w = (int(s) for s in input_shape)
    return "grey" if c == 1 and h * w <= 28 * 28 else "colour"


def _affine(
    x: torch.Tensor,
    shift_px: float,
    integer_shift: bool,
    max_degrees: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    flip: bool = False,
    padding_mode: str = "zeros",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image: a random shift of up to `shift_px` pixels, rotation, scale and horizontal flip,
    in one bilinear resampling. (B, C, H, W) -> the same shape, in float32 also under mixed
    precision (an autocast grid in bfloat16 would blur the weak view's integer shifts)."""
    with torch.autocast(x.device.type, enabled=False):
        b, _, h, w = x.shape
        dev = x.device
        if integer_shift:
            shift = torch.randint(
                -int(shift_px), int(shift_px) + 1, (b, 2), device=dev, generator=generator
            ).float()
        else:
            shift = (torch.rand(b, 2, device=dev, generator=generator) * 2 - 1) * shift_px
        angle = (torch.rand(b, device=dev, generator=generator) * 2 - 1) * math.radians(max_degrees)
        zoom = torch.empty(b, device=dev).uniform_(*scale, generator=generator)
        sign = (
            torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0)
            if flip
            else torch.ones(b, device=dev)
        )
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
        theta[:, 0, 2] = shift[:, 0] * 2 / w  # normalised coordinates span 2 over the image
        theta[:, 1, 2] = shift[:, 1] * 2 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)  # (B, 1, H, W)


def _per_image(b: int, low: float, high: float, device, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(b, 1, 1, 1, device=device).uniform_(low, high, generator=generator)


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def weak(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The weak view of a batch in [0, 1], (B, C, H, W) -> the same (module docstring)."""
    h = x.shape[-2]
    if kind(x.shape[1:]) == "grey":
        return _affine(x, max(1, round(h / 14)), integer_shift=True, generator=generator)
    return _affine(x, h / 8, integer_shift=False, flip=True, padding_mode="reflection", generator=generator)


GREY_NOISE = 0.1  # the strong view's pixel noise on grey images unless a model passes its own


def strong(x: torch.Tensor, generator: torch.Generator, grey_noise: float = GREY_NOISE) -> torch.Tensor:
    """The strong view of a batch in [0, 1], (B, C, H, W) -> the same (module docstring);
    `grey_noise` is the std of the pixel noise on grey images (colour images keep theirs)."""
    b, c, h, w = x.shape
    dev = x.device
    if kind(x.shape[1:]) == "grey":
        s = max(1, round(h / 14))
        out = _affine(x, 2 * s, integer_shift=False, max_degrees=15, scale=(0.9, 1.1), generator=generator)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * _per_image(b, 0.7, 1.3, dev, generator) + mean
        # Drawn even at 0: the random stream, and so every later draw, is the same as with noise.
        return (out + grey_noise * _randn_like(out, generator)).clamp(0, 1)
    out = _affine(
        x,
        h / 8,
        integer_shift=False,
        max_degrees=30,
        scale=(0.8, 1.2),
        flip=True,
        padding_mode="reflection",
        generator=generator,
    )
    out = out * _per_image(b, 0.6, 1.4, dev, generator)  # brightness
    if c == 3:
        grey = _grey(out)
        out = grey + (out - grey) * _per_image(b, 0.0, 2.0, dev, generator)  # saturation
        out = torch.where(
            torch.rand(b, 1, 1, 1, device=dev, generator=generator) < 0.3, grey.expand_as(out), out
        )
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * _per_image(b, 0.6, 1.4, dev, generator) + mean  # contrast
    out = out + 0.05 * _randn_like(out, generator)
    side = max(1, h // 4)
    top = torch.randint(0, h - side + 1, (b, 1, 1, 1), device=dev, generator=generator)
    left = torch.randint(0, w - side + 1, (b, 1, 1, 1), device=dev, generator=generator)
    rows = torch.arange(h, device=dev).view(1, 1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, 1, w)
    hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    out = torch.where(hole, torch.rand(b, c, 1, 1, device=dev, generator=generator), out)
    return out.clamp(0, 1)


def fixmatch_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_cons (module docstring) from the student's logits on strong views (B, K) and the
    teacher's on weak views (B, K) -> (loss, share of the batch above the threshold)."""
    with torch.no_grad():
        conf, pseudo = torch.softmax(teacher_logits.detach(), dim=1).max(dim=1)  # (B,), (B,)
        mask = (conf >= threshold).float()
    loss = (F.cross_entropy(student_logits, pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, weights only; buffers (batch-norm
    statistics) are copied, as in the mean teacher."""
    # One call for every tensor (what torch.optim.swa_utils does), not a Python loop of lerps.
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - decay)
    buffers = list(teacher.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(student.buffers()))


@contextmanager
def frozen_batchnorm(module: nn.Module) -> Iterator[None]:
    """Inside: every batch-norm layer of `module` normalises with its running statistics and
    does not update them (gradients still flow), so the batch passed in leaves no trace in them."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()
