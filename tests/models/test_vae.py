"""The VAE models' math against hand-computed values, and their training behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labeler.models import Budget, TrainingDiverged, augment, load_checkpoint, nets, save_checkpoint
from labeler.models import m2 as m2_module
from labeler.models.base import Randomness, attach
from labeler.models.m1 import M1, VAE, balanced_argmax, fit_linear_head
from labeler.models.m1m2 import M1M2
from labeler.models.m2 import CONV_LR, GREY_LR, M2, M2Net, default_classifier_arch, m2_loss, unlabeled_bound


def zero_(module: torch.nn.Module) -> torch.nn.Module:
    """All weights, biases and batch-norm scales to zero: every layer outputs 0."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def test_bernoulli_log_prob_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    x = torch.tensor([[1.0, 0.25]])
    s = 1 / (1 + math.exp(-2.0))
    want = math.log(0.5) + 0.25 * math.log(s) + 0.75 * math.log(1 - s)
    assert nets.bernoulli_log_prob(logits, x).item() == pytest.approx(want, rel=1e-6)


def test_kl_and_gaussian_log_prob_by_hand():
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    # KL(N(1, 1) || N(0, 1)) = 1/2;  KL(N(0, 4) || N(0, 1)) = (4 - 1 - log 4) / 2
    assert nets.kl_std_normal(mu, logvar).item() == pytest.approx(0.5 + (3 - math.log(4)) / 2, rel=1e-6)
    x = torch.tensor([[2.0, 2.0]])
    want = -0.5 * (math.log(2 * math.pi) + 1) - 0.5 * (math.log(2 * math.pi) + math.log(4) + 4 / 4)
    assert nets.gaussian_log_prob(x, mu, logvar).item() == pytest.approx(want, rel=1e-6)


def test_unlabeled_bound_by_hand():
    # q = (0.25, 0.75): U = 0.25 * 10 + 0.75 * 20 + 0.25 log 0.25 + 0.75 log 0.75
    neg = torch.tensor([[10.0, 20.0]])
    logits = torch.tensor([[0.0, math.log(3.0)]])
    want = 0.25 * 10 + 0.75 * 20 + 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    assert unlabeled_bound(neg, logits).item() == pytest.approx(want, rel=1e-6)


def test_m2_objective_by_hand_on_a_zero_network():
    """With every weight zero: p(x|y,z) = Bernoulli(1/2), q(z|x,y) = N(0, I), q(y|x) uniform, so
    L(x, y) = D log 2 + log K, U(x) = D log 2, -log q(y|x) = log K, whatever x and z are."""
    k, d, n_l, n_u, alpha = 3, 64, 5, 15, 2.0
    net = attach(zero_(M2Net((1, 8, 8), k, latent_dim=4, hidden=[16])), Randomness(0, "cpu")).train()
    xl, xu = torch.rand(4, 1, 8, 8), torch.rand(6, 1, 8, 8)
    yl = torch.tensor([0, 1, 2, 1])
    loss, parts = m2_loss(net, xl, yl, xu, n_l, n_u, alpha)
    lab, unl, ce = d * math.log(2) + math.log(k), d * math.log(2), math.log(k)
    want = (n_l * (lab + alpha * ce) + n_u * unl) / (n_l + n_u)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert parts["labeled_neg_elbo"] == pytest.approx(lab, rel=1e-5)
    assert parts["unlabeled_bound"] == pytest.approx(unl, rel=1e-5)


