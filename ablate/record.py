"""The results database (SQLAlchemy 2): runs, per-step training metrics, evaluations, per-sample records.

Write pattern: compute first, then write in one short transaction. On SQLite, WAL + a 30 s busy timeout +
BEGIN IMMEDIATE lets parallel cells share one file without "database is locked" errors. The schema is
managed by Alembic (db/migrations); `upgrade` creates or upgrades it once before a sweep's cells start.
"""

import hashlib
import json
import platform
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

from hydra.experimental.callback import Callback
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# A source checkout keeps migrations in db/migrations; an installed wheel ships them as ablate/migrations.
_SOURCE_MIGRATIONS = Path(__file__).resolve().parent.parent / "db" / "migrations"
MIGRATIONS = _SOURCE_MIGRATIONS if _SOURCE_MIGRATIONS.is_dir() else Path(__file__).resolve().parent / "migrations"
HEAD = "0005"  # the newest migration; Base.metadata below matches it
# The ablation axes: columns of runs, config groups of a cell, the report's grid. Runs that are no grid cell (a
# build, a probe) record "-" on the axes that do not apply to them.
AXES = ("richness", "coverage", "model", "objective")
KINDS = ("cell", "build", "probe", "trial")  # runs.kind; a trial: one run of a hyperparameter search (ablate/search.py)
DEFAULT_URL = "sqlite:///db/ablate.sqlite"  # conf/db/sqlite.yaml; the query, report and db commands default to it


class SchemaError(RuntimeError):
    """The database cannot be used as it is (not a database, corrupt, or from a newer ablate)."""


class Base(DeclarativeBase):
    pass


def _trial_of(ctx, field: str):
    """runs.study / runs.trial on insert: the `trial` block that the search sweeper puts in a trial's config."""
    return ((ctx.get_current_parameters().get("config") or {}).get("trial") or {}).get(field)


class Run(Base):
    """One grid cell: its resolved config and where it came from."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    sweep: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True, server_default="cell")  # cell | build | probe (0004) | trial
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
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)  # refreshed while running (0002)
    # A search trial's Optuna study and trial number (0005), from the `trial` block of its config (ablate/search.py).
    study: Mapped[str | None] = mapped_column(String(255), index=True, default=lambda ctx: _trial_of(ctx, "study"))
    trial: Mapped[int | None] = mapped_column(Integer, default=lambda ctx: _trial_of(ctx, "number"))


class Evaluation(Base):
    """One model evaluated on the eval sets: the starting model (shared by key) or a run's trained model."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))  # base | trained | probe_screen | probe_round_N
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
    path = sqlite_path(url)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
    eng = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred)
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(eng, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front: no deadlock on upgrade

    return eng


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite URL (None for in-memory or other databases)."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    path = url.split("///", 1)[1].split("?", 1)[0]
    return Path(path).expanduser() if path and path != ":memory:" else None


def _alembic(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def revision(eng: Engine, label: str | None = None) -> str | None:
    """The schema revision of the database: None if empty, "0001" for a pre-Alembic ablate database."""
    try:
        with eng.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" in tables:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return "0001" if "runs" in tables else None
    except DatabaseError as err:
        where = make_url(label).render_as_string(hide_password=True) if label else eng.url.render_as_string()
        raise SchemaError(f"{where}: not a usable database "
                          f"({str(err.orig).splitlines()[0]}); point db.url at an ablate database or a new file") from None


def upgrade(url: str) -> str:
    """Create or upgrade the schema to HEAD without touching recorded rows; returns the revision."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # no plugin/migration chatter in every cell's log
    from alembic import command

    eng = engine(url)
    current = revision(eng)
    if current is not None and current not in _known_revisions():
        raise SchemaError(f"{make_url(url).render_as_string(hide_password=True)}: schema revision {current} is newer "
                          f"than this ablate knows (up to {HEAD}); "
                          "upgrade ablate")
    with eng.begin() as conn:
        cfg = _alembic(conn)
        if current == "0001" and "alembic_version" not in inspect(conn).get_table_names():
            command.stamp(cfg, "0001")  # made by create_all before migrations existed
        command.upgrade(cfg, "head")
    return HEAD


def _known_revisions() -> set[str]:
    return {p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*.py")}


class SchemaCallback(Callback):
    """Hydra callback: create or upgrade the schema once before the cells of a run or sweep start."""

    def on_run_start(self, config, **kwargs) -> None:
        self._upgrade(config.db.url)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._upgrade(config.db.url)

    @staticmethod
    def _upgrade(url: str) -> None:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            upgrade(url)
        except SchemaError as err:  # one line, before any cell starts; nothing is written
            print(f"ablate: {err}", file=__import__("sys").stderr)
            raise SystemExit(2) from None
        except (ArgumentError, NoSuchModuleError, ImportError) as err:  # no dialect or driver: nothing was opened
            print(f"ablate: db.url={url}: SQLAlchemy cannot open it ({str(err).strip().splitlines()[0]}); use a URL "
                  "such as sqlite:///db/ablate.sqlite or postgresql+psycopg://USER@HOST/DB",
                  file=__import__("sys").stderr)
            raise SystemExit(2) from None


def config_hash(config: dict) -> str:
    """Hash of what determines a cell's result: leaves out where results go and how progress is shown."""
    kept = {k: v for k, v in config.items() if k not in ("db", "sweep", "cache_dir", "threads", "force")}
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


def start_run(eng: Engine, *, sweep: str, config: dict, axes: dict, seed: int, kind: str = "cell") -> int:
    with Session(eng) as s, s.begin():
        run = Run(sweep=sweep, kind=kind, config_hash=config_hash(config), config=config, seed=seed, status="running",
                  started_at=now(), heartbeat_at=now(), **axes, **provenance())
        s.add(run)
        s.flush()
        return run.id


def end_run(eng: Engine, run_id: int, status: str, error: str | None = None) -> None:
    with Session(eng) as s, s.begin():
        run = s.get(Run, run_id)
        run.status, run.error, run.ended_at = status, error, now()


def previous(eng: Engine, chash: str, stale_after: float) -> tuple[str, int] | None:
    """Why a cell with this config hash need not run: ("completed", id) or ("running", id) if a live process
    holds it. Running rows whose heartbeat is older than `stale_after` seconds are marked interrupted."""
    cutoff = now() - timedelta(seconds=stale_after)
    with Session(eng) as s, s.begin():
        rows = s.execute(select(Run.id, Run.status, Run.heartbeat_at).where(Run.config_hash == chash)
                         .where(Run.status.in_(("completed", "running"))).order_by(Run.id)).all()
        for run_id, status, _ in rows:
            if status == "completed":
                return "completed", run_id
        for run_id, _, beat in rows:
            if beat is not None and beat >= cutoff:
                return "running", run_id
            s.execute(update(Run).where(Run.id == run_id).values(
                status="interrupted", ended_at=now(), error=f"stale: no heartbeat since {beat} (process killed?)"))
    return None


class Heartbeat:
    """Refresh runs.heartbeat_at every `every` seconds while a cell runs (a killed process stops beating)."""

    def __init__(self, eng: Engine, run_id: int, every: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(eng, run_id, every), daemon=True)

    def _beat(self, eng, run_id, every):
        while not self._stop.wait(every):
            try:
                with Session(eng) as s, s.begin():
                    s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=now()))
            except DatabaseError:
                pass  # a busy database delays a beat; the stale threshold allows for several

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def find_base_evaluation(eng: Engine, key: str) -> int | None:
    with Session(eng) as s:
        return s.scalar(select(Evaluation.id).where(Evaluation.key == key))


