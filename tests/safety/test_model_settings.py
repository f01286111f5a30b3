"""Every model setting is range checked where it enters (`make_config`), the defaults pass
unchanged, and a checkpoint saved with settings this version does not know falls back to a
fresh model with a note instead of failing every later run."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import numpy as np
import pytest
import torch

from labeler.config import SettingError
from labeler.models import MODELS, save_checkpoint
from labeler.runspec import RunSpec
from labeler.train import SETTING_RANGES, _default_range, make_config, train_model

CONFIGURED = [name for name, cls in MODELS.items() if dataclasses.is_dataclass(cls.Config)]


def _numeric_fields(name: str):
    """Every int or float setting, optional ones (None: a default by image kind) included."""
    config = MODELS[name].Config()
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        hint = hints[field.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = set(typing.get_args(hint) if union else [hint]) - {type(None)}
        if len(kinds) == 1 and (kind := kinds.pop()) in (int, float):
            low, high = SETTING_RANGES.get(field.name) or _default_range(field.name, kind)
            yield field.name, kind, getattr(config, field.name), low, high


@pytest.mark.parametrize("name", CONFIGURED)
def test_defaults_pass_the_checks_unchanged_as_values_and_as_text(name):
    default = MODELS[name].Config()
    values = dataclasses.asdict(default)
    assert make_config(name, values) == default
    as_text = {key: "none" if value is None else str(value) for key, value in values.items()}
    assert make_config(name, as_text) == default


@pytest.mark.parametrize("name", CONFIGURED)
def test_every_number_setting_refuses_values_outside_its_range(name):
    fields = list(_numeric_fields(name))
    assert fields, f"{name} has no number settings to check"
    for key, kind, default, low, high in fields:
        assert default is None or low <= default <= high, (
            f"{name}.{key}: the default {default} is outside [{low}, {high}]"
        )
        below = low - 1 if kind is int else (low / 10 if low > 0 else -0.5)
        for bad in (below, high * 10 + 1, "abc"):
            with pytest.raises(SettingError, match=rf"The setting {key} of {name} must"):
                make_config(name, {key: bad})
        if kind is float:
            with pytest.raises(SettingError, match="between"):
                make_config(name, {key: math.nan})


@pytest.mark.parametrize(
    ("name", "key", "value", "message"),
    [
        # m2's q(y|x) may have no hidden layer ([] is taken): the message said "1 to 32" (exploratory).
        ("m2", "hidden", "abc", r"list of 0 to 32 layer sizes .* \(an empty list: no hidden layer\)"),
        ("m2", "hidden", [0, 10], "layer sizes between 1 and"),
        ("m1", "hidden", [], "list of 1 to 32"),
        ("m2", "latent_dim", -3, "between 0 and 1024, got -3"),
        ("m2", "labeled_batch", -1, "between 1 and 4096, got -1"),
        ("m2", "labeled_batch", 2.5, "whole number"),
        ("m2", "labeled_batch", True, "whole number"),
        ("m2", "lr", 0, "between 1e-07 and 1"),
        ("m2", "classifier_arch", "transformer", "must be one of auto, mlp, conv"),
        ("sslgan", "ema", 1.0, "between 0.0 and 0.9999"),
        ("badgan", "conv_width", 0, "between 1 and 512"),  # None, not 0, is the width by image kind
        ("sslgan", "g_hidden", "500,x", "layer sizes"),
        ("m1m2", "sample_z1", "maybe", "true or false"),
        ("supervised", "dropout", 1.0, "between 0.0 and 0.99"),
        ("labelspread", "neighbors", 0, "between 1 and 1000"),
    ],
)
def test_bad_settings_say_what_is_allowed(name, key, value, message):
    with pytest.raises(SettingError, match=message):
        make_config(name, {key: value})


def test_layer_lists_and_optional_settings_parse():
    assert make_config("m2", {"hidden": "256,128"}).hidden == [256, 128]
    assert make_config("m2", {"hidden": "[64]"}).hidden == [64]
    assert make_config("m2", {"hidden": "none"}).hidden is None
    assert make_config("sslgan", {"conv_width": "default"}).conv_width is None
    assert make_config("sslgan", {"g_hidden": [300, 300]}).g_hidden == (300, 300)
    assert make_config("m1m2", {"sample_z1": "false"}).sample_z1 is False


def test_a_checkpoint_with_an_unknown_setting_falls_back_to_a_fresh_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 8, 8), dtype=np.float32)
    labeled, labels = np.arange(6), np.arange(6) % 2
    model = train_model(RunSpec("supervised", steps=2), x, labeled, labels, 2)
    checkpoint = save_checkpoint(model, tmp_path / "old.pt")
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["a_setting_since_removed"] = 3
    torch.save(state, checkpoint)

    for _ in range(2):  # every later warm start, not only the first
        notes: list[str] = []
        fresh = train_model(
            RunSpec("supervised", steps=2), x, labeled, labels, 2, warm_start=checkpoint, notes=notes
        )
        assert fresh is not None and fresh.predict_proba(x).shape == (12, 2)
        assert (
            len(notes) == 1
            and "does not know" in notes[0]
            and notes[0].endswith("Trained from scratch instead.")
        )


def test_zero_generated_images_means_the_conv_batch_size_and_can_be_set():
    # An old checkpoint rebuilds with conv_fake_batch_size=0 (SSLGAN.legacy_config); the CLI can set it too.
    assert make_config("sslgan", {"conv_fake_batch_size": "0"}).conv_fake_batch_size == 0
