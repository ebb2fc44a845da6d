"""Time the same 4 cells run one after another (threads=2) and with hydra/launcher=parallel (2 jobs x 1 thread).

    python benchmarks/parallel_cells.py [--pairs N] [overrides...]

The cells: richness=high objective=sdpo coverage=seen_8x8 seed=0,1,2,3 on the default model (the testbed), plus
your overrides (e.g. model=tiny data=arithmetic eval=default for a quick run). The model is built once first
(`ablate build`, untimed, in ABLATE_CACHE or ~/.cache/ablate). Then sequential (A) and parallel (B) sweeps
alternate, A B A B ..., N pairs (default 2), each on a fresh SQLite database whose starting model was evaluated
first (`ablate build` on that database, untimed: how a parallel sweep should start). Prints the machine (CPU model,
cores), the load average around each sweep, the wall times and the sequential / parallel ratio per pair and in all.
"""

import os
import sqlite3
import subprocess
import sys
import tempfile
import time

CELLS = ["richness=high", "objective=sdpo", "coverage=seen_8x8"]
SEEDS = "seed=0,1,2,3"
MODES = (("sequential, threads=2", ["threads=2"]),
         ("parallel, 2 jobs x 1 thread", ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "threads=1"]))


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def ablate(args: list[str], tmp: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ablate", *args], cwd=tmp, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"python -m ablate {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    argv = sys.argv[1:]
    pairs = 2
    if argv[:1] == ["--pairs"]:
        pairs, argv = int(argv[1]), argv[2:]
    print(f"machine: {machine()}; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"build (untimed): {ablate(['build', *argv, f'db.url=sqlite:///{tmp}/build.sqlite'], tmp):.1f} s",
              flush=True)
        times: dict[str, list[float]] = {label: [] for label, _ in MODES}
        for pair in range(pairs):
            for i, (label, mode) in enumerate(MODES):
                db = f"{tmp}/{pair}-{i}.sqlite"
                ablate(["build", *argv, f"db.url=sqlite:///{db}"], tmp)  # the starting model's evaluation, once
                before = load()
                seconds = ablate(["-m", *CELLS, *argv, SEEDS, *mode, f"db.url=sqlite:///{db}",
                                  f"hydra.sweep.dir={tmp}/sweeps/{pair}-{i}"], tmp)
                done = sqlite3.connect(db).execute("SELECT count(*) FROM runs WHERE kind = 'cell' AND "
                                                   "status = 'completed'").fetchone()[0]
                assert done == 4, f"{label}: {done} of 4 cells completed"
                times[label].append(seconds)
                print(f"pair {pair + 1}, {label}: {seconds:.1f} s ({before}; after: {load()})", flush=True)
            seq, par = (times[label][-1] for label, _ in MODES)
            print(f"pair {pair + 1}: sequential / parallel = {seq / par:.2f}", flush=True)
    seq, par = (sum(times[label]) for label, _ in MODES)
    print(f"in all ({pairs} pairs): sequential {seq:.1f} s, parallel {par:.1f} s, ratio {seq / par:.2f}")


if __name__ == "__main__":
    main()
