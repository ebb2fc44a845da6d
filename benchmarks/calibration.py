"""Are ablate's error bars right? Simulate sweeps with a known truth and count how often the 95% interval covers it
and how often a true null is called "holds".

    python benchmarks/calibration.py             # 1000 simulated sweeps per shape and metric (about 2 minutes)
    python benchmarks/calibration.py --reps 200  # quicker, coarser
    python benchmarks/calibration.py --fast      # what the tests run

Each simulated sweep has the default sweep's design: S training seeds; arm A pooled from two runs per seed (as
self-distillation at richness low and high), arm B one run per seed (as GRPO); 3 eval sets x 32 problems, k = 4
samples per problem. Per problem a difficulty, per arm x problem an interaction (arms differ more on some
problems: a finite problem set does not average it away), per run a training effect (what a seed does to that
arm) and per seed an effect shared by both arms. Per sample: correct ~ Bernoulli, markers ~ Poisson, length ~
Normal, all on those effects. The truth of A - B is 0 (a null: the arms are exchangeable) or, under an effect,
the population mean found by simulating 4,000 seeds x 4,000 problems once.

Each sweep goes through the functions the report uses: `ablate.directions.paired` (arms matched by seed and
problem) then `ablate.stats.clustered` and `ablate.stats.verdict` (the new estimator), and, for comparison, the
estimator ablate used before: (run, problem) means as independent units, arms unpaired, se in quadrature, a
"holds" at 2 se. Printed per shape x metric x truth: coverage of the 95% interval (target 93-97%) and the rate of
false "holds" under the null for a predicted negative effect (target <= 5%).
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate import directions, stats  # noqa: E402

SHAPES = {"default sweep (2 seeds)": 2, "five-seed sweep": 5}
SETS, PROBLEMS, K = 3, 32, 4
# standard deviations of the effects (logit scale for correct, log scale for markers, tokens for length)
SD = {"problem": 1.5, "arm_problem": 0.3, "run": 0.25, "seed": 0.2}
METRICS = {"correct": 0.0, "markers": 0.1, "length": 40.0}  # baseline level per metric
SCALE = {"correct": 1.0, "markers": 0.4, "length": 10.0}     # the effects' sds above times this, per metric
OLD_Z = 2.0  # the old rule: "holds" at 2 standard errors in the predicted direction
EFFECT = {"correct": 0.3, "markers": -0.3, "length": -5.0}  # arm A's shift under the effect (on each metric's scale)


def _value(metric: str, eta: np.ndarray, rng) -> np.ndarray:
    """k samples' mean per cell of `eta` (the linear predictor)."""
    if metric == "correct":
        return rng.binomial(K, 1 / (1 + np.exp(-eta))) / K
    if metric == "markers":
        return rng.poisson(K * np.exp(eta)) / K
    return eta + rng.normal(0, 15, eta.shape) / math.sqrt(K)


def _eta(metric: str, shift: float, problem, inter, run, seed) -> np.ndarray:
    return METRICS[metric] + shift + SCALE[metric] * (problem + inter + run + seed)


def truth(metric: str, effect: bool, rng) -> float:
    """The population mean of A - B (over seeds and problems) under the model."""
    if not effect:
        return 0.0
    n = 4000
    p = rng.normal(0, SD["problem"], (1, n))
    s = rng.normal(0, SD["seed"], (n, 1))
    mean = {}
    for arm, shift in (("A", EFFECT[metric]), ("B", 0.0)):
        eta = _eta(metric, shift, p, rng.normal(0, SD["arm_problem"], (1, n)), rng.normal(0, SD["run"], (n, 1)), s)
        mean[arm] = {"correct": lambda e: 1 / (1 + np.exp(-e)), "markers": np.exp, "length": lambda e: e}[metric](eta)
    return float((mean["A"] - mean["B"]).mean())


def sweep(metric: str, seeds: int, effect: bool, rng) -> pd.DataFrame:
    """One simulated sweep: rows run_id, arm, seed, pkey, eval_set, value."""
    n = SETS * PROBLEMS
    problem = rng.normal(0, SD["problem"], n)
    inter = {arm: rng.normal(0, SD["arm_problem"], n) for arm in "AB"}
    parts, run_id = [], 0
    for s in range(seeds):
        shared = rng.normal(0, SD["seed"])
        for arm, runs in (("A", 2), ("B", 1)):
            for _ in range(runs):
                run_id += 1
                eta = _eta(metric, EFFECT[metric] if effect and arm == "A" else 0.0, problem, inter[arm],
                           rng.normal(0, SD["run"]), shared)
                parts.append(pd.DataFrame({"run_id": run_id, "arm": arm, "seed": s, "pkey": np.arange(n),
                                           "eval_set": np.arange(n) // PROBLEMS, "value": _value(metric, eta, rng)}))
    return pd.concat(parts, ignore_index=True)


def old(rows: pd.DataFrame) -> tuple[float, float]:
    """ablate's estimator before: (run, problem) units independent, arms unpaired, se in quadrature."""
    a, b = rows[rows.arm == "A"].value, rows[rows.arm == "B"].value
    return a.mean() - b.mean(), math.sqrt(a.var() / len(a) + b.var() / len(b))


def run(reps: int, seed: int = 0, shapes=SHAPES, metrics=tuple(METRICS)) -> pd.DataFrame:
    """One row per shape x metric x truth x estimator: coverage, false_holds (under the null), mean width."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, seeds in shapes.items():
        for metric in metrics:
            for effect in (False, True):
                true = truth(metric, effect, rng)
                hits = {"old": [], "new": []}
                false = {"old": [], "new": []}
                width = {"old": [], "new": []}
                for _ in range(reps):
                    rows = sweep(metric, seeds, effect, rng)
                    est, se = old(rows)
                    hits["old"].append(abs(est - true) <= 1.96 * se)
                    false["old"].append(est / se <= -OLD_Z)
                    width["old"].append(2 * 1.96 * se)
                    p = directions.paired((1, rows[rows.arm == "A"], "value"), (-1, rows[rows.arm == "B"], "value"))
                    e = stats.clustered(p.d, p.seed, p.pkey)
                    hits["new"].append(e.low <= true <= e.high)
                    false["new"].append(stats.verdict(e, -1) == "holds")
                    width["new"].append(e.high - e.low)
                for name in ("old", "new"):
                    out.append({"shape": shape, "metric": metric, "truth": "null" if not effect else f"{true:+.3f}",
                                "estimator": name, "coverage": float(np.mean(hits[name])),
                                "false_holds": float(np.mean(false[name])) if not effect else math.nan,
                                "width": float(np.mean(width[name])), "reps": reps})
    return pd.DataFrame(out)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1000, help="simulated sweeps per shape x metric x truth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="100 sweeps per cell (the tests' size)")
    args = parser.parse_args()
    start = time.perf_counter()
    table = run(100 if args.fast else args.reps, args.seed)
    pd.set_option("display.width", 160)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    for shape, new in table[table.estimator == "new"].groupby("shape", sort=False):
        ok = new.coverage.between(0.93, 0.97).all() and (new.false_holds.dropna() <= 0.05).all()
        print(f"new estimator, {shape}: coverage {new.coverage.min():.3f}-{new.coverage.max():.3f} (target "
              f"0.93-0.97), false holds <= {new.false_holds.max():.3f} (target <= 0.05): "
              f"{'meets' if ok else 'misses'} the target")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
