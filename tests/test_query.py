"""The query command on SQLite and PostgreSQL: listing, pivots, read-only SQL, export, and bad input."""

import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from ablate import query, record


def _fill(url):
    record.upgrade(url)
    eng = record.engine(url)
    base = record.save_evaluation(eng, stage="base", key="k", samples=[], settings={}, seconds=0.0,
                                  metrics=[{"eval_set": "in_domain", "name": "accuracy", "value": 0.5}])
    values = {("low", "seen_8x8"): 0.6, ("high", "seen_8x8"): 0.7, ("high", "seen_64"): 0.9}
    for i, ((richness, coverage), acc) in enumerate(values.items()):
        run = record.start_run(eng, sweep="sw", config={"i": i}, seed=i,
                               axes={"richness": richness, "coverage": coverage, "model": "tiny", "objective": "sdpo"})
        sample = {"eval_set": "in_domain", "problem_id": "p", "sample_idx": 0, "completion": "<script>x</script>",
                  "answer": "1", "correct": True, "exact_match": True, "length": 3, "markers": 1,
                  "marker_counts": {"wait": 1}}
        record.finish_run(eng, run, base_evaluation_id=base, train_steps=[{"step": 1, "name": "loss", "value": 0.1}],
                          trained={"samples": [sample], "settings": {}, "seconds": 0.0,
                                   "metrics": [{"eval_set": "in_domain", "name": "accuracy", "value": acc}]})
    failed = record.start_run(eng, sweep="sw", config={"i": 9}, seed=9,
                              axes={"richness": "none", "coverage": "seen_8x8", "model": "tiny", "objective": "sdpo"})
    record.end_run(eng, failed, "failed", "boom")
    return eng


def test_runs_filters_and_pivot(db_url):
    _fill(db_url)
    eng = query.reader(db_url)
    assert len(query.runs(eng, {})) == 4
    assert list(query.runs(eng, query.parse_filters(["richness=high", "status=completed"])).coverage) == \
        ["seen_8x8", "seen_64"]
    assert len(query.runs(eng, query.parse_filters(["richness=low,high"]))) == 3
    table = query.pivot(eng, "accuracy", "richness", "coverage", "in_domain", "trained", {})
    assert table.loc["high", "seen_64"] == pytest.approx(0.9) and pd.isna(table.loc["low", "seen_64"])
    delta = query.pivot(eng, "accuracy", "richness", "coverage", "in_domain", "delta", {})
    assert delta.loc["low", "seen_8x8"] == pytest.approx(0.1)
    sweeps = query.sweeps(eng)
    assert sweeps.loc[0, "completed"] == 3 and sweeps.loc[0, "failed"] == 1
    # an empty selection's reason, on this backend too (start times compared in pandas)
    assert query.no_match(eng, "db", {"model": ["tiny"], "richness": ["high"]}, since=datetime(2000, 1, 1)) is None
    assert query.no_match(eng, "db", {"model": ["x"]}) == "no runs with model 'x'; models: tiny"
    assert query.no_match(eng, "db", {"seed": ["9"]}, until=datetime(2000, 1, 1)).startswith(
        "no runs started before 2000-01-01 00:00; runs started 20")


