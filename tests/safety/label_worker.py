"""A stand-in annotator process for the crash and concurrency tests (not collected by pytest).

    python tests/safety/label_worker.py URL PROJECT_ID ANNOTATOR N [GO_FILE]

Labels up to N images the way the label page does (`next_items(annotator=...)`, then one
committed `add_label` transaction, retried while the database is locked) and prints
"ack <item_id>" only after each commit, as the page shows "Saved." only after it. With
GO_FILE, prints "ready" and waits for that file so several workers start together.
"""

import sys
import time
from pathlib import Path

import db
from db import queries
from labeler import queue


def main(url: str, project_id: int, annotator: str, n: int, go_file: str | None = None) -> None:
    Session = db.session_factory(db.make_engine(url))
    if go_file:
        print("ready", flush=True)
        while not Path(go_file).exists():
            time.sleep(0.01)
    for _ in range(n):
        with Session.begin() as session:  # as the Label page: the claim is committed
            picked = queue.next_items(session, project_id, k=1, annotator=annotator)
            n_classes = len(queries.class_names(session, project_id))
        if not picked:
            break
        item_id = picked[0][0].id

        def commit(item_id: int = item_id, n_classes: int = n_classes) -> None:
            with Session.begin() as session:
                queries.add_label(session, item_id, item_id % n_classes, annotator=annotator)

        db.retrying(commit)
        print(f"ack {item_id}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
