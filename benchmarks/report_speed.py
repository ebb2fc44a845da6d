"""Time the HTML report on a large synthetic database (target: under 10 s on 2 cores).

    python benchmarks/report_speed.py [--runs-per-cell 10] [--problems 125] [--k 4] [--keep DIR]

Builds a SQLite results database with bulk inserts (SQLAlchemy Core executemany on the tables of
ablate/record.py): 2 models x 2 objectives x 5 richness x 5 coverage x 10 seeds = 1,000 completed runs, plus
12 failed ones, each evaluated on 2 eval sets x 125 problems x 4 samples (1,002,000 sample rows with the
shared base evaluations), 15 logged numbers x 20 steps per run. Then runs `python -m ablate.report` on it
and prints the wall time of the whole command, and the time of each phase in-process.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ablate import record  # noqa: E402
from ablate.markers import PAPER_MARKERS, count_markers  # noqa: E402

MODELS, OBJECTIVES = ("tiny", "qwen3_1_7b"), ("sdpo", "grpo")
RICHNESS = ("none", "low", "medium", "high", "reference")
COVERAGE = ("seen_1x64", "seen_8x8", "seen_64", "seen_128", "seen_512")
SETS = ("in_domain", "arith3")
NOISE = [f"train/extra_{i}" for i in range(12)]
STEPS = 20
PHRASES = ["Wait, let me check that again.", "Hmm, maybe the carry is wrong.", "Perhaps I should add it up again.",
           "Actually the sum seems right.", "It might be off by one; likely fine."]


def _config() -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config"), resolve=True)


def _pool(rng) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Completion texts indexed by marker count 0..5 (4 variants each), their per-word counts and totals."""
    texts = []
    for n in range(6):
        for v in range(4):
            a, b = 10 + 7 * v + n, 20 + 3 * n + v
            hedges = " ".join(PHRASES[(v + i) % len(PHRASES)] for i in range(n))
            texts.append(f"<think>{a} + {b} = {a + b}. {hedges} So the answer is {a + b}.</think>\n\\boxed{{{a + b}}}")
    counts = np.array([[count_markers(t)[w] for w in PAPER_MARKERS] for t in texts])
    return texts, counts, counts.sum(axis=1)


def _evaluation(rng, acc: float, length: float, markers: float, problems: int, k: int, pool, prefix: str):
    """Samples and their aggregate metrics for one evaluation (both eval sets)."""
    texts, counts, totals = pool
    samples, metrics = [], []
    for s, eval_set in enumerate(SETS):
        p_problem = np.clip(rng.normal(acc - 0.1 * s, 0.25, problems), 0, 1)
        correct = rng.random((problems, k)) < p_problem[:, None]
        n_mark = np.minimum(rng.poisson(markers, (problems, k)), 5)
        pick = n_mark * 4 + rng.integers(0, 4, (problems, k))
        lengths = np.maximum(5, rng.normal(length * (1 + 0.3 * s), 20, (problems, k))).astype(int)
        for p in range(problems):
            for i in range(k):
                j = pick[p, i]
                samples.append({"eval_set": eval_set, "problem_id": f"{prefix}{eval_set}-{p}", "sample_idx": i,
                                "completion": texts[j], "answer": "0", "correct": bool(correct[p, i]),
                                "exact_match": bool(correct[p, i]), "length": int(lengths[p, i]),
                                "markers": int(totals[j]),
                                "marker_counts": dict(zip(PAPER_MARKERS, map(int, counts[j])))})
        per_problem = correct.mean(axis=1)
        tok, mk = lengths.sum(), totals[pick].sum()
        values = {"accuracy": per_problem.mean(), "accuracy_stderr": per_problem.std(ddof=1) / np.sqrt(problems),
                  "pass_at_k": correct.any(axis=1).mean(), "exact_match": correct.mean(), "mean_length": lengths.mean(),
                  "markers_per_response": totals[pick].mean(), "markers_per_1k_tokens": 1000 * mk / tok,
                  "n_problems": problems, "n_samples": problems * k,
                  **{f"marker/{w}": counts[pick][..., i].mean() for i, w in enumerate(PAPER_MARKERS)}}
        metrics += [{"eval_set": eval_set, "name": n, "value": float(v)} for n, v in values.items()]
    return samples, metrics


