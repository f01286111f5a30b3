"""Accounts: argon2 hashes, the `users` commands, the server import root, and the listening
address that `streamlit run app.py` gets from the repository's .streamlit/config.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import db
from db import users
from db.models import User
from labeler import auth
from labeler.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _session():
    return db.session_factory(db.get_engine())


# Hashing and login checks ----------------------------------------------------------------------


def test_passwords_are_stored_as_argon2id_hashes_only():
    stored = auth.hash_password("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert auth.verify_password(stored, "correct horse")
    assert not auth.verify_password(stored, "correct hors")
    assert not auth.verify_password("not a hash", "correct horse")
    assert auth.hash_password("correct horse") != stored  # salted


def test_short_passwords_are_refused():
    with pytest.raises(ValueError, match="at least 8"):
        auth.hash_password("short")


def test_authenticate_checks_name_and_password(Session):
    with Session.begin() as session:
        users.add_user(session, "ann", auth.hash_password("password-1"), "annotator")
    with Session.begin() as session:
        assert auth.authenticate(session, "ann", "password-1").role == "annotator"
        assert auth.authenticate(session, "ann", "password-2") is None
        assert auth.authenticate(session, "nobody", "password-1") is None
        assert auth.accounts_exist(session)


# The `users` command ---------------------------------------------------------------------------


def test_users_commands_add_list_reset_role_and_remove(any_db_url, monkeypatch, capsys):
    monkeypatch.setenv("LABELER_PASSWORD", "first-password")
    assert main(["users", "add", "alice", "--role", "admin"]) == 0
    assert main(["users", "add", "bob", "--role", "annotator"]) == 0
    with _session()() as session:
        stored = {u.name: u for u in session.query(User)}
    assert {n: u.role for n, u in stored.items()} == {"alice": "admin", "bob": "annotator"}
    assert "first-password" not in stored["bob"].password_hash
    assert auth.verify_password(stored["bob"].password_hash, "first-password")

    capsys.readouterr()
    assert main(["users", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice\tadmin", "bob\tannotator"]

    monkeypatch.setenv("LABELER_PASSWORD", "second-password")
    assert main(["users", "passwd", "bob"]) == 0
    with _session()() as session:
        assert auth.authenticate(session, "bob", "second-password") is not None
        assert auth.authenticate(session, "bob", "first-password") is None

    # Answers are kept by name: removing bob keeps his, and a new "bob" is told it gets them.
    from db import queries
    from labeler import projects
    from tests.conftest import tiny_image_set

    project = projects.create_project(_session(), "p", "test", images=tiny_image_set(n=4), audit_size=0)
    with _session().begin() as session:
        queries.add_label(session, queries.items(session, project.id)[0], 0, annotator="bob")
    capsys.readouterr()
    assert main(["users", "remove", "bob"]) == 0
    assert "bob's 1 answers stay in the history" in capsys.readouterr().out
    assert main(["users", "add", "bob", "--role", "annotator"]) == 0
    assert "history holds 1 answers given under the name bob before this account" in capsys.readouterr().out
    assert main(["users", "add", "carol", "--role", "annotator"]) == 0
    assert "note" not in capsys.readouterr().out
    assert main(["users", "remove", "carol"]) == 0

    # The last admin stays while others exist: someone must be able to create and export.
    assert main(["users", "remove", "alice"]) == 2
    assert "last admin" in capsys.readouterr().err
    assert main(["users", "role", "bob", "--role", "admin"]) == 0
    assert main(["users", "remove", "alice"]) == 0
    assert main(["users", "remove", "bob"]) == 0
    with _session()() as session:
        assert not auth.accounts_exist(session)


def test_users_add_errors_are_one_line(monkeypatch, capsys):
    monkeypatch.setenv("LABELER_PASSWORD", "short")
    assert main(["users", "add", "carol", "--role", "annotator"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "at least 8 characters" in err
    monkeypatch.setenv("LABELER_PASSWORD", "long enough")
    assert main(["users", "add", "carol", "--role", "annotator"]) == 0
    assert main(["users", "add", "carol", "--role", "admin"]) == 2
    assert "exists already" in capsys.readouterr().err
    monkeypatch.delenv("LABELER_PASSWORD")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main(["users", "add", "dave", "--role", "annotator"]) == 2
    assert "LABELER_PASSWORD" in capsys.readouterr().err


def test_an_account_without_password_cannot_log_in_with_one(capsys):
    assert main(["users", "add", "erin@example.org", "--role", "annotator", "--no-password"]) == 0
    with _session().begin() as session:
        assert auth.authenticate(session, "erin@example.org", "!") is None
        assert auth.authenticate(session, "erin@example.org", "") is None


# The import root ------------------------------------------------------------------------------


def test_server_folders_import_only_under_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("LABELER_IMPORT_ROOT", raising=False)
    with pytest.raises(ValueError, match="is off"):
        auth.check_import_folder("/etc")
    root = tmp_path / "datasets"
    (root / "pets").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    monkeypatch.setenv("LABELER_IMPORT_ROOT", str(root))
    assert auth.check_import_folder(str(root / "pets")) == root / "pets"
    assert auth.check_import_folder("pets") == root / "pets"  # relative to the root
    for outside in ("/etc", str(root / ".." / "secret"), "../secret", str(root / "link"), "link"):
        with pytest.raises(ValueError, match="Only folders under"):
            auth.check_import_folder(outside)


# Local by default ------------------------------------------------------------------------------


def test_the_projects_streamlit_config_listens_on_localhost_only(monkeypatch):
    """Read the config the way `streamlit run` does, from the repository root."""
    from streamlit import config

    monkeypatch.chdir(ROOT)
    try:
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.address") == "127.0.0.1"
        assert config.get_option("client.toolbarMode") == "viewer"  # no Deploy button
        assert config.get_option("server.enableXsrfProtection") is True
    finally:
        config.get_config_options(force_reparse=True)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the LISTEN sockets on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_streamlit_run_app_py_binds_to_127_0_0_1(tmp_path):
    """The README's command, with only a port added: the server listens on loopback alone."""
    from labeler.latency import free_port, wait_http

    port = free_port()
    env = {**os.environ, "LABELER_DATA_DIR": str(tmp_path / "data")}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
    ]
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        # 0100007F is 127.0.0.1 in /proc/net/tcp's byte order; 00000000 would be every interface.
        assert _listening_addresses(port) == {"0100007F"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_repeated_wrong_passwords_lock_the_name_for_a_while(Session):
    with Session.begin() as session:
        users.add_user(session, "gus", auth.hash_password("right password"), "annotator")
    with Session.begin() as session:
        for t in range(auth.MAX_FAILURES):
            assert auth.log_in(session, "gus", "wrong password", now=1000.0 + t) is None
        # Locked: even the right password is refused, with how long to wait.
        with pytest.raises(auth.TooManyFailures, match="try again in"):
            auth.log_in(session, "gus", "right password", now=1010.0)
        assert auth.log_in(session, "ann-other", "x" * 8, now=1010.0) is None  # other names are not locked
        later = 1004.0 + auth.LOCKOUT_S + 1
        assert auth.log_in(session, "gus", "right password", now=later).name == "gus"


def test_the_names_tried_long_ago_are_forgotten(Session, monkeypatch):
    """Each name ever tried was kept for good: a script trying many names grew the memory."""
    monkeypatch.setattr(auth, "_failures", {})
    monkeypatch.setattr(auth, "_PRUNE_AT", 50)
    monkeypatch.setattr(auth, "authenticate", lambda session, name, password: None)  # no hashing
    with Session() as session:
        for n in range(300):  # a name a second: those of the last minute are kept
            auth.log_in(session, f"name{n}", "x", now=1000.0 + n)
        assert len(auth._failures) <= auth.LOCKOUT_S + 2
        auth.log_in(session, "late", "x", now=1300.0 + auth.LOCKOUT_S)
        assert set(auth._failures) == {"late"}
