"""RunSpec: one set of limits and one message per error, wherever settings enter."""

from __future__ import annotations

import pytest

from labeler.cli import main
from labeler.config import SettingError
from labeler.runspec import LIMITS, RunSpec
from labeler.ui import train


def test_a_spec_round_trips_through_its_stored_settings():
    spec = RunSpec("m2", budget_s=30, steps=50, strategy="bald", seed=3, config={"lr": 0.01}, mc_samples=4)
    assert RunSpec.parse(spec.settings()) == spec
    assert RunSpec.parse({"steps": 0}, {"model": "m2"}).steps is None  # the form's "0 = none"


def test_the_budget_has_one_limit_for_the_form_and_the_database():
    highest = LIMITS["budget_s"][2]
    assert RunSpec("m2", budget_s=highest).budget_s == highest
    form = {"model": "m2", "budget_s": highest + 1, "strategy": "entropy", "seed": 0, "steps": 0}
    with pytest.raises(SettingError) as from_form:
        train.validated_settings(form)
    with pytest.raises(SettingError) as from_row:
        RunSpec.parse({"budget_s": highest + 1}, {"model": "m2"})  # what the worker reads
    assert str(from_form.value) == str(from_row.value)
    with pytest.raises(SettingError, match="Give a training budget"):
        RunSpec("m2", budget_s=None, steps=None)


def test_an_unknown_model_has_one_message_everywhere(capsys):
    with pytest.raises(SettingError) as direct:
        RunSpec("nope")
    with pytest.raises(SettingError) as from_form:
        train.validated_settings({"model": "nope", "budget_s": 10, "strategy": "entropy", "seed": 0})
    assert str(direct.value) == str(from_form.value)
    assert main(["benchmark", "--mode", "models", "--models", "nope", "--datasets", "digits"]) != 0
    assert str(direct.value) in capsys.readouterr().err


def test_model_settings_are_range_checked_in_the_spec():
    with pytest.raises(SettingError, match="lr"):
        RunSpec("m2", config={"lr": 5.0})
    with pytest.raises(SettingError, match="no setting"):
        RunSpec("m2", config={"no_such_setting": 1})
