"""Aggregation: pure pandas on the loaded frames, no SQL and no HTML. Every standard error is ablate.stats'.

Metrics come from the registry (ablate.metrics): one whose per-sample value is a column of the samples table is
computed from per-problem units (a cell's mean over its seed x problem units); any other reported metric from its
stored per-evaluation values (one unit per run). Every interval is ablate.stats.clustered's: seeds the replication
unit, problems a crossed second source of variance, changes paired by seed and problem.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ablate import directions, metrics
from ablate.markers import PAPER_MARKERS
from ablate.record import AXES
from ablate.report.load import UNIT_VALUES, Data, Selection
from ablate.stats import clustered, grouped_mean_se
from ablate.teacher import CONTENTS

IN_DOMAIN, ALL, OOD = "in_domain", "all", "ood_mean"  # eval-set scopes: one set, all pooled, mean of the OOD sets
STATS = ["g", "scope", "metric", "stage", "mean", "se", "low", "high", "n", "runs"]
BROWSER_CELLS = 48


def from_units(m: metrics.Metric) -> bool:
    """Whether the report computes `m` from the per-problem units (else from its stored values)."""
    return (m.score is None and m.sample in UNIT_VALUES and m.reduce in ("mean", "problem_mean", "rate")
            and (m.reduce != "rate" or m.per in UNIT_VALUES))


def reported() -> list[metrics.Metric]:
    return [m for m in metrics.METRICS if m.report]  # read when called: a test may add a metric


def config(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value or "{}")


def _rank(axis: str, cfg: dict) -> tuple:
    """A level's place on its axis, read from the run's config: richness by what the teacher sees (a dataset's
    reference after a sibling's), coverage by distinct training problems (null: the whole pool, last)."""
    c = cfg.get(axis) or {}
    if axis == "richness" and c.get("content") in CONTENTS:
        return CONTENTS.index(c["content"]), c.get("source") == "reference"
    if axis == "coverage" and "unique" in c:
        return math.inf if c["unique"] is None else c["unique"], False
    return math.inf, True


def levels(runs: pd.DataFrame) -> dict[str, list]:
    """Each axis's levels (and the seeds) in their natural order; levels without those fields by name."""
    ranks: dict = {axis: {} for axis in (*AXES, "seed")}
    for values, cfg in zip(runs[list(ranks)].itertuples(index=False), map(config, runs.config)):
        for (axis, rank), value in zip(ranks.items(), values):
            rank[value] = min(rank.get(value, (math.inf, True)), _rank(axis, cfg))
    return {axis: sorted(rank, key=lambda v: (rank[v], v)) for axis, rank in ranks.items()}


def order(levels_: dict, axis: str, values) -> list:
    present = set(pd.Series(values, dtype=object).dropna())
    return [v for v in levels_[axis] if v in present]


def pick(runs: pd.DataFrame, split=()) -> pd.DataFrame:
    """Completed runs, one per cell and seed: the latest (a forced rerun replaces the earlier result)."""
    done = runs[runs.status == "completed"].sort_values("run_id")
    return done.drop_duplicates([*split, *AXES, "seed"], keep="last")


def grid(runs: pd.DataFrame, levels_: dict, split=()) -> pd.DataFrame:
    """Every richness x coverage x model x objective x seed combination of the levels present (per `split`
    group), with its state: completed, the latest run's failed/interrupted/running, or "not run"."""
    cols = [*split, *AXES, "seed"]
    if runs.empty:
        return pd.DataFrame(columns=[*cols, "status", "run_id", "error"])
    parts = []
    for key, group in (runs.groupby(list(split)) if split else [((), runs)]):
        full = pd.MultiIndex.from_product([order(levels_, a, group[a]) for a in (*AXES, "seed")],
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
    full = full.merge(pd.concat([done, rest])[[*cols, "status", "run_id", "error"]], on=cols, how="left")
    return full.assign(status=full.status.fillna("not run"))


def _wide(stored: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Stored metrics `names` and n_samples, one column each, per (evaluation_id, eval_set)."""
    return stored[stored.name.isin([*names, "n_samples"])].pivot_table(
        index=["evaluation_id", "eval_set"], columns="name", values="value", aggfunc="first").reindex(
        columns=[*names, "n_samples"])


def _with_stored_units(units: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """An evaluation stored without samples still counts: its stored means become one unit (no error bar)."""
    units = units.astype({c: float for c in UNIT_VALUES})
    columns = {m.sample: m.name for m in reported() if from_units(m) and m.reduce != "rate"}  # correct <- accuracy
    wide = _wide(stored, list(columns.values())).dropna(how="all", subset=list(columns.values()))
    wide = wide[~wide.index.isin(pd.MultiIndex.from_frame(units[["evaluation_id", "eval_set"]]))]
    if wide.empty:
        return units
    extra = pd.DataFrame({"k": wide.n_samples.fillna(1), **{c: wide[n] for c, n in columns.items()}}).reset_index()
    return pd.concat([units, extra.assign(problem_id="(aggregate)").reindex(columns=units.columns)],
                     ignore_index=True)


def _stored_units(stored: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Stored values of `names` as units shaped like the per-problem ones: one per evaluation x eval set, plus
    scope "all" (its sets pooled, weighted by samples), so that runs stay the units there too."""
    wide = _wide(stored, names)
    w = wide.pop("n_samples").fillna(1.0)
    pooled = (wide.mul(w, axis=0).groupby(level=0).sum(min_count=1)
              / wide.notna().mul(w, axis=0).groupby(level=0).sum())
    pooled = pooled.assign(k=w.groupby(level=0).sum(), eval_set=ALL).set_index("eval_set", append=True)
    both = pd.concat([wide.assign(k=w), pooled]).reset_index()
    return both.assign(problem_id=both.eval_set)


def paired_units(picked: pd.DataFrame, trained: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """One row per run x eval set x problem: the trained model's per-problem means and, beside them (`*_b`),
    the starting model's on the same problem. Problems are matched by an integer key (fast merges)."""
    values = [c for c in units.columns if c not in ("evaluation_id", "eval_set", "problem_id")]
    units = units.assign(pkey=units.groupby(["eval_set", "problem_id"], sort=False).ngroup(),
                         eval_set=units.eval_set.astype("category")).drop(columns="problem_id")
    runs = picked[["run_id", "base_evaluation_id"]].merge(trained, on="run_id")
    rows = runs.merge(units, left_on="trained_eval", right_on="evaluation_id").drop(columns="evaluation_id")
    base = units.drop(columns="eval_set").rename(
        columns={"evaluation_id": "base_evaluation_id", **{c: f"{c}_b" for c in values}})
    rows["base_evaluation_id"] = rows.base_evaluation_id.astype(float)
    base["base_evaluation_id"] = base.base_evaluation_id.astype(float)
    return rows.merge(base, on=["base_evaluation_id", "pkey"], how="left")


def _values(df: pd.DataFrame, m: metrics.Metric, suffix: str = "") -> tuple[pd.Series, pd.Series]:
    """Per unit: a value whose group mean is the metric and one whose standard error is its se. A rate is a
    ratio of means (as the stored metric): the group's ratio, and each unit's linearised deviation."""
    x = df[m.sample + suffix]
    if m.reduce != "rate":
        return x, x
    g = df.groupby("g", sort=False)
    mx, my = g[m.sample + suffix].transform("mean"), g[m.per + suffix].transform("mean")
    ok = my > 0
    return (m.scale * mx / my).where(ok), (m.scale * (x - mx / my * df[m.per + suffix]) / my).where(ok)


def _summary(df: pd.DataFrame, v: pd.Series, z: pd.Series, units: str, by_seed: bool = True) -> pd.DataFrame:
    """Per group `g`: the mean of `v` and, from `z` per seed x problem, its standard error and 95% interval
    (stats.clustered; `by_seed` False: problems are the only units, as for the starting model's one evaluation).
    `units` counts runs."""
    out = []
    for g, grp in df.assign(v=v, z=z).dropna(subset=["z"]).groupby("g", sort=False):
        e = (clustered(grp.z, grp.seed, grp.pkey) if by_seed
             else clustered(grp.z, grp.pkey, np.zeros(len(grp))))
        mean, half = grp.v.mean(), e.high - e.estimate
        out.append((g, mean, e.se, mean - half, mean + half, len(grp), grp[units].nunique()))
    return pd.DataFrame(out, columns=["g", "mean", "se", "low", "high", "n", "runs"])


def _scopes(rows: pd.DataFrame):
    sets = sorted(map(str, rows.eval_set.dropna().unique()))
    for scope in sets:
        if scope != ALL:
            yield scope, rows[rows.eval_set == scope]
    # stored metrics bring their own pooled rows (a run's sets weighted by samples: runs stay the units)
    yield ALL, rows[rows.eval_set == ALL] if ALL in sets else rows
    ood = [s for s in sets if s not in (IN_DOMAIN, ALL)]
    if len(ood) > 1:  # the out-of-domain sets pooled, each problem once (= the mean of sets at equal sizes)
        yield OOD, rows[rows.eval_set.isin(ood)]


def stage_stats(rows: pd.DataFrame, ms: list[metrics.Metric], units: str = "run_id", by_seed: bool = True
                ) -> pd.DataFrame:
    """mean/se/95% interval per group `g` x scope x metric (stage trained) and, where the starting model's values
    are present (`*_b`), of the change paired by problem (stage delta). `units` counts runs."""
    parts = []
    for scope, df in _scopes(rows):
        both = df[df.k_b.notna()] if "k_b" in df else df.iloc[0:0]
        for m in ms:
            parts.append(_summary(df, *_values(df, m), units, by_seed).assign(metric=m.name, stage="trained",
                                                                              scope=scope))
            if len(both):
                (vt, zt), (vb, zb) = _values(both, m), _values(both, m, "_b")
                parts.append(_summary(both, vt - vb, zt - zb, units, by_seed).assign(metric=m.name, stage="delta",
                                                                                      scope=scope))
    return pd.concat(parts, ignore_index=True)[STATS] if parts else pd.DataFrame(columns=STATS)


def _grouped(rows: pd.DataFrame, picked: pd.DataFrame, keys: list[str]):
    """`rows` with an integer group `g` per value of `keys` (looked up by run), and the keys of each g."""
    codes = picked.groupby(keys, sort=False).ngroup()
    lookup = picked[keys].assign(g=codes.values).drop_duplicates("g")
    return rows.assign(g=rows.run_id.map(pd.Series(codes.values, index=picked.run_id.values)),
                       seed=rows.run_id.map(pd.Series(picked.seed.values, index=picked.run_id.values))), lookup


def cell_stats(paired: pd.DataFrame, picked: pd.DataFrame, keys: list[str], ms) -> pd.DataFrame:
    """Trained values and paired changes from the starting model per group of `keys` (a cell), every eval-set
    scope (each set, all, ood_mean) and metric: columns keys, scope, metric, stage, mean, se, n, runs."""
    rows, lookup = _grouped(paired, picked, keys)
    return stage_stats(rows, ms).merge(lookup, on="g").drop(columns="g")


def base_stats(paired: pd.DataFrame, picked: pd.DataFrame, keys: list[str], ms) -> pd.DataFrame:
    """The starting model's values per group of `keys` (e.g. model x objective), each base problem once;
    `runs` counts base evaluations."""
    rows, lookup = _grouped(paired[paired.k_b.notna()], picked, keys)
    values = [c for c in rows.columns if f"{c}_b" in rows.columns]
    rows = rows.drop_duplicates(["g", "base_evaluation_id", "pkey"]).drop(columns=values)
    rows = rows.rename(columns={f"{c}_b": c for c in values})
    stats = stage_stats(rows, ms, units="base_evaluation_id", by_seed=False)
    return stats.merge(lookup, on="g").drop(columns="g").assign(stage="base")


def marker_words(picked: pd.DataFrame, trained: pd.DataFrame, stored: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each marker word per response (pooled over eval sets, weighted by samples), for the starting model
    (richness "base") and the trained models by richness: mean over runs."""
    cols = [*keys, "richness", "word", "value", "runs"]
    words = stored[stored.name.str.startswith("marker/")]
    if words.empty or picked.empty:
        return pd.DataFrame(columns=cols)
    weight = stored[stored.name == "n_samples"][["evaluation_id", "eval_set", "value"]].rename(columns={"value": "w"})
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


def compare(sources: list, picked: pd.DataFrame, keys: list[str], a: str, b: str) -> pd.DataFrame:
    """Trained values of sweep b minus sweep a per cell (`keys` without the sweep) x scope x metric, paired by seed
    and problem (stats.clustered): columns keys, scope, metric, mean, se, low, high, n."""
    cols = [*keys, "scope", "metric", "mean", "se", "low", "high", "n"]
    out = []
    for rows, ms in sources:
        rows, lookup = _grouped(rows, picked, ["sweep", *keys])
        rows = rows.merge(lookup, on="g")
        for scope, df in _scopes(rows):
            for m in ms:
                v, z = _values(df, m)
                d = df.assign(v=v, z=z)
                left, right = d[d.sweep == a], d[d.sweep == b]
                for cell, r in right.groupby(keys, sort=False):
                    cell = cell if isinstance(cell, tuple) else (cell,)
                    before = left[(left[keys] == pd.Series(cell, index=keys)).all(axis=1)]
                    if before.empty:
                        continue
                    p = directions.paired((1, r, "z"), (-1, before, "z"))
                    e = clustered(p.d, p.seed, p.pkey)
                    mean = r.v.mean() - before.v.mean()
                    half = e.high - e.estimate
                    out.append((*cell, scope, m.name, mean, e.se, mean - half, mean + half, e.n))
    return pd.DataFrame(out, columns=cols)


def curves(steps: pd.DataFrame, panel_keys: list[str]) -> pd.DataFrame:
    """Mean and standard error over runs (coverage levels and seeds) per panel x curve x richness x step."""
    df = steps.dropna(subset=["value"])
    return grouped_mean_se(df.groupby([*panel_keys, "name", "richness", "step"], sort=False).value).reset_index()


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], value


def settings(runs: pd.DataFrame) -> tuple[list, list]:
    """Config values across runs: (key, [(value, runs)]) for those that vary, (key, value) for the rest.
    db.* is left out (a URL may hold a password)."""
    configs = [config(c) for c in runs.get("config", [])]
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


def marker_lexicon(cfg) -> tuple[list[str], str]:
    markers = (config(cfg).get("eval") or {}).get("markers") or {}
    return list(markers.get("words") or PAPER_MARKERS), markers.get("mode") or "substring"


@dataclass
class Analysis:
    """Everything the page shows, as frames (no HTML)."""

    sel: Selection
    runs: pd.DataFrame
    levels: dict            # axis -> levels in order
    grid: pd.DataFrame
    picked: pd.DataFrame
    cells: pd.DataFrame     # stats per panel x richness x coverage
    base: pd.DataFrame      # stats of the starting model per panel
    words: pd.DataFrame
    steps: pd.DataFrame     # canonical curves with the runs' axes
    compared: pd.DataFrame | None
    eval_sets: list[str]
    directions: pd.DataFrame
    dose: pd.DataFrame      # direction 4 against the world's dose knob (directions.dose)
    panel_keys: list[str]
    total_runs: int


def analyse(data: Data, sel: Selection) -> Analysis:
    return with_samples(analyse_runs(data, sel), data)


def analyse_runs(data: Data, sel: Selection) -> Analysis:
    """Everything that needs no samples: the grid, the runs used, marker words, training curves."""
    panel = [*sel.split, "model", "objective"]
    picked, levels_ = pick(data.runs, sel.split), levels(data.runs)
    empty = pd.DataFrame(columns=[*panel, *STATS[1:]])
    return Analysis(sel=sel, runs=data.runs, levels=levels_, grid=grid(data.runs, levels_, sel.split), picked=picked,
                    cells=empty, base=empty, words=marker_words(picked, data.trained, data.metrics, panel),
                    steps=data.steps.merge(picked[["run_id", *sel.split, *AXES, "seed"]], on="run_id"),
                    compared=None, eval_sets=[], panel_keys=panel, total_runs=data.total_runs,
                    directions=directions.check(pd.DataFrame(), pd.DataFrame()),
                    dose=directions.dose(pd.DataFrame(), pd.DataFrame()))


def with_samples(a: Analysis, data: Data) -> Analysis:
    """`a` with the per-cell statistics: from the per-problem units, and from stored values for the rest."""
    ms, keys = reported(), [*a.panel_keys, "richness", "coverage"]
    paired = paired_units(a.picked, data.trained, _with_stored_units(data.units, data.metrics))
    sources = [(paired, [m for m in ms if from_units(m)])]
    stored = [replace(m, sample=m.name, reduce="mean") for m in ms if not from_units(m)]  # the value is the unit's
    if stored:
        sources.append((paired_units(a.picked, data.trained, _stored_units(data.metrics, [m.name for m in stored])),
                        stored))
    cells = pd.concat([cell_stats(rows, a.picked, keys, m) for rows, m in sources], ignore_index=True)
    base = pd.concat([base_stats(rows, a.picked, a.panel_keys, m) for rows, m in sources], ignore_index=True)
    compared = None
    if a.sel.compare and not cells.empty:
        compared = compare(sources, a.picked, ["model", "objective", "richness", "coverage"], *a.sel.compare)
    return replace(a, cells=cells, base=base, compared=compared,
                   eval_sets=sorted(map(str, paired.eval_set.unique())),
                   directions=directions.check(paired.assign(eval_set=paired.eval_set.astype(str)), a.picked),
                   dose=directions.dose(paired.assign(eval_set=paired.eval_set.astype(str)), a.picked))


def browser_cells(a: Analysis, trained: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The runs whose samples the browser shows (first seed of each cell, at most BROWSER_CELLS) and the
    starting model's evaluation per panel."""
    p = a.picked.merge(trained, on="run_id")
    if p.empty:
        return p, {}
    rank = {axis: {v: i for i, v in enumerate(a.levels[axis])} for axis in ("richness", "coverage")}
    p = p.assign(_r=p.richness.map(rank["richness"]), _c=p.coverage.map(rank["coverage"]))
    p = p.sort_values([*a.panel_keys, "_r", "_c", "seed"]).drop_duplicates([*a.panel_keys, "richness", "coverage"])
    base = (a.picked.dropna(subset=["base_evaluation_id"]).groupby(a.panel_keys).base_evaluation_id
            .agg(lambda s: s.mode().iloc[0]))
    return p.head(BROWSER_CELLS), {k if isinstance(k, tuple) else (k,): int(v) for k, v in base.items()}
