"""The results database on SQLite and PostgreSQL: parallel writers, migrations, resume bookkeeping."""

import multiprocessing as mp
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from ablate import record

WRITERS, SAMPLES = 8, 200
AXES = {"richness": "high", "coverage": "seen_64", "model": "tiny", "objective": "sdpo"}


def _samples(n):
    return [{"eval_set": "in_domain", "problem_id": f"p{j}", "sample_idx": 0, "completion": "x", "answer": "1",
             "correct": j % 2 == 0, "exact_match": False, "length": j, "markers": 0, "marker_counts": {}}
            for j in range(n)]


def _writer(url: str, i: int) -> None:
    eng = record.engine(url)
    run_id = record.start_run(eng, sweep="parallel", config={"seed": i}, seed=i, axes=AXES)
    metrics = [{"eval_set": "in_domain", "name": "accuracy", "value": 0.5}]
    base = record.save_evaluation(eng, stage="base", key="shared", samples=_samples(SAMPLES), metrics=metrics,
                                  settings={}, seconds=0.0)
    record.finish_run(eng, run_id, base_evaluation_id=base, train_steps=[{"step": 1, "name": "loss", "value": 1.0}],
                      trained={"samples": _samples(SAMPLES), "metrics": metrics, "settings": {}, "seconds": 0.0})


def test_parallel_writers_lose_no_rows(db_url):
    record.upgrade(db_url)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db_url, i)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS  # no "database is locked", no duplicate key
    with Session(record.engine(db_url)) as s:
        assert s.scalar(select(func.count()).select_from(record.Run).where(record.Run.status == "completed")) == WRITERS
        # one shared base evaluation (first writer wins) + one trained evaluation per writer
        assert s.scalar(select(func.count()).select_from(record.Evaluation)) == WRITERS + 1
        assert s.scalar(select(func.count()).select_from(record.Sample)) == (WRITERS + 1) * SAMPLES
        assert s.scalar(select(func.count(func.distinct(record.Run.base_evaluation_id)))) == 1


def test_database_built_at_first_migration_upgrades_without_losing_rows(db_url):
    eng = record.engine(db_url)
    with eng.begin() as conn:
        command.upgrade(record._alembic(conn), "0001")
    with eng.begin() as conn:  # rows as the first schema knew them
        conn.execute(text("INSERT INTO runs (id, sweep, config_hash, config, richness, coverage, model, objective, "
                          "seed, status, versions, started_at) VALUES (1, 's', 'h', '{}', 'low', 'seen_64', 'tiny', "
                          "'sdpo', 0, 'completed', '{}', '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO evaluations (id, stage, run_id, settings, seconds, created_at) "
                          "VALUES (1, 'trained', 1, '{}', 1.0, '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO metrics (evaluation_id, eval_set, name, value) VALUES (1, 'in_domain', "
                          "'accuracy', 0.25)"))
    assert record.revision(eng) == "0001"
    assert record.upgrade(db_url) == record.HEAD
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
        assert conn.execute(text("SELECT richness, stage, value FROM run_metrics")).one() == ("low", "trained", 0.25)
        assert conn.execute(text("SELECT heartbeat_at FROM runs")).scalar() is None


def test_run_kind_migration_moves_builds_and_probes_out_of_objective(db_url):
    eng = record.engine(db_url)
    with eng.begin() as conn:
        command.upgrade(record._alembic(conn), "0003")
    with eng.begin() as conn:  # until 0003 a build or probe hid its kind in runs.objective
        for i, objective in enumerate(("build", "probe", "sdpo"), 1):
            conn.execute(text("INSERT INTO runs (sweep, config_hash, config, richness, coverage, model, objective, "
                              f"seed, status, versions, started_at) VALUES ('s', 'h{i}', '{{}}', '-', '-', 'tiny', "
                              f"'{objective}', 0, 'completed', '{{}}', '2026-01-01 00:00:00')"))
    assert record.upgrade(db_url) == record.HEAD
    with eng.connect() as conn:
        rows = conn.execute(text("SELECT config_hash, kind, objective FROM runs ORDER BY config_hash")).all()
        assert [tuple(r) for r in rows] == [("h1", "build", "-"), ("h2", "probe", "-"), ("h3", "cell", "sdpo")]
        assert "kind" in conn.execute(text("SELECT * FROM run_steps")).keys()
    run_id = record.start_run(eng, sweep="s", config={"seed": 9}, seed=9, axes=AXES)  # the default kind
    with eng.connect() as conn:
        assert conn.execute(text(f"SELECT kind FROM runs WHERE id = {run_id}")).scalar() == "cell"


def test_pre_alembic_database_is_adopted(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    eng = record.engine(url)
    with eng.begin() as conn:  # a database made by create_all of the first schema, without alembic_version
        command.upgrade(record._alembic(conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
    assert record.revision(eng) == "0001"
    assert record.upgrade(url) == record.HEAD


def test_newer_schema_and_garbage_are_refused_untouched(db_url, tmp_path):
    record.upgrade(db_url)
    eng = record.engine(db_url)
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(record.SchemaError, match="schema revision 0099 is newer than this ablate"):
        record.upgrade(db_url)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0099"
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database " * 100)
    with pytest.raises(record.SchemaError, match="not a usable database"):
        record.upgrade(f"sqlite:///{garbage}")
    assert garbage.read_bytes() == b"not a database " * 100


def test_resume_bookkeeping(db_url):
    record.upgrade(db_url)
    eng = record.engine(db_url)
    cfg = {"seed": 0, "trainer": {}}
    chash = record.config_hash(cfg)
    assert record.previous(eng, chash, stale_after=60) is None
    run_id = record.start_run(eng, sweep="s", config=cfg, seed=0, axes=AXES)
    assert record.previous(eng, chash, stale_after=60) == ("running", run_id)  # a live process holds it
    with Session(eng) as s, s.begin():  # the process died: its heartbeat stops
        s.execute(update(record.Run).values(heartbeat_at=record.now() - timedelta(seconds=600)))
    assert record.previous(eng, chash, stale_after=60) is None
    with Session(eng) as s:
        stale = s.get(record.Run, run_id)
        assert stale.status == "interrupted" and stale.error.startswith("stale: no heartbeat")
    done = record.start_run(eng, sweep="s", config=cfg, seed=0, axes=AXES)
    record.end_run(eng, done, "completed")
    assert record.previous(eng, chash, stale_after=60) == ("completed", done)


def test_heartbeat_beats(db_url):
    record.upgrade(db_url)
    eng = record.engine(db_url)
    run_id = record.start_run(eng, sweep="s", config={}, seed=0, axes=AXES)
    with Session(eng) as s, s.begin():
        s.execute(update(record.Run).values(heartbeat_at=record.now() - timedelta(seconds=600)))
    with record.Heartbeat(eng, run_id, every=0.05):
        import time

        time.sleep(0.5)
    with Session(eng) as s:
        assert s.get(record.Run, run_id).heartbeat_at > record.now() - timedelta(seconds=5)


def test_config_hash_ignores_where_results_go():
    cfg = {"seed": 0, "db": {"url": "sqlite:///a.db"}, "trainer": {"max_steps": 5, "logging_steps": 1}}
    moved = {"seed": 0, "db": {"url": "sqlite:///b.db"}, "force": True,
             "trainer": {"max_steps": 5, "logging_steps": 10}}
    assert record.config_hash(cfg) == record.config_hash(moved)
    assert record.config_hash(cfg) != record.config_hash({**cfg, "seed": 1})