def test_m2_objective_on_a_colour_image_counts_the_thumbnail_pixels():
    """The same zero network on 3x32x32 images with a 16x16 grey thumbnail: p(x|y,z) models the
    thumbnail's 256 values, so L = 256 log 2 + log K and U = 256 log 2."""
    k, d, n_l, n_u, alpha = 4, 256, 5, 15, 2.0
    net = M2Net((3, 32, 32), k, latent_dim=4, hidden=[16], conv_width=4, thumbnail=16, gen_hidden=[8])
    net = attach(zero_(net), Randomness(0, "cpu")).train()
    xl, xu = torch.rand(4, 3, 32, 32), torch.rand(6, 3, 32, 32)
    loss, parts = m2_loss(net, xl, torch.tensor([0, 1, 2, 3]), xu, n_l, n_u, alpha)
    lab, unl, ce = d * math.log(2) + math.log(k), d * math.log(2), math.log(k)
    assert loss.item() == pytest.approx((n_l * (lab + alpha * ce) + n_u * unl) / (n_l + n_u), rel=1e-5)
    assert parts["labeled_neg_elbo"] == pytest.approx(lab, rel=1e-5)


def test_m2net_auto_classifier_is_m2s_rule():
    """M2Net's own "auto" q(y|x) is `default_classifier_arch`: convolutional at 28x28 grey (where
    nets.use_conv alone says MLP), the MLP on 8x8 grey, convolutional on colour."""
    for shape, conv in (((1, 28, 28), True), ((1, 8, 8), False), ((3, 32, 32), True)):
        net = M2Net(shape, 3, latent_dim=4, hidden=[16], conv_width=4, thumbnail=16 if shape[0] == 3 else 0)
        assert isinstance(net.cls_features, nets.PooledConvFeatures) is conv, shape
        assert (default_classifier_arch(shape) == "conv") is conv, shape


def test_m1_elbo_by_hand_on_a_zero_network():
    vae = attach(zero_(VAE((1, 8, 8), latent_dim=3, hidden=[8])), Randomness(0, "cpu")).train()
    elbo = vae.elbo(torch.rand(5, 1, 8, 8))
    np.testing.assert_allclose(elbo.detach().numpy(), -64 * math.log(2), rtol=1e-5)


def test_linear_head_folds_the_scaling_into_its_weights():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 4)).astype(np.float32) * [1, 2, 0.1, 1] + 5
    y = (z[:, 0] > 5).astype(int) + 2 * (z[:, 1] > 5)
    w, b = fit_linear_head(z, y, num_classes=5, c=100.0, seed=0)
    assert w.shape == (5, 4) and (b[4] < -10)  # class 4 never labeled: never predicted
    assert ((z @ w.T + b).argmax(1) == y).mean() > 0.9


def test_transductive_head_moves_the_boundary_into_the_gap():
    # Two equal clusters at z0 = -2 and +2; the class-1 label sits at the gap's edge (z0 = 0), so
    # the labeled-only boundary (z0 = -1) cuts into class 0. The balance constraint of the
    # transductive refits (half of the unlabeled points per class) moves it to the gap.
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    z = np.stack([np.where(y == 1, 2.0, -2.0) + rng.normal(0, 1, 400), rng.normal(0, 1, 400)], 1)
    zl, yl = np.array([[-2.0, 0.0], [0.0, 0.0]]), np.array([0, 1])
    accuracy = lambda wb: ((z @ wb[0].T + wb[1]).argmax(1) == y).mean()
    plain = accuracy(fit_linear_head(zl, yl, 2, c=1.0, seed=0))
    transductive = accuracy(fit_linear_head(zl, yl, 2, c=1.0, seed=0, z_unlabeled=z, rounds=5))
    assert plain < 0.94 and transductive > 0.97


def test_balanced_argmax_follows_the_class_shares():
    # every row prefers class 0, but about half must go to class 1: the rows that like it most
    # (Sinkhorn balances the soft masses, so the hard counts are close, not exact)
    p1 = np.linspace(0.05, 0.45, 10)
    labels = balanced_argmax(np.stack([1 - p1, p1], 1), np.array([0.5, 0.5]))
    assert np.all(np.diff(labels) >= 0) and 4 <= labels.sum() <= 6


def test_nan_loss_raises_a_clear_error():
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    model = M2((1, 8, 8), 2, config=M2.Config(hidden=[8], latent_dim=2), seed=0)
    with torch.no_grad():
        next(model.modules["net"].parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged):
        model.fit(x, np.arange(4), np.array([0, 1, 0, 1]), Budget(steps=2))


