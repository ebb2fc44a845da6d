"""The paper's directions, checked on whatever a sweep measured (the report's first table).

1.  markers per response fall as richness rises;   (self-distillation: richest context - no context, all eval sets)
2.  response length falls as richness rises;       (same comparison)
3.  with narrow coverage, in-domain accuracy rises; (self-distillation at the fewest training problems: trained -
                                                    starting model)
4.  with broad coverage, OOD accuracy falls below GRPO;  (self-distillation - GRPO at the most problems)
4b. the OOD cost grows with coverage (the paper's claim is about coverage): (self-distillation - GRPO at the most
    problems) - (self-distillation - GRPO at the fewest), out-of-domain sets.
1c. a predicted null, the control: with no context (richness=none) markers per response stay where they were
    (trained - starting model, all eval sets): "equivalent" is the expected verdict, "differs" a broken control.

Every contrast is paired: the arms are matched by training seed and by (eval set, problem), each arm's runs of one
seed averaged first (pooled over the axes the comparison does not name). ablate.stats.clustered gives the estimate,
its 95% interval (two-way cluster-robust over seeds and problems, each share with its own t), the per-seed
values and the minimum detectable effect. The rule is fixed before any result is seen (ablate.stats.verdict):
Holm's correction over the family (the rows of one model x objective), "holds"/"opposite" only when the adjusted p
is below ALPHA, otherwise an equivalence test against the metric's declared margin (ablate.metrics: accuracy 0.05,
markers 0.25 per response, length 5 tokens): "equivalent" or "inconclusive"; "no error bar" with one seed.
"""

import json
import math

import pandas as pd

from ablate import metrics, stats
from ablate.data import VALIDATION
from ablate.teacher import CONTENTS

IN_DOMAIN = "in_domain"
CONTENT_ORDER = list(CONTENTS)  # richness.content, poorest to richest
CLAIMS = {
    "1": ("markers per response fall as richness rises", -1, "markers"),
    "2": ("response length falls as richness rises", -1, "length"),
    "3": ("with narrow coverage, in-domain accuracy rises under self-distillation", +1, "correct"),
    "4": ("with broad coverage, out-of-domain accuracy under self-distillation falls below GRPO's", -1, "correct"),
    "4b": ("self-distillation's out-of-domain cost against GRPO grows with coverage", -1, "correct"),
    "1c": ("control: with no context (richness=none), markers per response do not change", 0, "markers"),
}
COLUMNS = ["model", "objective", "direction", "claim", "comparison", "estimate", "se", "low", "high", "df", "p",
           "p_holm", "mde", "margin", "seeds", "problems", "n", "per_seed", "family", "verdict"]
DOSE_COLUMNS = ["model", "objective", "baseline", "eval_set", "knob", "estimate", "se", "low", "high", "df", "p",
                "p_holm", "mde", "margin", "seeds", "problems", "n", "per_seed", "family", "verdict"]


def margins() -> dict[str, float]:
    """The declared equivalence margin per per-problem value (correct, length, markers), from ablate.metrics."""
    return {m.sample: m.margin for m in metrics.METRICS
            if m.margin is not None and m.reduce in ("mean", "problem_mean")}


def _fields(e: stats.Estimate) -> dict:
    return {"estimate": e.estimate, "se": e.se, "low": e.low, "high": e.high, "df": e.df, "p": e.p, "mde": e.mde,
            "seeds": e.seeds, "problems": e.problems, "n": e.n, "per_seed": e.per_seed}


def _row(number: str, e: stats.Estimate, comparison: str, margin: dict) -> dict:
    claim, sign, value = CLAIMS[number]
    return {"direction": number, "claim": claim, "comparison": comparison, "margin": margin.get(value), "sign": sign,
            **_fields(e)}


def _absent(number: str, why: str) -> dict:
    return _row(number, stats.Estimate(math.nan), why, {})


def decide(out: list[dict], keys: list[str]) -> pd.DataFrame:
    """Holm's correction over each family (rows sharing `keys`), then each row's verdict by the fixed rule."""
    df = pd.DataFrame(out)
    df["p_holm"] = math.nan
    df["family"] = 0
    for _, family in df.groupby(keys, sort=False):
        df.loc[family.index, "p_holm"] = stats.holm(family.p)
        df.loc[family.index, "family"] = int(family.p.notna().sum())
    df["verdict"] = [stats.verdict(stats.Estimate(r.estimate, se=r.se, df=r.df, p=r.p), r.sign, r.p_holm, r.margin)
                     for r in df.itertuples()]
    return df


