"""The report's only SQL: which runs, their metrics and curves, per-problem means grouped in the database, and a
few example completions."""

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from sqlalchemy import Boolean, Float, case, cast, func, select, union
from sqlalchemy.engine import Engine

from ablate import metrics, record

RUN, EVAL, SAMPLE, METRIC, STEP = (m.__table__ for m in
                                   (record.Run, record.Evaluation, record.Sample, record.Metric, record.TrainStep))
UNIT_VALUES = ("correct", "length", "markers")  # per-sample columns averaged per problem (the directions read them)
UNIT_COLUMNS = ["evaluation_id", "eval_set", "problem_id", "k", *UNIT_VALUES]
CURVES = {"rollout/reward": "reward", "rollout/mean_length": "mean length", "rollout/markers_per_response": "markers"}
EXAMPLES_PER_SET = 2


@dataclass
class Selection:
    """Which runs the report covers (empty = all)."""

    sweeps: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    compare: tuple[str, str] | None = None

    @property
    def split(self) -> list[str]:
        """Extra grouping keys: compared sweeps are never pooled."""
        return ["sweep"] if self.compare else []

    def describe(self) -> str:
        parts = [f"{k}={','.join(v)}" for k, v in (("sweep", self.sweeps), ("model", self.models),
                                                     ("objective", self.objectives)) if v]
        parts += [f"started >= {self.since:%Y-%m-%d %H:%M}"] if self.since else []
        parts += [f"started < {self.until:%Y-%m-%d %H:%M}"] if self.until else []
        return ", ".join(parts) or "all runs"


@dataclass
class Data:
    runs: pd.DataFrame      # selected runs, every status: axes, status, error, config, base_evaluation_id
    trained: pd.DataFrame   # run_id -> trained_eval
    metrics: pd.DataFrame   # evaluation_id, eval_set, name, value (marker/<word>, n_samples, reported metrics)
    steps: pd.DataFrame     # run_id, step, name, value (the CURVES)
    total_runs: int         # in the whole database
    units: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=UNIT_COLUMNS))  # from load_units


def _read(conn, query) -> pd.DataFrame:
    result = conn.execute(query)  # tuples, not Rows: pandas builds a frame from Row objects 8x slower
    return pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))


def _where(sel: Selection) -> list:
    # builds and probes train no policy (`ablate query` reads them): the report covers grid cells
    clauses = [RUN.c.kind == "cell"]
    clauses += [RUN.c[col].in_(values) for col, values in (("sweep", sel.sweeps), ("model", sel.models),
                                                           ("objective", sel.objectives)) if values]
    clauses += [RUN.c.started_at >= sel.since] if sel.since else []
    return clauses + ([RUN.c.started_at < sel.until] if sel.until else [])


def _evaluations(sel: Selection):
    """The trained and base evaluations of the selected completed runs (a subquery: no id lists)."""
    done = [*_where(sel), RUN.c.status == "completed"]
    return union(select(EVAL.c.id).where(EVAL.c.stage == "trained", EVAL.c.run_id.in_(select(RUN.c.id).where(*done))),
                 select(RUN.c.base_evaluation_id).where(*done))


def load(eng: Engine, sel: Selection) -> Data:
    """Runs, their trained evaluations, aggregate metrics and training curves: everything but samples."""
    where = _where(sel)
    done = select(RUN.c.id).where(*where, RUN.c.status == "completed")
    names = ["n_samples", *(m.name for m in metrics.METRICS if m.report)]  # read when called: a test adds one
    with eng.connect() as conn:
        total = conn.execute(select(func.count()).select_from(RUN)).scalar()
        runs = _read(conn, select(RUN.c.id.label("run_id"), RUN.c.sweep, *(RUN.c[a] for a in record.AXES),
                                  RUN.c.seed, RUN.c.status, RUN.c.error, RUN.c.started_at, RUN.c.git_commit,
                                  RUN.c.git_dirty, RUN.c.base_evaluation_id, RUN.c.config).where(*where)
                     .order_by(RUN.c.id))
        trained = _read(conn, select(EVAL.c.run_id, func.max(EVAL.c.id).label("trained_eval"))
                        .where(EVAL.c.stage == "trained", EVAL.c.run_id.in_(done)).group_by(EVAL.c.run_id))
        stored = _read(conn, select(METRIC.c.evaluation_id, METRIC.c.eval_set, METRIC.c.name, METRIC.c.value)
                       .where(METRIC.c.evaluation_id.in_(_evaluations(sel)))
                       .where(METRIC.c.name.like("marker/%") | METRIC.c.name.in_(names)))
        steps = _read(conn, select(STEP.c.run_id, STEP.c.step, STEP.c.name, STEP.c.value)
                      .where(STEP.c.run_id.in_(done), STEP.c.name.in_(list(CURVES))))
    return Data(runs=runs, trained=trained, metrics=stored, steps=steps, total_runs=int(total))


def _mean(name: str):
    col = SAMPLE.c[name]
    # PostgreSQL casts no boolean to a float
    return cast(func.avg(case((col, 1.0), else_=0.0) if isinstance(col.type, Boolean) else cast(col, Float)),
                Float).label(name)


def load_units(eng: Engine, sel: Selection) -> pd.DataFrame:
    """Per evaluation x eval set x problem: samples k and the means of UNIT_VALUES, grouped in the database (the
    one heavy query: a million samples take 1 to 2 s on SQLite)."""
    s = SAMPLE.c
    query = (select(s.evaluation_id, s.eval_set, s.problem_id, func.count().label("k"), *map(_mean, UNIT_VALUES))
             .where(s.evaluation_id.in_(_evaluations(sel))).group_by(s.evaluation_id, s.eval_set, s.problem_id))
    with eng.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA threads=2")  # a helper thread for the GROUP BY's sort
        units = _read(conn, query)
    return units if len(units) else pd.DataFrame(columns=UNIT_COLUMNS)


def load_examples(eng: Engine, evaluation_ids, per_set: int = EXAMPLES_PER_SET) -> pd.DataFrame:
    """Sample 0 of the first `per_set` problems of each eval set of each evaluation: the only completions read."""
    ids = sorted({int(i) for i in evaluation_ids})
    rn = func.row_number().over(partition_by=(SAMPLE.c.evaluation_id, SAMPLE.c.eval_set),
                                order_by=(SAMPLE.c.sample_idx, SAMPLE.c.id)).label("rn")
    first = select(SAMPLE.c.id, rn).where(SAMPLE.c.evaluation_id.in_(ids)).subquery()
    query = (select(SAMPLE.c.id, SAMPLE.c.evaluation_id, SAMPLE.c.eval_set, SAMPLE.c.problem_id, SAMPLE.c.sample_idx,
                    SAMPLE.c.correct, SAMPLE.c.length, SAMPLE.c.markers, SAMPLE.c.answer, SAMPLE.c.completion)
             .where(SAMPLE.c.id.in_(select(first.c.id).where(first.c.rn <= per_set))).order_by(SAMPLE.c.id))
    with eng.connect() as conn:
        return _read(conn, query)


def sweeps(eng: Engine) -> list[str]:
    """Every sweep in the database (for an error message)."""
    with eng.connect() as conn:
        return sorted(conn.execute(select(RUN.c.sweep).distinct()).scalars())
