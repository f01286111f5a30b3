"""The page benchmark's setup (`latency --pages`) through the app's own worker and queue."""

from __future__ import annotations

import db
from db import queries
from db.models import DONE, Run
from labeler.latency import _prepare_project


def test_the_page_benchmark_prepares_a_project_with_one_finished_run_and_answers():
    project_id, n_items, run_id = _prepare_project("digits", "supervised", budget_s=1, labels=20, answers=2)
    Session = db.session_factory(db.get_engine())
    with Session() as session:
        assert session.get(Run, run_id).status == DONE
        assert n_items == queries.count_items(session, project_id)
        assert len(queries.current_labels(session, project_id)) == 22  # 20 before the run, 2 after
