"""Augmentations, the consistency term, the EMA teacher and the invariant conv backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from labeler.models import Budget, augment, load_checkpoint, nets, save_checkpoint
from tests.models.test_registry import SMALL, make, model_class, tiny_data


def test_fixmatch_loss_against_hand_computed_values():
    teacher = torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 5.0]])  # confident 0, unsure, confident 1
    student = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    loss, share = augment.fixmatch_loss(student, teacher, threshold=0.95)
    # rows 1 and 3 pass (softmax max 0.99995 and 0.9933); row 2 (0.5) does not
    expected = (math.log(2) + (math.log(1 + math.e) - 0.0)) / 3  # CE(0 | [0, 0]) + CE(1 | [1, 0])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert share.item() == pytest.approx(2 / 3)
    student.requires_grad_(True)
    loss, _ = augment.fixmatch_loss(student, teacher, 0.95)
    loss.backward()
    assert student.grad[1].abs().sum() == 0  # the unsure row teaches nothing


def test_ema_update_moves_weights_and_copies_batchnorm_statistics():
    student, teacher = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
        student.running_mean.fill_(3.0)
    augment.ema_update(teacher, student, decay=0.9)
    assert torch.allclose(teacher.weight, torch.full((2,), 0.1))
    assert torch.equal(teacher.running_mean, student.running_mean)


def test_frozen_batchnorm_keeps_a_batch_out_of_the_statistics_but_passes_gradients():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = net[1].running_mean.clone()
    x = torch.randn(8, 3) * 10 + 5
    with augment.frozen_batchnorm(net):
        net(x).sum().backward()
    assert torch.equal(net[1].running_mean, before)
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    assert net[1].training  # restored
    net(x)
    assert not torch.equal(net[1].running_mean, before)  # outside, statistics update as usual


def test_weak_views_of_small_grey_images_are_integer_shifts_of_at_most_one_pixel():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    out = augment.weak(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):
        shifts = [padded[i, :, 1 + dy : 9 + dy, 1 + dx : 9 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.allclose(out[i], s, atol=1e-5) for s in shifts)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 40, 40)])
def test_views_keep_shape_and_range_and_differ_from_the_input(shape):
    torch.manual_seed(0)
    x = torch.rand(16, *shape)
    for view in (augment.weak, augment.strong):
        out = view(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert not torch.allclose(out, x)


def test_the_data_kinds():
    assert augment.kind((1, 8, 8)) == augment.kind((1, 28, 28)) == "grey"
    assert augment.kind((3, 32, 32)) == augment.kind((1, 64, 64)) == "colour"


def test_the_classifier_backbone_ignores_brightness_contrast_and_colour_cast():
    torch.manual_seed(0)
    net = nets.PooledConvFeatures((3, 32, 32), 8).eval()
    x = torch.rand(4, 3, 32, 32) * 0.5
    cast = torch.tensor([0.1, 0.3, 0.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(net(1.7 * x + cast).numpy(), net(x).numpy(), atol=2e-3)


def test_colour_classifiers_use_the_invariant_backbone():
    from labeler.models.baselines import Supervised
    from labeler.models.m2 import M2
    from labeler.models.sslgan import SSLGAN

    assert isinstance(M2((3, 32, 32), 3).modules["net"].cls_features, nets.PooledConvFeatures)
    assert isinstance(Supervised((3, 32, 32), 3).modules["net"].features, nets.PooledConvFeatures)
    assert isinstance(SSLGAN((3, 32, 32), 3).disc.body[0], nets.PerImageNorm)
    assert not isinstance(
        SSLGAN((3, 32, 32), 3, config=SSLGAN.Config(conv_invariant=False)).disc.body[0], nets.PerImageNorm
    )
    assert isinstance(M2((1, 8, 8), 3).modules["net"].cls_features, nn.Sequential)  # MLP as before


def consistent(name, shape, consistency=True):
    cls = model_class(name)
    fields = cls.Config.__dataclass_fields__
    config = cls.Config(**{k: v for k, v in SMALL.items() if k in fields}, consistency=consistency)
    return cls(shape, 3, config=config, seed=0)


@pytest.mark.parametrize("name", ["m2", "sslgan", "badgan"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_consistency_trains_and_the_export_is_the_plain_teacher(name, shape, tmp_path):
    x, idx, labels = tiny_data(shape=shape, n=24)
    model = consistent(name, shape)
    seen = []
    losses = model.fit(x, idx, labels, Budget(steps=4), progress=lambda p: seen.append(p.losses) and False)
    assert "consistency" in seen[-1] or "cons" in seen[-1]
    assert all(np.isfinite(v) for v in losses.values())
    module = model.classifier_module().eval()
    with torch.no_grad():
        a = module(torch.as_tensor(x)).numpy()
        b = module(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(a, b)  # no augmentation or noise left in the export
    np.testing.assert_allclose(a, model.predict_proba(x), atol=1e-5)
    scripted = torch.jit.trace(module, torch.as_tensor(x[:4]))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(torch.as_tensor(x)).numpy(), a, atol=1e-5)
    path = save_checkpoint(model, tmp_path / "m.pt")
    torch.load(path, weights_only=True)
    np.testing.assert_array_equal(load_checkpoint(path).predict_proba(x), model.predict_proba(x))


def test_m2_predicts_with_the_teacher_which_trails_the_student():
    shape = (1, 8, 8)
    x, idx, labels = tiny_data(shape=shape, n=24)
    model = consistent("m2", shape)
    model.fit(x, idx, labels, Budget(steps=30))
    net, teacher = model.modules["net"], model.modules["teacher"]
    student_w, teacher_w = net.cls_out.weight, teacher[1].weight
    assert not torch.equal(student_w, teacher_w)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        expected = torch.softmax(teacher.eval()(xt), 1).numpy()
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["m2", "sslgan"])  # supervised shares M2's backbone
def test_colour_classifiers_export_as_torchscript_and_onnx(name, tmp_path):
    import onnxruntime

    from labeler.export import write_onnx

    shape = (3, 32, 32)
    x, idx, labels = tiny_data(shape=shape, n=12)
    cls = model_class(name)
    fields = cls.Config.__dataclass_fields__
    extra = {"consistency": True} if "consistency" in fields else {}
    model = cls(shape, 3, config=cls.Config(**{k: v for k, v in SMALL.items() if k in fields}, **extra))
    model.fit(x, idx, labels, Budget(steps=2))
    module = model.classifier_module().eval()
    expected = model.predict_proba(x)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.script(module)(torch.as_tensor(x)).numpy(), expected, atol=1e-5)
    path = write_onnx(module, shape, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path))
    np.testing.assert_allclose(session.run(None, {"images": x})[0], expected, atol=1e-4)


@pytest.mark.parametrize("name", ["m2", "sslgan", "badgan"])
def test_consistency_is_the_default_and_can_be_switched_off(name):
    assert model_class(name).Config().consistency is True
    x, idx, labels = tiny_data(n=24)
    model = consistent(name, (1, 8, 8), consistency=False)
    seen = []
    model.fit(x, idx, labels, Budget(steps=3), progress=lambda p: seen.append(p.losses) and False)
    assert not {"consistency", "cons"} & set(seen[-1])
    assert "teacher" not in model.modules


def test_the_supervised_baseline_augments_colour_images_only(monkeypatch):
    from labeler.models.baselines import Supervised

    calls = []
    real = augment.weak
    monkeypatch.setattr(augment, "weak", lambda x, generator: calls.append(x.shape) or real(x, generator))
    for shape in [(1, 8, 8), (3, 32, 32)]:
        x, idx, labels = tiny_data(shape=shape, n=12)
        Supervised(shape, 3, config=Supervised.Config(hidden=[8])).fit(x, idx, labels, Budget(steps=2))
    assert calls and all(s[1:] == (3, 32, 32) for s in calls)


def test_an_m2_checkpoint_from_before_the_teacher_still_loads_and_predicts_the_same(tmp_path):
    x, idx, labels = tiny_data(n=24)
    old = consistent("m2", (1, 8, 8), consistency=False)
    old.fit(x, idx, labels, Budget(steps=3))
    state = old.state()
    for key in ("consistency", "consistency_weight", "threshold", "ema", "conv_width", "conv_batch"):
        del state["config"][key]  # the settings such a checkpoint never had
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config.consistency is False  # rebuilt as it was trained
    np.testing.assert_allclose(loaded.predict_proba(x), old.predict_proba(x), atol=1e-6)


@pytest.mark.parametrize("name", ["sslgan", "badgan"])
def test_a_colour_gan_checkpoint_from_before_the_invariant_discriminator_still_loads(name, tmp_path):
    shape = (3, 32, 32)
    x, idx, labels = tiny_data(shape=shape, n=12)
    cls = model_class(name)
    fields = cls.Config.__dataclass_fields__
    small = {k: v for k, v in SMALL.items() if k in fields}
    old = cls(shape, 3, config=cls.Config(**small, conv_invariant=False, consistency=False))
    old.fit(x, idx, labels, Budget(steps=2))
    state = old.state()
    del state["config"]["conv_invariant"], state["config"]["consistency"]
    torch.save(state, tmp_path / "old.pt")
    np.testing.assert_allclose(
        load_checkpoint(tmp_path / "old.pt").predict_proba(x), old.predict_proba(x), atol=1e-6
    )


def test_the_polarity_invariant_backbones_see_an_image_and_its_negative_alike():
    from labeler.models.base import Randomness, attach, init_parameters
    from labeler.models.sslgan import ConvDiscriminator, data_dependent_init

    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    net = nets.PooledConvFeatures((3, 32, 32), 8).eval()
    plain = nets.PooledConvFeatures((3, 32, 32), 8, polarity_invariant=False).eval()
    disc = attach(ConvDiscriminator(3, 4, 3, input_noise=0.1, dropout=0.0), Randomness(0, "cpu"))
    init_parameters(disc, torch.Generator().manual_seed(0))  # as SSLGAN.build does
    data_dependent_init(disc, torch.rand(8, 3, 32, 32))
    disc.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(1 - x).numpy(), net(x).numpy(), atol=1e-4)
        np.testing.assert_allclose(disc(1 - x)[0].numpy(), disc(x)[0].numpy(), atol=1e-4)
        assert not torch.allclose(plain(1 - x), plain(x), atol=1e-2)


def test_the_grey_thumbnail_by_hand():
    x = torch.zeros(1, 3, 4, 4)
    x[:, :, :2, :2] = 1.0  # one white quarter: the 2x2 thumbnail is (1, 0, 0, 0)
    thumb = nets.GreyThumbnail((3, 4, 4), 2)
    # mean 1/4, std sqrt(3)/4 (eps 0.01 adds 1e-4 to the variance): 0.5 + (v - mean) / (4 std)
    std = math.sqrt(3 / 16 + 1e-4)
    want = torch.tensor([[0.5 + 0.75 / (4 * std), 0.5 - 0.25 / (4 * std)], [0.5 - 0.25 / (4 * std)] * 2])
    out = thumb(x)
    assert out.shape == (1, 1, 2, 2) and thumb.output_shape() == (1, 2, 2)
    torch.testing.assert_close(out[0, 0], want)
    torch.testing.assert_close(
        thumb(0.3 * x + 0.2), out, atol=1e-2, rtol=0
    )  # brightness and contrast drop out


@pytest.mark.parametrize("name", ["m2", "supervised", "sslgan"])
def test_a_colour_checkpoint_from_before_the_polarity_invariant_backbone_still_loads(name, tmp_path):
    shape = (3, 32, 32)
    x, idx, labels = tiny_data(shape=shape, n=12)
    cls = model_class(name)
    fields = cls.Config.__dataclass_fields__
    before = {"polarity_invariant": False, "thumbnail": 0, "conv_alpha_scale": 0.1}
    before = {k: v for k, v in before.items() if k in fields}
    old = cls(shape, 3, config=cls.Config(**{k: v for k, v in SMALL.items() if k in fields}, **before))
    old.fit(x, idx, labels, Budget(steps=2))
    state = old.state()
    for key in before:
        del state["config"][key]  # the settings such a checkpoint never had
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert {k: getattr(loaded.config, k) for k in before} == before
    np.testing.assert_allclose(loaded.predict_proba(x), old.predict_proba(x), atol=1e-6)


def test_the_pixel_noise_of_grey_strong_views_is_a_setting_and_colour_keeps_its_own():
    x = torch.rand(64, 1, 28, 28) * 0.4 + 0.3
    quiet = augment.strong(x, torch.Generator().manual_seed(0), grey_noise=0.0)
    noisy = augment.strong(x, torch.Generator().manual_seed(0), grey_noise=0.1)
    torch.testing.assert_close(augment.strong(x, torch.Generator().manual_seed(0)), noisy)  # 0.1 the default
    inside = (noisy > 0) & (noisy < 1) & (quiet > 0) & (quiet < 1)
    diff = (noisy - quiet)[inside]
    assert diff.std().item() == pytest.approx(0.1, rel=0.05)  # the same views, only the noise differs
    assert abs(diff.mean().item()) < 0.01
    colour = torch.rand(8, 3, 32, 32)
    torch.testing.assert_close(
        augment.strong(colour, torch.Generator().manual_seed(0), grey_noise=0.0),
        augment.strong(colour, torch.Generator().manual_seed(0), grey_noise=0.1),
    )


@pytest.mark.parametrize(("config", "expected"), [({}, 0.0), ({"grey_noise": 0.1}, 0.1)])
def test_m2_passes_its_grey_noise_to_the_strong_views(config, expected, monkeypatch):
    seen = []
    real = augment.strong
    monkeypatch.setattr(
        augment, "strong", lambda x, g, grey_noise=99.0: seen.append(grey_noise) or real(x, g, grey_noise)
    )
    model = make("m2", **config)
    x, idx, labels = tiny_data(n=24)
    model.fit(x, idx, labels, Budget(steps=3))
    assert seen and set(seen) == {expected}
