"""Statistics: every error bar, interval, test and verdict that ablate prints comes from here (docs/statistics.md).

The unit of replication of a training study is the training run, named by its seed: two cells with the same seed
share that seed's draws, and every cell is scored on the same problems. So a contrast between arms is paired by
seed and by (eval set, problem), and its standard error has two crossed sources of variance: seeds and problems.
`clustered` fits the contrast by least squares with a two-way cluster-robust covariance (Cameron, Gelbach & Miller
2011, each way's cluster covariance from statsmodels) and reads each share of it with the t of its own degrees of
freedom (Banerjee's interval): what the seeds carry on seeds - 1, what the problems add on problems - 1, so that
two seeds that disagree give the wide interval two seeds deserve (docs/statistics.md; benchmarks/calibration.py).

Verdicts (`verdict`) are fixed before any result is seen: a prediction "holds" or is "opposite" only when the
test rejects zero at ALPHA (after Holm's correction over the family it belongs to); a result that does not
reject zero is tested for equivalence (two one-sided tests against a declared margin): "equivalent" or
"inconclusive"; an estimate without a standard error (one seed, or no variance at all) is "no error bar".
"""

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as st
from scipy.optimize import brentq
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05   # two-sided level of every test and 1 - the confidence of every interval
POWER = 0.8    # the power at which the minimum detectable effect is quoted
FEW_SEEDS = 3  # below this many seeds the seed-level error rests on too few replicates to say much


def mean_se(values) -> tuple[float, float, int]:
    """(mean, standard error, n) of independent `values` (NaNs dropped; se NaN below two values): the error of one
    evaluation's mean over its problems, and of training curves over runs."""
    x = pd.Series(values, dtype=float).dropna()
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    return mean, float(x.std() / math.sqrt(n)) if n > 1 else math.nan, n


def grouped_mean_se(grouped) -> pd.DataFrame:
    """Per group of a pandas SeriesGroupBy: columns mean, se, n (the same formula as `mean_se`)."""
    n = grouped.count()
    return pd.DataFrame({"mean": grouped.mean(), "se": (grouped.std() / n.pow(0.5)).where(n > 1), "n": n})


@dataclass(frozen=True)
class Estimate:
    """A contrast (or a slope) with its interval, test and design."""

    estimate: float
    se: float = math.nan          # NaN: no error bar (one seed); 0: no variance at all
    df: float = math.nan          # effective t degrees of freedom, between seeds - 1 and problems - 1
    low: float = math.nan         # the (1 - ALPHA) confidence interval
    high: float = math.nan
    p: float = math.nan           # two-sided p of estimate = 0
    mde: float = math.nan         # minimum detectable effect: |true value| detected with probability POWER
    seeds: int = 0
    problems: int = 0
    n: int = 0                    # (seed, problem) pairs behind it
    per_seed: dict = field(default_factory=dict)  # seed -> the same contrast within that seed alone

    @property
    def has_error_bar(self) -> bool:
        return math.isfinite(self.se) and self.se > 0


