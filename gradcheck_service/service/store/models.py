"""The service's tables: projects, hashed API tokens, runs, and each run's report in queryable form.

The full report is kept as JSON (``run_reports.report``), and the figures people filter and chart on are copied
into columns and child tables: per-tensor check results, per-parameter/per-layer gradient norms, memory figures.
Every run belongs to one project, and every query the API makes is scoped to it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so Alembic migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES = ("queued", "running", "passed", "failed", "inconclusive", "error")
# A finished check's status is its report's verdict; inconclusive: nothing wrong was found, but too little was
# compared to call the gradients right.
REPORTED_STATUSES = ("passed", "failed", "inconclusive")
TERMINAL_STATUSES = (*REPORTED_STATUSES, "error")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite keeps no offset: values are stored as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use timezone-aware UTC")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """An API token; only the SHA-256 of the token is stored, never the token itself."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), doc="First characters of the token, to recognise it in lists.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    project: Mapped[Project] = relationship(lazy="joined")


class Run(Base):
    """One submitted check: its definition, options, metadata, lifecycle and outcome."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_run_id)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, doc="Times a worker started this run.")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    timeout_s: Mapped[float] = mapped_column(Float, doc="Wall-time limit of the check, seconds.")

    model_name: Mapped[str] = mapped_column(String(200))
    model_hash: Mapped[str] = mapped_column(String(64), doc="SHA-256 of the submitted definition.")
    definition_kind: Mapped[str] = mapped_column(String(8), doc="'spec' (JSON) or 'python' (model file).")
    definition: Mapped[str] = mapped_column(Text, doc="The JSON spec or the Python source as submitted (for a "
                                            "repository archive: its check file).")
    layout: Mapped[dict[str, Any] | None] = mapped_column(
        JSONType, doc="For a repository archive: {'entry': the check file's path, 'pythonpath': import roots}; "
        "the files are in run_files. None for a single file or spec.")
    options: Mapped[dict[str, Any]] = mapped_column(JSONType)
    git_repo: Mapped[str | None] = mapped_column(String(500))
    git_branch: Mapped[str | None] = mapped_column(String(255))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(8))
    queue: Mapped[str] = mapped_column(String(16))

    worker_host: Mapped[str | None] = mapped_column(String(255), doc="host:pid of the worker that ran it last.")
    claim: Mapped[str | None] = mapped_column(String(32), doc="Token of the delivery that owns the run now.")
    progress_stage: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float | None] = mapped_column(Float, doc="Fraction 0..1 of the current check.")
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    check_s: Mapped[float | None] = mapped_column(Float, doc="The check's own time (report timings.total_s).")

    labels: Mapped[list[RunLabel]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    report: Mapped[RunReport | None] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, lazy="select"
    )
    tensor_results: Mapped[list[TensorResult]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="select", order_by="TensorResult.id"
    )
    gradient_stats: Mapped[list[GradientStat]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="select", order_by="GradientStat.id"
    )
    files: Mapped[list[RunFile]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="select", order_by="RunFile.path"
    )

    __table_args__ = (
        Index("ix_runs_project_created", "project_id", "created_at", "id"),
        Index("ix_runs_project_status_created", "project_id", "status", "created_at"),
        Index("ix_runs_project_model_created", "project_id", "model_name", "created_at"),
        Index("ix_runs_project_branch_created", "project_id", "git_branch", "created_at"),
        Index("ix_runs_project_commit", "project_id", "git_commit"),
        Index("ix_runs_status_heartbeat", "status", "heartbeat_at"),
    )

    @property
    def label_names(self) -> list[str]:
        return sorted(label.label for label in self.labels)


class RunLabel(Base):
    __tablename__ = "run_labels"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)

    run: Mapped[Run] = relationship(back_populates="labels")

    __table_args__ = (Index("ix_run_labels_label_run", "label", "run_id"),)


class RunFile(Base):
    """One file of a run's repository archive, as text (the archive was validated: relative paths, UTF-8)."""

    __tablename__ = "run_files"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(500), primary_key=True, doc="Relative POSIX path in the repository.")
    content: Mapped[str] = mapped_column(Text)


class WorkerEnvironment(Base):
    """The Python packages a worker provides, recorded by the worker when it starts (one row per worker node)."""

    __tablename__ = "worker_environments"

    worker: Mapped[str] = mapped_column(String(255), primary_key=True, doc="The Celery node name.")
    queues: Mapped[list[str]] = mapped_column(JSONType, default=list)
    python: Mapped[str] = mapped_column(String(64))
    packages: Mapped[dict[str, str]] = mapped_column(JSONType, doc="Distribution name -> version.")
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunReport(Base):
    """The report of a finished run (one per run: the primary key is the run id) and its headline figures."""

    __tablename__ = "run_reports"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    schema_version: Mapped[str] = mapped_column(String(16))
    passed: Mapped[bool] = mapped_column(Boolean)
    gradient_check_passed: Mapped[bool | None] = mapped_column(Boolean)
    faulty_modules: Mapped[list[str]] = mapped_column(JSONType, default=list)
    failed_because: Mapped[list[str]] = mapped_column(JSONType, default=list)
    inconclusive_because: Mapped[list[str]] = mapped_column(
        JSONType, default=list, doc="Why the verdict is inconclusive (the run's status says whether it is).")
    # Memory figures of one training step, bytes (None when the profile was not measured).
    parameter_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gradient_bytes: Mapped[int | None] = mapped_column(BigInteger)
    optimizer_bytes: Mapped[int | None] = mapped_column(BigInteger)
    activation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger)
    total_gradient_norm: Mapped[float | None] = mapped_column(Float, doc="L2 norm over all parameter gradients.")
    diagnosis: Mapped[list[str]] = mapped_column(JSONType, default=list, doc="Names of the findings.")
    report: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="report")


class TensorResult(Base):
    """Gradient-check verdict of one parameter, float input or second-order term of a run."""

    __tablename__ = "tensor_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), doc="'parameter', 'input' or 'second_order'.")
    name: Mapped[str] = mapped_column(String(500))
    passed: Mapped[bool] = mapped_column(Boolean)
    max_abs_error: Mapped[float | None] = mapped_column(Float)
    max_rel_error: Mapped[float | None] = mapped_column(Float)
    max_error_ratio: Mapped[float | None] = mapped_column(
        Float, doc="Largest error / its tolerance (at most 1 passes); None for reports written before it existed.")
    coordinates_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    numel: Mapped[int] = mapped_column(BigInteger, default=0)
    coverage: Mapped[str | None] = mapped_column(String(16))
    unused: Mapped[bool] = mapped_column(Boolean, default=False)


class GradientStat(Base):
    """A gradient figure of a run: per parameter (``scope='parameter'``) or per layer (``scope='layer'``)."""

    __tablename__ = "gradient_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(500))
    depth: Mapped[int | None] = mapped_column(Integer, doc="Layer position in the forward order, 0 = first.")
    norm: Mapped[float | None] = mapped_column(Float, doc="L2 norm of the gradient (or backward signal).")
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
