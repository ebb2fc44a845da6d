"""The paper's four directions, checked on whatever a sweep measured (the report's first table).

1. markers per response fall as richness rises;        (self-distillation: richest context - no context)
2. response length falls as richness rises;            (same comparison)
3. with narrow coverage, in-domain accuracy rises;     (self-distillation at the fewest training problems:
                                                        trained - starting model, paired by problem)
4. with broad coverage, OOD accuracy falls below GRPO. (self-distillation - GRPO at the most problems)

The rule is fixed before looking at any result: an estimate "holds" when it has the predicted sign and lies at
least Z standard errors from zero, is "opposite" when it lies Z standard errors on the other side, and is "not
significant" otherwise. Units are (run, eval set, problem) means, as in the report's tables; self-distillation
cells are those whose teacher sees a context (richness.content != none), pooled over the other axes and seeds.
"""

import json
import math

import pandas as pd

from ablate.data import VALIDATION
from ablate.stats import difference, mean_se
from ablate.teacher import CONTENTS

Z = 2.0
IN_DOMAIN = "in_domain"
CONTENT_ORDER = list(CONTENTS)  # richness.content, poorest to richest
CLAIMS = {
    1: ("markers per response fall as richness rises", -1),
    2: ("response length falls as richness rises", -1),
    3: ("with narrow coverage, in-domain accuracy rises under self-distillation", +1),
    4: ("with broad coverage, out-of-domain accuracy under self-distillation falls below GRPO's", -1),
}


def verdict(estimate: float, se: float, sign: int) -> str:
    if math.isnan(estimate):
        return "not measured"
    z = estimate / se if se and not math.isnan(se) else (math.inf if estimate else 0.0)
    if sign * z >= Z:
        return "holds"
    if sign * z <= -Z:
        return "opposite"
    return "not significant"


def _row(number: int, estimate: float, se: float, n: int, comparison: str) -> dict:
    claim, sign = CLAIMS[number]
    return {"direction": number, "claim": claim, "comparison": comparison, "estimate": estimate, "se": se, "n": n,
            "verdict": verdict(estimate, se, sign)}


def _absent(number: int, why: str) -> dict:
    return {**_row(number, math.nan, math.nan, 0, why), "verdict": "not measured"}


