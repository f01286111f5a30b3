"""AppTest runs of every page with a tiny project: what each page shows and what its buttons write."""

from __future__ import annotations

import datetime
import io
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from ui_helpers import PAGES, box_data, button, fake_done_run, label_items, page_app, running_run, wait_for

from db import queries
from db import runs as run_queries
from db.models import DONE, IGNORED, LabelEvent, Project
from labeler import projects
from labeler.config import SettingError
from labeler.runspec import RunSpec
from labeler.ui import export as export_ui
from labeler.ui import latent, progress, project, train


@pytest.mark.parametrize("module", list(PAGES))
def test_every_page_renders_before_any_run(tiny_project, module):
    at = page_app(module, tiny_project.id)
    assert not at.exception
    assert not at.error


@pytest.mark.parametrize("module", list(PAGES))
def test_every_page_renders_after_a_run(Session, tiny_project, module):
    label_items(Session, tiny_project.id, 4)
    fake_done_run(Session, tiny_project.id)
    at = page_app(module, tiny_project.id)
    assert not at.exception
    assert not at.error


# Label ---------------------------------------------------------------------------------------


def test_label_page_shows_counts_and_the_models_guess(Session, tiny_project):
    label_items(Session, tiny_project.id, 1)
    fake_done_run(Session, tiny_project.id, labels_used=1)
    with Session.begin() as session:  # two more given since that run began
        pool = queries.items(session, tiny_project.id, "pool")
        for item in pool[1:3]:
            queries.add_label(session, item.id, item.truth, annotator="tester")
        queries.add_label(session, pool[3].id, IGNORED, annotator="tester")  # answered, not labeled
        total = len(pool) + len(queries.items(session, tiny_project.id, "audit"))
    at = page_app("label", tiny_project.id)
    assert at.get("progress")[0].proto.text == f"3 labeled + 1 ignored / {total} images"  # was "4 labeled"
    counts = at.sidebar.dataframe[0].value
    assert counts["labels"].tolist() == [2, 1]  # truth alternates 0, 1, 0
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "2 new labels since the last run" in captions
    assert "idle" in captions
    shown = box_data(at)["items"]
    assert shown and all(item["guess"] is not None and item["confidence"] == 0.9 for item in shown)


def test_grid_accepts_the_page_with_corrections(Session, tiny_project):
    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    boxes = [box for box in at.selectbox if box.key.startswith("grid-")]
    assert len(boxes) == 12
    with Session() as session:
        truth = {item.id: item.truth for item in queries.items(session, tiny_project.id)}
    ids = [int(box.key.split("-")[1]) for box in boxes]
    # Pre-filled with the model's guess (the fake run predicts the truth).
    assert [box.value for box in boxes] == [truth[i] for i in ids]
    boxes[0].set_value(1 - truth[ids[0]])  # correct one
    boxes[1].set_value(-1)  # skip one
    button(at, "accept_grid").click().run()
    assert not at.exception
    with Session() as session:
        labels = queries.current_labels(session, tiny_project.id)
        kinds = {e.kind for i in labels for e in queries.history(session, i)}
    assert len(labels) == 11 and ids[1] not in labels
    assert labels[ids[0]] == 1 - truth[ids[0]]
    assert all(labels[i] == truth[i] for i in ids[2:])
    assert kinds == {"grid"}
    # The next page shows other images, and not the skipped one first.
    new_ids = [int(b.key.split("-")[1]) for b in at.selectbox if b.key.startswith("grid-")]
    assert not set(new_ids) & set(ids[:1] + ids[2:])


def test_audit_images_come_without_the_models_guess(Session, tiny_project):
    from sqlalchemy import update

    from db.models import AUDIT, Item

    with Session.begin() as session:
        session.execute(
            update(Item).where(Item.project_id == tiny_project.id, Item.split == "pool").values(split=AUDIT)
        )
    fake_done_run(Session, tiny_project.id)
    at = page_app("label", tiny_project.id)
    assert all(item["audit"] and item["guess"] is None for item in box_data(at)["items"])  # no guess shown
    at.radio(key="label_mode").set_value("Grid").run()
    assert any("Audit image" in c.value for c in at.caption)
    boxes = [box for box in at.selectbox if box.key.startswith("grid-")]
    assert boxes and all(box.value == -1 for box in boxes)  # nothing pre-filled


def test_classes_can_be_added_and_renamed(Session, tiny_project):
    at = page_app("label", tiny_project.id)
    at.text_input(key="new_class").input("other")
    at.button(key="add_class").click().run()
    assert not at.exception
    # Each class with its key: "2: 1" alone read as key 2 (digits: class "1" is second, key 1).
    assert at.selectbox(key="rename_which").options == ["1: 0 (key 0)", "2: 1 (key 1)", "3: other (key 2)"]
    at.selectbox(key="rename_which").set_value(0)
    at.text_input(key="rename_to").input("dark")
    at.button(key="rename_class").click().run()
    assert "Renamed class '0' to 'dark'." in [s.value.replace("\\", "") for s in at.success]
    with Session() as session:
        assert queries.class_names(session, tiny_project.id) == ["dark", "1", "other"]
    # A third class appears with the next free key; a duplicate name is refused with one sentence.
    assert [(c["name"], c["key"]) for c in box_data(at)["classes"]] == [
        ("dark", "0"),
        ("1", "1"),
        ("other", "2"),
    ]
    at.text_input(key="new_class").input("dark")
    at.button(key="add_class").click().run()
    assert "already a class" in at.error[0].value
    # One that differs only in case is a class of its own, and the page says so (exploratory).
    at.text_input(key="new_class").input("Dark")
    at.button(key="add_class").click().run()
    assert (
        "Added the class 'Dark'; it differs from 'dark' only in case, so these are two classes"
        in " ".join(s.value.replace("\\", "") for s in at.success)
    )


def test_auto_retrain_queues_a_run_after_n_labels(Session, tiny_project):
    with Session.begin() as session:
        p = session.get(Project, tiny_project.id)
        # A steps budget keeps the worker's run short, whoever trains it.
        p.settings = {
            **p.settings,
            "auto_retrain_every": 2,
            "model": "labelspread",
            "steps": 1,
            "budget_s": 5,
        }
    at = page_app("label", tiny_project.id)
    at.radio(key="label_mode").set_value("Grid").run()
    tiles = [box for box in at.selectbox if box.key.startswith("grid-")]
    tiles[0].set_value(0)
    button(at, "accept_grid").click().run()
    with Session() as session:
        assert run_queries.list_runs(session, tiny_project.id) == []
    at.radio(key="label_mode").set_value("Grid").run()
    tiles = [box for box in at.selectbox if box.key.startswith("grid-")]
    tiles[0].set_value(1)
    button(at, "accept_grid").click().run()
    assert not at.exception
    with Session() as session:
        runs = run_queries.list_runs(session, tiny_project.id)
    assert len(runs) == 1 and runs[0].model == "labelspread"
    assert "retraining started" in " ".join(i.value for i in at.sidebar.info)


# Train ---------------------------------------------------------------------------------------


