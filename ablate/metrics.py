"""Every evaluation metric, declared once (as lm-evaluation-harness declares its metrics).

A `Metric` says how one number is made from an eval set's scored samples and how it is shown. Evaluation
(`aggregate`) computes and stores every metric here; the run summary, `ablate query` and the report read names,
labels, digits and direction from this list. Adding a metric is one entry: give it a `score` function when
its per-sample value is not one of the scored sample's fields (correct, exact_match, length, markers).
"""

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from ablate.stats import mean_se


@dataclass(frozen=True)
class Metric:
    name: str                       # metrics.name in the database
    label: str                      # how tables and axes name it
    digits: int                     # decimals shown
    higher_is_better: bool | None   # None: descriptive (length and markers are what the study watches, not a goal)
    sample: str                     # the per-sample value it reduces: a field of the scored sample
    reduce: str = "mean"            # mean over samples | problem_mean (mean of per-problem means, with _stderr)
    #                                 | problem_any (share of problems with any nonzero sample) | rate (ratio)
    per: str | None = None          # rate: the denominator field (sum(sample) / sum(per) * scale)
    scale: float = 1.0
    score: Callable[[dict], float] | None = None  # per-sample value from the scored sample, if not a field
    summary: bool = False           # a column of the one-screen run summary
    report: bool = True             # a table in the report
    margin: float | None = None     # equivalence margin: a true difference smaller than this counts as none (a
    #                                 "not significant" contrast is tested against it; declared before any run)


METRICS = [
    Metric("accuracy", "accuracy", 3, True, "correct", "problem_mean", summary=True, margin=0.05),
    Metric("pass_at_k", "pass@k", 3, True, "correct", "problem_any", summary=True, report=False),
    Metric("exact_match", "exact match", 3, True, "exact_match", report=False),
    Metric("mean_length", "mean length (tokens)", 1, None, "length", summary=True, margin=5.0),
    Metric("markers_per_response", "markers per response", 2, None, "markers", summary=True, margin=0.25),
    Metric("markers_per_1k_tokens", "markers per 1k tokens", 1, None, "markers", "rate", per="length", scale=1000.0),
]
COUNTS = ("n_problems", "n_samples")  # stored beside the metrics; marker/<word> rows hold each word per response


def by_name() -> dict[str, Metric]:
    return {m.name: m for m in METRICS}


def names() -> list[str]:
    return [m.name for m in METRICS]


def _value(m: Metric, s: dict) -> float:
    return float(m.score(s) if m.score else s[m.sample])


def aggregate(samples: list[dict], eval_set: str) -> list[dict]:
    """Rows (eval_set, name, value) of every metric over one eval set's scored samples (problem_id, the fields
    the metrics read, marker_counts). Standard errors are over problems (a problem's k samples averaged first)."""
    if not samples:
        return []
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_problem[s["problem_id"]].append(s)
    values: dict[str, float | None] = {}
    for m in METRICS:
        if m.reduce == "problem_mean":
            per_problem = [sum(_value(m, s) for s in ss) / len(ss) for ss in by_problem.values()]
            mean, se, _ = mean_se(per_problem)
            values[m.name], values[f"{m.name}_stderr"] = mean, None if math.isnan(se) else se
        elif m.reduce == "problem_any":
            values[m.name] = sum(any(_value(m, s) for s in ss) for ss in by_problem.values()) / len(by_problem)
        elif m.reduce == "rate":
            denominator = sum(float(s[m.per]) for s in samples)
            values[m.name] = m.scale * sum(_value(m, s) for s in samples) / denominator if denominator else None
        elif m.reduce == "mean":
            values[m.name] = sum(_value(m, s) for s in samples) / len(samples)
        else:
            raise ValueError(f"metric {m.name}: reduce={m.reduce!r}: choose mean, problem_mean, problem_any or rate")
    values.update(n_problems=len(by_problem), n_samples=len(samples))
    for word in samples[0].get("marker_counts") or ():
        values[f"marker/{word}"] = sum(s["marker_counts"][word] for s in samples) / len(samples)
    return [{"eval_set": eval_set, "name": k, "value": v} for k, v in values.items()]


def fmt(name: str, value) -> str:
    """`value` with the metric's digits ('-' when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    m = by_name().get(name)
    return f"{value:.{m.digits if m else 3}f}"
