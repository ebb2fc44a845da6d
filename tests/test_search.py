"""Hyperparameter search (hydra/sweeper=optuna, ablate/search.py): the search space grammar and its refusals, the
validation split, the study beside the results (SQLite and PostgreSQL), trials as recorded runs, resume, pruning,
the tuned grid and the report's search section."""

import sqlite3
import subprocess
import sys

import optuna
import pytest
from alembic import command
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from sqlalchemy import inspect, text

from ablate import cell, data, record, search
from ablate.report import search as report_search
from tests.conftest import FAST

AXES = {"richness": "low", "coverage": "seen_8x8", "model": "tiny", "objective": "sdpo"}


def _space(*overrides, per=("objective",)):
    return search.parse(list(overrides), list(per))


def test_search_space_grammar():
    space, fixed, split = _space("objective.trainer.learning_rate=tag(log, interval(1e-5, 1e-3))",
                                 "+objective.trainer.warmup_steps=int(interval(0, 10))", "seed=choice(0,1)",
                                 "trainer.max_steps=range(10, 40, 10)", "objective=grpo,sdpo", "model=tiny")
    assert space == {"objective.trainer.learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
                     "+objective.trainer.warmup_steps": IntDistribution(0, 10),
                     "seed": CategoricalDistribution([0, 1]),
                     "trainer.max_steps": IntDistribution(10, 30, step=10)}  # range excludes its stop, as Hydra's
    assert fixed == ["model=tiny"] and split == {"objective": ["grpo", "sdpo"]}
    assert _space("richness=low,high", per=())[0] == {"richness": CategoricalDistribution(["low", "high"])}


@pytest.mark.parametrize("override,message", [
    ("objective.trainer.learning_rate=interval(1e-3, 1e-5)", "an empty interval"),
    ("objective.trainer.learning_rate=interval(1e-3, 1e-3)", "an empty interval"),
    ("objective.trainer.learning_rate=tag(log, interval(0, 1e-3))", "a log scale needs LOW > 0"),
    ("trainer.max_steps=range(10, 10)", "an empty range"),
])
def test_empty_dimensions_are_refused(override, message):
    with pytest.raises(search.SearchError, match=message):
        _space(override)


def test_objectives_are_recorded_metrics_with_a_direction():
    assert search.objectives(["accuracy", "mean_length"], ["maximize", "minimize"]) == [
        ("accuracy", "maximize"), ("mean_length", "minimize")]
    for metric, direction, message in [("acuracy", "maximize", "not a recorded metric"),
                                       ("accuracy", "minimize", "better higher: write maximize"),
                                       (["accuracy", "mean_length"], "maximize", "one direction per metric")]:
        with pytest.raises(search.SearchError, match=message):
            search.objectives(metric, direction)


def test_study_storage_is_beside_the_results():
    assert search.storage_url("sqlite:///db/ablate.sqlite") == "sqlite:///db/ablate-optuna.sqlite"
    assert search.storage_url("postgresql+psycopg://u:pw@host/ablate") == (
        "postgresql+psycopg://u:pw@host/ablate?options=-csearch_path%3Dablate_optuna")
    with pytest.raises(search.SearchError, match="in memory"):
        search.storage_url("sqlite://")