def save_evaluation(eng: Engine, *, stage: str, samples: list[dict], metrics: list[dict], settings: dict,
                    seconds: float, key: str | None = None, run_id: int | None = None) -> int:
    """Store one evaluation with its samples and metrics; a base evaluation already stored under `key` wins."""
    try:
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
    except IntegrityError:  # another cell stored the same base evaluation first (Postgres, concurrent)
        found = find_base_evaluation(eng, key) if key is not None else None
        if found is None:
            raise
        return found


def finish_run(eng: Engine, run_id: int, *, base_evaluation_id: int, train_steps: list[dict],
               trained: dict | None) -> int | None:
    """Record a completed cell: training log, trained evaluation and status, in one transaction.
    trained=None: a run that trains no policy (a base-model build: its warm-start log and base evaluation)."""
    with Session(eng) as s, s.begin():
        run = s.get(Run, run_id)
        s.add_all(TrainStep(run_id=run_id, **row) for row in train_steps)
        run.base_evaluation_id = base_evaluation_id
        run.status, run.ended_at = "completed", now()
        if trained is None:
            return None
        ev = Evaluation(stage="trained", run_id=run_id, settings=trained["settings"], seconds=trained["seconds"],
                        created_at=now())
        s.add(ev)
        s.flush()
        s.add_all(Sample(evaluation_id=ev.id, **row) for row in trained["samples"])
        s.add_all(Metric(evaluation_id=ev.id, **row) for row in trained["metrics"])
        return ev.id


def finish_evaluations(eng: Engine, run_id: int, evaluations: list[dict]) -> None:
    """Record a completed run that evaluates without training (the hint probe): its evaluations, each with
    `stage`, `settings`, `seconds`, `samples` and `metrics`, and its status, in one transaction."""
    with Session(eng) as s, s.begin():
        for result in evaluations:
            ev = Evaluation(stage=result["stage"], run_id=run_id, settings=result["settings"],
                            seconds=result["seconds"], created_at=now())
            s.add(ev)
            s.flush()
            s.add_all(Sample(evaluation_id=ev.id, **row) for row in result["samples"])
            s.add_all(Metric(evaluation_id=ev.id, **row) for row in result["metrics"])
        run = s.get(Run, run_id)
        run.status, run.ended_at = "completed", now()


def db_main(argv: list[str] | None = None) -> int:
    """`ablate db upgrade [--db URL]`: create or upgrade a results database to the current schema."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="ablate db", description=db_main.__doc__)
    parser.add_argument("action", choices=["upgrade", "revision"], help="upgrade: migrate to the newest schema; "
                        "revision: print the current one")
    parser.add_argument("--db", default=os.environ.get("ABLATE_DB", DEFAULT_URL),
                        help=f"SQLAlchemy URL (default $ABLATE_DB or {DEFAULT_URL})")
    args = parser.parse_args(argv)
    try:
        if args.action == "upgrade":
            before = revision(engine(args.db), args.db)
            print(f"{args.db}: {before or 'empty'} -> {upgrade(args.db)}")
        else:
            print(revision(engine(args.db), args.db) or "empty")
    except SchemaError as err:
        print(f"ablate db: {err}", file=__import__("sys").stderr)
        return 2
    return 0