def test_validated_settings_refuse_bad_values():
    good = {"model": "m2", "budget_s": 30, "strategy": "entropy", "seed": 0, "steps": 0, "lr": 0.001}
    assert train.validated_settings(good) == RunSpec("m2", budget_s=30.0, seed=0, config={"lr": 0.001})
    for key, bad in [("budget_s", 0), ("lr", 5.0), ("seed", -1), ("model", "nope"), ("strategy", "nope")]:
        with pytest.raises(SettingError):
            train.validated_settings({**good, key: bad})


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("train_budget_s", 0, "between 1"),
        ("train_budget_s", 10**9, "between 1"),
        ("train_every", -5, "between 0 and 100000"),
        ("train_steps", -1, "to 10,000,000, not"),  # "0 (none) to ...": it said "between 1"
        ("train_steps", 20_000_000, "0 (none) to 10,000,000, not"),  # the same sentence above the range
    ],
)
def test_out_of_range_settings_are_refused_with_the_range_not_replaced(
    Session, tiny_project, key, value, allowed
):
    at = page_app("train", tiny_project.id)
    at.number_input(key=key).set_value(value)
    at.button(key="train_start").click().run()
    assert not at.exception
    assert allowed in at.error[0].value.replace("\\", "")  # AppTest shows the markdown escaped
    with Session() as session:
        assert run_queries.list_runs(session, tiny_project.id) == []  # nothing queued with another value


def test_training_with_no_labels_is_refused_before_a_run_is_queued(Session, tiny_project):
    """The run was queued, failed at once with this sentence, and left a traceback in the log."""
    with Session.begin() as session:  # an "ignore" answer is no label to train on
        queries.add_label(session, queries.items(session, tiny_project.id, "pool")[0], IGNORED)
    at = page_app("train", tiny_project.id)
    at.button(key="train_start").click().run()
    assert not at.exception
    assert at.error[0].value.replace("\\", "").startswith("There are no labels to train on yet (audit images")
    # It said "0 new labels since the last run" with no run at all.
    assert at.caption[0].value.startswith("No run yet, 0 labels to train on.")
    with Session() as session:
        assert run_queries.list_runs(session, tiny_project.id) == []


def test_train_page_runs_a_model_and_shows_it_in_the_history(Session, tiny_project):
    label_items(Session, tiny_project.id, 6)
    at = page_app("train", tiny_project.id)
    at.selectbox(key="train_model").set_value("labelspread").run()
    at.number_input(key="train_steps").set_value(1)
    at.number_input(key="train_budget_s").set_value(5)
    at.number_input(key="train_every").set_value(3)
    at.button(key="train_start").click().run()
    assert not at.exception
    assert "queued" in at.success[0].value
    with Session() as session:
        settings = session.get(Project, tiny_project.id).settings
    assert (
        settings["model"] == "labelspread" and settings["auto_retrain_every"] == 3 and settings["steps"] == 1
    )

    def finished():
        with Session() as session:
            runs = run_queries.list_runs(session, tiny_project.id)
            return runs and runs[0].status not in ("queued", "running") and runs[0]

    run = wait_for(finished)
    assert run.status == DONE, run.error
    at.run()
    history = at.dataframe[0].value
    assert history["status"].tolist() == ["done"] and history["labels"].tolist() == [6]
    assert "done" in at.get("progress")[0].proto.text

    at = page_app("progress", tiny_project.id)
    assert not at.exception
    assert "test split" in at.info[0].value
    assert len(at.get("plotly_chart")) >= 3  # learning curve, balance, per-class, confusion


def test_the_learning_rate_field_shows_the_rate_the_project_runs_with(Session, tiny_project):
    label_items(Session, tiny_project.id, 6)
    with Session.begin() as session:
        session.get(Project, tiny_project.id).settings = {"model": "sslgan", "config": {"lr": 0.0005}}
    at = page_app("train", tiny_project.id)
    assert at.number_input(key="train_lr-sslgan").value == 0.0005  # what auto-retrain uses, not 0.001
    # Another model shows its own default, not the rate of the model before: M2's is empty
    # (its own rate for these images), and Start keeps it so.
    at.selectbox(key="train_model").set_value("badgan").run()
    assert at.number_input(key="train_lr-badgan").value == 0.001
    at.selectbox(key="train_model").set_value("m2").run()
    assert at.number_input(key="train_lr-m2").value is None
    at.number_input(key="train_steps").set_value(1)
    at.number_input(key="train_budget_s").set_value(5)
    at.button(key="train_start").click().run()
    with Session() as session:
        settings = session.get(Project, tiny_project.id).settings
    assert settings["model"] == "m2" and "lr" not in settings["config"]
    with Session.begin() as session:
        session.get(Project, tiny_project.id).settings = {"model": "sslgan", "config": {}}
    assert page_app("train", tiny_project.id).number_input(key="train_lr-sslgan").value == 0.001


def test_a_running_run_can_be_cancelled(Session, tiny_project):
    from db.models import Run

    run_id = running_run(Session, tiny_project.id, progress=0.4, step=120)
    at = page_app("train", tiny_project.id)
    assert "Run 1 (m2): training, 40%" in at.get("progress")[0].proto.text
    at.button(key=f"cancel-{run_id}").click().run()
    assert not at.exception
    with Session() as session:
        assert session.get(Run, run_id).cancel_requested
    assert at.button(key=f"cancel-{run_id}").disabled
    assert any("(stopping)" in c.value for c in at.caption)


def test_a_failed_run_says_why_in_one_sentence(Session, tiny_project):
    from db.models import FAILED, Run, utcnow

    with Session.begin() as session:
        session.add(
            Run(
                project_id=tiny_project.id,
                model="m2",
                status=FAILED,
                started_at=utcnow(),
                finished_at=utcnow(),
                error="Training diverged: lower the learning rate.",
            )
        )
    at = page_app("train", tiny_project.id)
    assert not at.exception
    # Markdown-escaped (the browser shows it as typed), so compare without the backslashes.
    shown = at.error[0].value.replace("\\", "")
    assert shown == "Run 1 failed: Training diverged: lower the learning rate."
    assert at.dataframe[0].value["status"].tolist() == ["failed"]


def test_a_bad_zip_upload_is_refused_with_one_sentence(Session, tmp_path):
    from labeler.data import DataError

    with pytest.raises(DataError) as error:
        projects.create_project(Session, "bad", project.save_upload(b"this is not a zip"))
    assert "\n" not in str(error.value)


def test_loss_figure_has_one_panel_per_loss():
    class Point:
        def __init__(self, step, name, value):
            self.step, self.name, self.value = step, name, value

    fig = train.loss_figure([Point(s, n, s * 0.1) for s in range(3) for n in ("elbo", "classifier")])
    assert len(fig.data) == 2
    assert train.loss_figure([]) is None


def test_the_loss_curves_are_drawn_anew_only_with_new_points_and_at_most_every_few_seconds(
    Session, tiny_project, monkeypatch
):
    """Drawn every second beside a run training in the same process, the loss figure slowed it 4
    to 5 times (an exploratory session): made again only for new points, LOSS_EVERY_S apart."""
    from db import runs as run_queries
    from tests.ui.ui_helpers import running_run

    run_id = running_run(Session, tiny_project.id)
    with Session.begin() as session:
        run_queries.add_metrics(session, run_id, 1, 0.5, {"loss": 2.0})
    made = []
    drawn = train.loss_figure
    monkeypatch.setattr(train, "loss_figure", lambda metrics: made.append(len(metrics)) or drawn(metrics))
    monkeypatch.setattr(train, "LOSS_EVERY_S", 1e9)
    at = page_app("train", tiny_project.id)
    at.run()
    assert made == [1]
    with Session.begin() as session:
        run_queries.add_metrics(session, run_id, 2, 1.0, {"loss": 1.5})
    at.run()
    assert made == [1]  # new points, but drawn too recently
    monkeypatch.setattr(train, "LOSS_EVERY_S", 0.0)
    at.run()
    assert made == [1, 2] and not at.exception