def _info(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: model, objective, richness, coverage and what the rules read from its config."""
    info = runs[["run_id", "model", "objective", "richness", "coverage"]].copy()
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


def check(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model x self-distillation objective x direction.

    `rows`: per run x eval set x problem: run_id, eval_set, correct, length, markers and the starting model's
    correct_b on the same problem. `runs`: run_id, model, objective, richness, coverage, config (resolved dict).
    """
    cols = ["model", "objective", "direction", "claim", "comparison", "estimate", "se", "n", "verdict"]
    if rows.empty or runs.empty:
        return pd.DataFrame(columns=cols)
    rows = rows.merge(_info(runs).drop(columns="suites"), on="run_id")
    out = []
    for model, mrows in rows.groupby("model", sort=False):
        baselines = mrows[mrows.teacherless]
        for objective, sd in mrows[~mrows.teacherless].groupby("objective", sort=False):
            with_context, control = sd[sd.content != "none"], sd[sd.content == "none"]
            top = max(with_context.content, key=CONTENT_ORDER.index, default=None)
            richest = with_context[with_context.content == top]
            label = f"{objective}: richness {'/'.join(sorted(richest.richness.unique()))} - none"
            for number, col in ((1, "markers"), (2, "length")):
                if control.empty or richest.empty:
                    out.append(_absent(number, "needs richness=none and a richer level"))
                else:
                    out.append(_row(number, *difference(richest[col], control[col]), label))
            narrow = with_context[with_context.unique == with_context.unique.min()]
            ind = narrow[narrow.eval_set == IN_DOMAIN]
            if ind.empty or with_context.unique.nunique() < 2:
                out.append(_absent(3, "needs two coverage levels and in-domain evaluation"))
            else:
                out.append(_row(3, *mean_se(ind.correct - ind.correct_b),
                                f"{objective} at coverage={narrow.coverage.iloc[0]}: trained - starting model"))
            broad_level = with_context.unique.max() if not with_context.empty else None
            broad = with_context[(with_context.unique == broad_level) & _ood(with_context)]
            rows_4 = 0
            for name, baseline in baselines.groupby("objective", sort=False):  # one row per teacherless objective
                base = baseline[(baseline.unique == broad_level) & _ood(baseline)]
                if broad.empty or base.empty or with_context.unique.nunique() < 2:
                    continue
                rows_4 += 1
                out.append(_row(4, *difference(broad.correct, base.correct),
                                f"{objective} - {name} at coverage={broad.coverage.iloc[0]}, out-of-domain sets"))
            if not rows_4:
                out.append(_absent(4, "needs GRPO (a teacherless objective), two coverage levels and out-of-domain "
                                      "suites"))
            for r in out[-(3 + max(rows_4, 1)):]:
                r.update(model=model, objective=objective)
    return pd.DataFrame(out, columns=cols)


KNOB = "carry"  # the world's dose knob: the chance that a move of an out-of-domain problem is hard (ablate/world.py)


def dose(rows: pd.DataFrame, runs: pd.DataFrame, knob: str = KNOB) -> pd.DataFrame:
    """Direction 4 against a dose: per model x self-distillation objective x teacherless baseline, and per
    out-of-domain eval set whose suite config sets `knob`, the estimate self-distillation - baseline at the
    broadest coverage, with its verdict by the fixed rule; plus one `trend` row per line: the slope of the
    estimate over the knob (weighted least squares, weights 1/se^2) with the same rule, predicted negative
    (the more hard steps out of domain, the more the lost checks cost)."""
    cols = ["model", "objective", "baseline", "eval_set", "knob", "estimate", "se", "n", "verdict"]
    if rows.empty or runs.empty:
        return pd.DataFrame(columns=cols)
    info = _info(runs)
    level = {(r.run_id, name): spec.get(knob) for r in info.itertuples() for name, spec in r.suites.items()
             if isinstance(spec, dict) and spec.get(knob) is not None}
    rows = rows.merge(info.drop(columns="suites"), on="run_id")
    rows = rows[_ood(rows)]
    rows = rows.assign(knob=[level.get(k) for k in zip(rows.run_id, rows.eval_set)]).dropna(subset=["knob"])
    out = []
    for model, mrows in rows.groupby("model", sort=False):
        sd_all, baselines = mrows[~mrows.teacherless & (mrows.content != "none")], mrows[mrows.teacherless]
        for objective, sd in sd_all.groupby("objective", sort=False):
            sd = sd[sd.unique == sd.unique.max()]
            for name, base in baselines.groupby("objective", sort=False):
                base = base[base.unique == sd.unique.max()]
                line = []
                for (eval_set, x), s in sd.groupby(["eval_set", "knob"], sort=True):
                    b = base[base.eval_set == eval_set]
                    if b.empty:
                        continue
                    est, se, n = difference(s.correct, b.correct)
                    line.append({"model": model, "objective": objective, "baseline": name, "eval_set": eval_set,
                                 "knob": float(x), "estimate": est, "se": se, "n": n, "verdict": verdict(est, se, -1)})
                out += sorted(line, key=lambda r: r["knob"])
                if len(line) >= 2:
                    out.append({"model": model, "objective": objective, "baseline": name, "eval_set": "trend",
                                "knob": math.nan, **_slope(line)})
    return pd.DataFrame(out, columns=cols)


def _slope(line: list[dict]) -> dict:
    """Weighted least-squares slope of estimate over knob and its standard error, with the fixed rule's verdict."""
    x = pd.Series([r["knob"] for r in line])
    y = pd.Series([r["estimate"] for r in line])
    se = pd.Series([r["se"] for r in line])
    w = 1 / se.where(se > 0) ** 2 if se.notna().all() and (se > 0).all() else pd.Series(1.0, index=x.index)
    xm = (w * x).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    slope = float((w * (x - xm) * (y - (w * y).sum() / w.sum())).sum() / sxx) if sxx > 0 else math.nan
    # with 1/se^2 weights the slope's variance is 1 / sxx; the se of each estimate carries the noise
    slope_se = float(math.sqrt(1 / sxx)) if sxx > 0 and se.notna().all() and (se > 0).all() else math.nan
    return {"estimate": slope, "se": slope_se, "n": int(sum(r["n"] for r in line)),
            "verdict": verdict(slope, slope_se, -1)}
