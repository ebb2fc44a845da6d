"""The results database: parallel writers on one SQLite file lose nothing; config hashes ignore plumbing."""

import multiprocessing as mp

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ablate import record

WRITERS, SAMPLES = 8, 200


def _writer(url: str, i: int) -> None:
    eng = record.engine(url)
    run_id = record.start_run(eng, sweep="parallel", config={"seed": i}, seed=i,
                              axes={"richness": "high", "coverage": "seen_64", "model": "tiny", "objective": "sdpo"})
    samples = [{"eval_set": "in_domain", "problem_id": f"p{j}", "sample_idx": 0, "completion": "x", "answer": "1",
                "correct": j % 2 == 0, "exact_match": False, "length": j, "markers": 0, "marker_counts": {}}
               for j in range(SAMPLES)]
    metrics = [{"eval_set": "in_domain", "name": "accuracy", "value": 0.5}]
    base = record.save_evaluation(eng, stage="base", key="shared", samples=samples, metrics=metrics, settings={},
                                  seconds=0.0)
    record.finish_run(eng, run_id, base_evaluation_id=base, train_steps=[{"step": 1, "name": "loss", "value": 1.0}],
                      trained={"samples": samples, "metrics": metrics, "settings": {}, "seconds": 0.0})


def test_parallel_writers_lose_no_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'parallel.sqlite'}"
    record.create_schema(record.engine(url))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, i)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS  # no "database is locked"
    with Session(record.engine(url)) as s:
        assert s.scalar(select(func.count()).select_from(record.Run).where(record.Run.status == "completed")) == WRITERS
        # one shared base evaluation (first writer wins) + one trained evaluation per writer
        assert s.scalar(select(func.count()).select_from(record.Evaluation)) == WRITERS + 1
        assert s.scalar(select(func.count()).select_from(record.Sample)) == (WRITERS + 1) * SAMPLES
        assert s.scalar(select(func.count(func.distinct(record.Run.base_evaluation_id)))) == 1


def test_config_hash_ignores_where_results_go():
    cfg = {"seed": 0, "db": {"url": "sqlite:///a.db"}, "trainer": {"max_steps": 5, "logging_steps": 1}}
    moved = {"seed": 0, "db": {"url": "sqlite:///b.db"}, "trainer": {"max_steps": 5, "logging_steps": 10}}
    assert record.config_hash(cfg) == record.config_hash(moved)
    assert record.config_hash(cfg) != record.config_hash({**cfg, "seed": 1})
