"""Tests of the semi-supervised GANs (sslgan, badgan): smoke, save/load, loss terms, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labeler.models import (
    MODELS,
    Budget,
    TrainingCancelled,
    TrainingDiverged,
    load_checkpoint,
    save_checkpoint,
)
from labeler.models.badgan import conditional_entropy, density_penalty, pull_away_term
from labeler.models.sslgan import feature_matching_loss, supervised_loss, unsupervised_loss
from labeler.runspec import RunSpec
from labeler.train import train_model

GANS = ["sslgan", "badgan"]
SMALL_MLP = {"d_hidden": (32, 16), "g_hidden": (32,), "z_dim": 8, "batch_size": 16}
SMALL_CONV = {"conv_width": 4, "gen_width": 4, "z_dim": 8, "conv_batch_size": 8}


def tiny_data(shape=(1, 8, 8), n=40, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    labeled_idx = np.arange(6)
    labels = np.arange(6) % k
    return x, labeled_idx, labels


def make(name, shape=(1, 8, 8), k=3, **overrides):
    cls = MODELS[name]
    small = SMALL_MLP if shape[0] == 1 and shape[1] * shape[2] <= 784 else SMALL_CONV
    return cls(shape, k, config=cls.Config(**{**small, **overrides}), seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", GANS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 10)])
def test_smoke(name, shape):
    x, idx, labels = tiny_data(shape)
    model = make(name, shape)
    reports = []
    losses = model.fit(x, idx, labels, Budget(steps=5), progress=lambda p: reports.append(p))
    assert losses["steps"] == 5
    assert all(math.isfinite(v) for v in losses.values())
    assert {"sup", "unsup", "fm"} <= set(losses)
    proba = model.predict_proba(x)
    assert proba.shape == (len(x), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert model.embed(x).shape[0] == len(x)
    mc = model.mc_proba(x[:7], samples=4)
    assert mc.shape == (4, 7, 3)
    assert not np.allclose(mc[0], mc[1]), "MC passes should differ: the noise is on"
    images = model.sample_images(5)
    assert images.shape == (1, 5, *shape)
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("name", GANS)
def test_no_labels_and_missing_classes(name):
    x, _, _ = tiny_data()
    model = make(name, k=4)
    losses = model.fit(x, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), Budget(steps=3))
    assert "sup" not in losses and math.isfinite(losses["unsup"])
    # labels for classes 0 and 1 only out of 4
    losses = model.fit(x, np.arange(4), np.array([0, 1, 0, 1]), Budget(steps=3))
    assert math.isfinite(losses["sup"])


def test_warm_start_continues_from_weights():
    x, idx, labels = tiny_data()
    model = make("sslgan")
    model.fit(x, idx, labels, Budget(steps=3))
    weights = model.disc.head[-1].v.detach().clone()
    model.fit(x, idx, labels, Budget(steps=0))
    torch.testing.assert_close(model.disc.head[-1].v, weights)  # no re-initialization
    model.fit(x, idx, labels, Budget(steps=2))
    assert not torch.equal(model.disc.head[-1].v, weights)


def test_ema_averages_the_discriminator():
    x, idx, labels = tiny_data()
    model = make("sslgan", ema=0.5)
    model.fit(x, idx, labels, Budget(steps=4))
    assert model.classifier is model.modules["disc_ema"]
    v_ema, v = model.classifier.head[-1].v, model.disc.head[-1].v
    assert not torch.equal(v_ema, v)
    assert torch.allclose(v_ema, v, atol=0.5)


def test_cancel_and_divergence():
    x, idx, labels = tiny_data()
    model = make("sslgan", progress_every_s=0.0)
    with pytest.raises(TrainingCancelled):
        model.fit(x, idx, labels, Budget(steps=50), progress=lambda p: True)
    x_bad = x.copy()
    x_bad[:] = np.nan
    with pytest.raises(TrainingDiverged):
        make("sslgan").fit(x_bad, idx, labels, Budget(steps=3))


@pytest.mark.parametrize("name", GANS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 10)])
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_save_load_round_trip(name, shape, ema, tmp_path):
    x, idx, labels = tiny_data(shape)
    model = make(name, shape, ema=ema)
    model.fit(x, idx, labels, Budget(steps=3))
    path = save_checkpoint(model, tmp_path / "gan.pt")
    loaded = load_checkpoint(path)  # uses weights_only=True
    assert type(loaded) is type(model) and loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.embed(x), model.embed(x))
    np.testing.assert_array_equal(loaded.sample_images(4, seed=1), model.sample_images(4, seed=1))


@pytest.mark.parametrize("recorded", [True, False])
def test_a_28x28_checkpoint_from_before_the_conv_default_loads_as_the_mlp_it_was(recorded, tmp_path):
    # Such a checkpoint was saved with arch "auto", which built the MLP at 28x28 grey then.
    shape = (1, 28, 28)
    x, idx, labels = tiny_data(shape, n=12)
    old = MODELS["sslgan"](shape, 3, config=MODELS["sslgan"].Config(arch="mlp"), seed=0)  # else the defaults
    old.fit(x, idx, labels, Budget(steps=2))
    state = old.state()
    state["config"]["arch"] = "auto"
    if not recorded:  # the discriminator it built not in the checkpoint: "auto"'s old rule decides
        del state["extra"]["arch"]
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.arch == "mlp" and loaded.config.arch == "mlp"
    np.testing.assert_array_equal(loaded.predict_proba(x), old.predict_proba(x))
    # The next run with the defaults trains the conv discriminator afresh, and says so.
    notes: list[str] = []
    spec = RunSpec("sslgan", steps=1)
    model = train_model(spec, x, idx, labels, 3, warm_start=tmp_path / "old.pt", notes=notes)
    assert model.arch == "conv"
    assert notes == ["The model settings changed since the previous run; trained from scratch."]


def test_a_current_28x28_checkpoint_warm_starts_the_next_run(tmp_path):
    # Only a checkpoint whose "auto" built something else is pinned: today's continue.
    x, idx, labels = tiny_data((1, 28, 28), n=12)
    first = train_model(RunSpec("sslgan", steps=2), x, idx, labels, 3)
    path = save_checkpoint(first, tmp_path / "now.pt")
    assert load_checkpoint(path).config.arch == "auto"
    notes: list[str] = []
    model = train_model(RunSpec("sslgan", steps=1), x, idx, labels, 3, warm_start=path, notes=notes)
    assert notes == [] and model.arch == "conv" and model._steps == 3


def one_width_checkpoint(shape, width, tmp_path, **config):
    """A GAN checkpoint as saved before `gen_width`: one conv_width for both networks."""
    x, idx, labels = tiny_data(shape, n=12)
    cls = MODELS["sslgan"]
    old = cls(shape, 3, config=cls.Config(conv_width=width, gen_width=width, **config), seed=0)
    old.fit(x, idx, labels, Budget(steps=2))
    state = old.state()
    del state["config"]["gen_width"]
    torch.save(state, tmp_path / "old.pt")
    return old, (x, idx, labels)


def warm_start(x, idx, labels, path, **config):
    notes: list[str] = []
    model = train_model(
        RunSpec("sslgan", steps=1, config=config), x, idx, labels, 3, warm_start=path, notes=notes
    )
    return model, notes


def assert_same_model(loaded, old, x):
    np.testing.assert_array_equal(loaded.predict_proba(x), old.predict_proba(x))
    np.testing.assert_array_equal(loaded.sample_images(2, seed=1), old.sample_images(2, seed=1))


@pytest.mark.parametrize(("width", "widths"), [(16, (None, 16)), (8, (8, 8))])
def test_a_colour_checkpoint_from_before_gen_width_loads_and_warm_starts(width, widths, tmp_path):
    # 16 is what conv_width None builds on colour images; another width stays, for both networks.
    old, (x, idx, labels) = one_width_checkpoint((3, 10, 10), width, tmp_path)
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert (loaded.config.conv_width, loaded.config.gen_width) == widths
    assert_same_model(loaded, old, x)
    same = {} if width == 16 else {"conv_width": width, "gen_width": width}
    model, notes = warm_start(x, idx, labels, tmp_path / "old.pt", **same)
    assert notes == [] and model._steps == 3


def test_a_28x28_conv_checkpoint_from_before_the_wider_default_loads_as_trained(tmp_path):
    # 28x28 grey now defaults to width 32: the old width-16 checkpoint loads, predicts and
    # samples as it was trained, and the next run with the defaults starts afresh, saying why.
    old, (x, idx, labels) = one_width_checkpoint((1, 28, 28), 16, tmp_path)
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.arch == "conv" and (loaded.config.conv_width, loaded.config.gen_width) == (16, 16)
    assert_same_model(loaded, old, x)
    model, notes = warm_start(x, idx, labels, tmp_path / "old.pt")
    assert notes == ["The model settings changed since the previous run; trained from scratch."]
    assert model.disc.body[2].v.shape[0] == 32 and model._steps == 1


def test_an_mlp_checkpoint_from_before_gen_width_warm_starts_as_before(tmp_path):
    # The MLP built neither conv network: its widths, whatever they were, become today's
    # defaults, so the papers' form (arch=mlp) continues from it.
    old, (x, idx, labels) = one_width_checkpoint((1, 28, 28), 8, tmp_path, arch="mlp")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.arch == "mlp" and (loaded.config.conv_width, loaded.config.gen_width) == (None, 16)
    assert_same_model(loaded, old, x)
    model, notes = warm_start(x, idx, labels, tmp_path / "old.pt", arch="mlp")
    assert notes == [] and model._steps == 3


@pytest.mark.parametrize("name", GANS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 10)])
@pytest.mark.parametrize("ema", [0.0, 0.99])
def test_predict_and_embed_reads_the_images_once(name, shape, ema):
    x, idx, labels = tiny_data(shape)
    model = make(name, shape, ema=ema)
    model.fit(x, idx, labels, Budget(steps=2))
    passes = []
    hook = model.classifier.register_forward_hook(lambda *args: passes.append(1))
    probs, features = model.predict_and_embed(x)
    hook.remove()
    assert len(passes) == 1  # 40 images: one batch, one pass for both
    np.testing.assert_array_equal(probs, model.predict_proba(x))
    np.testing.assert_array_equal(features, model.embed(x))
    empty = model.predict_and_embed(x[:0])
    assert [len(a) for a in empty] == [0, 0]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 10)])
def test_classifier_module_scripts_and_matches(shape):
    x, idx, labels = tiny_data(shape)
    model = make("badgan", shape)
    model.fit(x, idx, labels, Budget(steps=3))
    scripted = torch.jit.script(model.classifier_module())
    out = scripted(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(out, model.predict_proba(x), atol=1e-5)


# -- loss terms against hand-computed values ----------------------------------------------------


def test_discriminator_losses_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]])  # Z = 4, 4
    labels = torch.tensor([1, 0])
    # p(y|x): [1/4, 3/4] and [1/2, 1/2] -> CE = (-log 3/4 - log 1/2) / 2
    expected_sup = (-math.log(0.75) - math.log(0.5)) / 2
    assert supervised_loss(logits, labels).item() == pytest.approx(expected_sup, rel=1e-6)
    # D(x) = Z / (Z + 1) = 4/5 for both real rows; a fake row with logits [0, 0]: Z = 2, D = 2/3
    fake = torch.tensor([[0.0, 0.0]])
    expected_unsup = -math.log(4 / 5) - math.log(1 - 2 / 3)
    assert unsupervised_loss(logits, fake).item() == pytest.approx(expected_unsup, rel=1e-6)
    # conditional entropy: H([1/4, 3/4]) and H([1/2, 1/2]) = log 2
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert conditional_entropy(logits).item() == pytest.approx((h1 + math.log(2)) / 2, rel=1e-6)


def test_generator_losses_by_hand():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1)
    assert feature_matching_loss(real, fake).item() == pytest.approx((1 + 4) / 2)
    # pull-away: cos between (1, 0) and (1, 1) = 1/sqrt 2, squared 1/2, two ordered pairs, / (2 * 3)
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert pull_away_term(features).item() == pytest.approx(2 * 0.5 / 6, rel=1e-6)


def test_density_penalty_pushes_fakes_away_from_data():
    torch.manual_seed(0)
    real = torch.rand(32, 16)
    on_data = real[:8].clone() + 0.001 * torch.randn(8, 16)
    far = torch.full((8, 16), 5.0)
    assert density_penalty(on_data, real, 0.1).item() > 0
    assert density_penalty(far, real, 0.1).item() == 0.0


def test_the_discriminator_dropout_drops_a_share_p_and_rescales_the_rest():
    from labeler.models.base import Dropout, Randomness, attach

    layer = attach(Dropout(0.25), Randomness(0, "cpu"))
    x = torch.ones(64, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    out = layer.train()(x)
    torch.testing.assert_close(out.unique(), torch.tensor([0.0, 4 / 3]))
    assert (out == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(layer.eval()(x), x)