def test_trial_block_survives_hydra_parsing():
    block = search.trial_block("rate/sdpo", 3, "postgresql+psycopg://u@h:5/db?options=-csearch_path%3Dx", "rollout/reward",
                               {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2})
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(block)}
    assert parsed == {"trial.study": "rate/sdpo", "trial.number": 3,
                      "trial.storage": "postgresql+psycopg://u@h:5/db?options=-csearch_path%3Dx",
                      "trial.report": "rollout/reward",
                      "trial.pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2}}


# --- the validation split -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [["model=tiny", "data=arithmetic", "eval=default", "data.source.n=300"], []])
def test_validation_split_is_disjoint_from_evaluation_and_training(fast_cfg, world):
    from omegaconf import OmegaConf

    def resolved(*o):
        return OmegaConf.to_container(fast_cfg(*world, *o), resolve=True)

    plain_pool, plain = cell.problems(resolved("coverage=seen_64"))
    pool, suites = cell.problems(resolved("coverage=seen_64", "++data.validation=16"))
    validation = suites[data.VALIDATION]
    assert len(validation) == 16 and pool == plain_pool and plain.keys() == suites.keys() - {data.VALIDATION}
    ids, prompts = {p.id for p in validation}, {p.prompt for p in validation}
    for name, problems in plain.items():  # in-domain held-out and out-of-domain: no validation problem among them
        assert not ids & {p.id for p in problems} and not prompts & {p.prompt for p in problems}, name
    for coverage in ("seen_1x64", "seen_8x8", "seen_64"):  # nor in any coverage subset, which is the grid's
        cov = resolved(f"coverage={coverage}")["coverage"]
        chosen = data.select_coverage(pool, cov["unique"], cov["copies"], cov["seed"])
        assert not ids & {p.id for p in chosen}, coverage
    with pytest.raises(ValueError, match="the training problems would include validation ones"):
        cell.problems(resolved("coverage=full", "++data.validation=16"))


# --- the schema and the study's storage -------------------------------------------------------------------------------

def test_migration_0005_adds_trial_columns_in_place(db_url):
    eng = record.engine(db_url)
    with eng.begin() as conn:
        command.upgrade(record._alembic(conn), "0004")
    with eng.begin() as conn:  # a row as 0004 knew it
        conn.execute(text("INSERT INTO runs (sweep, kind, config_hash, config, richness, coverage, model, objective, "
                          "seed, status, versions, started_at) VALUES ('s', 'cell', 'h', '{}', 'low', 'seen_64', "
                          "'tiny', 'sdpo', 0, 'completed', '{}', '2026-01-01 00:00:00')"))
    assert record.upgrade(db_url) == record.HEAD == "0005"
    with eng.connect() as conn:
        assert conn.execute(text("SELECT config_hash, study, trial FROM runs")).all() == [("h", None, None)]
        assert "ix_runs_study" in {i["name"] for i in inspect(conn).get_indexes("runs")}
    config = {"seed": 0, "trial": {"study": "rate/sdpo", "number": 4}}
    run_id = record.start_run(eng, sweep="s", config=config, seed=0, axes=AXES, kind="trial")
    with eng.connect() as conn:
        assert conn.execute(text(f"SELECT kind, study, trial FROM runs WHERE id = {run_id}")).one() == (
            "trial", "rate/sdpo", 4)
    with eng.begin() as conn:  # and back: the columns go, the rows stay
        command.downgrade(record._alembic(conn), "0004")
    assert record.revision(eng) == "0004" and record.upgrade(db_url) == "0005"
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*), count(study) FROM runs")).one() == (2, 0)


def _record_trial(eng, study: str, number: int, status: str, values: dict | None = None, objective="sdpo") -> int:
    config = {"seed": 0, "objective": {"name": objective}, "trial": {"study": study, "number": number}}
    run_id = record.start_run(eng, sweep="s", config=config, seed=0, axes={**AXES, "objective": objective}, kind="trial")
    if status == "completed":
        metrics = [{"eval_set": data.VALIDATION, "name": k, "value": v} for k, v in values.items()]
        record.finish_run(eng, run_id, base_evaluation_id=None, train_steps=[],
                          trained={"settings": {}, "seconds": 1.0, "samples": [], "metrics": metrics})
    elif status != "running":
        record.end_run(eng, run_id, status)
    return run_id


def _study(url: str, name: str, objectives=(("accuracy", "maximize"),), per=None):
    study = optuna.create_study(study_name=name, storage=search.storage(url), directions=[d for _, d in objectives])
    study.set_user_attr("ablate", {"space": {}, "objectives": [list(o) for o in objectives],
                                   "per": per or {"objective": name.rsplit("/", 1)[-1]}, "fixed": []})
    return study


def test_study_shares_the_database_server_not_its_version_table(db_url):
    """SQLite: a sibling file; PostgreSQL: schema ablate_optuna of the same database. Each schema keeps its own
    alembic_version: ablate's revision is still its own after Optuna made its tables, and the other way round."""
    record.upgrade(db_url)
    eng = record.engine(db_url)
    url = search.storage_url(db_url)
    study = _study(url, "rate/sdpo")
    assert record.revision(eng) == record.HEAD  # Optuna did not stamp ablate's version table
    with eng.connect() as conn:
        assert "studies" not in inspect(conn).get_table_names()
    if db_url.startswith("sqlite"):  # why beside and not inside: Optuna takes ablate's alembic_version for its own
        with pytest.raises(RuntimeError, match="no longer compatible with the table schema"):
            optuna.storages.RDBStorage(db_url)
    run_id = _record_trial(eng, "rate/sdpo", 0, "completed", {"accuracy": 0.5})
    study.ask({"x": FloatDistribution(0, 1)})
    assert search.outcome(eng, "rate/sdpo", 0, ["accuracy"]) == ("completed", [0.5], run_id, "")
    study.tell(0, [0.5])
    assert search.studies(url) == ["rate/sdpo"]
    assert optuna.load_study(study_name="rate/sdpo", storage=search.storage(url, create=False)).best_value == 0.5


