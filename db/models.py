"""The database schema: SQLAlchemy 2 typed models.

Labels are an append-only history (`LabelEvent`); an item's current label is the class of its
newest event that is not undone. Pixels live on disk in one array per project
(`projects/<id>/pixels.npy`, row `Item.row`); checkpoints live on disk too, referenced by
`Run.checkpoint`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


# Item.split values
POOL = "pool"  # may be labeled and trained on
TEST = "test"  # official test split of a built-in data set: evaluation only, never shown
AUDIT = "audit"  # random sample of the user's own data: labeled by the user, never trained on

# LabelEvent.class_index of an "ignore" answer: the image is in none of the classes. It counts
# as answered (never shown again) but is never trained on or exported as a class.
IGNORED = -1

# Run.status values
QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
ACTIVE_STATUSES = (QUEUED, RUNNING)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(1000))
    channels: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    # User settings: auto_retrain_every, audit_size, model, strategy, budget_s ...
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    classes: Mapped[list[LabelClass]] = relationship(
        back_populates="project", order_by="LabelClass.index", cascade="all, delete-orphan"
    )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


class LabelClass(Base):
    __tablename__ = "classes"
    __table_args__ = (
        UniqueConstraint("project_id", "index"),
        UniqueConstraint("project_id", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # the model's output index
    name: Mapped[str] = mapped_column(String(200))

    project: Mapped[Project] = relationship(back_populates="classes")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("project_id", "row"),
        UniqueConstraint("project_id", "sha256"),
        Index("ix_items_project_split", "project_id", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    row: Mapped[int] = mapped_column(Integer)  # row in the project's pixel array
    key: Mapped[str] = mapped_column(String(1000))  # name shown and exported, e.g. "cat/001.png"
    path: Mapped[str | None] = mapped_column(String(2000), nullable=True)  # stored original file
    sha256: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(10), default=POOL)
    # Ground truth class index where the source has one (built-ins, class folders):
    # for evaluation and simulation only, never shown while labeling.
    truth: Mapped[int | None] = mapped_column(Integer, nullable=True)


class LabelEvent(Base):
    __tablename__ = "label_events"
    __table_args__ = (
        Index("ix_label_events_item", "item_id", "id"),
        # A person's newest answer (`queries.last_project_of`, at each new browser session).
        Index("ix_label_events_annotator", "annotator", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    class_index: Mapped[int] = mapped_column(Integer)
    annotator: Mapped[str] = mapped_column(String(200), default="anonymous")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(20), default="single")  # single | grid | bulk | oracle
    undone: Mapped[bool] = mapped_column(Boolean, default=False)
    undone_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # What the newest model predicted for this item before the person answered.
    predicted_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    predicted_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AppliedAnswer(Base):
    """An answer from the labeling box, by the id its browser tab gave it, and the event it wrote
    (also each label of a grid page's accept, under the accept's id: `labeler.ui.label._accepting`).

    A tab sends an answer again after a reload until it has seen it acknowledged, to a new server
    session that never saw it. With this row that session knows the answer was applied already
    (so a class renamed since does not refuse it), and an undo kept across the reload takes back
    exactly this event: never an identical answer given since, by another tab under the same name.
    A table of its own, so databases made before it get it from `create_all`.
    """

    __tablename__ = "applied_answers"
    __table_args__ = (UniqueConstraint("item_id", "action"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(100))  # the action's id, given by the browser tab
    event_id: Mapped[int] = mapped_column(ForeignKey("label_events.id", ondelete="CASCADE"), index=True)


class Claim(Base):
    """An image handed to one annotator, so others are not shown it at the same time.

    One row per item (the primary key): taking a claim is one INSERT ... ON CONFLICT that
    only overwrites a claim of the same annotator or one that has expired, so two processes
    racing for the same image cannot both win. Labeling the item deletes its claim.
    """

    __tablename__ = "claims"
    __table_args__ = (Index("ix_claims_project_annotator", "project_id", "annotator"),)

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(50))
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default=QUEUED)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    step: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    labels_used: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # Honest accuracy: on the test split (built-ins) or the audit set (own data).
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    audit_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    audit_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    audit_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    audit_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)


class RunMetric(Base):
    """One point of a loss curve."""

    __tablename__ = "run_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[float] = mapped_column(Float)


class Prediction(Base):
    __tablename__ = "predictions"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    predicted: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    entropy: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float, default=0.0)  # acquisition score, higher = ask first
    x: Mapped[float] = mapped_column(Float, default=0.0)  # 2-D latent point
    y: Mapped[float] = mapped_column(Float, default=0.0)


class ImportIssue(Base):
    """A file that was skipped on import, with its reason."""

    __tablename__ = "import_issues"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(2000))
    reason: Mapped[str] = mapped_column(String(1000))


# User.role values
ADMIN, ANNOTATOR = "admin", "annotator"
ROLES = (ADMIN, ANNOTATOR)


class User(Base):
    """An account. As soon as one exists, every page asks for a login first, and the logged-in
    name is the annotator recorded with each label. Only an argon2 hash of the password is kept."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default=ANNOTATOR)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class QueuePosition(Base):
    """A finished run's queue, computed once when its predictions are stored: every item that
    may be shown (pool and audit) at its place in `ORDER BY score DESC, row`. The Label page
    reads the first unlabeled rows by position (an index range scan) instead of sorting the
    whole pool by score on every key press.

    Derived data without foreign keys: PostgreSQL checks a foreign key row by row, which took
    1.6 s of the 2.3 s that writing 70,000 positions cost. Positions leave with their run's
    predictions (`db.runs.prune_predictions`), and storing a run's queue first clears any
    rows left under its id.
    """

    __tablename__ = "queue_positions"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(Integer)