def test_cli_filters_before_or_after_options(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _fill(url)
    assert query.main(["--db", url, "pivot", "accuracy", "--cols", "coverage", "richness=high"]) == 0
    out = capsys.readouterr().out
    assert "0.9" in out and "low" not in out
    assert query.main(["--db", url, "runs", "coverage=seen_64"]) == 0
    assert capsys.readouterr().out.count("seen_64") == 1


def test_sql_is_read_only(db_url):
    _fill(db_url)
    eng = query.reader(db_url)
    assert query.sql(eng, "SELECT count(*) AS n FROM run_samples WHERE stage = 'trained'").n[0] == 3
    for statement in ("DELETE FROM runs", "DROP TABLE runs", "UPDATE runs SET status = 'x'"):
        with pytest.raises(query.QueryError, match="read-only"):
            query.sql(eng, statement)
    with record.engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 4


def test_export_csv_and_parquet(db_url, tmp_path):
    _fill(db_url)
    eng = query.reader(db_url)
    for fmt in ("csv", "parquet"):
        paths = query.export(eng, tmp_path / fmt, fmt, {"richness": "high"})
        frames = {p.stem: (pd.read_csv(p) if fmt == "csv" else pd.read_parquet(p)) for p in paths}
        assert set(frames) == {"runs", "metrics", "samples", "train_steps"}
        assert len(frames["runs"]) == 2 and set(frames["metrics"].stage) == {"base", "trained"}
        assert frames["samples"].completion.tolist() == ["<script>x</script>"] * 2


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00junk" * 1000)
    cases = [([f"--db=sqlite:///{garbage}", "runs"], "not a usable database"),
             ([f"--db=sqlite:///{tmp_path / 'missing.sqlite'}", "runs"], "no such database file"),
             ([f"--db=sqlite:///{tmp_path / 'db.sqlite'}", "runs", "temperature=1"], "unknown filter 'temperature=1'"),
             ([f"--db=sqlite:///{tmp_path / 'db.sqlite'}", "sql", "DELETE FROM runs"], "read-only"),
             ([f"--db=sqlite:///{tmp_path / 'db.sqlite'}", "pivot", "nonsense"], "no values for metric='nonsense'")]
    _fill(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for argv, message in cases:
        assert query.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "missing.sqlite").exists()  # a query never creates a database
    assert garbage.read_bytes() == b"\x00junk" * 1000
    with record.engine(f"sqlite:///{tmp_path / 'db.sqlite'}").connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 4


def test_a_selection_that_matches_nothing_says_what_exists(tmp_path, capsys):
    """runs, pivot and export with filters that match no run: exit 2, one line naming the filter asked for and
    what the database holds, no file written, the database unchanged."""
    empty, path = tmp_path / "empty.sqlite", tmp_path / "db.sqlite"
    record.upgrade(f"sqlite:///{empty}")
    _fill(f"sqlite:///{path}").dispose()
    url, out = f"sqlite:///{path}", tmp_path / "out"
    before = path.read_bytes()
    cases = [(["runs", "model=nosuch"], "no runs with model 'nosuch'; models: tiny"),
             (["runs", "sweep=nope,other", "richness=high"], "no runs with sweep 'nope' or 'other'; sweeps: sw"),
             (["runs", "seed=5", "objective=grpo"],
              "no runs with seed '5' (seeds: 0, 1, 2, 9) nor with objective 'grpo' (objectives: sdpo)"),
             (["runs", "richness=none", "status=completed"],
              "no runs with status 'completed' among those with richness 'none'; their statuses: failed"),
             (["pivot", "accuracy", "model=nosuch"], "no runs with model 'nosuch'; models: tiny"),
             (["pivot", "accuracy", "richness=none"],  # pivot averages completed runs
              "no runs with status 'completed' among those with richness 'none'; their statuses: failed"),
             (["export", str(out), "sweep=nope"], "no runs with sweep 'nope'; sweeps: sw"),
             (["runs", "kind=probe"], "no runs with kind 'probe'; kinds: cell")]
    for argv, message in cases:
        assert query.main(["--db", url, *argv]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0] == f"ablate query: {message}" and not captured.out, (argv, captured)
    assert not out.exists()
    for argv in (["runs"], ["pivot", "accuracy"], ["export", str(out)]):
        assert query.main(["--db", f"sqlite:///{empty}", *argv]) == 2
        assert capsys.readouterr().err == f"ablate query: no runs in sqlite:///{empty}; run a sweep first\n"
    assert not out.exists()
    assert path.read_bytes() == before
    assert query._label("postgresql+psycopg://user:hunter2@host/db") == "postgresql+psycopg://user:***@host/db"


def test_newer_schema_refused(db_url):
    _fill(db_url)
    with record.engine(db_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(query.QueryError, match="newer than this ablate"):
        query.reader(db_url)


def test_db_option_before_or_after_the_subcommand(db_url, capsys):
    _fill(db_url)
    for argv in (["sql", "SELECT count(*) AS n_runs FROM runs", "--db", db_url],
                 ["--db", "sqlite:///no/such.sqlite", "sql", "SELECT count(*) AS n_runs FROM runs", "--db", db_url],
                 ["runs", "--db", db_url, "richness=high"], ["pivot", "accuracy", "--db", db_url, "model=tiny"]):
        assert query.main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert ("n_runs" in out and "4" in out) if "sql" in argv else "seen_64" in out


def test_sql_never_creates_a_file(db_url, tmp_path):
    """SQLite: ATTACH and VACUUM INTO would create the file they name; PostgreSQL: COPY TO and DO blocks can write
    server files inside a READ ONLY transaction. Refused, and no file appears."""
    _fill(db_url)
    eng = query.reader(db_url)
    target = Path(tempfile.mkdtemp(prefix="ablate-query-"))  # writable by a local PostgreSQL server too
    target.chmod(0o777)
    statements = [f"ATTACH DATABASE '{target / 'a.db'}' AS a", f"VACUUM INTO '{target / 'v.db'}'"] \
        if db_url.startswith("sqlite") else \
        [f"COPY (SELECT 1) TO '{target / 'c.csv'}'", f"SELECT 1; COPY (SELECT 1) TO '{target / 'd.csv'}'",
         f"DO $$ BEGIN EXECUTE 'COPY (SELECT 1) TO ''{target / 'e.csv'}'''; END $$"]
    try:
        for statement in statements:
            with pytest.raises(query.QueryError, match="read-only"):
                query.sql(eng, statement)
        assert list(target.iterdir()) == []
        assert query.sql(eng, "  SELECT count(*) AS n FROM runs;").n[0] == 4
    finally:
        shutil.rmtree(target, ignore_errors=True)
