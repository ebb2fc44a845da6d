"""One cell on 1 process vs on 2 processes (launch.processes=2: torchrun, gloo, CPU), alternating A B C A B C.

    python benchmarks/processes.py [--pairs 2] [extra overrides...]

The same tiny-model GRPO cell both ways, with the same global batch (8 completions a step: 8 per device on one
process, 4 per device on each of two), so both do the same work; each run gets a fresh database, so each pays
for its base evaluation too (sharded over the ranks on 2 processes). The model (random, tiny) is built once
before timing. torchrun gives each rank one thread (OMP_NUM_THREADS=1) while one process takes torch's default
(one per core), so a third run, one process with threads=1, tells the process split from the thread count.
Prints every run's wall time with its phases (from the database) and the rest (start-up: imports, launcher,
model loading), the medians, the ratios to one process, the machine (CPU model, cores) and the load average
before each run.
"""

import argparse
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

CELL = ["model=tiny", "data=arithmetic", "eval=default", "objective=grpo", "model.build.warmup_steps=0",
        "model.max_new_tokens=48", "data.source.n=200", "data.heldout=16", "eval.k=4", "eval.suites.arith3.n=16",
        "trainer.max_steps=8", "trainer.num_generations=4", "trainer.max_completion_length=32"]
RUNS = {"1 process": ["launch.processes=1", "trainer.per_device_train_batch_size=8"],
        "2 processes": ["launch.processes=2", "trainer.per_device_train_batch_size=4"],
        "1 process, threads=1": ["launch.processes=1", "trainer.per_device_train_batch_size=8", "threads=1"]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def phases(db: str) -> dict:
    """Seconds of the base evaluation, training (TRL's train_runtime) and trained evaluation of the one run."""
    with sqlite3.connect(db) as con:
        ev = dict(con.execute("select stage, seconds from evaluations").fetchall())
        train = con.execute("select value from train_steps where name = 'train_runtime'").fetchone()
    return {"base eval": ev.get("base"), "train": train and train[0], "trained eval": ev.get("trained")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="rounds of the runs, alternating")
    args, extra = parser.parse_known_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.node()}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        settings = [*CELL, f"cache_dir={tmp}/cache", *extra]
        common = [sys.executable, "-m", "ablate", *settings]
        # Build the model once, untimed (the launching process builds it in both cases).
        subprocess.run([sys.executable, "-m", "ablate", "build", *settings, f"db.url=sqlite:///{tmp}/build.sqlite",
                        f"hydra.run.dir={tmp}/build"], env=env, capture_output=True, check=True)
        times: dict[str, list[float]] = {label: [] for label in RUNS}
        print(f"threads: torch default {__import__('torch').get_num_threads()} in one process; 1 per rank under torchrun")
        for i in range(args.pairs):
            for label, overrides in RUNS.items():
                key = f"{i}-{list(RUNS).index(label)}"
                db = f"{tmp}/{key}.sqlite"
                load = os.getloadavg()
                start = time.perf_counter()
                proc = subprocess.run([*common, *overrides, f"db.url=sqlite:///{db}", f"hydra.run.dir={tmp}/{key}"],
                                      env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if proc.returncode != 0:
                    sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
                times[label].append(seconds)
                done = {k: v for k, v in phases(db).items() if v is not None}
                parts = ", ".join(f"{k} {v:.1f} s" for k, v in done.items())
                print(f"round {i + 1} {label:<20}: {seconds:6.1f} s wall ({parts}, rest {seconds - sum(done.values()):.1f} s);"
                      f" load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    medians = {label: statistics.median(t) for label, t in times.items()}
    one = medians["1 process"]
    print("median: " + ", ".join(f"{label} {m:.1f} s" for label, m in medians.items()))
    print("ratio to 1 process (below 1: faster): " + ", ".join(f"{label} {m / one:.2f}" for label, m in medians.items()
                                                               if label != "1 process"))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
