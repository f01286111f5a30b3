"""Size-dependent defaults: the papers' MNIST sizes at 28x28, smaller networks below (measured)."""

import pytest
import torch

from labeler.models.m1 import M1
from labeler.models.m1m2 import M1M2
from labeler.models.m2 import M2
from labeler.models.nets import ConvFeatures, PooledConvFeatures
from labeler.models.sslgan import SSLGAN, WNConv2d, WNLinear


@pytest.mark.parametrize(("shape", "latent"), [((1, 8, 8), 10), ((1, 28, 28), 50), ((3, 32, 32), 50)])
def test_vae_latents_follow_the_image_size(shape, latent):
    assert M1(shape, 3).latent_dim == latent
    thumbnail_latent = 10 if shape == (3, 32, 32) else latent  # colour: M2 models a 16x16 grey thumbnail
    assert M2(shape, 3).latent_dim == thumbnail_latent
    assert M2(shape, 3, config=M2.Config(thumbnail=0)).latent_dim == latent
    stacked = M1M2(shape, 3)
    assert (stacked.m1_latent_dim, stacked.latent_dim) == (latent, latent)
    assert stacked.modules["net"].q_z.mu.out_features == latent


def test_settings_override_the_size_defaults():
    assert M2((1, 8, 8), 3, config=M2.Config(latent_dim=7)).latent_dim == 7
    assert M1((1, 8, 8), 3, config=M1.Config(latent_dim=5)).head.in_features == 5


def hidden_widths(model: SSLGAN) -> list[int]:
    return [m.v.shape[0] for m in model.disc.body if isinstance(m, WNLinear)]


def test_gan_discriminator_follows_the_image_size():
    assert SSLGAN((1, 8, 8), 3).arch == "mlp" and hidden_widths(SSLGAN((1, 8, 8), 3)) == [250, 250]
    # conv from 28x28 grey up (measured better on Fashion-MNIST, sslgan.default_arch) and for colour
    assert SSLGAN((1, 28, 28), 3).arch == "conv" and SSLGAN((3, 8, 8), 3).arch == "conv"
    assert SSLGAN((1, 20, 20), 3).arch == "mlp"
    papers = SSLGAN((1, 28, 28), 3, config=SSLGAN.Config(arch="mlp"))
    assert hidden_widths(papers) == [1000, 500, 250, 250, 250]
    assert hidden_widths(SSLGAN((1, 8, 8), 3, config=SSLGAN.Config(d_hidden=(16,)))) == [16]


def conv_widths(net) -> list[int]:
    return [m.v.shape[0] for m in net.modules() if isinstance(m, WNConv2d)]


def test_gan_conv_width_follows_the_image_kind():
    # Twice as wide on 28x28 grey (measured better on Fashion-MNIST, sslgan.default_conv_width);
    # colour and larger grey images keep 16, where the 60 s rounds are short of steps.
    assert conv_widths(SSLGAN((1, 28, 28), 3).disc) == [32, 64, 64, 64]
    assert conv_widths(SSLGAN((3, 32, 32), 3).disc) == [16, 32, 32, 32]
    assert conv_widths(SSLGAN((1, 40, 40), 3).disc) == [16, 32, 32, 32]
    assert conv_widths(SSLGAN((1, 28, 28), 3, config=SSLGAN.Config(conv_width=8)).disc) == [8, 16, 16, 16]
    # The generator has its own width (4x and 2x it), the same for every image kind.
    for shape in [(1, 28, 28), (3, 32, 32)]:
        convs = [m for m in SSLGAN(shape, 3).gen.modules() if hasattr(m, "in_channels")]
        assert [m.in_channels for m in convs] == [64, 32]


def _classifier_width(model) -> int:
    return next(
        m for m in model.modules["net"].cls_features.modules() if isinstance(m, torch.nn.Conv2d)
    ).out_channels


def test_m2_classifier_width_is_a_setting():
    """16 by default, every image kind; `classifier_width` (32 measured better in long runs on
    Fashion-MNIST, README) reaches q(y|x) and not the generative networks."""
    assert _classifier_width(M2((1, 28, 28), 3)) == 16 and _classifier_width(M2((3, 16, 16), 3)) == 16
    wide = M2((3, 16, 16), 3, config=M2.Config(classifier_width=32, conv_width=4, thumbnail=0))
    assert _classifier_width(wide) == 32
    encoder = [
        m.out_channels for m in wide.modules["net"].enc_features.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    assert encoder == [4, 8, 16]  # conv_width 4: the VAE's own widths


def test_m2_classifier_follows_the_image_size():
    # q(y|x) is the invariant conv classifier from 28x28 grey up (measured better on
    # Fashion-MNIST, m2.default_classifier_arch) and for colour; the paper's MLP below.
    assert M2((1, 8, 8), 3).classifier_arch == "mlp"
    assert M2((1, 20, 20), 3).classifier_arch == "mlp"
    assert M2((1, 28, 28), 3).classifier_arch == "conv" and M2((3, 8, 8), 3).classifier_arch == "conv"
    assert isinstance(M2((1, 28, 28), 3).modules["net"].cls_features, PooledConvFeatures)
    papers = M2((1, 28, 28), 3, config=M2.Config(classifier_arch="mlp"))
    assert papers.classifier_arch == "mlp" and not isinstance(
        papers.modules["net"].cls_features, PooledConvFeatures
    )
    # The generative side keeps the paper's MLPs at 28x28 grey.
    assert not isinstance(M2((1, 28, 28), 3).modules["net"].enc_features, ConvFeatures)
