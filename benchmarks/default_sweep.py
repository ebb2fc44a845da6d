"""Time the README's first command on this machine, from an empty model cache: build the base model, run the
default sweep, write the report.

    python benchmarks/default_sweep.py [extra overrides for the build and the sweep...]

Prints wall-clock seconds per phase and in all (the target is at most 10 minutes on 2 CPU cores), the cells'
statuses and the report's four-direction verdicts. Runs in a temporary directory: nothing of yours is touched.
"""

import os
import sqlite3
import subprocess
import sys
import tempfile
import time


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ABLATE_CACHE": os.path.join(tmp, "cache"), "HF_HUB_OFFLINE": "1"}
        db = f"sqlite:///{tmp}/bench.sqlite"
        phases = [("build the base model", ["-m", "ablate", "build", f"db.url={db}", *extra]),
                  ("default sweep", ["-m", "ablate", "-m", "grid=testbed", f"db.url={db}", *extra]),
                  ("report", ["-m", "ablate.report", "--db", db, "--out", f"{tmp}/reports"])]
        total = 0.0
        for label, args in phases:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=tmp)
            seconds = time.perf_counter() - start
            total += seconds
            if proc.returncode != 0:
                sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
            print(f"{label}: {seconds:.1f} s", flush=True)
        print(f"total: {total:.1f} s ({total / 60:.1f} min)")
        con = sqlite3.connect(f"{tmp}/bench.sqlite")
        print("runs:", dict(con.execute("select status, count(*) from runs where kind = 'cell' group by status")))
        report = proc.stdout.strip().splitlines()[-1]
        text = open(report, encoding="utf-8").read()
        start = text.find('id="directions"')
        if start >= 0:
            import re

            rows = re.findall(r"<tr>(.*?)</tr>", text[start:text.find("<h2", start + 10)], flags=re.S)
            for row in rows[1:]:
                cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
                print(" | ".join(cells))


if __name__ == "__main__":
    main()
