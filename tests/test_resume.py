"""Resuming sweeps: completed cells are skipped; interrupted, killed and missing ones run again."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from tests.conftest import FAST


def _cmd(tmp_path, *overrides, multirun=True):
    return [sys.executable, "-m", "ablate", *(["-m"] if multirun else []), "objective=grpo", "richness=none", *FAST,
            f"cache_dir={tmp_path / 'cache'}", f"db.url=sqlite:///{tmp_path / 'r.sqlite'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", f"hydra.run.dir={tmp_path / 'run'}", *overrides]


def _rows(tmp_path, sql):
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        return con.execute(sql).fetchall()


def _wait_for(tmp_path, sql, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if _rows(tmp_path, sql):
                return
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {sql}")


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)


def test_a_signal_while_the_row_is_written_still_records_the_cell_interrupted(fast_cfg, monkeypatch):
    """The race a loaded machine hit: SIGTERM right after the 'running' row was committed, before its id came back
    (the cell stayed 'running' forever). The stop now waits for the id and is recorded."""
    from omegaconf import OmegaConf

    from ablate import STOP, cell, on_signal, record

    written = record.start_run

    def start_run_then_signal(*args, **kwargs):
        run_id = written(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # Python runs the handler between bytecodes: here, before the id is returned
            pass
        return run_id

    monkeypatch.setattr(record, "start_run", start_run_then_signal)
    previous = signal.signal(signal.SIGTERM, on_signal)
    resolved = OmegaConf.to_container(fast_cfg("objective=grpo"), resolve=True)
    body, raised = [], None
    try:
        cell.execute(resolved, "s", lambda eng, run_id: body.append(run_id))
    except BaseException as err:  # a KeyboardInterrupt escaping here is the bug: a failure, not pytest's Ctrl-C
        raised = err
    finally:
        signal.signal(signal.SIGTERM, previous)
        STOP.clear()
    assert isinstance(raised, SystemExit) and raised.code == 130, repr(raised)
    assert body == []  # stopped before the cell's work began
    eng = record.engine(resolved["db"]["url"])
    with eng.connect() as conn:
        (status, error), = conn.exec_driver_sql("SELECT status, error FROM runs").fetchall()
    assert status == "interrupted" and "SIGTERM" in error


def test_interrupted_sweep_restarted_finishes_only_missing_cells(tmp_path):
    args = _cmd(tmp_path, "seed=0,1,2", "trainer.max_steps=30")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _wait_for(tmp_path, "SELECT 1 FROM runs WHERE status = 'completed'")
    _wait_for(tmp_path, "SELECT 1 FROM runs WHERE status = 'running'")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "a SIGTERM stops the sweep"
    first = _rows(tmp_path, "SELECT seed, status FROM runs ORDER BY id")
    assert first[0] == (0, "completed") and first[1] == (1, "interrupted"), (first, err[-2000:])
    assert "SIGTERM" in _rows(tmp_path, "SELECT error FROM runs WHERE seed = 1")[0][0]

    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ablate: skip" in again.stdout and "seed=0: completed as run 1" in again.stdout
    done = _rows(tmp_path, "SELECT seed, count(*) FROM runs WHERE status = 'completed' GROUP BY seed ORDER BY seed")
    assert done == [(0, 1), (1, 1), (2, 1)]  # seed 0 not rerun; seeds 1 and 2 ran once each
    forced = _run(_cmd(tmp_path, "seed=0", "force=true"))
    assert forced.returncode == 0
    assert _rows(tmp_path, "SELECT count(*) FROM runs WHERE seed = 0 AND status = 'completed'") == [(2,)]


def test_killed_cell_is_recognised_as_stale_and_rerun(tmp_path):
    args = _cmd(tmp_path, "trainer.max_steps=60", "db.heartbeat_seconds=1", multirun=False)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _wait_for(tmp_path, "SELECT 1 FROM runs WHERE status = 'running'")
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert _rows(tmp_path, "SELECT status FROM runs") == [("running",)]  # nobody could record the kill
    # While its heartbeat is fresh, a rerun of the same cell leaves it alone ...
    fresh = _run(args)
    assert fresh.returncode == 0 and "running as run 1" in fresh.stdout, fresh.stdout + fresh.stderr[-2000:]
    time.sleep(2.5)
    # ... once the heartbeat is older than stale_after_seconds, the cell runs again.
    rerun = _run(_cmd(tmp_path, "trainer.max_steps=60", "db.stale_after_seconds=2", multirun=False))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    statuses = _rows(tmp_path, "SELECT status, error FROM runs ORDER BY id")
    assert statuses[0][0] == "interrupted" and statuses[0][1].startswith("stale: no heartbeat")
    assert statuses[-1][0] == "completed"
