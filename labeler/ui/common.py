"""What every page shares: the database session factory, the current project, the worker.

Widgets only: computation lives in `labeler/` and SQL in `db/`.
"""

from __future__ import annotations

import getpass
import secrets

import numpy as np
import streamlit as st
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

import db
from db import queries
from db.models import Project
from labeler import projects


@st.cache_resource(show_spinner=False)
def _session_factory(url: str) -> sessionmaker[Session]:
    return db.session_factory(db.get_engine(url))


def session_factory() -> sessionmaker[Session]:
    from labeler.config import db_url

    return _session_factory(db_url())


@st.cache_resource(show_spinner="Starting the background trainer...")
def _worker(url: str):
    from labeler.trainer import Worker

    worker = Worker(_session_factory(url))
    worker.start()
    return worker


def worker():
    """The one background trainer of this process, shared by every session and tab."""
    from labeler.config import db_url

    return _worker(db_url())


def current_project() -> Project:
    """The project chosen in this browser session, or the built-in digits project."""
    Session = session_factory()
    project_id = st.session_state.get("project_id")
    if project_id is not None:
        with Session() as session:
            project = session.get(Project, project_id)
        if project is not None:
            return project
    with st.spinner("Preparing the built-in digits project..."):
        project = projects.ensure_default_project(Session)
    st.session_state["project_id"] = project.id
    return project


def annotator() -> str:
    if "annotator" not in st.session_state:
        try:
            st.session_state["annotator"] = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name on this system
            st.session_state["annotator"] = "anonymous"
    return st.session_state["annotator"]


def claimant() -> str:
    """Who holds the images this browser session is shown: the annotator's name plus a token
    of this session, so two tabs or two people with the same name never get the same image."""
    if "claim_token" not in st.session_state:
        st.session_state["claim_token"] = secrets.token_hex(4)
    return f"{annotator()}#{st.session_state['claim_token']}"


def enlarge(array: np.ndarray, size: int = 280) -> Image.Image:
    """Scale an image up with nearest-neighbour so small images keep crisp pixels."""
    img = Image.fromarray(array)
    scale = max(1, size // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def class_names(project_id: int) -> list[str]:
    with session_factory()() as session:
        return queries.class_names(session, project_id)


_MARKDOWN_SPECIALS = set("\\`*_{}[]()#+-.!|~<>$:")


def as_typed(text: str) -> str:
    """Text for widget labels, which Streamlit renders as Markdown: every Markdown character
    backslash-escaped, and a word joiner between hyphens so "--" does not become a dash, so a
    class named "**x**" shows as typed."""
    escaped = "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in text)
    while "\\-\\-" in escaped:
        escaped = escaped.replace("\\-\\-", "\\-\u2060\\-")
    return escaped
