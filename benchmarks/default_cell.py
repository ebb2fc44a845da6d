"""Time the default cell on this machine: first run (builds the tiny model) and a second run (cached).

    python benchmarks/default_cell.py [extra overrides...]

Prints wall-clock seconds for each; the target is under 3 minutes on 2 CPU cores.
"""

import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ABLATE_CACHE": os.path.join(tmp, "cache"), "HF_HUB_OFFLINE": "1"}
        args = [sys.executable, "-m", "ablate", f"db.url=sqlite:///{tmp}/bench.sqlite",
                f"hydra.run.dir={tmp}/outputs", *extra]
        for label in ("first run (builds the tiny model)", "second run (cached model and base evaluation)"):
            start = time.perf_counter()
            proc = subprocess.run(args, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"ablate failed:\n{proc.stderr[-2000:]}")
            print(f"{label}: {seconds:.1f} s")
        print(proc.stdout.strip().splitlines()[-4:] and "\n".join(proc.stdout.strip().splitlines()[-4:]))


if __name__ == "__main__":
    main()