def test_resume_tells_what_the_runs_recorded_and_retries_interrupted_trials(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    record.upgrade(db)
    eng = record.engine(db)
    study = _study(search.storage_url(db), "rate/sdpo")
    space = {"objective.trainer.learning_rate": FloatDistribution(1e-5, 1e-3, log=True)}
    trials = [study.ask(space) for _ in range(4)]  # a sweeper asked for four, then died
    _record_trial(eng, "rate/sdpo", 0, "completed", {"accuracy": 0.75})  # finished: its value was never told
    _record_trial(eng, "rate/sdpo", 1, "pruned")
    _record_trial(eng, "rate/sdpo", 2, "interrupted")
    _record_trial(eng, "rate/sdpo", 3, "running")  # another worker's, alive
    assert search.remaining(study, 6) == 2
    lines = search.settle(study, eng, ["accuracy"], stale_after=180)
    assert len(lines) == 3
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert study.best_value == 0.75
    assert study.get_trials()[4].params == {} and study.get_trials()[4].user_attrs == {"retry_of": 2}
    assert search.remaining(study, 6) == 3  # the failed one does not count; the retry is asked for next
    again = study.ask(space)
    assert again.number == 4 and again.params == trials[2].params


def test_a_resumed_search_does_not_repeat_its_seeded_proposals(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.ablate_optuna_sweeper.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(sampler=OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 0}),
                            direction="maximize", storage=None, study_name=None, n_trials=2, n_jobs=1,
                            max_failure_rate=0.0, params=None, metric="accuracy", per=[], validation=4, report=None)
    space = {"lr": FloatDistribution(1e-5, 1e-3, log=True)}
    first = [optuna.create_study(sampler=sweeper._sampler(space, 0)[0]).ask(space).params for _ in range(2)]
    assert first[0] == first[1]  # the same seed, the same start: what a rerun of a finished search would repeat
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=sweeper._sampler(space, 0)[0])
    study.tell(study.ask(space), 0.5)
    resumed = optuna.load_study(study_name=study.study_name, storage=storage,
                                sampler=sweeper._sampler(space, len(study.trials))[0])
    assert resumed.ask(space).params != first[0]


def test_tuned_cell_takes_its_objectives_best_setting(fast_cfg, tmp_path):
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    record.upgrade(db)
    url = search.storage_url(db)
    lr = "objective.trainer.learning_rate"
    for objective, rates in (("sdpo", [1e-4, 3e-4]), ("grpo", [2e-5])):
        study = _study(url, f"rate/{objective}")
        for i, rate in enumerate(rates):
            study.add_trial(create_trial(params={lr: rate}, distributions={lr: FloatDistribution(1e-5, 1e-3)},
                                         values=[0.1 * (i + 1)]))
    resolved = {"db": {"url": db}, "objective": {"name": "sdpo", "trainer": {"learning_rate": 1e-5}}, "tuned": "rate"}
    search.apply_tuned(resolved)
    assert resolved["objective"]["trainer"]["learning_rate"] == 3e-4
    assert resolved["tuned"]["study"] == "rate/sdpo" and resolved["tuned"]["trial"] == 1
    with pytest.raises(search.SearchError, match="no study of it for objective=rlrt"):
        search.apply_tuned({"db": {"url": db}, "objective": {"name": "rlrt", "trainer": {}}, "tuned": "rate"})
    # one cell, as a tuned grid runs it: recorded as a cell with the tuned rate and where it came from
    assert cell.run(fast_cfg("objective=grpo", "+tuned=rate")) == "completed"
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        kind, config = con.execute("select kind, config from runs").fetchone()
    assert kind == "cell" and '"learning_rate": 2e-05' in config and '"study": "rate/grpo"' in config


# --- the sweeper end to end -------------------------------------------------------------------------------------

def _sweep(tmp_path, *overrides, folder="m"):
    args = [sys.executable, "-m", "ablate", "-m", "hydra/sweeper=optuna", *FAST, "coverage=seen_8x8",
            "hydra.sweeper.validation=4", f"cache_dir={tmp_path / 'cache'}",
            f"db.url=sqlite:///{tmp_path / 'results.sqlite'}", f"hydra.sweep.dir={tmp_path / folder}", *overrides]
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path)


def _lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("ablate:")]


