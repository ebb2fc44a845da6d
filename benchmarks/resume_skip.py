"""Time how long a resumed sweep spends on each already-completed cell (target: under 1 s per cell).

    python benchmarks/resume_skip.py [N]

Records N completed cells (seed=0..N-1) in a temporary database, then re-runs the sweep through the CLI
(`python -m ablate -m seed=0,...`) and prints the wall time per skipped cell, and the in-process time of
the skip decision itself.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    from ablate import cell, record

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite"
        record.upgrade(url)
        eng = record.engine(url)
        cfgs = []
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for seed in range(n):
                cfg = compose(config_name="config", overrides=[f"seed={seed}", "richness=high", f"db.url={url}"])
                resolved = OmegaConf.to_container(cfg, resolve=True)
                run = record.start_run(eng, sweep="bench", config=resolved, seed=seed,
                                       axes={a: resolved[a]["name"] for a in cell.AXES})
                record.end_run(eng, run, "completed")
                cfgs.append(cfg)
        start = time.perf_counter()
        statuses = [cell.run(c) for c in cfgs]
        in_process = (time.perf_counter() - start) / n
        assert statuses == ["skipped"] * n, statuses
        args = [sys.executable, "-m", "ablate", "-m", f"seed={','.join(map(str, range(n)))}", "richness=high",
                f"db.url={url}", f"hydra.sweep.dir={tmp}/multirun"]
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        cli = time.perf_counter() - start
        assert proc.returncode == 0 and proc.stdout.count("ablate: skip") == n, proc.stderr[-2000:]
    print(f"skip decision, in process: {in_process * 1000:.1f} ms per cell ({n} cells)")
    print(f"resumed sweep through the CLI: {cli:.1f} s for {n} completed cells = {cli / n:.2f} s per cell "
          "(includes one Python + Hydra start-up)")


if __name__ == "__main__":
    main()
