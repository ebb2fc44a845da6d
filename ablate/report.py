"""An HTML report of the results database: `python -m ablate.report` (or `ablate report`).

    python -m ablate.report                                  # every run in $ABLATE_DB or db/ablate.sqlite
    python -m ablate.report --sweep multirun/2026-11-22/02-15-45 --model tiny --out reports/
    python -m ablate.report --objective sdpo,grpo --since 2026-11-01 --until 2026-11-30
    python -m ablate.report --compare SWEEP_A SWEEP_B        # adds B - A per cell

Writes one self-contained HTML file into --out (figures inline as PNG, no scripts, nothing fetched) and each
figure beside it as PNG and SVG, and prints the HTML file's path.

Three layers: loading (SQL that aggregates in the database: per-problem means, a few example completions),
aggregation (pure pandas on those frames) and rendering (matplotlib/seaborn figures, HTML with every
database string escaped).
"""

import argparse
import base64
import html
import json
import multiprocessing
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy import Float, case, cast, func, select, union
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from ablate import __version__, directions, probe, record
from ablate.build import OBJECTIVE as BUILD_OBJECTIVE
from ablate.markers import PAPER_MARKERS
from ablate.query import DEFAULT_DB, QueryError, reader

AXES = ("richness", "coverage", "model", "objective")
KNOWN_ORDER = {"richness": ["-", "none", "low", "medium", "high", "reference"],
               "coverage": ["seen_1x64", "seen_8x8", "seen_64", "seen_128", "seen_512", "full"]}
IN_DOMAIN, ALL, OOD = "in_domain", "all", "ood_mean"  # eval-set scopes: one set, all pooled, mean of the OOD sets
VALUES = {"accuracy": "correct", "mean_length": "length", "markers_per_response": "markers"}
RATE = "markers_per_1k_tokens"
LABELS = {"accuracy": "accuracy", "mean_length": "mean length (tokens)", "markers_per_response": "markers per response",
          RATE: "markers per 1k tokens"}
DIGITS = {"accuracy": 3, "mean_length": 1, "markers_per_response": 2, RATE: 1}
CURVES = {"rollout/reward": "reward", "rollout/mean_length": "mean length", "rollout/markers_per_response": "markers"}
BROWSER_CELLS, EXAMPLES_PER_SET, MAX_CHARS, MAX_LISTED = 48, 2, 4000, 200
FIGURE_PANELS = 8  # model x objective rows in a faceted figure (each costs ~0.5 s to draw); the tables show all

RUN, EVAL, SAMPLE, METRIC, STEP = (m.__table__ for m in
                                   (record.Run, record.Evaluation, record.Sample, record.Metric, record.TrainStep))


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


# ----------------------------------------------------------------------------------------------- loading

@dataclass
class Data:
    runs: pd.DataFrame      # selected runs, every status: axes, status, error, config, base_evaluation_id
    trained: pd.DataFrame   # run_id -> trained_eval
    metrics: pd.DataFrame   # evaluation_id, eval_set, name, value (marker/<word>, n_samples, headline metrics)
    steps: pd.DataFrame     # run_id, step, name, value (the canonical training curves)
    total_runs: int         # in the whole database
    units: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=UNIT_COLUMNS))  # from load_units


UNIT_COLUMNS = ["evaluation_id", "eval_set", "problem_id", "k", "correct", "length", "markers"]


def _read(conn, query) -> pd.DataFrame:
    result = conn.execute(query)  # tuples, not Rows: pandas builds a frame from Row objects 8x slower
    return pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))


def _where(sel: Selection) -> list:
    clauses = [RUN.c[col].in_(values) for col, values in (("sweep", sel.sweeps), ("model", sel.models),
                                                          ("objective", sel.objectives)) if values]
    clauses += [RUN.c.started_at >= sel.since] if sel.since else []
    # hint-probe and model-build runs train no policy: `ablate query` reads them
    clauses += [RUN.c.objective.not_in([probe.OBJECTIVE, BUILD_OBJECTIVE])]
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
    with eng.connect() as conn:
        total = conn.execute(select(func.count()).select_from(RUN)).scalar()
        runs = _read(conn, select(RUN.c.id.label("run_id"), RUN.c.sweep, *(RUN.c[a] for a in AXES), RUN.c.seed,
                                  RUN.c.status, RUN.c.error, RUN.c.started_at, RUN.c.git_commit, RUN.c.git_dirty,
                                  RUN.c.base_evaluation_id, RUN.c.config).where(*where).order_by(RUN.c.id))
        trained = _read(conn, select(EVAL.c.run_id, func.max(EVAL.c.id).label("trained_eval"))
                        .where(EVAL.c.stage == "trained", EVAL.c.run_id.in_(done)).group_by(EVAL.c.run_id))
        metrics = _read(conn, select(METRIC.c.evaluation_id, METRIC.c.eval_set, METRIC.c.name, METRIC.c.value)
                        .where(METRIC.c.evaluation_id.in_(_evaluations(sel)))
                        .where(METRIC.c.name.like("marker/%") | METRIC.c.name.in_(
                            ["n_samples", "accuracy", "mean_length", "markers_per_response"])))
        steps = _read(conn, select(STEP.c.run_id, STEP.c.step, STEP.c.name, STEP.c.value)
                      .where(STEP.c.run_id.in_(done), STEP.c.name.in_(list(CURVES))))
    return Data(runs=runs, trained=trained, metrics=metrics, steps=steps, total_runs=int(total))


def load_units(eng: Engine, sel: Selection) -> pd.DataFrame:
    """Per evaluation x eval set x problem: samples k and the means of correct, length and markers, grouped
    in the database (the one heavy query: a million samples take 1.5 to 2 s on SQLite)."""
    s = SAMPLE.c
    query = (select(s.evaluation_id, s.eval_set, s.problem_id, func.count().label("k"),
                    cast(func.avg(case((s.correct, 1.0), else_=0.0)), Float).label("correct"),
                    cast(func.avg(cast(s.length, Float)), Float).label("length"),
                    cast(func.avg(cast(s.markers, Float)), Float).label("markers"))
             .where(s.evaluation_id.in_(_evaluations(sel))).group_by(s.evaluation_id, s.eval_set, s.problem_id))
    with eng.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA threads=2")  # a helper thread for the GROUP BY's sort
        units = _read(conn, query)
    return units if len(units) else pd.DataFrame(columns=UNIT_COLUMNS)


