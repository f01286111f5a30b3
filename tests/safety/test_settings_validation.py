"""Settings are checked where they enter, with a message that says what is allowed."""

import math

import pytest

from labeler import projects
from labeler.config import SettingError, check_choice, check_float, check_int


def test_check_int():
    assert check_int("The batch size", "64", 1, 4096) == 64
    assert check_int("The batch size", 3.0, 1, 4096) == 3
    for bad in (0, 5000, 2.5, "many", None, float("nan")):
        with pytest.raises(SettingError, match="The batch size must be .*between 1 and 4096"):
            check_int("The batch size", bad, 1, 4096)


def test_check_float():
    assert check_float("The training time (seconds)", "2.5", 1, 3600) == 2.5
    for bad in (0.5, 1e9, math.nan, math.inf, "soon", None):
        with pytest.raises(SettingError, match=r"between 1 and 3600"):
            check_float("The training time (seconds)", bad, 1, 3600)


def test_check_choice():
    assert check_choice("The model", "m2", ["m1", "m2"]) == "m2"
    with pytest.raises(SettingError, match="must be one of m1, m2; got 'm3'"):
        check_choice("The model", "m3", ["m1", "m2"])


def test_run_specs_refuse_bad_budget_and_strategy():
    from labeler.runspec import RunSpec

    assert RunSpec.parse({"budget_s": 5}, {"model": "m2"}).budget_s == 5
    with pytest.raises(SettingError, match="training time"):
        RunSpec.parse({"budget_s": -1}, {"model": "m2"})
    with pytest.raises(SettingError, match="training time"):
        RunSpec.parse({"budget_s": "forever"}, {"model": "m2"})
    with pytest.raises(SettingError, match="strategy must be one of"):
        RunSpec.parse({"strategy": "'; DROP TABLE runs; --"}, {"model": "m2"})


def test_project_creation_refuses_bad_settings(Session, make_image_set):
    images = make_image_set(n=20)
    for bad in (-1, 10**6, "fifty", 2.5):
        with pytest.raises(SettingError, match="audit set size .*between 0 and 10000"):
            projects.create_project(Session, "p", "test", images=images, audit_size=bad)
    many = make_image_set(n=20)
    many.classes = [f"c{i}" for i in range(projects.MAX_CLASSES + 1)]
    with pytest.raises(SettingError, match=f"number of classes must be between 2 and {projects.MAX_CLASSES}"):
        projects.create_project(Session, "p", "test", images=many)
    one = make_image_set(n=20, classes=1)
    with pytest.raises(SettingError, match="between 2 and"):
        projects.create_project(Session, "p", "test", images=one)
    twice = make_image_set(n=20)
    twice.classes = ["cat", "cat"]
    with pytest.raises(ValueError, match="different from each other"):
        projects.create_project(Session, "p", "test", images=twice)
    with pytest.raises(ValueError, match="1 to 200 characters"):
        projects.create_project(Session, "n" * 201, "test", images=images)
    with Session() as session:
        from db import queries

        assert queries.list_projects(session) == []  # nothing half-made was left behind


def test_a_bad_audit_size_is_refused_before_any_image_is_read(Session, tmp_path, monkeypatch):
    """`import --audit-size -5` read (and staged) the whole folder, then refused."""
    from labeler.data import staging

    def no_reading(*args, **kwargs):
        raise AssertionError("the images were read before the setting was checked")

    monkeypatch.setattr(staging, "stage_folder", no_reading)
    monkeypatch.setattr("labeler.data.read_source", no_reading)
    (tmp_path / "cat").mkdir()
    for source in (str(tmp_path), "digits"):
        with pytest.raises(SettingError, match="audit set size .*between 0 and 10000"):
            projects.create_project(Session, "p", source, audit_size=-5)
