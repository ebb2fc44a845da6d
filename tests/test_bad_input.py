"""Bad input as a new user types it: the real command line, one clear line, and nothing written.

Each row is one command: its arguments ({tmp}: the test's folder, {db}: a results database there with the
schema and no run), the exit status, and the lines it must print on stderr (each line `ablate...` and
containing the text; nothing else on stderr). After it, the database still holds no run and no file has
appeared in {tmp} (Hydra's own output folder aside). The next bad input is one more row.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from ablate import record

CELL = ["model=tiny", "data=arithmetic", "eval=default", "db.url={db}", "cache_dir={tmp}/cache",
        "hydra.run.dir={tmp}/hydra", "hydra.sweep.dir={tmp}/hydra"]

ROWS = [
    # (arguments, exit status, stderr lines; for status 0: text its stdout must contain)
    (["db.url=garbage://x", "hydra.run.dir={tmp}/hydra"], 2,
     ["ablate: db.url=garbage://x: SQLAlchemy cannot open it (Can't load plugin: sqlalchemy.dialects:garbage)"]),
    (["db.url=mysql://u@h/db", "hydra.run.dir={tmp}/hydra"], 2,
     ["ablate: db.url=mysql://u@h/db: SQLAlchemy cannot open it (No module named 'MySQLdb')"]),
    (["model=local", "model.path={tmp}/fake.gguf", "db.url={db}", "cache_dir={tmp}/cache",
      "hydra.run.dir={tmp}/hydra"], 2, ["ablate: model.path={tmp}/fake.gguf: not a GGUF file (no GGUF header)"]),
    ([*CELL, "objective.trainer.learning_rate=abc"], 2,
     ["ablate: objective.trainer.learning_rate='abc': not a number; set it like objective.trainer.learning_rate="]),
    ([*CELL, "objective=grpo", "+objective.trainer.warmup_steps=soon"], 2,
     ["ablate: objective.trainer.warmup_steps='soon': not a number"]),
    ([*CELL, "+objective.trainer.learnin_rate=1"], 2,
     ["ablate: objective.trainer.learnin_rate: not a field of SDPOConfig; did you mean learning_rate?"]),
    ([*CELL, "eval.k=0"], 2, ["ablate: eval.k=0: need at least 1; e.g. eval.k=4"]),
    ([*CELL, "eval.k=abc"], 2, ["ablate: eval.k='abc': not a whole number; set it like eval.k=4"]),
    ([*CELL, 'teacher.template="{context} only"'], 2,
     ["ablate: teacher.template: missing {prompt}; it needs {context}, {prompt}"]),
    ([*CELL, 'teacher.template="{prompt} {foo}"'], 2,
     ["ablate: teacher.template: unknown placeholder {foo}; use only {context}, {prompt}"]),
    ([*CELL, 'teacher.template="{prompt} {context"'], 2,
     ["ablate: teacher.template: expected '}' before end of string"]),
    ([*CELL, 'teacher.answer_template="The answer."'], 2, ["ablate: teacher.answer_template: missing {answer}"]),
    ([*CELL, "trainer.max_steps=0"], 2, ["ablate: trainer.max_steps=0: need at least 1; e.g. trainer.max_steps=20"]),
    (["-v", *CELL, "trainer.max_steps=0"], 2, ["ablate: trainer.max_steps=0: need at least 1"]),  # -v is not an override
    (["probe", *CELL, "eval.top_p=0"], 2, ["ablate: eval.top_p=0: choose a value in (0, 1]"]),
    (["build", *CELL, "coverage.copies=0"], 2, ["ablate: coverage.copies=0: need at least 1"]),
    # a sweep reports each bad cell and goes on
    (["-m", *CELL, "eval.k=0,-1"], 0, ["ablate: job #0 failed: eval.k=0: need at least 1",
                                        "ablate: job #1 failed: eval.k=-1: need at least 1"]),
    (["query", "--db", "{db}", "sql", 'ATTACH DATABASE "{tmp}/x.db" AS x'], 2,
     ["ablate query: read-only: ATTACH and VACUUM INTO would create files"]),
    (["query", "--db", "{db}", "sql", "VACUUM INTO '{tmp}/y.db'"], 2,
     ["ablate query: read-only: ATTACH and VACUUM INTO"]),
    (["query", "sql", "SELECT count(*) AS n_runs FROM runs", "--db", "{db}"], 0, "n_runs"),  # --db after the subcommand
    (["query", "runs", "--db", "{db}", "status=completed"], 2, ["ablate query: no runs in {db}; run a sweep first"]),
    (["query", "--db", "garbage://x", "runs"], 2, ["ablate query: --db garbage://x: SQLAlchemy cannot open it"]),
]


@pytest.mark.parametrize("argv, status, expected", ROWS, ids=[" ".join(r[0][:1] + r[0][-1:]) for r in ROWS])
def test_bad_input_gives_one_line_and_writes_nothing(argv, status, expected, tmp_path):
    db = tmp_path / "results.sqlite"
    url = f"sqlite:///{db}"
    record.upgrade(url)
    (tmp_path / "fake.gguf").write_text("notagguf\n")  # 9 bytes of text
    before = _files(tmp_path)
    def fill(s: str) -> str:
        return s.replace("{tmp}", str(tmp_path)).replace("{db}", url)

    proc = subprocess.run([sys.executable, "-m", "ablate", *map(fill, argv)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == status, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    if status == 0 and isinstance(expected, str):
        assert expected in proc.stdout and not err, (proc.stdout, err)
    else:
        assert len(err) == len(expected), err
        for line, want in zip(err, expected):
            assert line.startswith("ablate") and fill(want) in line, (line, want)
    assert _files(tmp_path) == before  # no database, cache folder or attached file appeared
    with record.engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0


def _files(root: Path) -> set[str]:
    skip = ("hydra", "results.sqlite")  # Hydra's output folder; the database and its WAL files (checked by rows)
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.relative_to(root).parts[0].startswith(skip)}


def test_every_shipped_option_passes_the_check():
    """The check refuses bad values, never a config the project ships: every option of every group."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ablate import validate
    from tests.conftest import CONF

    required = {"model=local": ["model.path=/models/m"], "eval=sciknoweval": ["eval.suites.sciknoweval.path=/d.jsonl"],
                **{f"data={d}": ["data.source.path=/d"] for d in ("jsonl", "hf", "paper_subset", "verl_parquet",
                                                                   "sciknoweval")}}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in ("richness", "coverage", "model", "objective", "data", "eval", "db"):
            for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
                choice = f"{group}={option}"
                cfg = compose(config_name="config", overrides=[choice, *required.get(choice, [])])
                validate.check(OmegaConf.to_container(cfg, resolve=True))
