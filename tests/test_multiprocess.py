"""One cell on several processes (launch.processes=2): real torchrun runs on CPU (gloo) with the tiny model, a rank
that fails, a stopped launcher; and the pieces without processes (sharding, config, launch commands)."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from omegaconf import OmegaConf

from ablate import cell, ranks, record, validate
from tests.conftest import FAST, alternating_reward

ROOT = Path(__file__).resolve().parent.parent


def _rows(db, sql):
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def fails_on_rank_1(completions, **_):
    """A reward that raises on rank 1 only (the ranks import it by name)."""
    if os.environ.get("RANK") == "1":
        raise ValueError("rank 1 fails on purpose")
    return alternating_reward(completions)


def test_one_cell_on_two_processes(fast_cfg, tmp_path, capfd):
    cfg = fast_cfg("objective=sdpo", "richness=low", "launch.processes=2")
    assert cell.run(cfg, reward_funcs=[alternating_reward]) == "completed"
    out = capfd.readouterr().out
    db = tmp_path / "results.sqlite"
    (run_id, status, config), = _rows(db, "select id, status, config from runs")
    assert status == "completed" and '"launch": {"processes": 2' in config
    # Every eval sample exactly once per stage, in the order one process would write them.
    _, suites = cell.problems(OmegaConf.to_container(cfg, resolve=True))
    expected = [(name, p.id, i) for name, problems in suites.items() for p in problems for i in range(2)]
    for stage in ("base", "trained"):
        got = _rows(db, f"""select s.eval_set, s.problem_id, s.sample_idx from samples s join evaluations e
                            on e.id = s.evaluation_id where e.stage = '{stage}' order by s.id""")
        assert got == expected, stage
    # Training steps once: rank 0's log (TRL gathers the ranks' numbers; it logs `epoch` again with its summary,
    # in one process too).
    twice = _rows(db, "select name from train_steps group by step, name having count(*) > 1")
    assert set(twice) <= {("epoch",)}
    assert _rows(db, "select count(*) from train_steps where name = 'loss'")[0][0] == 1
    # Both ranks trained bit-identical weights (DDP), each printing its own digest.
    digests = dict(re.findall(r"ablate: rank (\d) of 2: trained weights sha256 ([0-9a-f]{64})", out))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], out[-3000:]
    assert f"run {run_id} [completed]" in out and out.count("[completed]") == 1  # one summary: rank 0's


def _script(overrides: list[str], reward: str) -> list[str]:
    code = ("import sys; from ablate import cell; from tests.conftest import make_cfg; from pathlib import Path; "
            f"from tests.test_multiprocess import {reward}; "
            f"sys.exit(cell.run(make_cfg(*{overrides!r}, tmp=Path(sys.argv[1])), reward_funcs=[{reward}]) != 'failed')")
    return [sys.executable, "-c", code]


def test_a_failing_rank_fails_the_cell(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([*_script(["objective=grpo", "launch.processes=2"], "fails_on_rank_1"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (status, error), = _rows(tmp_path / "results.sqlite", "select status, error from runs")
    assert status == "failed" and error.startswith("RankFailed: rank 1 of 2: ValueError: rank 1 fails on purpose")
    assert "fails_on_rank_1" in error  # the rank's own traceback is recorded
    assert "ablate: run 1 failed: RankFailed: rank 1 of 2: ValueError: rank 1 fails on purpose" in proc.stderr
    assert time.perf_counter() - start < 240  # rank 0 was stopped, not left waiting for rank 1


def _processes_of(spec: str) -> dict[int, str]:
    """pid -> command line of the live processes that name `spec` (the launcher and its ranks)."""
    found = {}
    for p in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(p.info["cmdline"] or [])
        if spec in line and p.info["status"] != psutil.STATUS_ZOMBIE:
            found[p.pid] = line
    return found


def test_sigterm_stops_every_rank_and_records_interrupted(tmp_path):
    """`python -m ablate launch.processes=2`, SIGTERM to it while the ranks run: launcher and ranks are gone, the
    run is recorded interrupted, the exit code is 130."""
    db, log = tmp_path / "results.sqlite", tmp_path / "log.txt"
    args = [sys.executable, "-m", "ablate", *FAST, "objective=grpo", "launch.processes=2", "trainer.max_steps=50",
            f"cache_dir={tmp_path / 'cache'}", f"db.url=sqlite:///{db}", f"hydra.run.dir={tmp_path / 'run'}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 180
    spec = None
    while spec is None or len([c for c in _processes_of(spec).values() if "torch.distributed.run" not in c]) < 2:
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
        match = re.search(r"-m ablate\.launch (\S+cell\.json)", log.read_text())
        spec = match and match.group(1)
    time.sleep(3)  # the ranks are importing or training
    stopped = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 130, log.read_text()[-3000:]
    assert time.perf_counter() - stopped < 60
    assert _processes_of(spec) == {}
    (status, error), = _rows(db, "select status, error from runs")
    assert status == "interrupted" and "SIGTERM" in error


# --- without processes ---

@pytest.mark.parametrize("n,world", [(14, 2), (7, 2), (3, 4), (1, 2), (0, 2), (10, 3)])
def test_shard_blocks_reassemble_in_order(monkeypatch, n, world):
    items = list(range(n))
    blocks = []
    for rank in range(world):
        monkeypatch.setattr(ranks, "rank_world", lambda r=rank: (r, world))
        block, real = ranks.shard(items)
        blocks.append((block, real))
    assert len({len(b) for b, _ in blocks}) == 1  # every rank runs the same number of generate batches
    assert [x for b, real in blocks for x in b[:real]] == items


def test_one_process_is_the_cell_as_before(fast_cfg):
    """launch.processes=1 leaves `launch` out of the run's config (the hash of every earlier cell is unchanged);
    above 1 it is part of it."""
    one = OmegaConf.to_container(fast_cfg(), resolve=True)
    two = OmegaConf.to_container(fast_cfg("launch.processes=2"), resolve=True)
    assert cell._processes(one) == 1 and "launch" not in one
    assert cell._processes(two) == 2 and two["launch"] == {"processes": 2, "accelerate_config": None}
    assert record.config_hash(one) != record.config_hash(two)
    assert ranks.rank_world() == (0, 1) and ranks.shard([1, 2, 3]) == ([1, 2, 3], 3)


@pytest.mark.parametrize("override,message", [
    ("launch.processes=0", "launch.processes=0: need a whole number >= 1"),
    ("launch.processes=two", "launch.processes='two': need a whole number >= 1"),
    ("launch.processes=2 launch.accelerate_config=fsdp3", "launch.accelerate_config=fsdp3: no such file; choose "
                                                          "deepspeed_zero3, fsdp"),
    ("+accelerate=fsdp", "accelerate=...: conf/accelerate holds accelerate's config files"),
])
def test_bad_launch_settings_are_one_line(fast_cfg, override, message):
    with pytest.raises(validate.ConfigError, match=re.escape(message)):
        cell.run(fast_cfg(*override.split()))


def test_reward_functions_must_be_importable():
    assert cell._importable([alternating_reward]) == ["tests.conftest:alternating_reward"]
    with pytest.raises(validate.ConfigError, match="module-level function"):
        cell._importable([lambda completions, **_: [0.0] * len(completions)])
    assert cell._module_root("tests.conftest") == str(ROOT)


def test_launch_commands(tmp_path):
    spec = tmp_path / "cell.json"
    ddp = cell._command({"processes": 2, "accelerate_config": None}, spec)
    assert ddp[1:] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
                       "--max_restarts", "0", "-m", "ablate.launch", str(spec)]
    import torch

    if torch.cuda.is_available():
        assert "accelerate.commands.launch" in cell._command({"processes": 2, "accelerate_config": "fsdp"}, spec)
    else:
        with pytest.raises(RuntimeError, match="launch.accelerate_config=fsdp shards the model over GPUs"):
            cell._command({"processes": 2, "accelerate_config": "fsdp"}, spec)


@pytest.mark.parametrize("name,kind", [("fsdp", "use_fsdp"), ("deepspeed_zero3", "use_deepspeed")])
def test_accelerate_configs_are_read_by_accelerate(name, kind):
    """The shipped files parse with accelerate's own launcher (they can only run on GPUs, which this machine
    may lack): the right backend, bf16, the process count from launch.processes."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = cell.ACCELERATE_CONFIGS / f"{name}.yaml"
    loaded = load_config_from_file(str(path))
    assert loaded.mixed_precision == "bf16"
    args = launch_command_parser().parse_args(["--config_file", str(path), "--num_processes", "4", "--num_machines",
                                               "1", "--main_process_port", "0", "-m", "ablate.launch", "x.json"])
    args, _, _ = _validate_launch_command(args)
    assert getattr(args, kind) and args.num_processes == 4
    if name == "fsdp":
        from accelerate.utils.launch import prepare_multi_gpu_env

        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
        assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    else:
        assert loaded.deepspeed_config["zero_stage"] == 3


def test_big_models_choose_a_sharded_launch():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    for model, choice in (("qwen3_8b", "fsdp"), ("qwen3_8b_thinking", "fsdp"), ("r1_distill_qwen_7b", "fsdp"),
                          ("olmo3_7b_instruct", "fsdp"), ("tiny", None), ("testbed", None)):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"model={model}"])
        assert OmegaConf.to_container(cfg, resolve=True)["launch"] == {"processes": 1, "accelerate_config": choice}