def _info(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: model, objective, richness, coverage, seed and what the rules read from its config."""
    info = runs[["run_id", "model", "objective", "richness", "coverage"]].copy()
    info["seed"] = runs["seed"].values if "seed" in runs else 0
    configs = runs.config.map(lambda c: c if isinstance(c, dict) else json.loads(c or "{}"))
    # runs recorded without these fields (hand-made databases) fall back to their axis names
    # the teacher's context source decides a run's role: none = the baseline (GRPO), a source = self-distillation
    info["teacherless"] = [(c.get("objective") or {}).get("context_source", "-") is None or r == "-"
                           for c, r in zip(configs, runs.richness)]
    info["content"] = [(c.get("richness") or {}).get("content", r) for c, r in zip(configs, runs.richness)]
    info["content"] = info.content.where(info.content.isin(CONTENT_ORDER), "solution")
    # narrow..broad by the number of distinct training problems (null = the whole pool)
    unique = [(c.get("coverage") or {}).get("unique") for c in configs]
    info["unique"] = [math.inf if u is None else u for u in unique]
    info["suites"] = [(c.get("eval") or {}).get("suites") or {} for c in configs]
    return info


def _ood(rows: pd.DataFrame) -> pd.Series:
    """Out-of-domain rows: every eval set but the in-domain one and the search's validation split."""
    return ~rows.eval_set.isin([IN_DOMAIN, VALIDATION])


def _with_keys(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`rows` with the runs' roles and an integer problem key `pkey` per (eval set, problem)."""
    if "pkey" not in rows:
        rows = rows.assign(pkey=rows.groupby(["eval_set", "problem_id"], sort=False).ngroup())
    return rows.merge(_info(runs).drop(columns="suites"), on="run_id")


def paired(*arms) -> pd.DataFrame:
    """Per seed x problem (`pkey`): the sum of weight x each arm's mean of its column over that seed's runs. `arms`
    are (weight, rows, column); a seed or problem that some arm lacks is left out (the contrast stays paired)."""
    means = [w * rows.groupby(["seed", "pkey"])[column].mean() for w, rows, column in arms]
    both = pd.concat(means, axis=1, join="inner").dropna()
    return both.sum(axis=1).rename("d").reset_index()


def contrast(*arms) -> stats.Estimate:
    p = paired(*arms)
    return stats.clustered(p.d, p.seed, p.pkey)


def check(rows: pd.DataFrame, runs: pd.DataFrame, margin: dict | None = None) -> pd.DataFrame:
    """One row per model x self-distillation objective x direction (COLUMNS).

    `rows`: per run x eval set x problem: run_id, eval_set, pkey (or problem_id), correct, length, markers and the
    starting model's correct_b on the same problem. `runs`: run_id, model, objective, richness, coverage, seed,
    config (resolved dict). `margin`: equivalence margins per value (default `margins()`).
    """
    if rows.empty or runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    margin = {**margins(), **(margin or {})}
    rows = _with_keys(rows, runs)
    out = []
    for model, mrows in rows.groupby("model", sort=False):
        baselines = mrows[mrows.teacherless]
        for objective, sd in mrows[~mrows.teacherless].groupby("objective", sort=False):
            first = len(out)
            with_context, control = sd[sd.content != "none"], sd[sd.content == "none"]
            top = max(with_context.content, key=CONTENT_ORDER.index, default=None)
            richest = with_context[with_context.content == top]
            label = f"{objective}: richness {'/'.join(sorted(richest.richness.unique()))} - none, all eval sets"
            for number, col in (("1", "markers"), ("2", "length")):
                if control.empty or richest.empty:
                    out.append(_absent(number, "needs richness=none and a richer level"))
                else:
                    out.append(_row(number, contrast((1, richest, col), (-1, control, col)), label, margin))
            if "markers_b" in control and not control.empty:
                out.append(_row("1c", contrast((1, control, "markers"), (-1, control, "markers_b")),
                                f"{objective}: richness none, trained - starting model, all eval sets", margin))
            two_levels = with_context.unique.nunique() >= 2
            narrow = with_context[with_context.unique == with_context.unique.min()]
            ind = narrow[narrow.eval_set == IN_DOMAIN]
            if ind.empty or not two_levels:
                out.append(_absent("3", "needs two coverage levels and in-domain evaluation"))
            else:
                out.append(_row("3", contrast((1, ind, "correct"), (-1, ind, "correct_b")),
                                f"{objective} at coverage={narrow.coverage.iloc[0]}: trained - starting model",
                                margin))
            ood = with_context[_ood(with_context)]
            broad_at, narrow_at = (ood.unique.max(), ood.unique.min()) if not ood.empty else (None, None)
            rows_4 = 0
            for name, baseline in baselines.groupby("objective", sort=False):  # one row per teacherless objective
                base = baseline[_ood(baseline)]
                if ood.empty or base.empty or not two_levels:
                    continue
                rows_4 += 1
                sd_b, base_b = ood[ood.unique == broad_at], base[base.unique == broad_at]
                sd_n, base_n = ood[ood.unique == narrow_at], base[base.unique == narrow_at]
                out.append(_row("4", contrast((1, sd_b, "correct"), (-1, base_b, "correct")),
                                f"{objective} - {name} at coverage={sd_b.coverage.iloc[0]}, out-of-domain sets",
                                margin))
                out.append(_row("4b", contrast((1, sd_b, "correct"), (-1, base_b, "correct"),
                                               (-1, sd_n, "correct"), (1, base_n, "correct")),
                                f"({objective} - {name}) at coverage={sd_b.coverage.iloc[0]} - at "
                                f"coverage={sd_n.coverage.iloc[0]}, out-of-domain sets", margin))
            if not rows_4:
                why = "needs GRPO (a teacherless objective), two coverage levels and out-of-domain suites"
                out += [_absent("4", why), _absent("4b", why)]
            for r in out[first:]:
                r.update(model=model, objective=objective)
    return decide(out, ["model", "objective"])[COLUMNS]


KNOB = "carry"  # the world's dose knob: the chance that a move of an out-of-domain problem is hard (ablate/world.py)


def dose(rows: pd.DataFrame, runs: pd.DataFrame, knob: str = KNOB, margin: dict | None = None) -> pd.DataFrame:
    """Direction 4 against a dose: per model x self-distillation objective x teacherless baseline, and per
    out-of-domain eval set whose suite config sets `knob`, the paired contrast self-distillation - baseline at the
    broadest coverage; plus one `trend` row per line: the slope of that contrast over the knob (least squares on
    every seed x problem, per-seed slopes beside it, two-way clustered like every contrast), predicted negative
    (the more hard steps out of domain, the more the lost checks cost). Holm's family: the rows of one line."""
    if rows.empty or runs.empty:
        return pd.DataFrame(columns=DOSE_COLUMNS)
    margin = {**margins(), **(margin or {})}
    info = _info(runs)
    level = {(r.run_id, name): spec.get(knob) for r in info.itertuples() for name, spec in r.suites.items()
             if isinstance(spec, dict) and spec.get(knob) is not None}
    rows = _with_keys(rows, runs)
    rows = rows[_ood(rows)]
    rows = rows.assign(knob=[level.get(k) for k in zip(rows.run_id, rows.eval_set)]).dropna(subset=["knob"])
    out = []
    for model, mrows in rows.groupby("model", sort=False):
        sd_all, baselines = mrows[~mrows.teacherless & (mrows.content != "none")], mrows[mrows.teacherless]
        for objective, sd in sd_all.groupby("objective", sort=False):
            sd = sd[sd.unique == sd.unique.max()]
            for name, base in baselines.groupby("objective", sort=False):
                base = base[base.unique == sd.unique.max()]
                line, pairs = [], []
                for (eval_set, x), s in sd.groupby(["eval_set", "knob"], sort=True):
                    b = base[base.eval_set == eval_set]
                    if b.empty:
                        continue
                    p = paired((1, s, "correct"), (-1, b, "correct")).assign(knob=float(x))
                    pairs.append(p)
                    line.append({"eval_set": eval_set, "knob": float(x),
                                 **_fields(stats.clustered(p.d, p.seed, p.pkey))})
                line.sort(key=lambda r: r["knob"])
                if len(line) >= 2:
                    p = pd.concat(pairs, ignore_index=True)
                    line.append({"eval_set": "trend", "knob": math.nan,
                                 **_fields(stats.clustered(p.d, p.seed, p.pkey, x=p.knob))})
                out += [{"model": model, "objective": objective, "baseline": name, "sign": -1,
                         "margin": margin.get("correct"), **r} for r in line]
    if not out:
        return pd.DataFrame(columns=DOSE_COLUMNS)
    return decide(out, ["model", "objective", "baseline"])[DOSE_COLUMNS]
