"""The PixelGAN autoencoder: the causal masks by hand, the decoder's autoregressive property, samples."""

from __future__ import annotations

import numpy as np
import torch

from labeler.models import Budget
from labeler.models.pixelgan import PixelGAN, TinyPixelCNN, causal_mask


def test_causal_masks_by_hand():
    a = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(causal_mask(3, include_centre=False), a)
    b = a.clone()
    b[1, 1] = 1.0
    torch.testing.assert_close(causal_mask(3, include_centre=True), b)


def test_each_pixels_logit_sees_only_earlier_pixels():
    # d logit(i, j) / d x: zero at (i, j) and after it in raster order, for every pixel.
    torch.manual_seed(0)
    net = TinyPixelCNN(channels=2, num_classes=3, width=4, layers=2)
    h, w = 5, 5
    x = torch.rand(1, 2, h, w, requires_grad=True)
    y = torch.eye(3)[:1]
    for i in range(h):
        for j in range(w):
            (grad,) = torch.autograd.grad(net(x, y)[0, :, i, j].sum(), x)
            seen = grad[0].abs().sum(0).flatten() > 0  # (H W,)
            assert not seen[i * w + j :].any(), f"pixel {(i, j)} sees itself or a later pixel"
    assert seen[: i * w + j].any()


def test_a_pixels_logits_from_its_window_equal_the_whole_images():
    torch.manual_seed(0)
    net = TinyPixelCNN(channels=3, num_classes=2, width=4, layers=2)
    x, y = torch.rand(2, 3, 9, 11), torch.eye(2)
    full = net(x, y)
    for i, j in [(0, 0), (0, 10), (4, 5), (8, 0), (8, 10), (6, 2)]:
        torch.testing.assert_close(net.pixel_logits(x, y, i, j), full[:, :, i, j])


def test_the_class_code_changes_the_decoder_output():
    torch.manual_seed(0)
    net = TinyPixelCNN(channels=1, num_classes=3, width=4, layers=1)
    x = torch.rand(1, 1, 4, 4)
    assert not torch.allclose(net(x, torch.eye(3)[:1]), net(x, torch.eye(3)[1:2]))


def test_samples_are_binary_images_per_class():
    rng = np.random.default_rng(0)
    x = (rng.random((20, 1, 8, 8)) > 0.5).astype(np.float32)
    model = PixelGAN(
        (1, 8, 8),
        3,
        config=PixelGAN.Config(hidden=[16], d_hidden=(8,), pixel_width=4, pixel_layers=1, unlabeled_batch=8),
    )
    model.fit(x, np.arange(6), np.arange(6) % 3, Budget(steps=3))
    samples = model.sample_images(4)
    assert samples.shape == (3, 4, 1, 8, 8)
    assert set(np.unique(samples).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(samples, model.sample_images(4))  # the seed fixes them
