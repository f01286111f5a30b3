"""The consistency term in aae, pixelgan and mtc: on by default, trained with an EMA teacher that
predicts and is exported without augmentation, and `consistency=False` the paper's path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.models import Budget, augment, load_checkpoint, save_checkpoint
from tests.models.test_registry import model_class, tiny_data

SMALL = {"hidden": [16], "d_hidden": (8,), "latent_dim": 4, "pixel_width": 4, "pixel_layers": 1}
NAMES = ["aae", "pixelgan", "mtc"]


def small(name, consistency=True, **extra):
    cls = model_class(name)
    fields = cls.Config.__dataclass_fields__
    config = cls.Config(**{k: v for k, v in SMALL.items() if k in fields}, consistency=consistency, **extra)
    return cls((1, 8, 8), 3, config=config, seed=0)


def fit(model, steps=6):
    x, idx, labels = tiny_data(n=24)
    seen = []
    model.fit(x, idx, labels, Budget(steps=steps), progress=lambda p: seen.append(p.losses) and False)
    return x, seen[-1]


@pytest.mark.parametrize("name", NAMES)
def test_consistency_trains_and_the_teacher_predicts_and_exports_without_augmentation(name, tmp_path):
    assert model_class(name).Config().consistency is True
    # threshold 0: every unlabeled image gets a pseudo-label, so the term is never zero by chance
    model = small(name, threshold=0.0)
    x, losses = fit(model)
    assert losses["consistency"] > 0 and losses["confident"] == 1.0
    teacher = model.modules["teacher"]
    with torch.no_grad():
        expected = torch.softmax(teacher.eval()(torch.as_tensor(x)), 1).numpy()
    np.testing.assert_allclose(model.predict_proba(x), expected, atol=1e-6)
    module = model.classifier_module().eval()
    with torch.no_grad():
        a = module(torch.as_tensor(x)).numpy()
        b = module(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(a, b)  # no augmentation left in the export
    np.testing.assert_allclose(a, expected, atol=1e-5)
    path = save_checkpoint(model, tmp_path / "m.pt")
    np.testing.assert_array_equal(load_checkpoint(path).predict_proba(x), model.predict_proba(x))


@pytest.mark.parametrize("name", NAMES)
def test_without_consistency_training_never_augments_and_keeps_no_teacher(name, monkeypatch):
    def refuse(x, generator):
        raise AssertionError("augmented with consistency off")

    monkeypatch.setattr(augment, "weak", refuse)
    monkeypatch.setattr(augment, "strong", refuse)
    model = small(name, consistency=False)
    _, losses = fit(model)
    assert "teacher" not in model.modules
    assert not {"consistency", "confident"} & set(losses)
    assert "cross_entropy" in losses


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_from_before_the_teacher_loads_as_it_was_trained(name, tmp_path):
    old = small(name, consistency=False)
    x, _ = fit(old, steps=4)
    state = old.state()
    never_had = ["consistency", "consistency_weight", "threshold", "ema"] + (
        ["unlabeled_batch"] if name == "mtc" else []
    )
    for key in never_had:
        del state["config"][key]
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config.consistency is False and "teacher" not in loaded.modules
    np.testing.assert_allclose(loaded.predict_proba(x), old.predict_proba(x), atol=1e-6)


def test_the_mtc_teacher_starts_from_the_encoder_the_cae_phase_trained():
    # the whole budget to the CAE: no classifier step, yet labels are seen, so the teacher predicts
    model = small("mtc", cae_fraction=1.0)
    fit(model, steps=2)
    teacher, net = model.modules["teacher"], model.modules["net"]
    for name, weight in net.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[name], weight, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_weak_views_of_the_labeled_images_only_when_asked(name, monkeypatch):
    calls = []
    real = augment.weak
    monkeypatch.setattr(augment, "weak", lambda x, generator: calls.append(len(x)) or real(x, generator))
    default = small(name).config.augment_labeled
    counts = {}
    for augment_labeled in (False, True):
        calls.clear()
        # mtc: the whole budget after one CAE step goes to the classifier
        fit(
            small(name, augment_labeled=augment_labeled, cae_fraction=0.1)
            if name == "mtc"
            else small(name, augment_labeled=augment_labeled),
            steps=4,
        )
        counts[augment_labeled] = len(calls)
    assert counts[True] > counts[False] > 0  # the teacher's weak views of the unlabeled batch either way
    assert default is False  # weak labeled views hurt all three on digits