def test_sweeper_end_to_end_prunes_records_and_resumes(tmp_path):
    """A 3-point grid: 2 trials, then a rerun with n_trials=3 resumes the study and runs only the third. The trial
    at 1e-3 is pruned: it reports its learning rate (TRL logs it each step), above the threshold pruner's bound."""
    space = ["hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=5e-4",
             "hydra.sweeper.report=learning_rate", "hydra.sweeper.study_name=lr",
             "objective.trainer.learning_rate=choice(1e-5,1e-4,1e-3)"]
    first = _sweep(tmp_path, *space, "hydra.sweeper.n_trials=2", folder="m1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert any("0 of 2 trials done or running, 2 to run" in line for line in _lines(first)), _lines(first)
    again = _sweep(tmp_path, *space, "hydra.sweeper.n_trials=3", folder="m2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert any("2 of 3 trials done or running, 1 to run" in line for line in _lines(again)), _lines(again)
    storage = f"sqlite:///{tmp_path / 'results-optuna.sqlite'}"
    trials = optuna.load_study(study_name="lr/sdpo", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    states = {t.params["objective.trainer.learning_rate"]: t.state.name for t in trials}
    assert states == {1e-5: "COMPLETE", 1e-4: "COMPLETE", 1e-3: "PRUNED"}  # the grid, each point once
    with sqlite3.connect(tmp_path / "results.sqlite") as con:  # every trial is a recorded run, linked to its study
        runs = con.execute("select trial, kind, status, study from runs order by trial").fetchall()
        status = {t.number: "pruned" if t.state.name == "PRUNED" else "completed" for t in trials}
        assert runs == [(n, "trial", status[n], "lr/sdpo") for n in range(3)]
        assert con.execute("select count(*) from metrics where eval_set = 'validation'").fetchone()[0] > 0
        assert con.execute("select count(*) from train_steps t join runs r on r.id = t.run_id "
                           "where r.status = 'pruned'").fetchone()[0] > 0  # its curves up to the pruning step
    assert (tmp_path / "m2" / "optimization_results.yaml").is_file()


@pytest.mark.parametrize("override,message", [
    ("objective.trainer.learnin_rate=interval(1e-5,1e-3)",
     "objective.trainer.learnin_rate: no such key in the config (did you mean objective.trainer.learning_rate?)"),
    ("objective.trainer.learning_rate=interval(1e-3,1e-5)", "an empty interval"),
])
def test_a_bad_search_space_is_refused_before_any_trial(tmp_path, override, message):
    proc = _sweep(tmp_path, override, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ablate: search") and message in lines[0], proc.stderr[-2000:]
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 0
    assert not (tmp_path / "results-optuna.sqlite").exists()


def test_multi_objective_search_and_its_pareto_front_in_the_report(tmp_path):
    proc = _sweep(tmp_path, "search=pareto", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
                  "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=front")
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    study = optuna.load_study(study_name="front/sdpo", storage=search.storage_url(db))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [len(t.values) for t in study.get_trials()] == [2, 2]
    # the report's section on a larger front: add trials whose front is known
    lr = "objective.trainer.learning_rate"
    points = {1e-5: [0.5, 40.0], 2e-5: [0.6, 50.0], 3e-5: [0.4, 60.0], 4e-5: [0.7, 55.0]}  # 3e-5 is dominated
    for rate, values in points.items():
        study.add_trial(create_trial(params={lr: rate}, distributions={lr: FloatDistribution(1e-5, 1e-3, log=True)},
                                     values=values))
    s = report_search.section(record.engine(db), db, tmp_path / "report", "r")
    tables, figures = s["tables"], s["figures"]
    pareto = tables["pareto"][tables["pareto"].study == "front/sdpo"]
    front = set(pareto[pareto.front].number)
    assert front == {t.number for t in study.best_trials} and 4 not in front  # trial 4: the dominated 3e-5
    assert {"search_history", "search_pareto"} <= {f["name"] for f in figures}
    assert all((tmp_path / "report" / f["png"]).is_file() for f in figures)
    trials = tables["trials"]
    assert set(trials[trials.run_id.notna()].number) == {0, 1}  # the sweeper's trials are recorded runs
    best = tables["best"].set_index("study").loc["front/sdpo"]
    assert best.trial == search.best(study).number and best.per == "objective=sdpo"
    assert s["best"]["rows"][0][:3] == ["front/sdpo", "objective=sdpo", str(best.trial)]
    from ablate.report import main as report_main  # the HTML report carries the section

    assert report_main(["--db", db, "--out", str(tmp_path / "html")]) == 0
    page = next((tmp_path / "html").glob("*.html")).read_text()
    assert 'id="search"' in page and "Search: Pareto front" in page and "front/sdpo" in page
