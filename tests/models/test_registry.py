"""Every registry entry: a smoke test, a save/load round trip, export, cancel and the no-label case."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from labeler.models import (
    DESCRIPTIONS,
    MODELS,
    Budget,
    TrainingCancelled,
    TrainingDiverged,
    load_checkpoint,
    save_checkpoint,
)

# Small networks so each test takes a fraction of a second on one core; keys a class lacks are dropped.
SMALL = {
    "hidden": [16],
    "latent_dim": 4,
    "batch_size": 8,
    "labeled_batch": 4,
    "unlabeled_batch": 8,
    "m1_hidden": [16],
    "m1_latent_dim": 6,
    "m1_batch_size": 8,
    "warmup_steps": 1,
    "d_hidden": (32, 16),
    "g_hidden": (32,),
    "z_dim": 8,
    "conv_width": 4,
    "gen_width": 4,
    "components": 5,
    "neighbors": 3,
}


def model_class(name):
    # A registry entry whose module is missing must fail here, never skip: CI would pass it.
    return MODELS[name]


def make(name, shape=(1, 8, 8), k=3, seed=0, **overrides):
    cls = model_class(name)
    fields = getattr(cls.Config, "__dataclass_fields__", {})
    small = {key: v for key, v in SMALL.items() if key in fields}
    return cls(shape, k, config=cls.Config(**{**small, **overrides}), seed=seed)


def tiny_data(shape=(1, 8, 8), n=40, k=3, labeled=9, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = (rng.random((n, *shape)) * 0.5 + 0.5 * (y[:, None, None, None] / (k - 1))).astype(np.float32)
    return x, np.arange(labeled), y[:labeled]


def test_registry_names_and_descriptions():
    expected = {
        "m1",
        "m2",
        "m1m2",
        "sslgan",
        "badgan",
        "supervised",
        "selftrain",
        "labelspread",
        "tsvm",
        "aae",
        "mtc",
        "pixelgan",
    }
    assert set(MODELS) == set(DESCRIPTIONS) == expected
    for name in expected:
        assert model_class(name).name == name


@pytest.mark.parametrize("name", list(MODELS))
def test_smoke_fit_predict_embed(name):
    x, idx, labels = tiny_data()
    model = make(name)
    seen = []
    losses = model.fit(x, idx, labels, Budget(steps=3), progress=lambda p: seen.append(p) and False)
    assert seen, "fit never reported progress"
    assert all(np.isfinite(v) for v in losses.values())
    p = model.predict_proba(x)
    assert p.shape == (40, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert (p >= 0).all()
    z = model.embed(x)
    assert z.ndim == 2 and len(z) == 40 and np.isfinite(z).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_and_embed_is_predict_proba_and_embed(name):
    x, idx, labels = tiny_data()
    model = make(name)

    def check():
        probs, features = model.predict_and_embed(x)
        np.testing.assert_array_equal(probs, model.predict_proba(x))
        np.testing.assert_array_equal(features, model.embed(x))

    check()  # before a fit: uniform probabilities beside the features
    model.fit(x, idx, labels, Budget(steps=3))
    check()
    assert [len(a) for a in model.predict_and_embed(x[:0])] == [0, 0]


@pytest.mark.parametrize("name", ["m2", "pixelgan"])
@pytest.mark.parametrize("consistency", [True, False])  # the EMA teacher predicts, or the net itself
def test_predict_and_embed_runs_the_classifier_body_once(name, consistency):
    """embed is q(y|x)'s body for these two: one pass of it gives both."""
    x, idx, labels = tiny_data()
    model = make(name, consistency=consistency)
    model.fit(x, idx, labels, Budget(steps=3))
    assert ("teacher" in model.modules) == consistency
    passes = []
    hook = model._classifier()[0].register_forward_hook(lambda *args: passes.append(1))
    probs, features = model.predict_and_embed(x)
    hook.remove()
    assert len(passes) == 1  # 40 images: one batch
    np.testing.assert_array_equal(probs, model.predict_proba(x))
    np.testing.assert_array_equal(features, model.embed(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_round_trip_and_warm_start(name, tmp_path):
    x, idx, labels = tiny_data()
    model = make(name)
    model.fit(x, idx, labels, Budget(steps=3))
    path = save_checkpoint(model, tmp_path / "model.pt")
    torch.load(path, weights_only=True)  # no pickled code inside
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.embed(x), model.embed(x))
    loaded.fit(x, np.arange(12), np.arange(12) % 3, Budget(steps=2))  # warm start with more labels
    np.testing.assert_allclose(loaded.predict_proba(x).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_classifier_module_matches_predict_proba(name):
    x, idx, labels = tiny_data()
    model = make(name)
    model.fit(x, idx, labels, Budget(steps=3))
    module = model.classifier_module()
    traced = torch.jit.trace(module, torch.as_tensor(x[:4]))
    with torch.no_grad():
        out = traced(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(out, model.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_cancel_raises(name):
    x, idx, labels = tiny_data()
    model = make(name)
    with pytest.raises(TrainingCancelled):
        model.fit(x, idx, labels, Budget(steps=50), progress=lambda p: True)


@pytest.mark.parametrize("name", list(MODELS))
def test_no_labels_and_some_classes(name):
    x, _, _ = tiny_data()
    model = make(name)
    model.fit(x, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), Budget(steps=2))
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    model.fit(x, np.arange(6), np.array([0, 2, 0, 2, 0, 2]), Budget(steps=2))  # class 1 never labeled
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.isfinite(p).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_colour_images_use_the_conv_backbone(name):
    x, idx, labels = tiny_data(shape=(3, 32, 32), n=16)
    model = make(name, shape=(3, 32, 32))
    model.fit(x, idx, labels, Budget(steps=2))
    p = model.predict_proba(x)
    assert p.shape == (16, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    samples = model.sample_images(2)
    assert samples is None or (
        samples.shape[-3:] == (3, 32, 32) and 0 <= samples.min() and samples.max() <= 1
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_one_label_and_no_unlabeled_images(name):
    x, _, _ = tiny_data(n=1)
    model = make(name)
    model.fit(x, np.array([0]), np.array([1]), Budget(steps=2))
    np.testing.assert_allclose(model.predict_proba(x).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["m1", "m2", "m1m2", "supervised", "selftrain", "aae", "mtc", "pixelgan"])
def test_progress_counts_this_fit_after_a_warm_start(name):
    x, idx, labels = tiny_data()
    model = make(name)
    model.fit(x, idx, labels, Budget(steps=4))
    seen = []
    model.fit(x, idx, labels, Budget(steps=4), progress=lambda p: seen.append(p) and False)
    assert seen[-1].step == 4 and seen[-1].fraction == pytest.approx(1.0)
    assert all(0 <= p.fraction <= 1 for p in seen)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_checkpoint_continues_the_same_optimisation(name, tmp_path):
    # Weights and optimizer moments are saved: training on from a loaded checkpoint gives what
    # training on in memory gives (a fresh Adam would take different steps).
    x, idx, labels = tiny_data()
    model = make(name)
    model.reseed(1)
    model.fit(x, idx, labels, Budget(steps=3))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "model.pt"))
    for m in (model, loaded):
        m.reseed(2)
        m.fit(x, idx, labels, Budget(steps=3))
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_optimizers_stay_fused_after_a_checkpoint_from_before_the_fused_kernel(name, tmp_path):
    # Adam's state dict carries its kernel flags; a checkpoint written before the fused kernel
    # (fused None) must not switch it off, and the moments it holds must still be used.
    x, idx, labels = tiny_data()
    model = make(name)
    model.fit(x, idx, labels, Budget(steps=3))
    assert all(g["fused"] for opt in model.optimizers.values() for g in opt.param_groups)
    state = copy.deepcopy(model.state())  # as from a file: no tensor shared with `model`
    for saved in state["optimizers"].values():
        for group in saved["param_groups"]:
            group["fused"] = None
    old = make(name)
    old.load_state(state)
    for key, opt in old.optimizers.items():
        assert all(g["fused"] and not g["foreach"] for g in opt.param_groups)
        assert opt.state_dict()["state"].keys() == model.optimizers[key].state_dict()["state"].keys()
    for m in (model, old):
        m.reseed(2)
        m.fit(x, idx, labels, Budget(steps=3))
    np.testing.assert_allclose(old.predict_proba(x), model.predict_proba(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_model_whatever_ran_before(name):
    # A result depends on the seed alone, not on the random numbers drawn earlier in the
    # process (the benchmark runs many models one after another in one process).
    from labeler.runspec import RunSpec
    from labeler.train import train_model

    x, idx, labels = tiny_data()
    fields = getattr(model_class(name).Config, "__dataclass_fields__", {})
    config = {key: v for key, v in SMALL.items() if key in fields}
    runs = []
    for draws in (0, 7):
        torch.rand(draws)
        model = train_model(RunSpec(name, steps=3, seed=5, config=config), x, idx, labels, 3)
        runs.append(model.predict_proba(x))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("labelspread", "tsvm")])
def test_a_diverging_fit_raises_the_one_divergence_error(name):
    x, idx, labels = tiny_data()
    x[:] = np.nan  # every loss becomes NaN
    with pytest.raises(TrainingDiverged) as caught:
        make(name).fit(x, idx, labels, Budget(steps=3))
    assert str(caught.value) == TrainingDiverged.MESSAGE


def test_m2_alone_trains_afresh_on_every_run():
    assert {name for name, cls in MODELS.items() if not cls.warm_starts} == {"m2"}


@pytest.mark.parametrize(("name", "continues"), [("m2", False), ("supervised", True), ("selftrain", True)])
def test_a_run_continues_from_the_last_model_only_where_the_model_warm_starts(name, continues, tmp_path):
    from labeler.runspec import RunSpec
    from labeler.train import train_model

    x, idx, labels = tiny_data()
    fields = getattr(model_class(name).Config, "__dataclass_fields__", {})
    spec = RunSpec(name, steps=2, seed=5, config={key: v for key, v in SMALL.items() if key in fields})
    first = train_model(spec, x, idx, labels, 3)
    save_checkpoint(first, tmp_path / "last.pt")
    for warm_start in (first, tmp_path / "last.pt"):  # the model in memory, or its checkpoint
        notes = []
        again = train_model(spec, x, idx, labels, 3, warm_start=warm_start, notes=notes)
        assert (again is first) == (continues and warm_start is first)
        # a fresh model starts from no training at all; a continued one from the last run's
        assert (again.steps_done > 2) == continues
        assert notes == []
    # a model that never warm-starts does not even look for the last checkpoint
    notes = []
    train_model(spec, x, idx, labels, 3, warm_start=tmp_path / "gone.pt", notes=notes)
    assert (notes == []) == (not continues)