def build(url: str, seeds: int, problems: int, k: int) -> dict:
    """Fill an empty database; returns row counts."""
    record.upgrade(url)
    eng = create_engine(url)  # plain pysqlite: no WAL or BEGIN IMMEDIATE needed for one writer
    rng = np.random.default_rng(0)
    pool, config = _pool(rng), _config()
    tables = {m.__tablename__: m.__table__ for m in (record.Run, record.Evaluation, record.Sample, record.Metric,
                                                     record.TrainStep)}
    t0, counts = datetime(2026, 11, 1), {"runs": 0, "samples": 0, "train_steps": 0}
    with eng.connect() as conn:
        conn.exec_driver_sql("PRAGMA synchronous=OFF")  # before the first write: outside a transaction
        eval_id, base_ids = 0, {}

        def evaluation(stage, run_id, acc, length, markers, prefix=""):
            nonlocal eval_id
            eval_id += 1
            samples, metrics = _evaluation(rng, acc, length, markers, problems, k, pool, prefix)
            conn.execute(tables["evaluations"].insert(), [{
                "id": eval_id, "stage": stage, "key": f"base-{eval_id}" if stage == "base" else None, "run_id": run_id,
                "settings": {"eval": config["eval"]}, "seconds": 1.0, "created_at": t0}])
            conn.execute(tables["samples"].insert(), [{"evaluation_id": eval_id, **s} for s in samples])
            conn.execute(tables["metrics"].insert(), [{"evaluation_id": eval_id, **m} for m in metrics])
            counts["samples"] += len(samples)
            return eval_id

        for m in MODELS:
            base_ids[m] = evaluation("base", None, 0.5, 300.0, 2.0)
        run_id = 0
        cells = [(m, o, r, c, s) for m in MODELS for o in OBJECTIVES for r in RICHNESS for c in COVERAGE
                 for s in range(seeds)]
        failed = [(m, o, r, c, seeds) for (m, o, r, c, s) in cells[::len(cells) // 12][:12]]
        for m, o, r, c, s in cells + failed:
            run_id += 1
            ok = s < seeds
            ri, ci = RICHNESS.index(r), COVERAGE.index(c)
            cfg = {**config, "seed": s, "richness": {**config["richness"], "name": r},
                   "coverage": {**config["coverage"], "name": c}, "model": {**config["model"], "name": m},
                   "objective": {**config["objective"], "name": o}}
            conn.execute(tables["runs"].insert(), [{
                "id": run_id, "sweep": "bench", "config_hash": f"{run_id:016x}", "config": cfg, "richness": r,
                "coverage": c, "model": m, "objective": o, "seed": s, "status": "completed" if ok else "failed",
                "git_commit": "0" * 40, "git_dirty": False, "versions": {"python": "3"}, "host": "bench",
                "started_at": t0 + timedelta(minutes=run_id), "ended_at": t0 + timedelta(minutes=run_id + 1),
                "error": None if ok else "ValueError: synthetic failure\nTraceback ...",
                "base_evaluation_id": base_ids[m] if ok else None, "heartbeat_at": None}])
            counts["runs"] += 1
            if not ok:
                continue
            acc = 0.5 + 0.02 * ci - 0.03 * ri * (o == "sdpo") + rng.normal(0, 0.02)
            evaluation("trained", run_id, acc, 300 - 30 * ri, 2.0 - 0.35 * ri)
            steps = [{"run_id": run_id, "step": t, "name": n, "value": float(v)} for t in range(1, STEPS + 1)
                     for n, v in (("rollout/reward", acc * (0.8 + 0.01 * t)), ("rollout/mean_length", 300 - 3 * ri * t),
                                  ("rollout/markers_per_response", 2 - 0.03 * ri * t),
                                  *((n, rng.random()) for n in NOISE))]
            conn.execute(tables["train_steps"].insert(), steps)
            counts["train_steps"] += len(steps)
        conn.commit()
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # as a sweep's cells leave it: no big WAL
    eng.dispose()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-per-cell", type=int, default=10, help="seeds per cell (100 cells)")
    parser.add_argument("--problems", type=int, default=125, help="problems per eval set")
    parser.add_argument("--k", type=int, default=4, help="samples per problem")
    parser.add_argument("--keep", type=Path, help="build the database and the report in DIR and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{where / 'bench.sqlite'}"
        if record.sqlite_path(url).exists():
            print(f"using the existing {url}")
        else:
            start = time.perf_counter()
            counts = build(url, args.runs_per_cell, args.problems, args.k)
            print(f"built {url}: {counts['runs']} runs, {counts['samples']:,} samples, "
                  f"{counts['train_steps']:,} train steps in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ablate.report", "--db", url, "--out", str(where / "reports")],
                              cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"report failed:\n{proc.stderr[-3000:]}")
        html = Path(proc.stdout.strip())
        size = html.stat().st_size / 1e6
        print(f"report: {wall:.1f} s wall for `python -m ablate.report` (target < 10 s); {size:.1f} MB HTML"
              f"{f' at {html}' if args.keep else ''}")
        _phases(url, where / "reports")


def _phases(url: str, out: Path) -> None:
    """The same report in-process, each phase timed on its own (imports excluded; one after another, where the
    command draws the figures that need no samples while the database groups them)."""
    from ablate import report
    from ablate.query import reader
    from ablate.report import analysis, figures, html

    times, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        times[name], t = time.perf_counter() - t, time.perf_counter()

    eng, sel = reader(url), report.Selection()
    data = report.load(eng, sel)
    lap("runs, metrics, curves")
    data.units = report.load_units(eng, sel)
    lap("samples GROUP BY")
    a = report.analyse(data, sel)
    lap("aggregation")
    shown, base_ids = analysis.browser_cells(a, data.trained)
    examples = report.load_examples(eng, [*shown.trained_eval, *base_ids.values()])
    lap("example completions")
    figs = figures.draw(a, out, "phases", figures.FIGURES)
    lap("figures")
    html.render(a, list(figs.values()), figures.FIGURE_PANELS, examples, shown, base_ids, url)
    lap("HTML")
    print("in-process: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
