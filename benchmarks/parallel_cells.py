"""Time the same 4 cells run one after another (threads=2) and with hydra/launcher=parallel (2 jobs x 1 thread).

    python benchmarks/parallel_cells.py [--rounds N] [overrides...]

The cells: richness=high objective=sdpo coverage=seen_8x8 seed=0,1,2,3 on the default model (the testbed), plus
your overrides (e.g. model=tiny data=arithmetic eval=default for a quick run). The model is built and evaluated
once first (`ablate build`, untimed, in ABLATE_CACHE or ~/.cache/ablate), as a parallel sweep should start. Then
sequential (A), parallel (B) and, as a control, sequential with threads=1 (C) alternate, A B C A B C ..., N rounds
(default 2), each on a fresh copy of that database (so every sweep finds the starting model's evaluation and
trains and evaluates its 4 cells). Prints the machine (CPU model, cores), the load average around each sweep, the
wall times and the ratios per round and in all.
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
         ("parallel, 2 jobs x 1 thread", ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "threads=1"]),
         # the control: how much of the gain is the parallel cells, how much one thread instead of two
         ("sequential, threads=1", ["threads=1"]))


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


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
    rounds = 2
    if argv[:1] == ["--rounds"]:
        rounds, argv = int(argv[1]), argv[2:]
    print(f"machine: {machine()}; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"build (untimed): {ablate(['build', *argv, f'db.url=sqlite:///{tmp}/build.sqlite'], tmp):.1f} s",
              flush=True)
        times: dict[str, list[float]] = {label: [] for label, _ in MODES}
        for rnd in range(rounds):
            for i, (label, mode) in enumerate(MODES):
                db = f"{tmp}/{rnd}-{i}.sqlite"
                src, dst = sqlite3.connect(f"{tmp}/build.sqlite"), sqlite3.connect(db)
                src.backup(dst)  # a fresh database that holds the starting model's evaluation
                src.close(), dst.close()
                before = load()
                seconds = ablate(["-m", *CELLS, *argv, SEEDS, *mode, f"db.url=sqlite:///{db}",
                                  f"hydra.sweep.dir={tmp}/sweeps/{rnd}-{i}"], tmp)
                con = sqlite3.connect(db)
                done = con.execute("SELECT count(*) FROM runs WHERE kind = 'cell' AND status = 'completed'")
                done = done.fetchone()[0]
                con.close()
                assert done == 4, f"{label}: {done} of 4 cells completed"
                times[label].append(seconds)
                print(f"round {rnd + 1}, {label}: {seconds:.1f} s ({before}; after: {load()})", flush=True)
            seq, par, one = (times[label][-1] for label, _ in MODES)
            print(f"round {rnd + 1}: sequential / parallel = {seq / par:.2f} (with threads=1: {one / par:.2f})",
                  flush=True)
    seq, par, one = (sum(times[label]) for label, _ in MODES)
    print(f"in all ({rounds} rounds): sequential {seq:.1f} s, parallel {par:.1f} s, sequential with threads=1 "
          f"{one:.1f} s; sequential / parallel = {seq / par:.2f} (with threads=1: {one / par:.2f})")


if __name__ == "__main__":
    main()