def _with_metric_units(units: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """An evaluation stored without samples still counts: its aggregate metrics become one unit (no error bar)."""
    units = units.astype({"correct": float, "length": float, "markers": float})
    wide = metrics[metrics.name.isin(["accuracy", "mean_length", "markers_per_response", "n_samples"])].pivot_table(
        index=["evaluation_id", "eval_set"], columns="name", values="value", aggfunc="first").reset_index()
    if wide.empty or "accuracy" not in wide:
        return units
    have = pd.MultiIndex.from_frame(units[["evaluation_id", "eval_set"]])
    wide = wide[~pd.MultiIndex.from_frame(wide[["evaluation_id", "eval_set"]]).isin(have)]
    extra = pd.DataFrame({"evaluation_id": wide.evaluation_id, "eval_set": wide.eval_set, "problem_id": "(aggregate)",
                          "k": wide.get("n_samples", 1), "correct": wide.accuracy,
                          "length": wide.get("mean_length", np.nan),
                          "markers": wide.get("markers_per_response", np.nan)})
    return pd.concat([units, extra], ignore_index=True) if len(extra) else units


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


# ------------------------------------------------------------------------------------------- aggregation

def order(axis: str, values) -> list:
    """Levels in their natural order (richness none..reference, coverage small..full), unknown ones after."""
    known = KNOWN_ORDER.get(axis, [])
    found = list(pd.Series(values, dtype=object).dropna().unique())
    return sorted(found, key=lambda v: (known.index(v) if v in known else len(known), v))


def pick(runs: pd.DataFrame, split=()) -> pd.DataFrame:
    """Completed runs, one per cell and seed: the latest (a forced rerun replaces the earlier result)."""
    done = runs[runs.status == "completed"].sort_values("run_id")
    return done.drop_duplicates([*split, *AXES, "seed"], keep="last")


def grid(runs: pd.DataFrame, split=()) -> pd.DataFrame:
    """Every richness x coverage x model x objective x seed combination of the levels present (per `split`
    group), with its state: completed, the latest run's failed/interrupted/running, or "not run"."""
    cols = [*split, *AXES, "seed"]
    if runs.empty:
        return pd.DataFrame(columns=[*cols, "status", "run_id", "error"])
    parts = []
    for key, group in (runs.groupby(list(split)) if split else [((), runs)]):
        full = pd.MultiIndex.from_product([order(a, group[a]) for a in (*AXES, "seed")],
                                          names=[*AXES, "seed"]).to_frame(index=False)
        # richness "-" is what an objective without a teacher records (cell.NO_RICHNESS): it pairs with those
        # objectives only, and they with it only
        teacherless = set(group.objective[group.richness == "-"])
        full = full[(full.richness == "-") == full.objective.isin(teacherless)]
        parts.append(full.assign(**dict(zip(split, key))))
    full = pd.concat(parts, ignore_index=True)[cols]
    done = pick(runs, split)
    rest = runs[runs.status != "completed"].sort_values("run_id").drop_duplicates(cols, keep="last")
    rest = rest[~pd.MultiIndex.from_frame(rest[cols]).isin(pd.MultiIndex.from_frame(done[cols]))]
    known = pd.concat([done, rest])[[*cols, "status", "run_id", "error"]]
    full = full.merge(known, on=cols, how="left")
    full["status"] = full.status.fillna("not run")
    return full


def first_line(error) -> str:
    lines = str(error or "").strip().splitlines()
    return lines[0] if lines else "(no error recorded)"


def paired_units(picked: pd.DataFrame, trained: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """One row per run x eval set x problem: the trained model's per-problem means and, beside them (`*_b`),
    the starting model's on the same problem. Problems are matched by an integer key (fast merges)."""
    units = units.assign(pkey=units.groupby(["eval_set", "problem_id"], sort=False).ngroup(),
                         eval_set=units.eval_set.astype("category")).drop(columns="problem_id")
    runs = picked[["run_id", "base_evaluation_id"]].merge(trained, on="run_id")
    rows = runs.merge(units, left_on="trained_eval", right_on="evaluation_id").drop(columns="evaluation_id")
    base = units.drop(columns="eval_set").rename(
        columns={"evaluation_id": "base_evaluation_id", **{c: f"{c}_b" for c in ("k", *VALUES.values())}})
    rows["base_evaluation_id"] = rows.base_evaluation_id.astype(float)
    base["base_evaluation_id"] = base.base_evaluation_id.astype(float)
    return rows.merge(base, on=["base_evaluation_id", "pkey"], how="left")


def _summary(df: pd.DataFrame, value: str, spread: str | None = None, units: str = "run_id") -> pd.DataFrame:
    """Per group `g`: mean of `value`, its standard error over the rows (units) and n. For a ratio, `value`
    holds the group's ratio and `spread` its linearised per-unit deviations."""
    g = df.groupby("g", sort=False)
    s = g[spread or value]
    return pd.DataFrame({"mean": g[value].mean(), "se": s.std() / np.sqrt(s.count()), "n": s.count(),
                         "runs": g[units].nunique()}).reset_index()


def _rate(df: pd.DataFrame, markers: str, length: str) -> tuple[pd.Series, pd.Series]:
    """Markers per 1k tokens as a ratio of means (as the database's metric) and each unit's linearised
    deviation, whose standard error is the ratio's."""
    g = df.groupby("g", sort=False)
    mm, ml = g[markers].transform("mean"), g[length].transform("mean")
    ratio = (1000 * mm / ml).where(ml > 0)
    return ratio, (1000 * (df[markers] - mm / ml * df[length]) / ml).where(ml > 0)


def _scopes(rows: pd.DataFrame):
    for scope in sorted(map(str, rows.eval_set.dropna().unique())):
        yield scope, rows[rows.eval_set == scope]
    yield ALL, rows


def stage_stats(rows: pd.DataFrame, units: str = "run_id") -> pd.DataFrame:
    """mean/se/n per group `g` x scope x metric of correct/length/markers (stage trained) and, where the
    starting model's values are present (`*_b`), of the paired change (stage delta). `units` counts runs."""
    parts = []
    for scope, df in _scopes(rows):
        for metric, col in VALUES.items():
            parts.append(_summary(df, col, units=units).assign(metric=metric, stage="trained", scope=scope))
        ratio, dev = _rate(df, "markers", "length")
        parts.append(_summary(df.assign(r=ratio, z=dev), "r", "z", units).assign(metric=RATE, stage="trained",
                                                                                  scope=scope))
        both = df[df["correct_b"].notna()] if "correct_b" in df else df.iloc[0:0]
        if both.empty:
            continue
        for metric, col in VALUES.items():
            parts.append(_summary(both.assign(d=both[col] - both[f"{col}_b"]), "d", units=units)
                         .assign(metric=metric, stage="delta", scope=scope))
        (rt, zt), (rb, zb) = _rate(both, "markers", "length"), _rate(both, "markers_b", "length_b")
        parts.append(_summary(both.assign(r=rt - rb, z=zt - zb), "r", "z", units).assign(metric=RATE, stage="delta",
                                                                                        scope=scope))
    if not parts:
        return pd.DataFrame(columns=["g", "scope", "metric", "stage", "mean", "se", "n", "runs"])
    return with_ood_mean(pd.concat(parts, ignore_index=True))


def with_ood_mean(stats: pd.DataFrame) -> pd.DataFrame:
    """Add scope ood_mean: the mean of the out-of-domain sets' means, se = sqrt(sum se^2) / sets."""
    ood = stats[~stats.scope.isin([IN_DOMAIN, ALL])]
    if ood.empty:
        return stats
    ood = ood.assign(se2=ood.se ** 2, nan=ood.se.isna())
    g = ood.groupby(["g", "metric", "stage"], sort=False)
    mean = g.agg(mean=("mean", "mean"), se2=("se2", "sum"), nan=("nan", "any"), sets=("scope", "count"),
                 n=("n", "sum"), runs=("runs", "max")).reset_index()
    mean["se"] = (np.sqrt(mean.se2) / mean.sets).where(~mean.nan)
    return pd.concat([stats, mean.drop(columns=["se2", "nan", "sets"]).assign(scope=OOD)], ignore_index=True)


def _grouped(rows: pd.DataFrame, picked: pd.DataFrame, keys: list[str]):
    """`rows` with an integer group `g` per value of `keys` (looked up by run), and the keys of each g."""
    codes = picked.groupby(keys, sort=False).ngroup()
    lookup = picked[keys].assign(g=codes.values).drop_duplicates("g")
    return rows.assign(g=rows.run_id.map(pd.Series(codes.values, index=picked.run_id.values))), lookup


def cell_stats(paired: pd.DataFrame, picked: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Trained values and paired changes from the starting model per group of `keys` (a cell), every eval-set
    scope (each set, all, ood_mean) and metric: columns keys, scope, metric, stage, mean, se, n, runs."""
    rows, lookup = _grouped(paired, picked, keys)
    return stage_stats(rows).merge(lookup, on="g").drop(columns="g")


def base_stats(paired: pd.DataFrame, picked: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The starting model's values per group of `keys` (e.g. model x objective), each base problem once;
    `runs` counts base evaluations."""
    rows, lookup = _grouped(paired[paired["correct_b"].notna()] if "correct_b" in paired else paired.iloc[0:0],
                            picked, keys)
    rows = rows.drop_duplicates(["g", "base_evaluation_id", "pkey"]).drop(columns=[*VALUES.values()])
    rows = rows.rename(columns={f"{c}_b": c for c in VALUES.values()})
    return stage_stats(rows, units="base_evaluation_id").merge(lookup, on="g").drop(columns="g").assign(stage="base")


def marker_words(picked: pd.DataFrame, trained: pd.DataFrame, metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each marker word per response (pooled over eval sets, weighted by samples), for the starting model
    (richness "base") and the trained models by richness: mean over runs."""
    cols = [*keys, "richness", "word", "value", "runs"]
    words = metrics[metrics.name.str.startswith("marker/")]
    if words.empty or picked.empty:
        return pd.DataFrame(columns=cols)
    weight = metrics[metrics.name == "n_samples"][["evaluation_id", "eval_set", "value"]].rename(columns={"value": "w"})
    words = words.merge(weight, on=["evaluation_id", "eval_set"], how="left").fillna({"w": 1.0})
    words = words.assign(word=words.name.str[len("marker/"):], vw=words.value * words.w)
    per_eval = words.groupby(["evaluation_id", "word"], as_index=False)[["vw", "w"]].sum()
    per_eval["value"] = per_eval.vw / per_eval.w
    runs = picked.merge(trained, on="run_id")
    t = runs.merge(per_eval, left_on="trained_eval", right_on="evaluation_id")
    t = t.groupby([*keys, "richness", "word"], as_index=False).agg(value=("value", "mean"), runs=("run_id", "nunique"))
    b = runs[[*keys, "base_evaluation_id"]].drop_duplicates().merge(per_eval, left_on="base_evaluation_id",
                                                                    right_on="evaluation_id")
    b = b.groupby([*keys, "word"], as_index=False).agg(value=("value", "mean"), runs=("base_evaluation_id", "nunique"))
    return pd.concat([b.assign(richness="base"), t], ignore_index=True)[cols]


def compare(stats: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Trained values of sweep b minus sweep a per model x objective x cell (independent: se added in quadrature)."""
    keys = ["model", "objective", "richness", "coverage", "scope", "metric"]
    t = stats[stats.stage == "trained"]
    left, right = t[t.sweep == a].set_index(keys), t[t.sweep == b].set_index(keys)
    both = left[["mean", "se", "n"]].merge(right[["mean", "se", "n"]], left_index=True, right_index=True,
                                           suffixes=("_a", "_b"))
    return both.assign(mean=both.mean_b - both.mean_a, se=np.sqrt(both.se_a ** 2 + both.se_b ** 2),
                       n=both.n_a + both.n_b).reset_index()


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], value


def settings(runs: pd.DataFrame) -> tuple[list, list]:
    """Config values across runs: (key, [(value, runs)]) for those that vary, (key, value) for the rest.
    db.* is left out (a URL may hold a password)."""
    configs = [c if isinstance(c, dict) else json.loads(c or "{}") for c in runs.get("config", [])]
    counts: dict[str, Counter] = {}
    for top in sorted(set().union(*configs) - {"db"}) if configs else []:
        for blob, n in Counter(json.dumps(c.get(top), sort_keys=True, default=str) for c in configs).items():
            for key, value in _flatten(json.loads(blob), f"{top}."):  # each distinct sub-config once
                counts.setdefault(key, Counter())[value if isinstance(value, str) else json.dumps(value)] += n
    varying, fixed = [], []
    for key in sorted(counts):
        c = counts[key]
        if len(c) == 1 and sum(c.values()) == len(configs):
            fixed.append((key, next(iter(c))))
        else:
            varying.append((key, c.most_common()))
    return varying, fixed


def marker_lexicon(config) -> tuple[list[str], str]:
    config = config if isinstance(config, dict) else json.loads(config or "{}")
    markers = (config.get("eval") or {}).get("markers") or {}
    return list(markers.get("words") or PAPER_MARKERS), markers.get("mode") or "substring"


@dataclass
class Analysis:
    """Everything the page shows, as frames (no HTML)."""

    sel: Selection
    runs: pd.DataFrame
    grid: pd.DataFrame
    picked: pd.DataFrame
    cells: pd.DataFrame     # stats per panel x richness x coverage
    base: pd.DataFrame      # stats of the starting model per panel
    words: pd.DataFrame
    steps: pd.DataFrame     # canonical curves with the runs' axes
    compared: pd.DataFrame | None
    eval_sets: list[str]
    directions: pd.DataFrame
    panel_keys: list[str]
    total_runs: int


def analyse(data: Data, sel: Selection) -> Analysis:
    return with_samples(analyse_runs(data, sel), data)


def analyse_runs(data: Data, sel: Selection) -> Analysis:
    """Everything that needs no samples: the grid, the runs used, marker words, training curves."""
    panel = [*sel.split, "model", "objective"]
    picked = pick(data.runs, sel.split)
    empty = stage_stats(pd.DataFrame(columns=["g", "eval_set", "run_id", *VALUES.values()]))
    return Analysis(sel=sel, runs=data.runs, grid=grid(data.runs, sel.split), picked=picked, cells=empty, base=empty,
                    words=marker_words(picked, data.trained, data.metrics, panel),
                    steps=data.steps.merge(picked[["run_id", *sel.split, *AXES, "seed"]], on="run_id"),
                    compared=None, eval_sets=[], panel_keys=panel, total_runs=data.total_runs,
                    directions=directions.check(pd.DataFrame(), pd.DataFrame()))


def with_samples(a: Analysis, data: Data) -> Analysis:
    """`a` with the per-cell statistics computed from the per-problem units."""
    paired = paired_units(a.picked, data.trained, _with_metric_units(data.units, data.metrics))
    cells = cell_stats(paired, a.picked, [*a.panel_keys, "richness", "coverage"])
    return replace(a, cells=cells, base=base_stats(paired, a.picked, a.panel_keys),
                   compared=compare(cells, *a.sel.compare) if a.sel.compare and not cells.empty else None,
                   eval_sets=sorted(map(str, paired.eval_set.unique())),
                   directions=directions.check(paired.assign(eval_set=paired.eval_set.astype(str)), a.picked))


# ----------------------------------------------------------------------------------------------- figures

def _label(row, keys) -> str:
    return " · ".join(str(row[k]) for k in keys)


def _cell_points(a: Analysis, x: tuple[str, str], y: tuple[str, str]) -> pd.DataFrame:
    """One row per cell: x and y = (scope, metric) of the trained model, with their standard errors."""
    keys = [*a.panel_keys, "richness", "coverage"]
    t = a.cells[a.cells.stage == "trained"]
    pick_ = lambda sm: t[(t.scope == sm[0]) & (t.metric == sm[1])].set_index(keys)[["mean", "se"]]
    df = pick_(x).merge(pick_(y), left_index=True, right_index=True, suffixes=("_x", "_y")).reset_index()
    df["panel"] = [_label(r, a.panel_keys) for _, r in df.iterrows()] if len(df) else []
    return df.dropna(subset=["mean_x", "mean_y"])


def _base_points(a: Analysis, x, y) -> pd.DataFrame:
    b = a.base
    pick_ = lambda sm: b[(b.scope == sm[0]) & (b.metric == sm[1])].set_index(["model"])["mean"]
    return pd.concat([pick_(x).groupby(level=0).mean().rename("x"), pick_(y).groupby(level=0).mean().rename("y")],
                     axis=1).dropna().reset_index()


def _subplots(rows: int, cols: int, width: float, height: float, right: float = 1.5):
    """A grid of axes with fixed margins in inches (room for a legend on the right): constrained or tight
    layout would cost a second or more per figure. A column shares its x axis (tick labels at the bottom)."""
    import matplotlib.pyplot as plt

    w, h = cols * width + right + 0.75, rows * height + 0.35
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), squeeze=False, sharex="col")
    fig.subplots_adjust(left=0.75 / w, right=1 - right / w, bottom=0.6 / h, top=1 - 0.35 / h, wspace=0.3,
                        hspace=0.55 if rows > 1 else 0.2)
    return fig, axes


def _palette(levels, name="tab10") -> dict:
    import seaborn as sns

    return dict(zip(levels, sns.color_palette(name, len(levels))))


def _scatter(a: Analysis, x, y, xlabel, ylabel, frontier: bool):
    import seaborn as sns

    df = _cell_points(a, x, y)
    if df.empty:
        return None
    fig, axes = _subplots(1, 1, 5.6, 4.2, right=1.8)
    ax = axes[0, 0]
    ax.errorbar(df.mean_x, df.mean_y, xerr=df.se_x.fillna(0), yerr=df.se_y.fillna(0), fmt="none", ecolor="0.8",
                elinewidth=0.8, zorder=1)
    sns.scatterplot(df, x="mean_x", y="mean_y", hue="richness", hue_order=order("richness", df.richness),
                    style="panel" if df.panel.nunique() > 1 else None, s=60, ax=ax, zorder=2)
    if frontier:  # cells that no shorter cell beats on accuracy
        pts = df.sort_values(["mean_x", "mean_y"], ascending=[True, False])
        best = pts[pts.mean_y > pts.mean_y.cummax().shift(fill_value=-np.inf)]
        if len(best) > 1:
            ax.plot(best.mean_x, best.mean_y, "--", color="0.4", lw=1, zorder=1, label="frontier")
    base = _base_points(a, x, y)
    if len(base):
        ax.scatter(base.x, base.y, marker="*", s=220, color="black", zorder=3, label="starting model")
        for _, r in base.iterrows():
            ax.annotate(str(r["model"]), (r.x, r.y), textcoords="offset points", xytext=(7, 5), fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def fig_frontier(a: Analysis):
    return _scatter(a, (IN_DOMAIN, "mean_length"), (IN_DOMAIN, "accuracy"), "mean response length, in-domain (tokens)",
                    "accuracy, in-domain", frontier=True)


def fig_markers_ood(a: Analysis):
    if not any(s != IN_DOMAIN for s in a.eval_sets):
        return None
    return _scatter(a, (OOD, "markers_per_response"), (OOD, "accuracy"),
                    "markers per response, out-of-domain", "accuracy, out-of-domain (mean of sets)", frontier=False)


def curves(steps: pd.DataFrame, panel_keys: list[str]) -> pd.DataFrame:
    """Mean and standard error over runs (coverage levels and seeds) per panel x curve x richness x step."""
    df = steps.dropna(subset=["value"])
    cols = [*panel_keys, "name", "richness", "step"]
    return df.groupby(cols, sort=False).value.agg(["mean", "std", "count"]).reset_index().assign(
        se=lambda d: d["std"] / np.sqrt(d["count"]))


def fig_curves(a: Analysis):

    df = curves(a.steps, a.panel_keys)
    if df.empty:
        return None
    panels = df[a.panel_keys].drop_duplicates().sort_values(a.panel_keys).head(FIGURE_PANELS)
    names = [n for n in CURVES if n in set(df.name)]
    colors = _palette(order("richness", df.richness))
    fig, axes = _subplots(len(panels), len(names), 3.4, 2.5)
    for i, (_, p) in enumerate(panels.iterrows()):
        mine = df.merge(p.to_frame().T, on=a.panel_keys)
        for j, name in enumerate(names):
            ax = axes[i, j]
            for level, color in colors.items():
                c = mine[(mine.name == name) & (mine.richness == level)].sort_values("step")
                if c.empty:
                    continue
                ax.plot(c.step, c["mean"], color=color, lw=1.4, label=level)
                ax.fill_between(c.step, c["mean"] - c.se.fillna(0), c["mean"] + c.se.fillna(0), color=color,
                                alpha=0.2, lw=0)
            ax.set_title(f"{_label(p, a.panel_keys)} | {CURVES[name]}", fontsize=9)
            ax.set_xlabel("step" if i == len(panels) - 1 else "")
    axes[0, -1].legend(title="richness", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def fig_richness(a: Analysis):

    delta = a.cells[a.cells.stage == "delta"]
    cols = [(IN_DOMAIN, "accuracy", "Δ accuracy, in-domain"), (OOD, "accuracy", "Δ accuracy, out-of-domain"),
            (ALL, "markers_per_response", "Δ markers per response")]
    cols = [c for c in cols if ((delta.scope == c[0]) & (delta.metric == c[1])).any()]
    if delta.empty or not cols:
        return None
    panels = delta[a.panel_keys].drop_duplicates().sort_values(a.panel_keys).head(FIGURE_PANELS)
    richness, coverage = order("richness", delta.richness), order("coverage", delta.coverage)
    colors = _palette(coverage, "viridis")
    fig, axes = _subplots(len(panels), len(cols), 3.4, 2.5)
    for i, (_, p) in enumerate(panels.iterrows()):
        mine = delta.merge(p.to_frame().T, on=a.panel_keys)
        for j, (scope, metric, title) in enumerate(cols):
            ax = axes[i, j]
            d = mine[(mine.scope == scope) & (mine.metric == metric)]
            for c_i, cov in enumerate(coverage):
                row = d[d.coverage == cov].set_index("richness").reindex(richness)
                x = np.arange(len(richness)) + (c_i - (len(coverage) - 1) / 2) * 0.06
                ax.errorbar(x, row["mean"], yerr=row.se.fillna(0), marker="o", ms=4, capsize=2, lw=1.2,
                            color=colors[cov], label=cov)
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_xticks(range(len(richness)), richness)
            ax.set_title(f"{_label(p, a.panel_keys)} | {title}", fontsize=9)
            ax.set_xlabel("richness" if i == len(panels) - 1 else "")
    axes[0, -1].legend(title="coverage", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


def fig_marker_words(a: Analysis):
    import seaborn as sns

    w = a.words
    if w.empty or not (w.value.fillna(0) > 0).any():
        return None
    panels = w[a.panel_keys].drop_duplicates().sort_values(a.panel_keys).head(FIGURE_PANELS)
    words = w[w.richness == "base"].sort_values("value", ascending=False).word.drop_duplicates().tolist()
    words += [x for x in w.word.unique() if x not in words]
    levels = order("richness", w.richness[w.richness != "base"])
    colors = {"base": "0.25", **dict(zip(levels, sns.color_palette("flare", len(levels))))}
    width = 0.8 / len(colors)
    fig, axes = _subplots(len(panels), 1, 8.5, 2.5)
    for ax, (_, p) in zip(axes[:, 0], panels.iterrows()):
        mine = w.merge(p.to_frame().T, on=a.panel_keys).pivot_table(index="word", columns="richness", values="value")
        mine = mine.reindex(index=words, columns=list(colors))
        for i, (level, color) in enumerate(colors.items()):
            ax.bar(np.arange(len(words)) + (i - (len(colors) - 1) / 2) * width, mine[level].fillna(0), width,
                   color=color, label="starting model" if level == "base" else level)
        ax.set_xticks(range(len(words)), words)
        ax.set(title=_label(p, a.panel_keys), ylabel="per response")
        ax.title.set_fontsize(9)
        ax.legend(title="richness", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, frameon=False)
    return fig


FIGURES = [
    ("frontier", "Accuracy vs. length frontier", fig_frontier,
     ("One point per cell (trained model, mean over seeds; bars ± se). Star: the starting model. Dashed: cells no "
      "shorter cell beats on accuracy.")),
    ("markers_ood", "Markers vs. out-of-domain accuracy", fig_markers_ood,
     "One point per cell: epistemic markers per response and accuracy on the out-of-domain sets (mean of sets)."),
    ("curves", "Training curves", fig_curves,
     ("rollout/reward, rollout/mean_length and rollout/markers_per_response per step: mean over coverage levels and "
      "seeds, band ± se.")),
    ("richness", "Richness effect per coverage level", fig_richness,
     "Change from the starting model (trained − base) by richness, one line per coverage level, bars ± se."),
    ("marker_words", "Which marker words disappear", fig_marker_words,
     "Each marker word per response: the starting model and the trained models by richness (mean over runs)."),
]


def _plotting() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import seaborn  # noqa: F401


def _draw(a: Analysis, out: Path, stem: str, names) -> None:
    """Draw the named figures that have data, each written as PNG and SVG."""
    _plotting()
    import matplotlib
    import matplotlib.pyplot as plt
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), \
            matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ablate", "axes.titley": 1.01}):
        for name, _, draw, _ in FIGURES:
            fig = draw(a) if name in names else None
            if fig is not None:
                fig.savefig(out / f"{stem}-{name}.png", dpi=100, pil_kwargs={"compress_level": 3})
                fig.savefig(out / f"{stem}-{name}.svg")
                plt.close(fig)


class Painter:
    """Draws figures into files beside the report. Each takes a second or more and they are independent: where
    the machine has several cores and fork (Linux, macOS), `start` draws them in a child process."""

    def __init__(self, out: Path, stem: str):
        self.out, self.stem, self.jobs = out, stem, []
        self.fork = (os.cpu_count() or 1) > 1 and "fork" in multiprocessing.get_all_start_methods()

    def start(self, a: Analysis, names, background: bool = True) -> None:
        if not (background and self.fork):
            return _draw(a, self.out, self.stem, names)
        child = multiprocessing.get_context("fork").Process(target=_draw, args=(a, self.out, self.stem, names),
                                                             daemon=True)
        child.start()
        self.jobs.append((child, a, names))

    def finish(self) -> list[dict]:
        """Wait for the children; return each figure drawn, with its PNG inline."""
        for child, a, names in self.jobs:
            child.join()
            if child.exitcode != 0:  # draw them here: an error surfaces with its traceback
                _draw(a, self.out, self.stem, names)
        made = []
        for name, title, _, caption in FIGURES:
            png, svg = self.out / f"{self.stem}-{name}.png", self.out / f"{self.stem}-{name}.svg"
            if png.is_file():
                made.append({"name": name, "title": title, "caption": caption, "png": png.name, "svg": svg.name,
                             "data": base64.b64encode(png.read_bytes()).decode("ascii")})
        return made


# ------------------------------------------------------------------------------------------------- HTML

def esc(value) -> Markup:
    return Markup(html.escape("" if value is None else str(value)))


def highlight(text: str, words, mode: str = "substring") -> Markup:
    """`text` escaped, with each marker word wrapped in <mark> (substring or whole-word, case-insensitive)."""
    words = [w for w in words if w]
    if not words:
        return esc(text)
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    pattern = re.compile(rf"\b(?:{alts})\b" if mode == "word" else alts, re.IGNORECASE)
    out, pos = [], 0
    for m in pattern.finditer(text):
        out += [html.escape(text[pos:m.start()]), f"<mark>{html.escape(m.group())}</mark>"]
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return Markup("".join(out))


def _num(v, digits: int, sign: bool = False) -> str:
    if v is None or pd.isna(v):
        return "–"
    v = round(float(v), digits) + 0.0  # no "-0.0"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _pm(mean, se, digits, sign=False) -> str:
    return _num(mean, digits, sign) + ("" if se is None or pd.isna(se) else f" ± {se:.{digits}f}")


def _table(head: list, rows: list[list], cls: str = "") -> Markup:
    """A table; plain values are escaped, Markup is trusted (built here from escaped parts)."""
    cell = lambda tag, v: f"<{tag}>{v if isinstance(v, Markup) else esc(v)}</{tag}>"
    body = "".join("<tr>" + "".join(cell("th" if i == 0 else "td", v) for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return Markup(f'<table class="{esc(cls)}"><thead><tr>{"".join(cell("th", h) for h in head)}</tr></thead>'
                  f"<tbody>{body}</tbody></table>")


def _state_note(states: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(states.items()) if s != "completed")


def _index(stats: pd.DataFrame, keys: list[str]) -> dict:
    """{(*keys, scope, metric, stage): (mean, se, n, runs)} for fast lookups while rendering."""
    cols = [*keys, "scope", "metric", "stage"]
    return {tuple(r[:len(cols)]): r[len(cols):] for r in
            stats[[*cols, "mean", "se", "n", "runs"]].itertuples(index=False, name=None)}


def _delta(mean, se, digits, coloured: bool, label: str = "Δ ") -> Markup:
    """A signed change ± se; green/red by sign where up is better (accuracy)."""
    shown = round(mean, digits) if pd.notna(mean) else 0
    cls = ("up" if shown > 0 else "down" if shown < 0 else "") if coloured else ""
    return Markup(f'<span class="delta {cls}">{esc(label + _pm(mean, se, digits, sign=True))}</span>')


def _metric_table(a: Analysis, cells: dict, states: dict, panel: tuple, scope: str, metric: str) -> Markup:
    """richness x coverage: trained ± se, Δ from the starting model ± se, n (problem x seed units) per cell;
    a cell without data says why (failed, interrupted, running, not run)."""
    digits = DIGITS[metric]
    g = a.grid[a.grid.sweep == panel[0]] if a.sel.split else a.grid
    coverage = order("coverage", g.coverage)
    rows = []
    for r in order("richness", g.richness):
        row = [r]
        for c in coverage:
            st = states.get((*panel, r, c), Counter({"not run": 1}))
            note = _state_note(st)
            t, d = (cells.get((*panel, r, c, scope, metric, stage)) for stage in ("trained", "delta"))
            if t is None:
                kind = "failed" if st.get("failed") or st.get("interrupted") else "missing"
                row.append(Markup(f'<span class="{kind}">{esc(note or "no data")}</span>'))
                continue
            mean, se, n, runs = t
            delta = Markup("<br>") + _delta(d[0], d[1], digits, metric == "accuracy") if d else ""
            row.append(Markup(f'<b>{esc(_pm(mean, se, digits))}</b>{delta}<br><span class="n">n={int(n)} · '
                              f'{int(runs)} seed{"s" if runs != 1 else ""}{esc("; " + note) if note else ""}</span>'))
        rows.append(row)
    return _table(["richness \\ coverage", *coverage], rows, "grid")


def _tables(a: Analysis) -> list[dict]:
    specs = [(IN_DOMAIN, "accuracy", "accuracy, in-domain")]
    ood = [s for s in a.eval_sets if s != IN_DOMAIN]
    specs += [(s, "accuracy", f"accuracy, out-of-domain: {s}") for s in ood]
    specs += [(OOD, "accuracy", f"accuracy, out-of-domain: mean of {len(ood)} sets")] if len(ood) > 1 else []
    specs += [(ALL, m, f"{LABELS[m]}, all eval sets") for m in ("mean_length", "markers_per_response", RATE)]
    cells, base = _index(a.cells, [*a.panel_keys, "richness", "coverage"]), _index(a.base, a.panel_keys)
    states = {k: Counter(v.status) for k, v in a.grid.groupby([*a.panel_keys, "richness", "coverage"])}
    panels = []
    for _, p in a.picked[a.panel_keys].drop_duplicates().sort_values(a.panel_keys).iterrows():
        panel = tuple(p)
        tables = []
        for scope, metric, title in specs:
            b = base.get((*panel, scope, metric, "base"))
            tables.append({"title": title, "table": _metric_table(a, cells, states, panel, scope, metric),
                           "base": f"starting model: {_pm(b[0], b[1], DIGITS[metric])} (n={int(b[2])})" if b else ""})
        panels.append({"title": _label(p, a.panel_keys), "tables": tables, "words": _words_table(a, p.to_dict())})
    return panels


def _words_table(a: Analysis, panel: dict) -> Markup | None:
    w = a.words.merge(pd.DataFrame([panel]), on=list(panel))
    if w.empty:
        return None
    table = w.pivot_table(index="word", columns="richness", values="value", aggfunc="mean")
    runs = w.groupby("richness").runs.max()
    levels = order("richness", [c for c in table.columns if c != "base"])
    table = table.sort_values("base", ascending=False) if "base" in table else table
    rows = []
    for word, r in table.iterrows():
        base = r.get("base", np.nan)
        cells = [word, _num(base, 3)]
        for lv in levels:
            v = r.get(lv, np.nan)
            change = "" if pd.isna(base) or pd.isna(v) or base == 0 else f" ({(v - base) / base:+.0%})"
            cls = "gone" if base > 0 and v == 0 else ""
            cells.append(Markup(f'<span class="{cls}">{esc(_num(v, 3) + change)}</span>'))
        rows.append(cells)
    plural = lambda n, what: f"{int(n)} {what}{'s' if n != 1 else ''}"
    head = ["word", f"starting model ({plural(runs.get('base', 0), 'evaluation')})",
            *(f"{lv} ({plural(runs[lv], 'run')})" for lv in levels)]
    return _table(head, rows, "words")


def _header(a: Analysis) -> dict:
    runs, grid_ = a.runs, a.grid
    axes = []
    for axis in (*AXES, "seed"):
        levels = order(axis, runs[axis])
        done = a.picked[axis].value_counts()
        axes.append([axis, ", ".join(f"{v} ({done.get(v, 0)})" for v in levels)])
    states = Counter(grid_.status)
    missing = grid_[grid_.status != "completed"]
    cols = [*a.sel.split, *AXES, "seed"]
    missing_rows = [[*(r[c] for c in cols), r.status] for _, r in missing.head(MAX_LISTED).iterrows()]
    failed = grid_[grid_.status.isin(["failed", "interrupted"])].merge(runs[["run_id", "started_at"]], on="run_id")
    failed_rows = [[int(r.run_id), *(r[c] for c in cols), r.status, f"{r.started_at:%Y-%m-%d %H:%M}",
                    Markup(f"<code>{esc(first_line(r.error))}</code>")] for _, r in failed.iterrows()]
    earlier = int(runs.status.isin(["failed", "interrupted"]).sum()) - len(failed)
    dupes = int((runs.status == "completed").sum()) - len(a.picked)
    commits = Counter(str(c)[:10] for c in runs.git_commit.fillna("unknown"))
    varying, fixed = settings(runs)
    return {
        "sweeps": [[s, int(n), f"{g.started_at.min():%Y-%m-%d %H:%M}", f"{g.started_at.max():%Y-%m-%d %H:%M}"]
                   for (s, g), n in zip(runs.groupby("sweep"), runs.groupby("sweep").size())],
        "axes": axes, "cells": len(grid_), "missing": len(missing), "completed": states["completed"],
        "failed": states["failed"], "interrupted": states["interrupted"], "running": states["running"],
        "not_run": states["not run"],
        "missing_table": _table([*cols, "state"], missing_rows) if missing_rows else None,
        "missing_more": max(0, len(missing) - MAX_LISTED),
        "failed_table": _table(["run", *cols, "status", "started", "error (first line)"], failed_rows)
        if failed_rows else None,
        "earlier_failed": max(earlier, 0), "dupes": max(dupes, 0),
        "commits": ", ".join(f"{c} ({n})" for c, n in commits.most_common()),
        "dirty": int(runs.git_dirty.fillna(False).astype(bool).sum()),
        "varying": _table(["setting", "values (runs)"], [[k, "; ".join(f"{v} ({n})" for v, n in vs[:12]) +
                                                         (f"; … {len(vs) - 12} more" if len(vs) > 12 else "")]
                                                        for k, vs in varying[:60]]) if varying else None,
        "fixed": _table(["setting", "value"], [[k, v if len(v) < 300 else v[:300] + " …"] for k, v in fixed])
        if fixed else None,
    }


def _browser(a: Analysis, examples: pd.DataFrame, shown: pd.DataFrame, base_ids: dict) -> list[dict]:
    """Per panel: the starting model's examples, then a few generations of each cell's first seed."""
    by_eval: dict = {}
    for e in examples.itertuples(index=False):  # in-domain first, then one per out-of-domain set; at most 4
        mine = by_eval.setdefault(e.evaluation_id, [])
        if e.eval_set == IN_DOMAIN or all(x.eval_set != e.eval_set for x in mine):
            mine.append(e)

    def block(eval_id, config):
        words, mode = marker_lexicon(config)
        chosen = sorted(by_eval.get(eval_id, []), key=lambda e: e.eval_set != IN_DOMAIN)[:4]
        return [{"meta": f"{e.eval_set} · problem {e.problem_id} · sample {e.sample_idx} · "
                         f"{'correct' if e.correct else 'wrong'} · {e.length} tokens · markers: {e.markers} · "
                         f"gold answer: {e.answer}", "ok": bool(e.correct),
                 "text": highlight(str(e.completion)[:MAX_CHARS], words, mode),
                 "cut": f"… ({len(str(e.completion)) - MAX_CHARS} more characters)"
                 if len(str(e.completion)) > MAX_CHARS else ""} for e in chosen]
    panels = []
    for key, group in shown.groupby(a.panel_keys, sort=False):
        first = group.iloc[0]
        cells = [{"title": f"richness={r.richness} · coverage={r.coverage} · run {int(r.run_id)} · seed {r.seed}",
                  "items": block(r.trained_eval, r.config)} for _, r in group.iterrows()]
        base_id = base_ids.get(key if isinstance(key, tuple) else (key,))
        panels.append({"title": _label(first, a.panel_keys), "cells": cells,
                       "base": block(base_id, first.config) if base_id is not None else []})
    return panels


def browser_cells(a: Analysis, trained: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The runs whose samples the browser shows (first seed of each cell, at most BROWSER_CELLS) and the
    starting model's evaluation per panel."""
    p = a.picked.merge(trained, on="run_id")
    if p.empty:
        return p, {}
    rank = {a_: {v: i for i, v in enumerate(order(a_, p[a_]))} for a_ in ("richness", "coverage")}
    p = p.assign(_r=p.richness.map(rank["richness"]), _c=p.coverage.map(rank["coverage"]))
    p = p.sort_values([*a.panel_keys, "_r", "_c", "seed"]).drop_duplicates([*a.panel_keys, "richness", "coverage"])
    base = (a.picked.dropna(subset=["base_evaluation_id"]).groupby(a.panel_keys).base_evaluation_id
            .agg(lambda s: s.mode().iloc[0]))
    return p.head(BROWSER_CELLS), {k if isinstance(k, tuple) else (k,): int(v) for k, v in base.items()}


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ablate report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; background: #fff;
       max-width: 1280px; margin: 0 auto; padding: 16px 24px }
h1 { font-size: 24px; margin: 0 0 4px } h3 { font-size: 15px; margin: 18px 0 6px }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 2px solid #ddd; padding-bottom: 3px }
h4 { font-size: 13px; margin: 10px 0 4px; color: #444 }
.meta { color: #666; font-size: 12px } nav a { margin-right: 14px }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 12.5px }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left }
thead th { background: #f4f4f6 } tbody th { background: #fafafa; font-weight: 600 }
table.grid td { text-align: right; min-width: 120px }
.tables { display: flex; flex-wrap: wrap; gap: 4px 28px }
.delta { font-size: 11.5px; color: #555 } .delta.up { color: #1a7f37 } .delta.down { color: #c62828 }
.n { font-size: 11px; color: #888 } .failed { color: #c62828; font-size: 12px } .missing { color: #999; font-size: 12px }
.gone { color: #c62828; font-weight: 600 } .note { color: #666; font-size: 12.5px }
.counts span { display: inline-block; margin-right: 16px; padding: 2px 8px; border-radius: 4px; background: #f1f3f5 }
.counts .bad { background: #fdecea; color: #b71c1c } .counts .good { background: #e8f5e9; color: #1b5e20 }
figure { margin: 10px 0 24px } figure img { max-width: 100%; border: 1px solid #eee }
figcaption { color: #555; font-size: 12.5px }
details { margin: 6px 0 } summary { cursor: pointer; font-weight: 600 }
.sample { border-left: 4px solid #c62828; background: #fafafa; margin: 6px 0 10px; padding: 4px 10px }
.sample.ok { border-color: #2e7d32 } .sample .m { font-size: 11.5px; color: #666 }
pre { white-space: pre-wrap; word-break: break-word; font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; margin: 4px 0 }
mark { background: #ffe066; padding: 0 1px } code { font-size: 12px }
</style></head><body>
{% macro samples(items) %}{% for s in items %}
<div class="sample{{ ' ok' if s.ok }}"><div class="m">{{ s.meta }}</div><pre>{{ s.text }}{{ s.cut }}</pre></div>
{% else %}<p class="missing">no samples stored</p>{% endfor %}{% endmacro %}

<h1>ablate report</h1>
<div class="meta">generated {{ generated }} · ablate {{ version }} · database {{ db }} · selection: {{ selection }}</div>
<nav class="meta"><a href="#summary">summary</a><a href="#figures">figures</a><a href="#results">results</a>
{% if compared %}<a href="#compare">comparison</a>{% endif %}<a href="#samples">samples</a><a href="#method">method</a>
</nav>

<h2 id="summary">What was swept</h2>
{% if not runs %}
<p class="missing"><b>{% if total_runs == 0 %}No runs in the database.{% else %}No runs match the selection
({{ selection }}); the database has {{ total_runs }} runs.{% endif %}</b>
Nothing to report yet: run a sweep (<code>python -m ablate -m ...</code>) or widen the selection.</p>
{% else %}
{{ sweeps }}
{{ axes }}
<p class="counts"><span>{{ h.cells }} cells (richness × coverage × model × objective × seed)</span>
<span class="good">{{ h.completed }} completed</span>
<span class="{{ 'bad' if h.failed or h.interrupted }}">{{ h.failed }} failed{% if h.interrupted %},
  {{ h.interrupted }} interrupted{% endif %}</span>
{% if h.running %}<span>{{ h.running }} running</span>{% endif %}
<span class="{{ 'bad' if h.missing }}">{{ h.missing }} missing (no completed run{% if h.not_run %};
  {{ h.not_run }} never run{% endif %})</span></p>
{% if h.dupes %}<p class="note">{{ h.dupes }} earlier completed run(s) of a cell and seed were superseded by a later
one (the latest is used).</p>{% endif %}
{% if h.earlier_failed %}<p class="note">{{ h.earlier_failed }} failed/interrupted run(s) were later completed or
retried.</p>{% endif %}
<p class="note">git commits: {{ h.commits }}{% if h.dirty %} · {{ h.dirty }} run(s) from a dirty tree{% endif %}</p>
{% if h.missing_table %}<details{% if h.missing <= 20 %} open{% endif %}><summary>Missing cells ({{ h.missing }})</summary>
{{ h.missing_table }}{% if h.missing_more %}<p class="note">… and {{ h.missing_more }} more.</p>{% endif %}</details>
{% endif %}
{% if h.failed_table %}<h3 id="failed">Failed cells</h3>{{ h.failed_table }}{% endif %}
{% if h.varying %}<details><summary>Settings that vary across runs</summary>{{ h.varying }}</details>{% endif %}
{% if h.fixed %}<details><summary>Settings shared by all runs</summary>{{ h.fixed }}</details>{% endif %}
{% endif %}

{% if directions %}<h2 id="directions">The paper's four directions</h2>
<p class="note">Each claim checked on this selection with a rule fixed in advance (ablate/directions.py):
<b>holds</b> = the predicted sign, at least 2 standard errors from zero; <b>opposite</b> = 2 standard errors the
other way; otherwise <b>not significant</b>. Self-distillation cells are those whose teacher sees a context
(richness other than none), pooled over seeds and the other axis; units are problem × run means.</p>
{{ directions }}
{% endif %}

<h2 id="figures">Figures</h2>
{% if n_panels > figure_panels %}<p class="note">Figures with a row per model × objective show the first
{{ figure_panels }} of {{ n_panels }}; the tables below show all.</p>{% endif %}
{% for f in figures %}
<figure id="fig-{{ f.name }}"><h3>{{ f.title }}</h3><img alt="{{ f.title }}" src="data:image/png;base64,{{ f.data }}">
<figcaption>{{ f.caption }} Files: {{ f.png }}, {{ f.svg }}.</figcaption></figure>
{% else %}<p class="missing">No completed runs: nothing to plot.</p>{% endfor %}

<h2 id="results">Results per model × objective</h2>
<p class="note">Each cell: the trained model's mean ± standard error; Δ = trained − starting model, paired by
problem, ± se; n = problem × seed units. Cells without a completed run say why (failed, interrupted, running,
not run).</p>
{% for p in panels %}
<h3>{{ p.title }}</h3>
<div class="tables">{% for t in p.tables %}
<div><h4>{{ t.title }}</h4>{{ t.table }}<div class="note">{{ t.base }}</div></div>{% endfor %}
</div>
{% if p.words %}<h4>Per-marker breakdown: each word per response, starting model vs. trained by richness (all eval
sets; change in %)</h4>{{ p.words }}{% endif %}
{% else %}<p class="missing">No completed runs.</p>{% endfor %}

{% if compared %}
<h2 id="compare">Comparison: {{ compare_b }} − {{ compare_a }}</h2>
<p class="note">Trained values of sweep B minus sweep A per cell, ± se (added in quadrature).</p>
{% for c in compared %}<h3>{{ c.title }}</h3>
<div class="tables">{% for t in c.tables %}<div><h4>{{ t.title }}</h4>{{ t.table }}</div>{% endfor %}</div>
{% endfor %}
{% endif %}

<h2 id="samples">Sample browser</h2>
<p class="note">Sample 0 of the first problems of each eval set, for the first seed of each cell; marker words
<mark>highlighted</mark>.{% if browser_more %} Showing {{ browser_shown }} of {{ browser_shown + browser_more }}
cells.{% endif %}</p>
{% for p in browser %}{% set first_panel = loop.first %}
<h3>{{ p.title }}</h3>
{% if p.base %}<details><summary>starting model</summary>{{ samples(p.base) }}</details>{% endif %}
{% for c in p.cells %}
<details{% if first_panel and loop.first %} open{% endif %}><summary>{{ c.title }}</summary>{{ samples(c["items"]) }}
</details>{% endfor %}
{% else %}<p class="missing">No completed runs.</p>{% endfor %}

<h2 id="method">Method</h2>
<p class="note">Each problem's k samples are averaged first (as in the database's accuracy_stderr); a cell's mean
is over its (seed, problem) units and ± is their standard error (with one seed it equals the run's
accuracy_stderr). Δ pairs each trained unit with the starting model on the same problem. Markers per 1k tokens is
a ratio of means (as the stored metric), its se by linearisation. The out-of-domain mean is the mean of the sets'
means, se = √(Σ se²) / sets. Runs: the latest completed run per cell and seed. Eval sets other than in_domain are
out-of-domain.</p>
</body></html>
"""


def _compare_panels(a: Analysis) -> list[dict]:
    """Per model x objective and metric: richness x coverage of sweep B - sweep A."""
    if a.compared is None or a.compared.empty:
        return []
    c = a.compared
    specs = [(IN_DOMAIN, "accuracy", "accuracy, in-domain")]
    specs += [(OOD, "accuracy", "accuracy, out-of-domain (mean of sets)")] if (c.scope == OOD).any() else []
    specs += [(ALL, m, f"{LABELS[m]}, all eval sets") for m in ("mean_length", "markers_per_response")]
    richness, coverage = order("richness", c.richness), order("coverage", c.coverage)
    out = []
    for (model, objective), g in c.groupby(["model", "objective"]):
        tables = []
        for scope, metric, title in specs:
            d = g[(g.scope == scope) & (g.metric == metric)].set_index(["richness", "coverage"])
            rows = [[r, *(_delta(d.loc[(r, cv), "mean"], d.loc[(r, cv), "se"], DIGITS[metric], metric == "accuracy", "")
                          if (r, cv) in d.index else Markup('<span class="missing">not in both</span>')
                          for cv in coverage)] for r in richness]
            tables.append({"title": title, "table": _table(["richness \\ coverage", *coverage], rows, "grid")})
        out.append({"title": f"{model} · {objective}", "tables": tables})
    return out


def _directions_table(a: Analysis) -> Markup | str:
    d = a.directions
    if d.empty:
        return ""
    rows = [[r.model, r.objective, f"({r.direction}) {r.claim}", r.comparison,
             "-" if pd.isna(r.estimate) else _pm(r.estimate, r.se, 3, sign=True), r.n,
             Markup(f'<span class="{ {"holds": "good", "opposite": "bad"}.get(r.verdict, "")}">{esc(r.verdict)}</span>')]
            for r in d.itertuples()]
    return _table(["model", "objective", "direction", "comparison", "estimate ± se", "n", "verdict"], rows)


def sections(a: Analysis) -> dict:
    """The page's tables (all but figures and samples)."""
    h = _header(a) if len(a.runs) else {}
    return {"directions": _directions_table(a),"h": h, "sweeps": _table(["sweep", "runs", "first started", "last started"], h["sweeps"]) if h else "",
            "axes": _table(["axis", "levels (completed runs)"], h["axes"]) if h else "",
            "panels": _tables(a) if len(a.picked) else [], "compared": _compare_panels(a)}


def render(a: Analysis, figs: list[dict], browser: list[dict], browser_more: int, db_label: str,
           parts: dict | None = None) -> str:
    return Environment(autoescape=True).from_string(TEMPLATE).render(
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=__version__, db=db_label,
        selection=a.sel.describe(), runs=len(a.runs), total_runs=a.total_runs, **(parts or sections(a)),
        figures=figs, n_panels=len(a.picked[a.panel_keys].drop_duplicates()), figure_panels=FIGURE_PANELS,
        compare_a=a.sel.compare[0] if a.sel.compare else "",
        compare_b=a.sel.compare[1] if a.sel.compare else "", browser=browser,
        browser_shown=sum(len(p["cells"]) for p in browser), browser_more=browser_more)


# ------------------------------------------------------------------------------------------- the command

def _stem(out: Path) -> str:
    stem = first = "report-" + datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 1
    while (out / f"{stem}.html").exists():
        n += 1
        stem = f"{first}-{n}"
    return stem


def build(eng: Engine, out: Path, sel: Selection, db_label: str = "") -> Path:
    """Write the report for `sel` into `out`; returns the HTML file's path."""
    with ThreadPoolExecutor(2) as pool:  # the database works without the GIL while plotting imports
        units, loading = pool.submit(load_units, eng, sel), pool.submit(load, eng, sel)
        _plotting()
        data = loading.result()
        data.units = units.result()  # all threads done before a figure process forks
    absent = [s for s in sel.compare or () if s not in set(data.runs.sweep)]
    if absent:
        with eng.connect() as conn:
            sweeps = sorted(conn.execute(select(RUN.c.sweep).distinct()).scalars())
        raise QueryError(f"--compare: no selected runs in sweep {', '.join(map(repr, absent))}; sweeps: "
                         f"{', '.join(sweeps) or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    painter = Painter(out, _stem(out))
    a = analyse_runs(data, sel)
    painter.start(a, ["curves", "marker_words"])  # need no samples: drawn while this process aggregates them
    a = with_samples(a, data)
    painter.start(a, ["richness"])
    painter.start(a, ["frontier", "markers_ood"], background=False)
    shown, base_ids = browser_cells(a, data.trained)
    ids = [*shown.get("trained_eval", []), *base_ids.values()]
    examples = load_examples(eng, ids) if ids else pd.DataFrame(columns=["evaluation_id", "eval_set"])
    cells = len(a.picked.drop_duplicates([*a.panel_keys, "richness", "coverage"]))
    browser, parts = _browser(a, examples, shown, base_ids), sections(a)
    page = render(a, painter.finish(), browser, max(0, cells - len(shown)), db_label, parts)
    path = out / f"{painter.stem}.html"
    path.write_text(page, encoding="utf-8")
    return path


def _date(value: str, end: bool = False) -> datetime:
    """A date or date-time; as an end (--until), a bare date includes its whole day."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return when + timedelta(days=1) if end and len(value.strip()) == 10 else when


def _list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablate report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=os.environ.get("ABLATE_DB", DEFAULT_DB),
                        help=f"SQLAlchemy URL of the results database (default $ABLATE_DB or {DEFAULT_DB})")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for the report (default reports/)")
    parser.add_argument("--sweep", type=_list, default=[], help="only these sweeps (comma-separated)")
    parser.add_argument("--model", type=_list, default=[], help="only these models (comma-separated)")
    parser.add_argument("--objective", type=_list, default=[], help="only these objectives (comma-separated)")
    parser.add_argument("--since", type=_date, help="only runs started on or after DATE (YYYY-MM-DD[THH:MM])")
    parser.add_argument("--until", type=lambda v: _date(v, end=True),
                        help="only runs started up to DATE (a bare date includes that day)")
    parser.add_argument("--compare", nargs=2, metavar=("SWEEP_A", "SWEEP_B"),
                        help="report the two sweeps side by side and their difference B - A per cell "
                             "(replaces --sweep)")
    args = parser.parse_args(argv)
    sel = Selection(sweeps=list(args.compare) if args.compare else args.sweep, models=args.model,
                    objectives=args.objective, since=args.since, until=args.until,
                    compare=tuple(args.compare) if args.compare else None)
    try:
        url = make_url(args.db)
        label, password = url.render_as_string(hide_password=True), url.password
    except ArgumentError:
        label, password = args.db, None
    try:
        eng = reader(args.db)
        try:
            path = build(eng, args.out, sel, label)
        finally:
            eng.dispose()  # close connections properly (a server sees a clean logout)
    except (QueryError, record.SchemaError) as err:
        message = str(err).replace(str(password), "***") if password else str(err)
        print(f"ablate report: {message}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # everything is written and closed: skip tearing down pandas, matplotlib & co. (~0.5 s)
