"""Launchers (conf/hydra/launcher, docs/cluster.md), each run for real as `python -m ablate -m ...` on tiny cells:
parallel (joblib) and local (submitit) on SQLite, slurm (submitit) on a one-node SLURM cluster with PostgreSQL."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF, FAST

SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]  # 2 cells per 2 cores


def launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return cfg, cfg.hydra.launcher


def ablate(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def runs(url: str) -> list:
    """(seed, status, started_at, ended_at, error) of the cells, in the order they started."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as con:
            return con.execute(sa.text("SELECT seed, status, started_at, ended_at, error FROM runs WHERE kind = 'cell' "
                                       "ORDER BY id")).all()
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The tiny model, built once before any sweep (`ablate build`): cells started together never build it twice."""
    where = tmp_path_factory.mktemp("launchers")
    done = ablate("build", *FAST, f"cache_dir={where / 'cache'}", f"db.url=sqlite:///{where / 'build.sqlite'}",
                  cwd=where)
    assert done.returncode == 0, done.stderr[-3000:]
    return where / "cache"


# --- the configs: what each launcher asks for ---

def test_slurm_resources_come_from_the_model_config_and_can_be_overridden():
    for path in sorted((CONF / "model").glob("*.yaml")):
        resources = OmegaConf.load(path).get("resources")
        cfg, slurm = launcher("hydra/launcher=slurm", f"model={path.stem}")
        asked = (slurm.gpus_per_node, slurm.cpus_per_task, slurm.mem_gb, slurm.timeout_min)
        if resources:  # a GPU model states what one cell needs
            assert asked == (resources.gpus, resources.cpus, resources.mem_gb, resources.time_min), path.stem
        else:  # CPU models: the launcher's defaults, no GPU
            assert asked == (None, 2, 8, 120), path.stem
        assert slurm.submitit_folder.startswith(cfg.hydra.sweep.dir + "/")  # job logs land in the sweep folder
    _, big = launcher("hydra/launcher=slurm", "model=qwen3_8b")
    _, small = launcher("hydra/launcher=slurm", "model=smollm2_135m")
    assert big.gpus_per_node == 4 and big.mem_gb > small.mem_gb and big.timeout_min > small.timeout_min
    _, over = launcher("hydra/launcher=slurm", "model=qwen3_8b", "hydra.launcher.partition=gpu",
                       "hydra.launcher.account=lab", "hydra.launcher.gpus_per_node=8", "hydra.launcher.timeout_min=60")
    assert (over.partition, over.account, over.gpus_per_node, over.timeout_min) == ("gpu", "lab", 8, 60)
    # torch threads = the CPUs SLURM gave the job
    assert "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in OmegaConf.to_container(over.setup, resolve=True)[0]


def test_parallel_and_local_launchers_configs():
    _, parallel = launcher("hydra/launcher=parallel")
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2  # never joblib's -1 (all cores)
    assert launcher("hydra/launcher=parallel", "hydra.launcher.n_jobs=4")[1].n_jobs == 4
    _, local = launcher("hydra/launcher=local", "model=qwen3_8b")
    assert local._target_.endswith("submitit_launcher.LocalLauncher") and local.gpus_per_node == 4


# --- one machine ---

def test_parallel_launcher_runs_two_cells_side_by_side_on_sqlite(cache, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    done = ablate("-m", *FAST, f"cache_dir={cache}", f"db.url={url}", "hydra/launcher=parallel", "seed=0,1",
                  cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "database is locked" not in out
    rows = runs(url)
    assert sorted((r.seed, r.status) for r in rows) == [(0, "completed"), (1, "completed")]
    a, b = rows
    assert a.started_at < b.ended_at and b.started_at < a.ended_at  # the two cells ran at the same time


def test_local_launcher_runs_each_cell_in_its_own_process(cache, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    done = ablate("-m", *FAST, f"cache_dir={cache}", f"db.url={url}", "hydra/launcher=local", "threads=1",
                  "hydra.sweep.dir=sweep", "seed=0,1", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert sorted((r.seed, r.status) for r in runs(url)) == [(0, "completed"), (1, "completed")]
    logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and any("run " in p.read_text() for p in logs)  # each cell's summary in its own log


# --- a SLURM cluster with PostgreSQL ---

@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_slurm_sweep_of_four_cells_lands_in_postgres(cache, slurm_cluster, db_url, tmp_path):
    done = ablate("-m", *FAST, f"cache_dir={cache}", f"db.url={db_url}", *SLURM, "hydra.sweep.dir=sweep",
                  "seed=0,1,2,3", cwd=tmp_path, env=slurm_cluster)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert sorted((r.seed, r.status) for r in runs(db_url)) == [(s, "completed") for s in range(4)]
    jobs = list((tmp_path / "sweep" / ".submitit").glob("*_[0-9]"))  # ARRAYID_TASK
    assert len(jobs) == 4 and all(list(p.glob("*_log.err")) for p in jobs)  # each job's logs, in the sweep folder


def _wait(what: str, check, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_slurm_scancel_records_interrupted_and_rerun_completes_only_that_cell(cache, slurm_cluster, db_url, tmp_path):
    steps = 60  # long enough to catch cell 0 mid-training (4-9 steps/s here), short enough to rerun
    args = ["-m", *FAST, f"trainer.max_steps={steps}", f"cache_dir={cache}", f"db.url={db_url}", *SLURM,
            "hydra.sweep.dir=sweep", "seed=0,1"]
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "ablate", *args], cwd=tmp_path, env=slurm_cluster,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        def training() -> Path | None:  # cell 0 (array task 0) has logged a training step
            for err in (tmp_path / "sweep" / ".submitit").glob("*_0/*_0_0_log.err"):
                if re.search(rf"\b[1-9]\d*/{steps} \[", err.read_text(errors="replace")):
                    return err.parent
            return None

        job = _wait("cell 0 to train", training).name  # ARRAYID_0
        assert [r.status for r in runs(db_url) if r.seed == 0] == ["running"]
        subprocess.run(["scancel", job], env=slurm_cluster, check=True)
        squeue = ["squeue", "-h", "-o", "%i"]
        _wait("the jobs to end", lambda: not subprocess.run(squeue, env=slurm_cluster, capture_output=True,
                                                            text=True, check=True).stdout.strip())
    finally:
        # submitit learns that a job ended without a result from sacct, and this test cluster has no accounting
        # database: the driver would wait for the cancelled job forever. Every job has ended here.
        try:
            driver.wait(timeout=5)
        except subprocess.TimeoutExpired:
            driver.terminate()
            driver.wait(timeout=30)
    cells = {seed: [(r.status, r.error) for r in runs(db_url) if r.seed == seed] for seed in (0, 1)}
    assert [s for s, _ in cells[0]] == ["interrupted"], (
        f"scancel's SIGTERM did not reach ablate's handler in the job (submitit ignores SIGTERM): {cells[0]}")
    assert "SIGTERM" in cells[0][0][1]
    assert [s for s, _ in cells[1]] == ["completed"]

    rerun = ablate(*args, cwd=tmp_path, env=slurm_cluster)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    after = runs(db_url)
    assert [r.status for r in after if r.seed == 0] == ["interrupted", "completed"]
    assert [r.status for r in after if r.seed == 1] == ["completed"]  # skipped by its config hash: no new run


def test_every_launcher_command_in_the_docs_composes():
    """The commands of docs/cluster.md, as written (DB filled in), compose, resolve and pass the config check."""
    from ablate import validate

    text = (Path(__file__).resolve().parent.parent / "docs" / "cluster.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S)).replace("\\\n", " ")
    commands = [line.split("#")[0].split() for line in blocks.splitlines()
                if line.startswith("python -m ablate ") and "hydra/launcher=" in line]
    assert len(commands) >= 6
    for words in commands:
        overrides = [w.replace("$DB", "postgresql+psycopg://user@dbhost/ablate").split(",")[0]  # a sweep's first cell
                     for w in words[3:] if w not in ("-m", "build")]
        cfg, chosen = launcher(*overrides)
        OmegaConf.to_container(chosen, resolve=True)
        validate.check(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                              resolve=True))
        if "model=qwen3_8b" in overrides:
            assert chosen.gpus_per_node == 4 and chosen.partition == "gpu"
