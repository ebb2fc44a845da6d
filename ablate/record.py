"""The results database (SQLAlchemy 2): runs, per-step training metrics, evaluations, per-sample records.

Write pattern: compute first, then write in one short transaction. On SQLite, WAL + a 30 s busy timeout +
BEGIN IMMEDIATE lets parallel cells share one file without "database is locked" errors.
"""

import hashlib
import json
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from hydra.experimental.callback import Callback
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One grid cell: its resolved config and where it came from."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    sweep: Mapped[str] = mapped_column(String(255), index=True)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    richness: Mapped[str] = mapped_column(String(64))
    coverage: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    objective: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # running | completed | failed | interrupted
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    versions: Mapped[dict] = mapped_column(JSON)
    host: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    base_evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))


class Evaluation(Base):
    """One model evaluated on the eval sets: the starting model (shared by key) or a run's trained model."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))  # base | trained
    key: Mapped[str | None] = mapped_column(String(64), unique=True)  # base evaluations: model + eval settings
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)  # trained evaluations
    settings: Mapped[dict] = mapped_column(JSON)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Sample(Base):
    """One generated response to one evaluation problem."""

    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    eval_set: Mapped[str] = mapped_column(String(64))
    problem_id: Mapped[str] = mapped_column(String(255))
    sample_idx: Mapped[int] = mapped_column(Integer)
    completion: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)  # gold
    correct: Mapped[bool] = mapped_column(Boolean)  # math-verify
    exact_match: Mapped[bool] = mapped_column(Boolean)  # boxed string equality
    length: Mapped[int] = mapped_column(Integer)  # response tokens
    markers: Mapped[int] = mapped_column(Integer)  # epistemic markers, all words
    marker_counts: Mapped[dict] = mapped_column(JSON)  # per word


class Metric(Base):
    """An aggregate over one eval set of one evaluation (long format: new metrics need no migration)."""

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    eval_set: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)


class TrainStep(Base):
    """What the TRL trainer logged at one step (long format)."""

    __tablename__ = "train_steps"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)


def engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    eng = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred)
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(eng, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front: no deadlock on upgrade

    return eng


def create_schema(eng: Engine) -> None:
    Base.metadata.create_all(eng)


class SchemaCallback(Callback):
    """Hydra callback: create the schema once before the cells of a run or sweep start."""

    def on_run_start(self, config, **kwargs) -> None:
        create_schema(engine(config.db.url))

    def on_multirun_start(self, config, **kwargs) -> None:
        create_schema(engine(config.db.url))


def config_hash(config: dict) -> str:
    """Hash of what determines a cell's result: leaves out where results go and how progress is shown."""
    kept = {k: v for k, v in config.items() if k not in ("db", "sweep", "cache_dir", "threads")}
    trainer = {k: v for k, v in kept.get("trainer", {}).items() if k not in ("logging_steps", "disable_tqdm", "report_to")}
    kept["trainer"] = trainer
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance() -> dict:
    """git commit, dirty flag, library versions and host of this process."""
    src = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # an installed package outside a checkout
    versions = {"python": platform.python_version()}
    for dist in ("ablate", "torch", "transformers", "trl", "accelerate", "datasets", "hydra-core", "math-verify",
                 "sqlalchemy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"git_commit": commit, "git_dirty": dirty, "versions": versions, "host": platform.node()}


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def start_run(eng: Engine, *, sweep: str, config: dict, axes: dict, seed: int) -> int:
    with Session(eng) as s, s.begin():
        run = Run(sweep=sweep, config_hash=config_hash(config), config=config, seed=seed, status="running",
                  started_at=now(), **axes, **provenance())
        s.add(run)
        s.flush()
        return run.id


def end_run(eng: Engine, run_id: int, status: str, error: str | None = None) -> None:
    with Session(eng) as s, s.begin():
        run = s.get(Run, run_id)
        run.status, run.error, run.ended_at = status, error, now()


def find_base_evaluation(eng: Engine, key: str) -> int | None:
    with Session(eng) as s:
        return s.scalar(select(Evaluation.id).where(Evaluation.key == key))


def save_evaluation(eng: Engine, *, stage: str, samples: list[dict], metrics: list[dict], settings: dict,
                    seconds: float, key: str | None = None, run_id: int | None = None) -> int:
    """Store one evaluation with its samples and metrics; a base evaluation already stored under `key` wins."""
    with Session(eng) as s, s.begin():
        if key is not None:
            existing = s.scalar(select(Evaluation.id).where(Evaluation.key == key))
            if existing is not None:
                return existing
        ev = Evaluation(stage=stage, key=key, run_id=run_id, settings=settings, seconds=seconds, created_at=now())
        s.add(ev)
        s.flush()
        s.add_all(Sample(evaluation_id=ev.id, **row) for row in samples)
        s.add_all(Metric(evaluation_id=ev.id, **row) for row in metrics)
        return ev.id


def finish_run(eng: Engine, run_id: int, *, base_evaluation_id: int, train_steps: list[dict],
               trained: dict) -> int:
    """Record a completed cell: training log, trained evaluation and status, in one transaction."""
    with Session(eng) as s, s.begin():
        run = s.get(Run, run_id)
        s.add_all(TrainStep(run_id=run_id, **row) for row in train_steps)
        ev = Evaluation(stage="trained", run_id=run_id, settings=trained["settings"], seconds=trained["seconds"],
                        created_at=now())
        s.add(ev)
        s.flush()
        s.add_all(Sample(evaluation_id=ev.id, **row) for row in trained["samples"])
        s.add_all(Metric(evaluation_id=ev.id, **row) for row in trained["metrics"])
        run.base_evaluation_id = base_evaluation_id
        run.status, run.ended_at = "completed", now()
        return ev.id
