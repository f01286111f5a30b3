"""`python -m labeler ...`: headless use for benchmarks, checks and scripts.

Every command prints human-readable lines first and, where useful, one JSON line last.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys

from tqdm import tqdm

from .config import device_arg  # torch only once a --device is given

# Modules that add their own sub-commands through `register(subparsers)`.
# They import torch only when a command runs, so `--help`, `import` and `projects` start quickly.
_REGISTERING_MODULES = [
    "labeler.simulate",
    "labeler.benchmark",
    "labeler.latency",
    "labeler.bigbench",
    "labeler.millionbench",
]


def _session_factory(existing: bool = False):
    """Sessions on the configured database; with `existing`, a SQLite database that is not there
    is refused rather than made: `projects` and `export` on a mistyped LABELER_DATA_DIR created an
    empty one without a word and then found no project (an exploratory session)."""
    import db
    from labeler.config import db_url, sqlite_file

    path = sqlite_file(db_url()) if existing else None
    if path is not None and not path.exists():
        setting = "LABELER_DB_URL" if os.environ.get("LABELER_DB_URL") else "LABELER_DATA_DIR"
        raise ValueError(
            f"There is no labeler database at {path}; check {setting} (the app or "
            "`python -m labeler import` makes one)."
        )
    return db.session_factory(db.get_engine())


def _check_out(out: str, what: str) -> None:
    """An empty --out is refused: `export --out ''` wrote into the current folder (exploratory)."""
    if not str(out).strip():
        raise ValueError(f"--out is empty; give it {what}.")


def _progress_bar(description: str):
    bar = tqdm(desc=description, unit="img", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_import(args) -> int:
    from . import projects

    Session = _session_factory()
    classes = [c for c in (args.classes or "").split(",") if c.strip()]
    bar, update = _progress_bar(f"Reading {args.source}")
    try:
        project = projects.create_project(
            Session, args.project, args.source, classes=classes, audit_size=args.audit_size, progress=update
        )
    finally:
        bar.close()
    from db import queries
    from db.models import AUDIT, TEST

    with Session() as session:
        issues = queries.import_issues(session, project.id)
        names = queries.class_names(session, project.id)
        n_items = queries.count_items(session, project.id)
        n_audit = queries.count_items(session, project.id, AUDIT)
        n_test = queries.count_items(session, project.id, TEST)
    for issue in issues:
        print(f"skipped {issue.path}: {issue.reason}")
    for note in (projects.capped_audit_note(args.audit_size, n_audit, n_test), projects.case_note(names)):
        if note:  # the app says them too
            print(note)
    print(
        json.dumps(
            {
                "project": project.name,
                "items": n_items,
                "skipped": len(issues),
                "classes": names,
                "audit": n_audit,
            },
            ensure_ascii=False,
        )
    )
    return 0


def cmd_export(args) -> int:
    from db import queries

    from . import export

    _check_out(args.out, "a folder, as in --out export/")
    Session = _session_factory(existing=True)
    with Session() as session:
        project = queries.get_project(session, args.project)
    if project is None:
        raise ValueError(
            f"There is no project named {args.project!r}; `python -m labeler projects` lists them."
        )
    notes: list[str] = []
    written = export.export_all(Session, project.id, args.out, what=args.what, notes=notes, run_id=args.run)
    for path in written:
        print(f"wrote {path}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"project": project.name, "files": [str(p) for p in written]}))
    return 0


def cmd_worker(args) -> int:
    import logging

    import torch

    from .runspec import check_threads
    from .worker import Worker, stopped_by_sigterm

    if args.threads is not None:
        torch.set_num_threads(check_threads(args.threads))
    if not 0.1 <= args.poll_s <= 3600:  # -1 and 0 were taken (0: a busy loop on the database)
        raise ValueError(f"--poll-s must be between 0.1 and 3600 seconds, got {args.poll_s:g}.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    worker = Worker(_session_factory(), device=args.device, name=args.name, poll_s=args.poll_s)
    print(f"worker {worker.name} on {worker.device}; waiting for queued runs (Ctrl-C stops)", flush=True)
    try:
        with stopped_by_sigterm():
            processed = worker.run_forever(until_idle=args.once)
    except KeyboardInterrupt:
        worker.stop(timeout=0)
        raise
    print(f"processed {processed} runs")
    return 0


def cmd_projects(args) -> int:
    from db import queries

    with _session_factory(existing=True)() as session:
        for project in queries.list_projects(session):
            n_ignored = queries.ignored_count(session, project.id)  # "ignore" answers are no label
            labeled = queries.label_count(session, project.id) - n_ignored
            total = queries.labelable_count(session, project.id)  # as the Label page counts: no test split
            ignored = f", {n_ignored} ignored" if n_ignored else ""
            print(f"{project.name}\t{project.source}\t{labeled}/{total} labeled{ignored}")
    return 0


def cmd_backup(args) -> int:
    from . import backup

    _check_out(args.out, "a file name, as in --out backups/labeler.db")
    path = backup.backup(args.out)
    print(json.dumps({"backup": str(path)}))
    return 0


def _new_password(name: str) -> str:
    """From LABELER_PASSWORD (for scripts), else typed twice at a prompt that does not echo."""
    import getpass
    import os

    from . import auth

    password = os.environ.get("LABELER_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise ValueError("No terminal to ask for the password: set LABELER_PASSWORD for scripts.")
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("The same password again: ") != password:
            raise ValueError("The two passwords differ; run the command again.")
    return auth.check_password(password)


def cmd_users(args) -> int:
    from db import users

    from . import auth

    Session = _session_factory()
    if args.action == "list":
        with Session() as session:
            accounts = users.list_users(session)
        for user in accounts:
            print(f"{user.name}\t{user.role}")
        if not accounts:
            print("No accounts: the app runs single-user, without a login.")
        return 0
    name = users.check_name(args.name)
    if args.action == "add":
        users.check_role(args.role)
        # An unusable hash: the account logs in only through the identity provider (st.login).
        password_hash = "!" if args.no_password else auth.hash_password(_new_password(name))
        with Session.begin() as session:
            users.add_user(session, name, password_hash, args.role)
            admins = [u for u in users.list_users(session) if u.role == "admin"]
            earlier = users.answers_given(session, name)
        print(f"added {name} ({args.role}); the app now asks everyone to log in")
        if earlier:
            print(
                f"note: the history holds {earlier} answers given under the name {name} before this account"
                " (an account removed earlier, or labeling without accounts); they count as this account's."
                " If this is someone else, remove the account and choose another name."
            )
        if not admins:
            print(
                "note: no admin yet, so nobody can create projects or export in the app; add one with --role admin"
            )
    elif args.action == "passwd":
        password_hash = auth.hash_password(_new_password(name))
        with Session.begin() as session:
            users.set_password(session, name, password_hash)
        print(f"new password for {name}; their open sessions end at their next click")
    elif args.action == "role":
        with Session.begin() as session:
            users.set_role(session, name, args.role)
        print(f"{name} is now {args.role}")
    elif args.action == "remove":
        with Session.begin() as session:
            users.remove_user(session, name)
            left = users.count_users(session)
            given = users.answers_given(session, name)
        print(
            f"removed {name}"
            + ("" if left else "; no accounts left: the app runs single-user, without a login")
        )
        if given:
            print(
                f"note: {name}'s {given} answers stay in the history under that name; an account added"
                " later under the same name is credited with them, so give another person another name."
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labeler",
        description="labeler: active-learning image labeling with semi-supervised generative models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", help="import a data set into a new project")
    p.add_argument("source", help="digits, fashion-mnist, mnist, folder:PATH or zip:PATH")
    p.add_argument("--project", required=True, help="name of the new project")
    p.add_argument("--classes", help="comma-separated class names, for a flat folder of unlabeled images")
    p.add_argument(
        "--audit-size",
        type=int,
        default=None,
        help="held-out audit images for own data (default 50; at most a fifth of the images)",
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a project's labels, data set, predictions and model")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--what",
        default="all",
        choices=["all", "labels", "dataset", "predictions", "model"],
        help="what to write",
    )
    p.add_argument(
        "--run",
        type=int,
        default=None,
        help="the finished run whose model and predictions to write (default: the newest)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("projects", help="list projects")
    p.set_defaults(func=cmd_projects)

    p = sub.add_parser("backup", help="consistent copy of the database, safe while the app runs")
    p.add_argument("--out", required=True, help="backup file to write")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("worker", help="train queued runs in the foreground (e.g. on a GPU machine)")
    p.add_argument(
        "--device", default=None, type=device_arg, help="cuda, cuda:1 or cpu (default: cuda when present)"
    )
    p.add_argument("--name", default=None, help="worker name shown with its runs (default worker@HOST:PID)")
    p.add_argument("--poll-s", type=float, default=2.0, help="seconds between looks at the queue")
    p.add_argument("--once", action="store_true", help="process the runs queued now, then exit")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("users", help="accounts: add, list, remove, reset a password, change a role")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="add an account (password from a prompt, or LABELER_PASSWORD)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["admin", "annotator"])
    a.add_argument("--no-password", action="store_true", help="log in only through st.login (OIDC)")
    actions.add_parser("list", help="list the accounts and their roles")
    a = actions.add_parser("remove", help="remove an account")
    a.add_argument("name")
    a = actions.add_parser("passwd", help="set a new password (prompt, or LABELER_PASSWORD)")
    a.add_argument("name")
    a = actions.add_parser("role", help="change an account's role")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["admin", "annotator"])
    p.set_defaults(func=cmd_users)

    for module in _REGISTERING_MODULES:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
    return parser


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has left (poll says POLLERR on Linux,
    POLLHUP on macOS)."""
    try:
        import select

        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no fd (tests), no poll (Windows)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except BrokenPipeError:
        if not _stdout_gone():  # another pipe (a subprocess, a socket): a fault, with its traceback
            raise
        # `projects | head -1`: the reader left; it said "Cannot use (Broken pipe)".
        with contextlib.suppress(OSError, ValueError):  # stdout may not be a real file (tests)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit
        return 1
    except Exception as error:
        from .config import user_error

        # Errors a user can meet (a wrong setting, a bad file, a database that will not open):
        # one clear line, no traceback. Anything else is a bug and keeps its traceback.
        message = user_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        from .config import Terminated

        terminated = isinstance(stop, Terminated)  # SIGTERM (the worker): 143, as a shell reports it
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