# Progress ------------------------------------------------------------------------------------


def test_progress_uses_the_test_split_with_an_interval(Session, tiny_project):
    label_items(Session, tiny_project.id, 4)
    fake_done_run(Session, tiny_project.id, accuracy=0.5, labels_used=2)
    fake_done_run(Session, tiny_project.id, accuracy=0.75, labels_used=4)
    at = page_app("progress", tiny_project.id)
    assert "test split: 8 images" in at.info[0].value
    assert at.metric[0].value == "75.0%"
    with Session() as session:
        from labeler import evaluate

        frame = progress.curve_frame(evaluate.learning_curve(session, tiny_project.id), "test", 8)
    assert frame["labels"].tolist() == [2, 4]
    assert (frame["low"] < frame["accuracy"]).all() and (frame["accuracy"] < frame["high"]).all()


def test_progress_counts_answers_per_annotator(Session, tiny_project):
    label_items(Session, tiny_project.id, 3, annotator="alice")
    at = page_app("progress", tiny_project.id)
    table = next(frame.value for frame in at.dataframe if "annotator" in frame.value.columns)
    assert table.to_dict("records") == [{"annotator": "alice", "answers": 3}]


def test_progress_says_when_there_is_no_honest_accuracy():
    split, text = progress.accuracy_source(0, 0, 10)
    assert split is None and "No honest accuracy" in text
    split, text = progress.accuracy_source(0, 7, 10)
    assert split == "audit" and "7 of 10" in text


def test_audit_images_labeled_after_the_newest_run_measure_it(Session):
    """Runs that finished before any audit image was labeled have no point on the curve: the
    accuracy box stayed empty and the curve said "label, then train" with audit images labeled
    and three runs done, while the confusion matrix below used them."""
    from tests.conftest import tiny_image_set

    own = projects.create_project(Session, "own", "folder:x", images=tiny_image_set(n=40), audit_size=10)
    run_id = fake_done_run(Session, own.id)
    with Session.begin() as session:
        for item in queries.items(session, own.id, "audit")[:3]:
            queries.add_label(session, item.id, item.truth)  # the fake run guessed the truth
    at = page_app("progress", own.id)
    (accuracy,) = [m for m in at.metric if m.label.startswith("Accuracy")]
    assert accuracy.label == f"Accuracy of run {run_id} (the 3 audit images labeled now)"
    assert accuracy.value == "100.0%"
    assert any("the next run adds the first point" in c.value for c in at.caption)
    # Each run's point is measured when it finished, the confusion matrix now: said where the box
    # above is such a point (here it is measured now too, so nothing to say; review).
    said = "the confusion matrix use the audit answers as they are now"
    assert not any(said in c.value for c in at.caption)
    fake_done_run(Session, own.id, audit=(1.0, 0.44, 1.0, 3))  # a run with its own point
    at.run()
    assert any(said in c.value for c in at.caption)


def test_agreement_counts_labels_given_after_a_run(Session, tiny_project):
    fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:
        a, b = queries.items(session, tiny_project.id, "pool")[:2]
        queries.add_label(session, a.id, a.truth)  # agrees with the fake guess
        queries.add_label(session, b.id, 1 - b.truth)  # disagrees
    at = page_app("progress", tiny_project.id)
    agreement = next(m for m in at.metric if "agreed" in m.label)
    assert agreement.value == "50%"


def test_agreement_per_run_is_a_trend_with_intervals(Session, tiny_project):
    first = fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:
        pool = queries.items(session, tiny_project.id, "pool")
        queries.add_label(session, pool[0].id, 1 - pool[0].truth)  # run 1's guess was wrong
        queries.add_label(session, pool[1].id, pool[1].truth)
        queries.add_label(session, pool[5].id, 1 - pool[5].truth)  # wrong again
    at = page_app("progress", tiny_project.id)
    assert not any("each run's guesses" in c.value for c in at.caption), "one run: no trend yet"
    second = fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:
        for item in pool[2:5]:
            queries.add_label(session, item.id, item.truth)  # run 2 was right three times
        # Answered again after run 2: counted for run 2, and its first answer no more.
        queries.add_label(session, pool[0].id, pool[0].truth)
    with Session() as session:
        from labeler import evaluate

        by_run = evaluate.agreement_by_run(session, tiny_project.id)
    assert by_run["run_id"].tolist() == [first, second]
    assert by_run["n"].tolist() == [2, 4] and by_run["agree"].tolist() == [1, 4]
    assert (by_run["low"] <= by_run["rate"]).all() and (by_run["rate"] <= by_run["high"]).all()
    fig = progress.agreement_figure(by_run)
    assert list(fig.data[0].y) == [0.5, 1.0]
    at = page_app("progress", tiny_project.id)
    assert any("each run's guesses" in c.value for c in at.caption)


# Latent space --------------------------------------------------------------------------------


def test_points_frame_marks_labels_and_hides_the_test_split(Session, tiny_project):
    ids = label_items(Session, tiny_project.id, 3)
    run_id = fake_done_run(Session, tiny_project.id)
    with Session() as session:
        frame = latent.points_frame(session, tiny_project.id, run_id, ["0", "1"])
        small = latent.points_frame(session, tiny_project.id, run_id, ["0", "1"], max_points=5)
    assert len(frame) == 32 and set(frame["split"]) == {"pool"}
    assert set(frame.loc[frame["labeled"] == "labeled", "item_id"]) == set(ids)
    # Subsampling keeps every labeled point.
    assert len(small) == 5 and set(ids) <= set(small["item_id"])
    fig = latent.scatter(frame, "label", ["0", "1"])
    assert fig.layout.dragmode == "lasso"
    latent.scatter(frame, "uncertainty", ["0", "1"])


def test_latent_map_draws_every_point_once(Session, tiny_project):
    ids = label_items(Session, tiny_project.id, 3)
    run_id = fake_done_run(Session, tiny_project.id)
    with Session() as session:
        frame = latent.points_frame(session, tiny_project.id, run_id, ["0", "1"])
    for colour in ("label", "prediction", "uncertainty"):
        fig = latent.scatter(frame, colour, ["0", "1"])
        assert {trace.type for trace in fig.data} == {"scatter"} and not fig.layout.images
        shown = [int(row[0]) for trace in fig.data for row in trace.customdata]
        assert sorted(shown) == sorted(frame["item_id"])  # each point once, its id for a selection
        crosses = {
            int(row[0]) for trace in fig.data if trace.marker.symbol == "x" for row in trace.customdata
        }
        assert crosses == set(ids)


