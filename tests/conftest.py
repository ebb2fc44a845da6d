import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

CONF = Path(__file__).resolve().parent.parent / "conf"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# A cell small enough for a unit test: random tiny model, one step, a handful of eval samples.
FAST = [
    "model=tiny", "data=arithmetic", "eval=default",  # the tests' world: two-digit additions on the tiny model
    "model.build.warmup_steps=0", "model.max_new_tokens=12", "data.source.n=120", "data.heldout=4",
    "eval.k=2", "eval.suites.arith3.n=3", "trainer.max_steps=1", "trainer.per_device_train_batch_size=4",
    "trainer.num_generations=4", "trainer.max_completion_length=12",
]


def make_cfg(*overrides: str, tmp: Path | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"cache_dir={tmp / 'cache'}", f"db.url=sqlite:///{tmp / 'results.sqlite'}"] if tmp else []
        return compose(config_name="config", overrides=[*FAST, *extra, *overrides])


@pytest.fixture
def fast_cfg(tmp_path):
    return lambda *o: make_cfg(*o, tmp=tmp_path)


def alternating_reward(completions, **_):
    """A reward with signal for a random model: half of each group succeeds."""
    return [float(i % 2) for i in range(len(completions))]


# --- databases: every database test runs on SQLite and on a throwaway PostgreSQL server on loopback ---

import glob  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster in a temp dir, trust auth, on 127.0.0.1 (skipped when PostgreSQL is absent)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = tempfile.mkdtemp(prefix="ablate-pg-")
    if as_postgres:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(root, "data")
    subprocess.run([*as_postgres, initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_postgres, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_counter = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


# --- SLURM: a one-node cluster on this machine for the launcher tests (hydra/launcher=slurm) ---

import time  # noqa: E402

SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")


def _sbin(name: str) -> str | None:
    """A daemon's path: /usr/sbin is not on every user's PATH."""
    found = [p for p in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}") if p and os.access(p, os.X_OK)]
    return found[0] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM cluster (munged, slurmctld, slurmd) in a temp dir on 127.0.0.1, run as root; yields the
    environment its clients need (SLURM_CONF). Skipped when Debian's slurm-wlm and munge are absent or not root."""
    missing = [d for d in (*SLURM_DAEMONS, "sbatch", "sinfo", "squeue", "scancel", "scontrol") if not _sbin(d)]
    if missing:
        pytest.skip(f"SLURM is not installed (no {', '.join(missing)}; .ci/run installs Debian's slurm-wlm and munge)")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root (SlurmUser=root); run the tests as root, "
                    "as .ci/run does")
    if not os.path.exists("/etc/munge/munge.key"):
        pytest.skip("munge has no key (/etc/munge/munge.key; Debian's munge package makes one)")
    root = tempfile.mkdtemp(prefix="ablate-slurm-")
    os.chmod(root, 0o755)
    munge = os.path.join(root, "munge")  # munged's own socket, so a system munged (if any) is left alone
    os.mkdir(munge)
    os.chmod(munge, 0o755)  # munged wants its socket's folder owned by it and searchable by all
    shutil.chown(munge, "munge", "munge")
    socket_path = os.path.join(munge, "munge.socket")
    host = socket.gethostname().split(".")[0]
    with open("/proc/meminfo") as f:
        mem_mb = int(f.readline().split()[1]) // 1024
    conf = os.path.join(root, "slurm.conf")
    for sub in ("state", "spool"):
        os.mkdir(os.path.join(root, sub))
    with open(conf, "w") as f:
        f.write(f"""ClusterName=ablate-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={min(20000, mem_mb * 3 // 4)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": conf}
    started = []

    def log_tail() -> str:
        return "".join(f"\n--- {name}:\n" + open(os.path.join(root, name)).read()[-1500:]
                       for name in ("slurmctld.log", "slurmd.log") if os.path.exists(os.path.join(root, name)))

    def start(cmd: list[str], pid_file: str) -> None:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode:
            pytest.fail(f"{' '.join(cmd)} failed: {done.stderr.strip()}{log_tail()}")
        started.append(pid_file)

    try:
        start(["runuser", "-u", "munge", "--", _sbin("munged"), "-S", socket_path, "--pid-file", f"{munge}/munged.pid",
               "--log-file", f"{munge}/munged.log", "--seed-file", f"{munge}/munged.seed"], f"{munge}/munged.pid")
        start([_sbin("slurmctld"), "-f", conf], f"{root}/slurmctld.pid")
        start([_sbin("slurmd"), "-f", conf, "-N", host], f"{root}/slurmd.pid")
        for _ in range(120):  # the node registers within a few seconds
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True,
                                   timeout=30).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the test SLURM node did not become idle (sinfo: {state!r}){log_tail()}")
        yield env
    finally:
        if len(started) == 3:  # jobs end first: a job step that outlives slurmctld waits for it forever
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)  # this cluster's
            for _ in range(60):
                jobs = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30).stdout
                node = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True,
                                      timeout=30).stdout.strip()
                if not jobs.strip() and node == "idle":
                    break
                time.sleep(0.5)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)  # stops slurmctld and slurmd
        for pid_file in reversed(started):
            _stop_daemon(pid_file, grace=0 if pid_file.endswith("munged.pid") else 10)
        shutil.rmtree(root, ignore_errors=True)


def _stop_daemon(pid_file: str, grace: float) -> None:
    """Give the daemon that wrote `pid_file` `grace` seconds to exit, then SIGTERM it, then SIGKILL it."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return  # never started, or it removed its pid file on the way out
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    for sig in (15, 9):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        time.sleep(2)
