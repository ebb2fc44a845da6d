"""Cells end to end: the database rows, failures recorded without harm, and a real Hydra multirun."""

import os
import sqlite3
import subprocess
import sys

from ablate import cell
from tests.conftest import FAST, alternating_reward


def _rows(db, sql):
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_cell_records_run_samples_and_steps(fast_cfg, tmp_path):
    assert cell.run(fast_cfg("objective=sdpo", "richness=low"), reward_funcs=[alternating_reward]) == "completed"
    db = tmp_path / "results.sqlite"
    (run_id, status, commit, versions, chash, base_id), = _rows(
        db, "select id, status, git_commit, versions, config_hash, base_evaluation_id from runs")
    assert status == "completed" and '"trl": "1.16.0"' in versions and len(chash) == 16 and base_id
    stages = dict(_rows(db, "select stage, count(*) from evaluations group by stage"))
    assert stages == {"base": 1, "trained": 1}
    # 4 in-domain + 3 out-of-domain problems x k=2, per stage
    assert _rows(db, "select count(*) from samples")[0][0] == 2 * (4 + 3) * 2
    assert _rows(db, "select count(*) from samples where length is null or markers is null or correct is null")[0][0] == 0
    names = {r[0] for r in _rows(db, "select distinct name from metrics")}
    assert {"accuracy", "pass_at_k", "mean_length", "markers_per_response", "markers_per_1k_tokens"} <= names
    assert _rows(db, "select count(*) from train_steps where name = 'loss'")[0][0] == 1
    # A second cell with the same model and eval settings reuses the base evaluation.
    assert cell.run(fast_cfg("objective=grpo"), reward_funcs=[alternating_reward]) == "completed"
    assert _rows(db, "select count(*) from evaluations where stage = 'base'")[0][0] == 1
    assert len({r[0] for r in _rows(db, "select base_evaluation_id from runs")}) == 1


def test_failures_are_recorded_and_leave_other_rows_alone(fast_cfg, tmp_path, capsys):
    assert cell.run(fast_cfg("objective=grpo"), reward_funcs=[alternating_reward]) == "completed"
    db = tmp_path / "results.sqlite"
    before = _rows(db, "select * from samples order by id")
    bad = [("coverage=seen_512", "coverage.unique=512 but the training pool has only"),
           ("model.build=null model.path=/no/such/model", "model.path=/no/such/model: no such file or folder"),
           ("data.source.kind=jsonl +data.source.path=/no/such.jsonl +data.source.fields={prompt:q,answer:a}",
            "/no/such.jsonl does not exist"),
           ("richness=medium objective=sdft coverage=seen_8x8 trainer.max_prompt_length=20", "silently truncate")]
    for overrides, message in bad:
        assert cell.run(fast_cfg(*overrides.split())) == "failed"
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ablate:")]
        assert len(err) == 1 and message in err[0], err
    assert _rows(db, "select status, count(*) from runs group by status") == [("completed", 1), ("failed", 4)]
    errors = [r[0] for r in _rows(db, "select error from runs where status = 'failed' order by id")]
    assert all(m in e for (_, m), e in zip(bad, errors))
    assert _rows(db, "select * from samples order by id") == before


def test_multirun_two_cells_and_a_failing_one(tmp_path):
    """python -m ablate -m ...: two completed runs with per-sample rows; a failing cell does not stop the sweep."""
    db = tmp_path / "sweep.sqlite"
    args = [sys.executable, "-m", "ablate", "-m", "richness=none,high", "objective=sdpo", "coverage=seen_8x8,seen_512",
            *FAST, "model.build.warmup_steps=30", "data.source.n=200", f"cache_dir={tmp_path / 'cache'}",
            f"db.url=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'multirun'}", "threads=1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _rows(db, "select richness, coverage, status from runs order by id")
    assert sorted(runs) == [("high", "seen_512", "failed"), ("high", "seen_8x8", "completed"),
                            ("none", "seen_512", "failed"), ("none", "seen_8x8", "completed")]
    per_run = _rows(db, """select r.richness, count(s.id), sum(s.length > 0) from runs r
                           join evaluations e on e.run_id = r.id join samples s on s.evaluation_id = e.id
                           where r.status = 'completed' group by r.id order by r.richness""")
    assert [(r, n) for r, n, _ in per_run] == [("high", 14), ("none", 14)]
    assert proc.stdout.count("[completed]") == 2 and "richness=high coverage=seen_8x8" in proc.stdout


def test_cell_on_postgres(fast_cfg, tmp_path, postgres_server):
    import psycopg
    from sqlalchemy import text

    from ablate import record

    with psycopg.connect(postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres",
                         autocommit=True) as con:
        con.execute("CREATE DATABASE cell_e2e")
    url = f"{postgres_server}/cell_e2e"
    assert cell.run(fast_cfg("objective=sdpo", f"db.url={url}"), reward_funcs=[alternating_reward]) == "completed"
    assert cell.run(fast_cfg("objective=sdpo", f"db.url={url}")) == "skipped"  # resume works there too
    with record.engine(url).connect() as conn:
        assert conn.execute(text("SELECT status FROM runs")).scalars().all() == ["completed"]
        assert conn.execute(text("SELECT count(*) FROM run_samples WHERE stage = 'trained'")).scalar() == 14


def test_unusable_database_is_one_line_and_untouched(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"definitely not sqlite " * 50)
    proc = subprocess.run([sys.executable, "-m", "ablate", f"db.url=sqlite:///{garbage}",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a usable database" in lines[0], proc.stderr
    assert garbage.read_bytes() == b"definitely not sqlite " * 50