def big_frame(n: int = 6_000, labeled: int = 40, seed: int = 1) -> pd.DataFrame:
    """What `points_frame` gives, for n points scattered in the unit square, two classes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    label = np.where(np.arange(n) < labeled, truth.astype(str), "unlabeled")
    return pd.DataFrame(
        {
            "item_id": np.arange(1000, 1000 + n),
            "row": np.arange(n),
            "x": rng.random(n),
            "y": rng.random(n),
            "confidence": rng.random(n),
            "entropy": rng.random(n),
            "label": label,
            "prediction": truth.astype(str),
            "labeled": np.where(label != "unlabeled", "labeled", "unlabeled"),
        }
    )


def test_big_latent_map_is_an_image_of_all_points_and_a_sample_on_top():
    frame = big_frame()
    for colour in ("label", "prediction", "uncertainty"):
        fig = latent.scatter(frame, colour, ["0", "1"], sample=500)
        drawn = [int(row[0]) for trace in fig.data for row in trace.customdata]
        assert len(drawn) == len(set(drawn)) == 500
        assert set(frame["item_id"][:40]) <= set(drawn), "every labeled point is in the sample"
        (image,) = fig.layout.images
        assert image.source.startswith("data:image/png;base64,")
        assert list(fig.layout.xaxis.range) == pytest.approx([image.x, image.x + image.sizex])
        assert list(fig.layout.yaxis.range) == pytest.approx([image.y - image.sizey, image.y])
    # Every point is in the picture: the pixel at each point's place is its class' colour.
    palette, codes = latent.point_colours(frame, "prediction", ["0", "1"])
    x_range, y_range = latent.map_ranges(frame)
    png = latent.raster_png(frame, (palette, codes), x_range, y_range, size=(4000, 4000))
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    unlabeled = frame.index[frame["labeled"] == "unlabeled"][:200]
    px = np.round((frame["x"][unlabeled] - x_range[0]) / (x_range[1] - x_range[0]) * 3999).astype(int)
    py = np.round((y_range[1] - frame["y"][unlabeled]) / (y_range[1] - y_range[0]) * 3999).astype(int)
    seen = picture[py, px]
    assert (seen != 255).any(axis=1).all(), "no point is left white"
    want = (0.8 * palette[codes[unlabeled]] + 0.2 * 255).round()
    assert (np.abs(seen - want) <= 1).all(axis=1).mean() > 0.95  # a few are covered by others


def test_a_lasso_selects_every_point_inside_it_drawn_or_not():
    frame = big_frame()
    fig = latent.scatter(frame, "label", ["0", "1"], sample=500)
    drawn = {int(row[0]) for trace in fig.data for row in trace.customdata}
    x, y, ids = frame["x"].to_numpy(), frame["y"].to_numpy(), frame["item_id"].to_numpy()
    # A triangle (0, 0), (1, 0), (0, 1) as Streamlit sends a lasso, and a box.
    lasso = {"xref": "x", "yref": "y", "x": [0.0, 1.0, 0.0], "y": [0.0, 0.0, 1.0]}
    event = {"selection": {"points": [], "point_indices": [], "box": [], "lasso": [lasso]}}
    chosen = latent.selected_item_ids(event, frame)
    assert chosen == [int(i) for i in ids[(x + y < 1)]]
    assert set(chosen) - drawn, "points only in the picture are selected too"
    box = {"xref": "x", "yref": "y", "x": [0.7, 0.2], "y": [0.1, 0.3]}
    event = {"selection": {"points": [{"customdata": [5]}], "box": [box], "lasso": []}}
    inside = (x >= 0.2) & (x <= 0.7) & (y >= 0.1) & (y <= 0.3)
    assert latent.selected_item_ids(event, frame) == [int(i) for i in ids[inside]]
    # Two areas (shift): their union, each point once.
    event = {"selection": {"box": [box], "lasso": [lasso]}}
    assert latent.selected_item_ids(event, frame) == [int(i) for i in ids[inside | (x + y < 1)]]
    # A concave lasso: the notch between its two arms is not selected.
    u = {"x": [0.1, 0.9, 0.9, 0.6, 0.6, 0.4, 0.4, 0.1], "y": [0.1, 0.1, 0.9, 0.9, 0.3, 0.3, 0.9, 0.9]}
    notch = (x > 0.4) & (x < 0.6) & (y > 0.3)
    in_u = (x > 0.1) & (x < 0.9) & (y > 0.1) & (y < 0.9) & ~notch
    assert latent.selected_item_ids({"selection": {"lasso": [u]}}, frame) == [int(i) for i in ids[in_u]]


def test_selected_item_ids_reads_customdata():
    event = {"selection": {"points": [{"customdata": [5]}, {"customdata": [7]}, {"customdata": [5]}, {}]}}
    assert latent.selected_item_ids(event) == [5, 7]
    # What Streamlit sends for rows of the WebGL map's customdata (a 2-D typed array).
    typed = {"selection": {"points": [{"customdata": {"0": 9.0, "1": 0.5}}, {"customdata": 4}]}}
    assert latent.selected_item_ids(typed) == [9, 4]
    assert latent.selected_item_ids(None) == []


def test_the_bulk_label_choice_stays_through_a_rename_and_asks_again_when_its_own_class_is_renamed(
    Session, tiny_project
):
    """A selectbox's value travels as the name it shows: after a rename the bulk label's class
    went back to the first class, silently, ready to label the whole selection as that class.
    Now the choice stays when another class is renamed, and after its own class is renamed the
    selector shows no class and says to choose again: a click then stores nothing."""
    at, ids = _selection_panel_app(Session, tiny_project, 3)

    def selector():
        return next(box for box in at.selectbox if box.key.startswith("bulk_class-"))

    selector().set_value(1).run()
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 0, "zero")
    at.run()
    assert selector().value == 1 and not at.warning
    with Session.begin() as session:
        queries.rename_class(session, tiny_project.id, 1, "one")
    at.run()
    assert selector().value is None and "choose the label again" in at.warning[0].value
    button(at, "bulk_apply").click().run()
    assert not at.exception
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}
    selector().set_value(1).run()
    assert not at.warning
    button(at, "bulk_apply").click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {i: 1 for i in ids}


def _selection_panel_app(Session, project, n: int):
    """An AppTest of the Latent page's selection panel with the first n pool images lassoed on
    the map of a finished run, run once; and those images' ids."""
    from streamlit.testing.v1 import AppTest

    run_id = fake_done_run(Session, project.id)
    with Session() as session:
        ids = [i.id for i in queries.items(session, project.id, "pool")[:n]]
    script = f"""
import streamlit as st
from labeler.ui import common, latent
names = common.class_names({project.id})
with common.session_factory()() as session:
    frame = latent.points_frame(session, {project.id}, {run_id}, names)
st.session_state["latent"] = {{"selection": {{"points": [{{"customdata": [i, 0.9]}} for i in {ids}]}}}}  # the map's lasso
latent._selection_panel({project.id}, {ids}, frame, names, "tester")
"""
    at = AppTest.from_string(script, default_timeout=60)
    at.session_state["project_id"] = project.id
    at.session_state["annotator"] = "tester"  # who labels now: the callback asks, not the page
    return at.run(), ids


def test_the_bulk_label_starts_on_no_class_and_its_button_names_the_class(Session, tiny_project):
    """The selector started on the first class, so one click labeled the whole lasso as it."""
    at, _ = _selection_panel_app(Session, tiny_project, 3)
    selector = next(box for box in at.selectbox if box.key.startswith("bulk_class-"))
    assert selector.value is None and button(at, "bulk_apply").label == "Label 3 images"
    button(at, "bulk_apply").click().run()
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}
    assert "Choose the label first" in str(at.session_state["latent_message"])
    next(box for box in at.selectbox if box.key.startswith("bulk_class-")).set_value(1).run()
    assert button(at, "bulk_apply").label == "Label 3 images as 1"