def two_blobs(n=60, seed=0):
    """Dark vs bright 8x8 images: easy classes for a learning check."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.clip(rng.random((n, 1, 8, 8)) * 0.4 + 0.5 * y[:, None, None, None], 0, 1).astype(np.float32)
    return x, y


@pytest.mark.parametrize("cls", [M1, M2, M1M2])
def test_learns_two_easy_classes_from_four_labels(cls):
    x, y = two_blobs()
    small = {"hidden": [32]} if cls is not M1M2 else {"hidden": [32], "m1_hidden": [32], "m1_latent_dim": 8}
    model = cls((1, 8, 8), 2, config=cls.Config(**small), seed=0)
    model.fit(x, np.arange(4), y[:4], Budget(steps=150))
    assert (model.predict_proba(x).argmax(1) == y).mean() >= 0.9


def test_m2_samples_one_image_set_per_class():
    model = M2((1, 8, 8), 3, config=M2.Config(hidden=[8], latent_dim=2), seed=0)
    s = model.sample_images(n_per_class=4)
    assert s.shape == (3, 4, 1, 8, 8) and 0 <= s.min() and s.max() <= 1


def test_m1_mc_proba_varies_with_the_sampled_code():
    x, y = two_blobs(n=20)
    model = M1((1, 8, 8), 2, config=M1.Config(hidden=[16], latent_dim=4), seed=0)
    model.fit(x, np.arange(4), y[:4], Budget(steps=5))
    mc = model.mc_proba(x, samples=5)
    assert mc.shape == (5, 20, 2)
    np.testing.assert_allclose(mc.sum(-1), 1.0, atol=1e-5)
    assert mc.std(0).max() > 0


def test_m2_learning_rate_falls_over_each_fit_with_lr_decay():
    """lr_decay = 0.5: full rate for the first half of the budget, then linearly towards 0; a
    warm-started fit begins at the full rate again. lr_decay = 0: the rate never moves."""
    x, y = two_blobs()
    for lr_decay, after_ten in ((0.5, 0.2), (0.0, 1.0)):
        config = M2.Config(hidden=[16], lr=0.01, lr_decay=lr_decay)
        model = M2((1, 8, 8), 2, config=config, seed=0)
        model.fit(x, np.arange(4), y[:4], Budget(steps=10))
        (group,) = model.optimizers["net"].param_groups
        assert group["lr"] == pytest.approx(0.01 * after_ten)  # set before step 10 of 10: (1 - 0.9) / 0.5
        model.fit(x, np.arange(4), y[:4], Budget(steps=1))
        assert group["lr"] == pytest.approx(0.01)


def test_an_m2_checkpoint_from_before_the_decay_keeps_its_constant_rate(tmp_path):
    """Checkpoints written before lr_decay existed go on training as they were trained: their
    own rate (a number then, on every kind of image), constant."""
    from labeler.models import load_checkpoint

    for shape in ((1, 8, 8), (3, 32, 32)):
        model = M2(shape, 2, config=M2.Config(hidden=[16], lr=5e-4))
        state = model.state()
        del state["config"]["lr_decay"]
        torch.save(state, tmp_path / "old.pt")
        loaded = load_checkpoint(tmp_path / "old.pt")
        assert (loaded.config.lr, loaded.config.lr_decay) == (5e-4, 0.0)
        assert loaded.optimizers["net"].param_groups[0]["lr"] == 5e-4
    assert M2.Config().lr_decay > 0  # while new models decay


@pytest.mark.parametrize(
    ("shape", "lr", "expected"),
    [
        ((1, 8, 8), None, GREY_LR),
        ((3, 32, 32), None, CONV_LR),
        ((3, 32, 32), 1e-4, 1e-4),
        ((1, 8, 8), 1e-4, 1e-4),
    ],
)
def test_m2_trains_at_the_rate_for_its_images_unless_one_is_set(shape, lr, expected):
    x = np.random.default_rng(0).random((12, *shape)).astype(np.float32)
    y = np.arange(12) % 2
    config = M2.Config(hidden=[16], lr=lr, lr_decay=0.0, conv_width=4, conv_batch=4)
    model = M2(shape, 2, config=config, seed=0)
    (group,) = model.optimizers["net"].param_groups
    assert group["lr"] == expected
    model.fit(x, np.arange(4), y[:4], Budget(steps=2))
    assert group["lr"] == expected


def test_m2_starts_each_fit_at_the_full_rate_and_m1m2_keeps_a_constant_one():
    """Whatever rate the optimizer holds (a decayed one from the last fit, an old checkpoint's),
    a fit starts at the setting's; M1+M2 trains its M2 at a constant rate."""
    x, y = two_blobs()
    model = M2((1, 8, 8), 2, config=M2.Config(hidden=[16], lr=0.01, lr_decay=0.0), seed=0)
    (group,) = model.optimizers["net"].param_groups
    group["lr"] = 1e-6
    model.fit(x, np.arange(4), y[:4], Budget(steps=1))
    assert group["lr"] == 0.01
    stacked = M1M2((1, 8, 8), 2, config=M1M2.Config(hidden=[16], m1_hidden=[16], m1_latent_dim=4), seed=0)
    stacked.fit(x, np.arange(4), y[:4], Budget(steps=20))
    assert stacked.optimizers["net"].param_groups[0]["lr"] == stacked.config.lr


@pytest.mark.parametrize("recorded", [True, False])
def test_a_28x28_m2_checkpoint_from_before_the_conv_default_loads_as_the_mlp_it_was(recorded, tmp_path):
    """Such a checkpoint was saved with classifier_arch "auto", which built the MLP q(y|x) at
    28x28 grey then: it loads and predicts as trained."""
    shape = (1, 28, 28)
    x = np.random.default_rng(0).random((12, *shape)).astype(np.float32)
    idx, labels = np.arange(6), np.arange(6) % 3
    old = M2(shape, 3, config=M2.Config(classifier_arch="mlp"), seed=0)
    old.fit(x, idx, labels, Budget(steps=2))
    state = old.state()
    state["config"]["classifier_arch"] = "auto"
    if not recorded:  # what it built not in the checkpoint: "auto"'s old rule decides
        del state["extra"]["classifier_arch"]
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.classifier_arch == "mlp" and loaded.config.classifier_arch == "mlp"
    np.testing.assert_array_equal(loaded.predict_proba(x), old.predict_proba(x))


@pytest.mark.parametrize(
    ("shape", "arch", "recorded"),
    [
        ((1, 28, 28), "conv", True),
        ((1, 8, 8), "mlp", True),
        ((1, 8, 8), "mlp", False),
        ((3, 16, 16), "conv", True),
        ((3, 16, 16), "conv", False),
    ],
)
def test_an_m2_checkpoint_whose_auto_still_builds_the_same_keeps_auto(shape, arch, recorded, tmp_path):
    """Only a checkpoint whose "auto" built something else is pinned: today's 28x28 ones, and
    those of every other image kind, recorded or not (the rule is unchanged there), keep "auto"."""
    config = M2.Config(hidden=[16], conv_width=4, conv_batch=4)
    save_checkpoint(M2(shape, 3, config=config, seed=0), tmp_path / "m2.pt")
    if not recorded:  # as saved before the q(y|x) built was recorded: the old rule decides
        state = torch.load(tmp_path / "m2.pt", weights_only=True)
        del state["extra"]["classifier_arch"]
        torch.save(state, tmp_path / "m2.pt")
    loaded = load_checkpoint(tmp_path / "m2.pt")
    assert loaded.config.classifier_arch == "auto" and loaded.classifier_arch == arch


@pytest.mark.parametrize(
    ("caps", "enabled", "want"),
    [
        ({"avx512_bf16": True}, True, torch.bfloat16),
        ({"amx_bf16": True}, True, torch.bfloat16),
        ({"avx2": True, "avx512_f": True}, True, torch.float32),  # bfloat16 would be emulated: slower
        ({"avx512_bf16": True}, False, torch.float32),
    ],
)
def test_mixed_precision_only_where_set_and_the_cpu_computes_bfloat16(monkeypatch, caps, enabled, want):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    with nets.mixed_precision(torch.device("cpu"), enabled):
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == want


@pytest.mark.parametrize(("arch", "mixed"), [("conv", True), ("conv", False), ("mlp", True)])
def test_m2_trains_in_bfloat16_where_set_with_float32_weights_losses_and_predictions(
    monkeypatch, arch, mixed
):
    """Mixed precision covers the step's passes through q(y|x) and the VAE where q(y|x) is
    convolutional (the MLP keeps float32); the bound, the losses, the weights and predictions
    stay float32, and the model still learns."""
    monkeypatch.setattr(nets, "fast_bf16", lambda device: True)  # as on a CPU with AVX512-BF16
    x, y = two_blobs()
    config = M2.Config(hidden=[32], classifier_arch=arch, classifier_width=4, mixed_precision=mixed)
    model = M2((1, 8, 8), 2, config=config, seed=0)
    net = model.modules["net"]
    seen: dict[str, set] = {k: set() for k in ("decoder", "classifier", "log_lik", "kl", "bound", "fixmatch")}
    net.decoder.register_forward_hook(lambda m, i, o: seen["decoder"].add(o.dtype))
    net.cls_out.register_forward_hook(lambda m, i, o: seen["classifier"].add(o.dtype))

    def record(name, owner, attr, result=False):
        """Wrap owner.attr so that the dtypes of its tensor arguments (or of its result) go to seen[name]."""
        original = getattr(owner, attr)

        def recorded(*args):
            out = original(*args)
            seen[name].update(t.dtype for t in ([out] if result else args) if isinstance(t, torch.Tensor))
            return out

        monkeypatch.setattr(owner, attr, recorded)

    record("log_lik", net, "log_lik", result=True)
    record("kl", nets, "kl_std_normal")
    record("bound", m2_module, "unlabeled_bound")  # the entropy of q(y|x) and the bound
    record("fixmatch", augment, "fixmatch_loss")  # the teacher's 0.95 threshold
    parts = model.fit(x, np.arange(4), y[:4], Budget(steps=150))
    half = torch.bfloat16 if mixed and arch == "conv" else torch.float32
    f32 = {torch.float32}
    want = {"decoder": {half}, "classifier": {half}, "log_lik": f32, "kl": f32, "bound": f32, "fixmatch": f32}
    assert seen == want
    assert all(math.isfinite(v) for v in parts.values())
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    proba = model.predict_proba(x)
    assert proba.dtype == np.float32 and np.isfinite(proba).all()
    assert (proba.argmax(1) == y).mean() > 0.9


def test_m2_checkpoints_from_before_mixed_precision_trained_in_float32_and_m1m2_keeps_it(tmp_path):
    model = M2((1, 8, 8), 2, config=M2.Config(hidden=[16]))
    state = model.state()
    del state["config"]["mixed_precision"]
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").config.mixed_precision is False
    assert M2.Config().mixed_precision is True  # while new models train in bfloat16 where it is fast
    assert M1M2.Config().m2().mixed_precision is False


def test_augmented_views_are_float32_and_the_same_under_mixed_precision():
    """The views are image data, not a network pass: an autocast sampling grid in bfloat16 moved
    the weak view's integer shifts by up to 0.07 in pixel value."""
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = [view(x, torch.Generator().manual_seed(1)) for view in (augment.weak, augment.strong)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = [view(x, torch.Generator().manual_seed(1)) for view in (augment.weak, augment.strong)]
    for a, b in zip(plain, mixed, strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
