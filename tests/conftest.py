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