def test_the_bulk_label_button_counts_only_the_images_it_labels(Session, tiny_project):
    """With 13 of 46 selected images answered already and "relabel" off, the button read "Label 46
    images" and 33 were labeled (exploratory session)."""
    at, ids = _selection_panel_app(Session, tiny_project, 3)
    with Session.begin() as session:
        queries.add_label(session, ids[0], 0, annotator="bob")
    next(box for box in at.selectbox if box.key.startswith("bulk_class-")).set_value(1)
    at.run()
    assert button(at, "bulk_apply").label == "Label 2 images as 1" and not button(at, "bulk_apply").disabled
    assert any(
        '1 of the 3 has an answer already and is left as it is (tick "relabel" to change it)'
        in c.value.replace("\\", "")
        for c in at.caption
    )
    at.checkbox(key="bulk_relabel").check().run()
    assert button(at, "bulk_apply").label == "Label 3 images as 1" and not at.caption
    with Session.begin() as session:  # one of them has the chosen class already: left as it is
        queries.add_label(session, ids[1], 1, annotator="bob")
    at.run()
    assert button(at, "bulk_apply").label == "Label 2 images as 1"
    at.checkbox(key="bulk_relabel").uncheck().run()
    with Session.begin() as session:
        queries.add_labels(session, ids[1:], 0, annotator="bob")
    at.run()
    assert button(at, "bulk_apply").label == "Label 0 images as 1" and button(at, "bulk_apply").disabled


def test_the_latent_map_leaves_the_audit_images_off_and_says_why(Session, tiny_project):
    """The map showed audit images with the model's guess, and a cluster lassoed there labeled 5
    of them at once (exploratory session): audit answers are given one at a time without a guess."""
    from sqlalchemy import update

    from db.models import AUDIT, Item

    with Session.begin() as session:
        audit = [i.id for i in queries.items(session, tiny_project.id, "pool")[-4:]]
        session.execute(update(Item).where(Item.id.in_(audit)).values(split=AUDIT))
    run_id = fake_done_run(Session, tiny_project.id)
    with Session() as session:
        frame = latent.points_frame(session, tiny_project.id, run_id, ["0", "1"])
        pool = {i.id for i in queries.items(session, tiny_project.id, "pool")}
    assert set(frame["item_id"]) == pool and not set(audit) & set(frame["item_id"])
    at = page_app("latent", tiny_project.id)
    assert not at.exception
    assert any("The 4 audit images are not on the map" in c.value for c in at.caption)


def test_selection_panel_labels_the_selection_at_once(Session, tiny_project):
    at, ids = _selection_panel_app(Session, tiny_project, 5)
    assert len(at.get("image")) == 5
    next(box for box in at.selectbox if box.key.startswith("bulk_class-")).set_value(1)
    button(at, "bulk_apply").click().run()
    assert not at.exception
    with Session() as session:
        labels = queries.current_labels(session, tiny_project.id)
        events = [queries.history(session, i)[-1] for i in ids]
    assert {labels[i] for i in ids} == {1} and len(labels) == 5
    assert {(e.kind, e.annotator) for e in events} == {("bulk", "tester")}


def test_a_relabel_replaces_only_what_the_page_showed_and_says_whose_answers_it_replaced(
    Session, tiny_project
):
    """With "relabel" ticked the bulk label wrote over every selected image: an answer given after
    the page was drawn, one shown as unlabeled because it was "ignore", and one that had the
    class already (now credited to whoever clicked), and the message said only "Labeled N"."""
    from db.models import IGNORED

    with Session() as session:
        ids = [i.id for i in queries.items(session, tiny_project.id, "pool")[:5]]
    with Session.begin() as session:
        queries.add_label(session, ids[1], 0, annotator="bob")
        queries.add_label(session, ids[2], 1, annotator="bob")
        queries.add_label(session, ids[3], IGNORED, annotator="bob")
    at, _ = _selection_panel_app(Session, tiny_project, 5)
    captions = [image.proto.imgs[0].caption.replace("\\", "") for image in at.get("image")]  # as typed
    assert captions == [
        f"#{ids[0]}: -",
        f"#{ids[1]}: 0",
        f"#{ids[2]}: 1",
        f"#{ids[3]}: ignored",
        f"#{ids[4]}: -",
    ]
    with Session.begin() as session:  # bob answers one of them after the page was drawn
        queries.add_label(session, ids[4], 0, annotator="bob")
    next(box for box in at.selectbox if box.key.startswith("bulk_class-")).set_value(1)
    at.checkbox(key="bulk_relabel").check()
    button(at, "bulk_apply").click().run()
    assert not at.exception
    with Session() as session:
        labels = queries.current_labels(session, tiny_project.id)
        owners = [queries.history(session, i)[-1].annotator for i in ids]
    assert [labels.get(i) for i in ids] == [1, 1, 1, 1, 0]
    assert owners == ["tester", "tester", "bob", "tester", "bob"]
    kind, text = at.session_state["latent_message"]
    assert kind == "success" and text.startswith("Labeled 3 images at once.")
    assert "2 of them replaced an earlier answer, 2 of those given by someone else" in text
    assert "1 had this label already and was left as it is." in text
    assert "1 was answered or changed after this page was drawn and was left as it is" in text


def test_generated_images_panel_shows_one_row_per_class(Session, tiny_project, tmp_path):
    from labeler.models import MODELS, save_checkpoint

    model = MODELS["m2"]((1, 8, 8), 2, device="cpu", seed=0)
    path = save_checkpoint(model, tmp_path / "m2.pt")
    fake_done_run(Session, tiny_project.id, model="m2", checkpoint=str(path))
    at = page_app("latent", tiny_project.id)
    assert not at.exception
    assert any("per class" in h.value for h in at.subheader)
    assert len(at.get("image")) == 2  # one image row per class


# Export --------------------------------------------------------------------------------------


def test_export_page_offers_the_data_set(Session, tiny_project):
    label_items(Session, tiny_project.id, 6)
    with Session.begin() as session:  # an "ignore" answer: not exported, and the count says so
        labeled = queries.current_labels(session, tiny_project.id)
        spare = next(i for i in queries.items(session, tiny_project.id, "pool") if i.id not in labeled)
        queries.add_label(session, spare, IGNORED, annotator="bob")
    at = page_app("export", tiny_project.id)
    assert at.markdown[0].value.startswith(
        "6 labeled images (1 more answered 'ignore', which is not exported)"
    )
    assert not at.get("download_button")
    at.button(key="export_prepare").click().run()
    assert not at.exception and not at.error
    keys = {b.proto.id for b in at.get("download_button")}
    assert len(keys) == 3  # zip, parquet, labels.csv (no model yet)
    files = at.session_state["export_files"]["paths"]
    zip_path = next(p for p in files if p.endswith("dataset.zip"))
    with zipfile.ZipFile(zip_path) as archive:
        assert "metadata.csv" in archive.namelist()
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 6