def clustered(d, seed, problem, x=None, alpha: float = ALPHA) -> Estimate:
    """The mean of `d` (with `x`: the slope of d on x) over (seed, problem) pairs, with a two-way cluster-robust
    standard error over seeds and problems, Banerjee's interval (each share with the t of its own G - 1 df), the
    two-sided p of zero and the minimum detectable effect at POWER. `d` holds one value per seed x problem (a
    paired contrast: arms matched by seed and problem). With one problem, seeds are the only clusters; with one
    seed there is no error bar (se NaN)."""
    df = pd.DataFrame({"d": np.asarray(d, dtype=float), "seed": np.asarray(seed), "problem": np.asarray(problem),
                       "x": np.zeros(len(d)) if x is None else np.asarray(x, dtype=float)}).dropna()
    seeds, problems = df.seed.nunique(), df.problem.nunique()
    slope = x is not None
    if df.empty or (slope and df.x.nunique() < 2):
        return Estimate(math.nan, seeds=seeds, problems=problems, n=len(df))
    design = sm.add_constant(df.x.to_numpy(), has_constant="add") if slope else np.ones((len(df), 1))
    k = 1 if slope else 0
    model = sm.OLS(df.d.to_numpy(), design)
    estimate = float(model.fit().params[k])
    per_seed = {s: (float(np.polyfit(g.x, g.d, 1)[0]) if g.x.nunique() > 1 else math.nan) if slope
                else float(g.d.mean()) for s, g in df.groupby("seed", sort=True)}
    out = Estimate(estimate, seeds=seeds, problems=problems, n=len(df), per_seed=per_seed)
    if seeds < 2:
        return out
    codes = {c: pd.factorize(df[c])[0] for c in ("seed", "problem")}

    def variance(groups) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsmodels warns on few clusters: the t below is the answer to that
            return float(model.fit(cov_type="cluster", cov_kwds={"groups": groups}).cov_params()[k, k])

    v_seed, v_problem = variance(codes["seed"]), 0.0
    if problems > 1:
        # two-way: V_seed + V_problem - V_pair (statsmodels' two-way groups give the same sum), each way with its
        # own G / (G - 1) correction; never below either one-way variance (Cameron, Gelbach & Miller's fallback
        # where the sum is not positive). What the seeds do not carry is the problems' share.
        one_way, pair = variance(codes["problem"]), variance(np.arange(len(df)))
        v_problem = max(v_seed + one_way - pair, v_seed, one_way) - v_seed
    var = v_seed + v_problem
    # Banerjee's conservative interval for a sum of variance components (the Behrens-Fisher problem): each share
    # gets the t quantile of its own G - 1 degrees of freedom, half-width sqrt(sum t_g^2 v_g); the degrees of
    # freedom reported (and used for p, TOST and the MDE) are those whose t quantile gives the same half-width
    parts = [(v_seed, seeds - 1), (v_problem, problems - 1)] if v_problem > 0 else [(v_seed, seeds - 1)]
    dof = _effective_df(parts, alpha) if var > 0 else float(seeds - 1)
    # rounding leaves ~1e-17 where there is no variance at all: that is no error bar, not a tiny one
    se = math.sqrt(var) if var > (1e-9 * max(1.0, float(df.d.abs().max()))) ** 2 else 0.0
    if se == 0:
        return Estimate(estimate, se=0.0, df=dof, seeds=seeds, problems=problems, n=len(df), per_seed=per_seed)
    q = st.t.ppf(1 - alpha / 2, dof)
    return Estimate(estimate, se=se, df=dof, low=float(estimate - q * se), high=float(estimate + q * se),
                    p=float(2 * st.t.sf(abs(estimate) / se, dof)), mde=mde(se, dof, alpha), seeds=seeds,
                    problems=problems, n=len(df), per_seed=per_seed)


def _effective_df(parts: list[tuple[float, int]], alpha: float) -> float:
    """The df whose (1 - alpha/2) t quantile equals sqrt(sum q_g^2 v_g / sum v_g), q_g the quantile on g df."""
    quantile = lambda g: st.t.ppf(1 - alpha / 2, g)  # noqa: E731
    q = math.sqrt(sum(v * quantile(g) ** 2 for v, g in parts) / sum(v for v, _ in parts))
    lo, hi = min(g for _, g in parts), max(g for _, g in parts)
    if q >= quantile(lo) or lo == hi:
        return float(lo)
    if q <= quantile(hi):
        return float(hi)
    return float(brentq(lambda g: quantile(g) - q, lo, hi))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true effect that a two-sided t test with this standard error and df detects with `power`: the
    noncentrality at which scipy's noncentral t puts `power` beyond the critical values, times the se."""
    if not (math.isfinite(se) and se > 0 and df > 0):
        return math.nan
    return _mde_in_se(round(float(df), 2), alpha, power) * se


@lru_cache(maxsize=1024)
def _mde_in_se(df: float, alpha: float, power: float) -> float:
    q = st.t.ppf(1 - alpha / 2, df)
    # the far tail's mass is tiny where it matters, and scipy returns NaN for it at large noncentralities
    return float(brentq(lambda nc: st.nct.sf(q, df, nc) + np.nan_to_num(st.nct.cdf(-q, df, nc)) - power, 0.0, 100.0))


def tost(estimate: float, se: float, df: float, margin: float) -> float:
    """p of the two one-sided tests that the true value lies inside (-margin, +margin): equivalence at level a
    when p < a (the 1 - 2a interval lies inside the margins)."""
    if not (math.isfinite(se) and se > 0 and margin > 0):
        return math.nan
    return float(max(st.t.sf((estimate + margin) / se, df), st.t.cdf((estimate - margin) / se, df)))


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p values over one family (NaN = not a test: left out, and left NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


VERDICTS = ("holds", "opposite", "differs", "equivalent", "inconclusive", "not significant", "no error bar",
            "not measured")


def verdict(e: Estimate, sign: int, p: float | None = None, margin: float | None = None,
            alpha: float = ALPHA) -> str:
    """The fixed rule. `sign`: the predicted sign (+1, -1; 0 = a predicted null); `p`: the (Holm-adjusted) p to
    test with, default e.p; `margin`: the equivalence margin for a result that does not reject zero."""
    if not math.isfinite(e.estimate):
        return "not measured"
    if not e.has_error_bar:
        return "no error bar"
    p = e.p if p is None or not math.isfinite(p) else p
    if p < alpha:
        return "differs" if sign == 0 else ("holds" if sign * e.estimate > 0 else "opposite")
    if margin is None or not margin > 0:
        return "not significant"
    return "equivalent" if tost(e.estimate, e.se, e.df, margin) < alpha else "inconclusive"
