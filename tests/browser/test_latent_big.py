"""The Latent space page of a project with more points than it draws as plotly points: its own
server, so the big project does not join the shared one of test_app."""

from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("playwright")

from db import queries
from db import runs as run_queries
from labeler import config
from labeler.ui import latent
from tests.browser.conftest import choose_bulk_class, draw_lasso, image_set, lasso_outline, running_app


@pytest.fixture(scope="module")
def big_map_server(tmp_path_factory):
    import db
    from labeler import projects

    data_dir = tmp_path_factory.mktemp("big-map-data")
    engine = db.make_engine(f"sqlite:///{data_dir / 'labeler.db'}")
    Session = db.session_factory(engine)
    n = latent.SAMPLE_POINTS + 600
    with config.data_dir_set(data_dir):  # create_project writes pixels there
        # No audit set: its images are not on the map (every image is, here).
        project = projects.create_project(
            Session, "big map", "test", images=image_set(n=n, test=0, seed=3), audit_size=0
        )
    try:
        with running_app(data_dir) as url:
            yield {"url": url, "Session": Session, "project": project, "n": n}
    finally:
        engine.dispose()


def _done_run(Session, project_id: int, n: int, seed: int) -> int:
    """A finished run whose map puts the n images at random places (seeded)."""
    import numpy as np

    from db.models import DONE, Prediction, Run, utcnow

    rng = np.random.default_rng(seed)
    with Session.begin() as session:
        now = utcnow()
        run = Run(project_id=project_id, model="m2", status=DONE, created_at=now, started_at=now)
        run.finished_at, run.progress, run.labels_used = now, 1.0, 0
        session.add(run)
        session.flush()
        for item, (x, y) in zip(queries.items(session, project_id), rng.random((n, 2))):
            session.add(
                Prediction(
                    run_id=run.id,
                    item_id=item.id,
                    predicted=int(item.truth),
                    confidence=0.9,
                    entropy=0.3,
                    margin=0.8,
                    score=0.5,
                    x=float(x),
                    y=float(y),
                )
            )
        return run.id


def test_a_lasso_on_a_big_map_selects_the_points_drawn_only_in_its_picture(big_map_server, page):
    """Above `latent.SAMPLE_POINTS` the map is a PNG of every point with a sample drawn on top:
    a lasso still selects every point inside it, drawn as a plotly point or not."""
    import numpy as np

    Session, project, n = big_map_server["Session"], big_map_server["project"], big_map_server["n"]
    run_id = _done_run(Session, project.id, n, seed=0)
    page.goto(f"{big_map_server['url']}/latent?project={project.id}")
    page.get_by_text(f"{n} images, 2-D projection").wait_for()
    page.locator(".js-plotly-plot .nsewdrag").first.wait_for()
    time.sleep(1.0)  # let plotly finish laying out
    drawn = page.evaluate(
        "() => { const p = document.querySelector('.js-plotly-plot'); const out = [];"
        " for (const cd of p.calcdata) for (const c of cd) out.push([c.x, c.y]); return out; }"
    )
    assert len(drawn) == latent.SAMPLE_POINTS
    assert page.evaluate("() => document.querySelector('.js-plotly-plot')._fullLayout.images.length") == 1
    draw_lasso(page, [(0.3, 0.3), (0.6, 0.3), (0.6, 0.7), (0.3, 0.7), (0.3, 0.31)])
    heading = page.get_by_text(re.compile(r"^\d+ selected$"))
    heading.wait_for()
    lasso_x, lasso_y = lasso_outline(page)
    with Session() as session:
        points = run_queries.predictions_frame(session, run_id)
    inside = latent.inside_polygon(points["x"], points["y"], lasso_x, lasso_y)
    drawn_x, drawn_y = np.array(drawn).T
    drawn_inside = int(latent.inside_polygon(drawn_x, drawn_y, lasso_x, lasso_y).sum())
    assert int(heading.inner_text().split()[0]) == int(inside.sum()) > drawn_inside
    # The bulk label stores exactly those images, also the ones only the picture shows.
    choose_bulk_class(page, "dark")
    page.locator("[class*='st-key-bulk_apply-'] button").click()
    page.get_by_text(re.compile(r"Labeled \d+ images at once")).wait_for()
    with Session() as session:
        labeled = set(queries.current_labels(session, project.id))
    assert labeled == {int(i) for i in points["item_id"][inside]}