def test_two_exports_of_one_project_keep_their_own_files(Session, tiny_project):
    label_items(Session, tiny_project.id, 6)
    first, second = page_app("export", tiny_project.id), page_app("export", tiny_project.id)
    first.button(key="export_prepare").click().run()
    first_files = {Path(p).name: Path(p) for p in first.session_state["export_files"]["paths"]}
    first_labels = first_files["labels.csv"].read_bytes()
    label_items(Session, tiny_project.id, 8)  # two more answers before the second admin prepares
    second.button(key="export_prepare").click().run()
    assert not first.exception and not second.exception and not second.error
    second_files = {Path(p).name: Path(p) for p in second.session_state["export_files"]["paths"]}
    assert first_files["labels.csv"].parent != second_files["labels.csv"].parent
    assert first_files["labels.csv"].read_bytes() == first_labels  # untouched by the second export
    assert len(first_labels.decode().strip().splitlines()) == 1 + 6
    assert len(second_files["labels.csv"].read_text().strip().splitlines()) == 1 + 8
    # Preparing again replaces the session's own export only; a failed one leaves no folder.
    old = first_files["labels.csv"].parent
    first.button(key="export_prepare").click().run()
    assert not old.exists() and second_files["labels.csv"].exists()
    exports = export_ui.export_folder(tiny_project.id)
    before = set(exports.iterdir())

    def half_written(Session, project_id, folder, **kwargs):
        folder.mkdir(parents=True)
        (folder / "labels.csv").write_text("half")
        raise RuntimeError("boom")

    with mock.patch.object(export_ui.export, "export_all", side_effect=half_written):
        second.button(key="export_prepare").click().run()
    assert second.error and set(exports.iterdir()) == before
    # Stopped half-way (another click or page while it runs): nothing left either.
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    def stopped(Session, project_id, folder, **kwargs):
        folder.mkdir(parents=True)
        (folder / "labels.csv").write_text("half")
        raise StopException()

    with mock.patch.object(export_ui.export, "export_all", side_effect=stopped):
        second.button(key="export_prepare").click().run()
    assert set(exports.iterdir()) == before


def test_an_export_older_than_a_day_is_swept_when_another_is_prepared(Session, tiny_project, monkeypatch):
    label_items(Session, tiny_project.id, 6)
    monkeypatch.setattr(export_ui, "_last_sweep", {tiny_project.id: time.monotonic()})  # not on opening
    stale = export_ui.export_folder(tiny_project.id) / "20260101-000000-abcd"
    stale.mkdir(parents=True)
    (stale / "labels.csv").write_text("old")
    hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    recent = export_ui.export_folder(tiny_project.id) / f"{hour_ago.strftime(export_ui.STAMP)}-abcd"
    recent.mkdir()
    before_folders = export_ui.export_folder(tiny_project.id) / "labels.csv"  # the layout before
    before_folders.write_text("old")
    at = page_app("export", tiny_project.id)
    at.button(key="export_prepare").click().run()
    assert not at.exception and not stale.exists() and not before_folders.exists() and recent.exists()
    # A tab whose export was swept says so, rather than offering no downloads without a word.
    export_ui._discard(Path(at.session_state["export_files"]["folder"]))
    at.run()
    assert "prepare it again" in at.info[0].value and not at.get("download_button")


def test_the_export_page_sweeps_day_old_exports_when_it_opens_at_most_hourly(
    Session, tiny_project, monkeypatch
):
    exports = export_ui.export_folder(tiny_project.id)
    stale = exports / "20260101-000000-abcd"
    stale.mkdir(parents=True)
    hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    recent = exports / f"{hour_ago.strftime(export_ui.STAMP)}-abcd"
    recent.mkdir()
    at = page_app("export", tiny_project.id)
    assert not at.exception and not stale.exists() and recent.exists()
    stale.mkdir()  # left by another process since: the next sweep is an hour away
    page_app("export", tiny_project.id)
    assert stale.exists()
    monkeypatch.setattr(export_ui, "SWEEP_EVERY_S", 0)
    page_app("export", tiny_project.id)
    assert not stale.exists() and recent.exists()
    # The opening session's own export stays, however old: its buttons are on its screen.
    stale.mkdir()
    at.session_state["export_files"] = {"project": tiny_project.id, "folder": str(stale), "paths": []}
    at.run()
    assert not at.exception and stale.exists()
    page_app("export", tiny_project.id)  # another session's page
    assert not stale.exists()


# Project -------------------------------------------------------------------------------------


