"""AppTest helpers: run one page with a tiny project, fake a finished run, label items."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from db import queries
from db.models import DONE, Prediction, Run, utcnow
from tests.conftest import wait_for  # noqa: F401 - re-exported to the page tests

APP = Path(__file__).resolve().parents[2] / "app.py"
PASSWORD = "a long password"  # of every account the `accounts` fixture (conftest.py) adds

PAGES = {
    "label": "label_page",
    "train": "train_page",
    "progress": "progress_page",
    "latent": "latent_page",
    "export": "export_page",
    "project": "project_page",
}


def page_app(module: str, project_id: int, annotator: str = "tester") -> AppTest:
    """An AppTest of one page (the navigation itself is covered by test_label_page)."""
    at = AppTest.from_string(
        f"from labeler.ui.{module} import {PAGES[module]}\n{PAGES[module]}()", default_timeout=60
    )
    at.session_state["project_id"] = project_id
    at.session_state["annotator"] = annotator
    return at.run()


def app_run(project_id: int) -> AppTest:
    """An AppTest of app.py (login gate and navigation included), run once on `project_id`."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["project_id"] = project_id
    return at.run()


def log_in(at: AppTest, name: str, password: str = PASSWORD) -> AppTest:
    """Fill in and send the login form."""
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    return at.button[0].click().run()


def signed_in_as(Session, at: AppTest, name: str) -> AppTest:
    """`at`'s session as the login form leaves it for the account `name` (without the login's
    own run, which starts on the Label page's defaults)."""
    from db import users
    from labeler.ui import common

    with Session() as session:
        stored = users.get_user(session, name)
    at.session_state[common.USER_KEY] = {
        "name": name,
        "role": stored.role,
        "hash_id": common.fingerprint(stored.password_hash),
    }
    return at


def box_data(at: AppTest) -> dict:
    """What the Label page sent to its one-image box: items, classes with keys, notices."""
    import json

    return json.loads(at.get("bidi_component")[0].proto.json)


def running_run(Session, project_id: int, **extra) -> int:
    """The id of an m2 run shown as training on another worker (a Cancel button for it)."""
    from db.models import RUNNING, Run, utcnow

    with Session.begin() as session:
        run = Run(
            project_id=project_id,
            model="m2",
            status=RUNNING,
            started_at=utcnow(),
            heartbeat_at=utcnow(),
            worker="elsewhere",
            **extra,
        )
        session.add(run)
        session.flush()
        return run.id


def fake_done_run(
    Session,
    project_id: int,
    model: str = "m2",
    accuracy: float = 0.75,
    labels_used: int = 4,
    audit: tuple[float, float, float, int] | None = None,
    checkpoint: str | None = None,
) -> int:
    """A DONE run whose prediction for each item is its truth (class 0 where unknown), with the
    item's row as its queue score and (row, truth) as its latent point."""
    with Session.begin() as session:
        now = utcnow()
        run = Run(
            project_id=project_id,
            model=model,
            status=DONE,
            created_at=now,
            started_at=now,
            finished_at=now,
            progress=1.0,
            labels_used=labels_used,
            test_accuracy=accuracy,
            seconds=1.0,
            checkpoint=checkpoint,
        )
        if audit is not None:
            run.test_accuracy = None
            run.audit_accuracy, run.audit_low, run.audit_high, run.audit_n = audit
        session.add(run)
        session.flush()
        for item in queries.items(session, project_id):
            guess = item.truth or 0
            session.add(
                Prediction(
                    run_id=run.id,
                    item_id=item.id,
                    predicted=guess,
                    confidence=0.9,
                    entropy=0.3,
                    margin=0.8,
                    score=float(item.row),
                    x=float(item.row),
                    y=float(guess),
                )
            )
        return run.id


def label_items(Session, project_id: int, n: int, annotator: str = "tester") -> list[int]:
    """Label the first n pool items with their true class; return their ids."""
    with Session.begin() as session:
        pool = queries.items(session, project_id, "pool")[:n]
        for item in pool:
            queries.add_label(session, item.id, item.truth, annotator=annotator)
        return [item.id for item in pool]


def button(at: AppTest, prefix: str):
    """The one button whose key is `prefix` or `prefix-<tag>` (buttons whose arguments change
    with what the page shows get a key per content: see `common.tag`)."""
    (found,) = [b for b in at.button if b.key == prefix or b.key.startswith(prefix + "-")]
    return found


def on_screen(at: AppTest):
    """The page as this run drew it, with every widget's value as it is now: what the browser
    keeps showing (and sends) until a newer run's page reaches it."""
    from streamlit.testing.v1.element_tree import InitialValue, Widget

    tree = at._tree
    for node in tree:
        if isinstance(node, Widget) and isinstance(getattr(node, "_value", None), (InitialValue, type(None))):
            node._value = node.value
    return tree


def send_from(at: AppTest, tree) -> AppTest:
    """Run the page as a browser still showing `tree` (see `on_screen`) makes it run: with the
    values and clicks of that page's widgets. A newer page has been drawn on the server, but it
    has not reached the screen yet when the person acts on the old one."""
    return at._run(widget_state=tree.get_widget_states())