def _lassoed(big_map_server, page, seed: int):
    """A new finished run's map open, with a lasso drawn on it: (the run's id, the "N selected" heading)."""
    Session, project, n = big_map_server["Session"], big_map_server["project"], big_map_server["n"]
    run_id = _done_run(Session, project.id, n, seed=seed)
    page.goto(f"{big_map_server['url']}/latent?project={project.id}")
    page.get_by_text(f"Run {run_id} (m2): {n} images").wait_for()
    draw_lasso(page, [(0.3, 0.3), (0.6, 0.3), (0.6, 0.7), (0.3, 0.7), (0.3, 0.31)])
    heading = page.get_by_text(re.compile(r"^\d+ selected$"))
    heading.wait_for()
    return run_id, heading


def test_a_run_finishing_under_a_selection_keeps_the_map_and_the_selection(big_map_server, page):
    """With retraining every 10 labels, a run finished while a person had a lasso drawn: the next
    rerun (choosing the class) drew the new run's map, and the selection, its thumbnails and the
    button were gone without a word. The map stays; the page offers the newer run."""
    Session, project, n = big_map_server["Session"], big_map_server["project"], big_map_server["n"]
    first, heading = _lassoed(big_map_server, page, seed=1)
    selected = heading.inner_text()
    newer = _done_run(Session, project.id, n, seed=2)
    choose_bulk_class(page, "dark")  # a rerun, as in the session that found it
    page.get_by_text(f"Run {newer} has finished: the map stays on run {first}").wait_for()
    assert heading.inner_text() == selected
    assert page.get_by_text(f"Run {first} (m2): {n} images").is_visible()
    page.get_by_role("button", name=f"Show run {newer}").click()
    page.get_by_text(f"Run {newer} (m2): {n} images").wait_for()


def test_a_label_given_anywhere_under_a_selection_keeps_it(big_map_server, page):
    """Streamlit tells a chart by its whole figure and labeled points are crosses: a label given
    by anyone, anywhere, made a new chart, and at the next click (choosing the class) the
    selection, its thumbnails and the button vanished (an exploratory session, 4 of 4 while
    another person labeled). The map stays as drawn while something is selected; the bulk label
    leaves the image answered meanwhile as it is."""
    Session, project = big_map_server["Session"], big_map_server["project"]
    run_id, heading = _lassoed(big_map_server, page, seed=4)
    selected = int(heading.inner_text().split()[0])
    lasso_x, lasso_y = lasso_outline(page)
    with Session() as session:
        points = run_queries.predictions_frame(session, run_id)
        labeled = set(queries.current_labels(session, project.id))
    inside = {
        int(i) for i in points["item_id"][latent.inside_polygon(points["x"], points["y"], lasso_x, lasso_y)]
    }
    outside = sorted(set(points["item_id"]) - inside - labeled)
    inside_open = sorted(inside - labeled)
    with Session.begin() as session:  # another person labels one image outside it and one inside
        queries.add_label(session, int(outside[0]), 1, annotator="bob")
        queries.add_label(session, int(inside_open[0]), 1, annotator="bob")
    choose_bulk_class(page, "dark")  # a rerun: the selection was gone here
    assert heading.inner_text() == f"{selected} selected"
    page.locator("[class*='st-key-bulk_apply-'] button").click()
    page.get_by_text(re.compile(r"Labeled \d+ images at once")).wait_for()
    with Session() as session:
        now = queries.current_labels(session, project.id)
    assert now[int(inside_open[0])] == now[int(outside[0])] == 1  # bob's answers stand
    assert all(now[i] == 0 for i in inside_open[1:])  # dark