def _write_images(folder, n=6, broken=False):
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            value = 40 if cls == "cat" else 200
            pixels = np.full((10, 10), value + i, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")
    if broken:
        (folder / "cat" / "broken.png").write_bytes(b"not an image")


def test_project_page_creates_a_project_from_a_folder(Session, tiny_project, tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_IMPORT_ROOT", str(tmp_path))  # server folders only under it
    _write_images(tmp_path / "pets", broken=True)
    at = page_app("project", tiny_project.id)
    at.radio(key="new_project_kind").set_value("folder").run()  # the form shows the folder field
    at.text_input(key="new_project_name").input("pets")
    at.text_input(key="new_project_folder").input(str(tmp_path / "pets"))
    at.button[-1].click().run()  # the form's submit button
    assert not at.exception and not at.error
    with Session() as session:
        pets = queries.get_project(session, "pets")
        assert queries.class_names(session, pets.id) == ["cat", "dog"]
    assert at.session_state["project_id"] == pets.id
    assert "Created the project" in at.success[0].value
    # A few images: the audit set of 50 asked for is capped, and the page says so.
    with Session() as session:
        n_audit = queries.count_items(session, pets.id, "audit")
    assert n_audit < 50 and f"The audit set has {n_audit} images, not 50" in at.success[0].value
    # The import report names the skipped file.
    assert "broken.png" in at.dataframe[0].value["file"].iloc[0]
    # Switching back.
    at.selectbox(key="project_choice").set_value(tiny_project.id).run()
    assert at.session_state["project_id"] == tiny_project.id


def test_the_project_page_counts_ignore_answers_apart_from_labels(Session, tiny_project):
    """It said "297 labeled" where the Label bar, the Export page and the CLI said 296 labeled and
    1 ignored (an exploratory session)."""
    from db.models import IGNORED

    with Session.begin() as session:
        first, second = queries.items(session, tiny_project.id, "pool")[:2]
        queries.add_label(session, first.id, 0, annotator="ann")
        queries.add_label(session, second.id, IGNORED, annotator="ann")
    at = page_app("project", tiny_project.id)
    assert "; 1 labeled + 1 ignored;" in " ".join(m.value for m in at.markdown)


def test_project_page_says_what_is_wrong_in_one_sentence(tiny_project, tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_IMPORT_ROOT", str(tmp_path))
    at = page_app("project", tiny_project.id)
    at.radio(key="new_project_kind").set_value("folder").run()  # the form shows the folder field
    at.text_input(key="new_project_name").input("nothing")
    at.text_input(key="new_project_folder").input(str(tmp_path / "missing"))
    at.button[-1].click().run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    at.radio(key="new_project_kind").set_value("builtin").run()
    at.text_input(key="new_project_name").input("tiny")  # taken
    at.button[-1].click().run()
    assert "exists already" in at.error[0].value


def test_the_project_form_shows_only_the_chosen_sources_fields(Session, tiny_project, tmp_path, monkeypatch):
    """With every field shown, a folder typed while "From" stayed on the built-in set imported
    the built-in digits without a word (exploratory)."""
    monkeypatch.setenv("LABELER_IMPORT_ROOT", str(tmp_path))
    _write_images(tmp_path / "pets")
    at = page_app("project", tiny_project.id)
    form_keys = lambda: {w.key for w in [*at.text_input, *at.selectbox, *at.number_input] if w.key}
    assert at.radio(key="new_project_kind").value == "builtin"
    assert "new_project_builtin" in form_keys()
    assert not {"new_project_folder", "new_project_classes", "new_project_audit"} & form_keys()
    assert not at.get("file_uploader")
    at.radio(key="new_project_kind").set_value("folder").run()
    assert {"new_project_folder", "new_project_classes", "new_project_audit"} <= form_keys()
    assert "new_project_builtin" not in form_keys() and not at.get("file_uploader")
    at.radio(key="new_project_kind").set_value("upload").run()
    assert len(at.get("file_uploader")) == 1 and "new_project_folder" not in form_keys()
    # A folder typed, then "From" set back to the built-in set: the folder's field is gone.
    at.radio(key="new_project_kind").set_value("folder").run()
    at.text_input(key="new_project_folder").input(str(tmp_path / "pets"))
    at.radio(key="new_project_kind").set_value("builtin").run()
    assert "new_project_folder" not in form_keys()
    at.radio(key="new_project_kind").set_value("folder").run()
    at.text_input(key="new_project_name").input("pets")
    at.text_input(key="new_project_folder").input(str(tmp_path / "pets"))
    at.button[-1].click().run()
    assert not at.exception and not at.error
    with Session() as session:
        assert queries.class_names(session, queries.get_project(session, "pets").id) == ["cat", "dog"]


def test_an_upload_error_names_the_uploaded_file_not_the_servers_folder(tmp_path):
    saved = project.data_dir() / "uploads" / "4c83e1a6.zip"
    text = f"No image in {saved} could be imported (1 files skipped, e.g. inner.zip: not an image file)."
    shown = project.named_as_uploaded(text, f"zip:{saved}", SimpleNamespace(name="photos.zip"))
    assert (
        shown
        == "No image in photos.zip could be imported (1 files skipped, e.g. inner.zip: not an image file)."
    )
    assert str(saved.parent) not in shown


def test_uploaded_zip_is_saved_under_the_data_folder_and_imports(Session, tmp_path):
    _write_images(tmp_path / "zipme")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in (tmp_path / "zipme").rglob("*.png"):
            archive.write(path, arcname=str(path.relative_to(tmp_path / "zipme")))
    source = project.save_upload(buffer.getvalue())
    assert source.startswith("zip:") and "uploads" in source
    created = projects.create_project(Session, "zipped", source)
    with Session() as session:
        assert queries.count_items(session, created.id) == 12
    # Shown with the uploaded file's name, not the random one of the copy removed after the import.
    own = SimpleNamespace(name="photos.zip")
    project.record_uploaded_name(created.id, f"zip:{tmp_path / 'own.zip'}", own)  # the user's own zip
    with Session() as session:
        assert session.get(Project, created.id).source == source
    project.record_uploaded_name(created.id, source, own)
    with Session() as session:
        assert session.get(Project, created.id).source == "upload:photos.zip"


def test_a_new_annotator_name_starts_clean_as_a_login_does(Session, tiny_project):
    """Without accounts a new name is another person: the last one's undo history, held grid
    page, choices and History changes not saved stay theirs (a login or logout clears them the
    same way; the page warns about the changes first); the same name typed again keeps them."""
    from labeler import answers

    at = page_app("project", tiny_project.id, annotator="alice")
    at.session_state[f"ledger-{tiny_project.id}"] = answers.Ledger(entries=[[1]])
    at.session_state[f"grid-page-{tiny_project.id}"] = [1, 2, 3]
    at.session_state[f"box-undone-{tiny_project.id}"] = [["a-1", 1]]  # a U the server took back
    at.session_state[f"hist-chosen-{tiny_project.id}"] = {(1, 1): "dark"}  # a History change
    at.text_input(key="annotator_input").input("alice").run()
    assert f"grid-page-{tiny_project.id}" in at.session_state
    # The page says before a new name drops the History change (nothing asks: a name is typed).
    assert "History changes not saved yet: 1. Another name drops them" in at.warning[0].value
    assert len(at.warning) == 1
    at.session_state[f"grid-choices-{tiny_project.id}"] = {
        2: {"page": "1,2,3", "value": 0}
    }  # a grid tile set
    at.run()
    assert "Grid tiles set and not accepted: 1. Another name drops them" in at.warning[1].value
    at.text_input(key="annotator_input").input("bob").run()
    assert at.session_state["annotator"] == "bob"
    assert f"ledger-{tiny_project.id}" not in at.session_state
    assert f"grid-page-{tiny_project.id}" not in at.session_state
    assert f"box-undone-{tiny_project.id}" not in at.session_state
    assert not at.warning


def test_annotator_name_is_used_for_new_labels(Session, tiny_project):
    at = page_app("project", tiny_project.id)
    at.text_input(key="annotator_input").input("alice").run()
    assert at.session_state["annotator"] == "alice"
    assert project.parse_classes("cat, dog\nbird,") == ["cat", "dog", "bird"]
    # The name is what the Label page records: one answer from a grid page.
    label = page_app("label", tiny_project.id, annotator=at.session_state["annotator"])
    label.radio(key="label_mode").set_value("Grid").run()
    next(box for box in label.selectbox if box.key.startswith("grid-")).set_value(1)
    button(label, "accept_grid").click().run()
    with Session() as session:
        events = session.query(LabelEvent).all()
    assert [(e.annotator, e.class_index) for e in events] == [("alice", 1)]


def _chart_selection(tree, item_ids: list[int]):
    """The widget state a browser showing `tree` sends for its latent map with these points lassoed."""
    import json

    from streamlit.proto.WidgetStates_pb2 import WidgetState

    state = WidgetState(id=tree.get("plotly_chart")[0].proto.id)
    points = [{"customdata": [i, 0.9]} for i in item_ids]
    selection = {"selection": {"points": points, "point_indices": [], "box": [], "lasso": []}}
    state.json_value = json.dumps(json.dumps(selection))  # the chart's value is JSON text, sent as JSON
    return state


def _send(at, tree, selection: list[int]):
    """What the browser showing `tree` sends, with `selection` lassoed on the map."""
    states = tree.get_widget_states()
    states.widgets.append(_chart_selection(tree, selection))
    return at._run(widget_state=states)


def test_a_bulk_label_stores_only_images_the_button_showed_and_the_map_still_selects(Session, tiny_project):
    """Lasso A, then lasso B and click "Label" before B's images reach the screen: the click
    comes from A's button, while the server has already drawn B's. Streamlit would run the click
    with B's images (nobody has seen them); the button is keyed by its images, so the click is
    A's, and as the map no longer selects A, nothing is stored and the page says why."""
    from ui_helpers import on_screen

    fake_done_run(Session, tiny_project.id)
    with Session() as session:
        pool = [i.id for i in queries.items(session, tiny_project.id, "pool")]
    a, b = pool[:3], pool[3:8]
    at = page_app("latent", tiny_project.id)
    at.session_state[f"bulk-chosen-{tiny_project.id}"] = "0"  # chosen before: the selector starts on it
    _send(at, on_screen(at), a)
    assert at.subheader[0].value == "3 selected"
    seen = on_screen(at)  # A's images and A's button on screen
    _send(at, seen, b)  # the person lassos B: the server draws B's images and button
    assert at.subheader[0].value == "5 selected"
    button(seen, "bulk_apply").click()
    _send(at, seen, b)  # ... and clicks the button still on screen, A's
    assert not at.exception
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}
    assert "selection changed" in at.error[0].value
    # Clicked on B's button, once B's images are on screen: B, and only B, is labeled.
    seen = on_screen(at)
    button(seen, "bulk_apply").click()
    _send(at, seen, b)
    with Session() as session:
        assert set(queries.current_labels(session, tiny_project.id)) == set(b)


def test_a_bulk_label_from_a_map_redrawn_meanwhile_stores_nothing(Session, tiny_project):
    """A run finishes between the lasso and the click: the map stays on the selection's run (it
    was replaced, and the selection with it) and offers the new one. Shown (its points moved),
    the new map selects nothing; a click from the page still on screen stores nothing, and the
    page says why."""
    from ui_helpers import on_screen

    fake_done_run(Session, tiny_project.id)
    with Session() as session:
        a = [i.id for i in queries.items(session, tiny_project.id, "pool")[:3]]
    at = page_app("latent", tiny_project.id)
    at.session_state[f"bulk-chosen-{tiny_project.id}"] = "0"  # chosen before: the selector starts on it
    _send(at, on_screen(at), a)
    seen = on_screen(at)
    assert seen.subheader[0].value == "3 selected"
    from sqlalchemy import update

    from db.models import Prediction

    run_id = fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:  # the new run's latent points lie elsewhere
        session.execute(update(Prediction).where(Prediction.run_id == run_id).values(x=-Prediction.x))
    at.run()
    assert at.subheader[0].value == "3 selected"  # the map and the selection stay
    assert f"Run {run_id} has finished" in at.info[0].value
    at.button(key="latent_newest").click().run()
    assert not at.subheader  # the new map selects nothing
    button(seen, "bulk_apply").click()
    _send(at, seen, a)
    assert not at.exception
    with Session() as session:
        assert queries.current_labels(session, tiny_project.id) == {}
    assert "selection changed" in at.error[0].value


def test_a_bulk_label_of_two_images_one_labeled_already_counts_in_the_singular(Session, tiny_project):
    """It said "Labeled 1 images at once. 1 already had a label and were left as they are"."""
    from ui_helpers import on_screen

    fake_done_run(Session, tiny_project.id)
    with Session() as session:
        pool = [i.id for i in queries.items(session, tiny_project.id, "pool")]
    with Session.begin() as session:
        queries.add_label(session, pool[0], 0, annotator="bob")
    at = page_app("latent", tiny_project.id)
    at.session_state[f"bulk-chosen-{tiny_project.id}"] = "0"  # chosen before: the selector starts on it
    _send(at, on_screen(at), pool[:2])
    seen = on_screen(at)
    button(seen, "bulk_apply").click()
    _send(at, seen, pool[:2])
    assert not at.exception
    (shown,) = [m.value.replace("\\", "") for m in at.success]  # as_typed escapes Markdown
    assert shown.startswith("Labeled 1 image at once. 1 already had a label and was left as it is (tick")


def test_the_learning_curve_runs_from_fewer_labels_to_more():
    """A run after an undone bulk label, trained on fewer labels, drew the line back over itself."""
    import pandas as pd

    from labeler.ui import progress

    frame = pd.DataFrame(
        {
            "run_id": [1, 2, 3, 4],
            "model": ["m2", "m2", "m2", "sslgan"],
            "labels": [10, 300, 20, 5],
            "accuracy": [0.5, 0.9, 0.6, 0.4],
            "low": [0.4, 0.8, 0.5, 0.3],
            "high": [0.6, 0.95, 0.7, 0.5],
        }
    )
    m2, sslgan = progress.curve_figure(frame, "test split").data
    assert list(m2.x) == [10, 20, 300] and list(m2.y) == [0.5, 0.6, 0.9] and list(m2.customdata) == [1, 3, 2]
    assert list(sslgan.x) == [5]


def test_the_words_for_labels_since_the_last_run(Session, tiny_project):
    """It said "0 new labels since the last run" with no run, and counted a run killed with its
    server as the last run while the count passed over it."""
    from db.models import INTERRUPTED, Run
    from labeler.ui import parts

    run_id = running_run(Session, tiny_project.id)
    with Session.begin() as session:
        session.get(Run, run_id).status = INTERRUPTED
    label_items(Session, tiny_project.id, 1)
    with Session() as session:
        assert parts.since_last_run_words(session, tiny_project.id) == "No run yet, 1 label to train on"
    fake_done_run(Session, tiny_project.id)
    with Session.begin() as session:  # given after that run began
        item = next(
            i
            for i in queries.items(session, tiny_project.id, "pool")
            if i.id not in queries.current_labels(session, tiny_project.id)
        )
        queries.add_label(session, item.id, 0)
    with Session() as session:
        assert parts.since_last_run_words(session, tiny_project.id) == "1 new label since the last run"


def test_a_waiting_run_starts_the_worker_whatever_page_is_open(Session, tiny_project, _test_worker):
    """app.py asks before every page: only Label and Train started the worker, so after a restart
    a queued run waited while only the Latent space page was open (an exploratory session)."""
    from streamlit.testing.v1 import AppTest

    script = "from labeler.ui import parts\nparts.wake_worker_if_runs_wait()"
    AppTest.from_string(script, default_timeout=60).run()
    assert not _test_worker  # nothing waits: no worker (and no torch) for an idle project
    running_run(Session, tiny_project.id)
    AppTest.from_string(script, default_timeout=60).run()
    assert _test_worker


def test_start_while_a_run_waits_says_the_waiting_run_changed(Session, tiny_project):
    """A request while one trains queues at most one follow-up: a second Start gives the waiting
    run its model and settings, and both notices read "Run 11 is queued" (an exploratory session)."""
    label_items(Session, tiny_project.id, 6)
    running_run(Session, tiny_project.id)  # training elsewhere: the follow-up waits
    at = page_app("train", tiny_project.id)
    at.selectbox(key="train_model").set_value("m2").run()
    at.button(key="train_start").click().run()
    first = at.success[0].value
    assert first.startswith("Run ") and "is queued" in first
    run_id = int(first.split()[1])
    at.selectbox(key="train_model").set_value("supervised").run()
    at.button(key="train_start").click().run()
    assert at.success[0].value.startswith(f"Run {run_id} was already waiting; it now trains supervised")
    assert "(it was m2)" in at.success[0].value.replace("\\", "")  # AppTest escapes the markdown


def test_the_import_report_counts_files_and_folders():
    assert project.skipped_words(["a.txt"]) == "1 file was skipped when importing."
    assert project.skipped_words(["a.txt", "b.txt"]) == "2 files were skipped when importing."
    assert project.skipped_words(["empty/"]) == "1 folder was skipped when importing."
    assert project.skipped_words(["a.txt", "empty/"]) == "1 file and 1 folder were skipped when importing."


def test_the_import_report_lists_the_first_skipped_files_and_downloads_them_all(Session, tiny_project):
    """Every skipped file was loaded and sent to the browser on every rerun of the page where
    projects are switched (a folder with a sidecar file per image skips one per image)."""
    from db.models import ImportIssue
    from labeler.ui.project import ISSUES_SHOWN, _import_report_csv

    n = ISSUES_SHOWN + 37
    with Session.begin() as session:
        session.add_all(
            ImportIssue(project_id=tiny_project.id, path=f"img/{i:04d}.json", reason="not an image file")
            for i in range(n)
        )
        session.add(ImportIssue(project_id=tiny_project.id, path="empty/", reason="no image"))
    at = page_app("project", tiny_project.id)
    assert not at.exception
    (warning,) = at.warning
    assert warning.value == f"{n} files and 1 folder were skipped when importing."
    (table,) = at.dataframe
    assert len(table.value) == ISSUES_SHOWN and table.value.iloc[0].file == "img/0000.json"
    assert f"The first {ISSUES_SHOWN} of {n + 1} are listed here" in " ".join(c.value for c in at.caption)
    frame = pd.read_csv(io.BytesIO(_import_report_csv(tiny_project.id)))
    assert len(frame) == n + 1 and frame.file.iloc[-1] == "empty/"
