"""Hyperparameter search with Optuna: the search space, where a study lives, what a trial scores, how a running
trial reports to its study (and is pruned), and the best setting a tuned grid applies (`+tuned=STUDY`).

The sweeper (hydra_plugins/ablate_optuna_sweeper, `hydra/sweeper=optuna`) asks Optuna for trials and launches each
as an ordinary cell whose config carries a `trial` block (study, number, storage, what to report, the pruner): the
cell records it as a run of kind 'trial' linked to its study and trial number, scores it on the validation split
(data.validation) and the sweeper tells Optuna what the run recorded. docs/search.md has the commands.

A study is stored in Optuna's own RDB storage beside the results (`storage_url`), never in ablate's tables: both
schemas are Alembic-managed and both keep their revision in a table named `alembic_version`.
"""

import contextlib
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from ablate import metrics, record
from ablate.data import VALIDATION

SCHEMA = "ablate_optuna"  # PostgreSQL: the schema of the studies, in the results database
HEARTBEAT_SECONDS = 60    # the sweeper marks its running trials alive this often (Optuna's trial heartbeat) ...
GRACE_SECONDS = 300       # ... and a later sweeper fails and retries a running trial silent for longer
# Config keys that change where results go or how progress shows, not what a trial computes (record.config_hash
# leaves out the same): they take no part in a study's default name.
NOT_RESULTS = ("db", "sweep", "cache_dir", "threads", "force", "hydra")


class SearchError(ValueError):
    """A search that cannot run as asked; the message is one line naming what to change."""


@contextlib.contextmanager
def quiet():
    """Without Optuna's notes on trial heartbeats (experimental; meant for Study.optimize, which a sweeper cannot
    use: its trials run in Hydra's jobs)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


# --- where a study lives -------------------------------------------------------------------------------------------

def storage_url(db_url: str) -> str:
    """The Optuna storage beside the results database `db_url`: a sibling SQLite file (db/ablate.sqlite ->
    db/ablate-optuna.sqlite), or on PostgreSQL the schema ablate_optuna of the same database."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = record.sqlite_path(db_url)
        if path is None:
            raise SearchError(f"db.url={db_url} is in memory: a study must outlive the process and be shared by its "
                              "trials; use a file (db.url=sqlite:///db/ablate.sqlite) or set hydra.sweeper.storage")
        return str(url.set(database=str(path.with_name(f"{path.stem}-optuna{path.suffix}"))))
    if url.get_backend_name() == "postgresql":
        return url.update_query_dict({"options": f"-csearch_path={SCHEMA}"}).render_as_string(hide_password=False)
    raise SearchError(f"db.url={url.render_as_string(hide_password=True)}: no default study storage for "
                      f"{url.get_backend_name()}; set hydra.sweeper.storage to an Optuna RDB URL")


def storage(url: str, create: bool = True):
    """An Optuna RDB storage at `url` (created if `create`, else None when there is none) with trial heartbeats."""
    import optuna

    parsed = make_url(url)
    if not create and parsed.get_backend_name() == "sqlite":
        path = record.sqlite_path(url)
        if path is None or not path.is_file():
            return None
    kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        if record.sqlite_path(url):
            record.sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30}}  # trials of parallel workers share the file
    elif parsed.get_backend_name() == "postgresql":
        schema = _search_path(parsed)
        if schema and not _ensure_schema(parsed, schema, create):
            return None
    with quiet():
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=not create,
                                          heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                          failed_trial_callback=retry)


def _search_path(url) -> str | None:
    options = url.query.get("options") or ""
    options = options if isinstance(options, str) else " ".join(options)
    for part in options.replace("-c ", "-c").split():
        if part.startswith("-csearch_path="):
            return part.split("=", 1)[1].split(",")[0]
    return None


def _ensure_schema(url, schema: str, create: bool) -> bool:
    """Whether `schema` exists in the database of `url` (created first when `create`)."""
    from sqlalchemy import create_engine, inspect, text

    eng = create_engine(url.difference_update_query(["options"]))
    try:
        with eng.begin() as conn:
            if create:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                return True
            return schema in inspect(conn).get_schema_names()
    finally:
        eng.dispose()


def label(url: str) -> str:
    """`url` without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


# --- the search space -------------------------------------------------------------------------------------------------

def distribution(override):
    """The Optuna distribution of one sweep override of Hydra's grammar: interval(...) (float; int(interval(...)) for
    whole numbers), tag(log, interval(...)), choice(...) or a comma list, range(...). Refuses an empty one."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise SearchError(f"{key}: an empty choice; give at least one value")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        n = math.ceil((stop - start) / step) if step else 0
        if n <= 0:
            raise SearchError(f"{key}=range({start}, {stop}, {step}): an empty range; write range(START, STOP[, STEP]) "
                              "with values between START and STOP (STOP excluded)")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, start + (n - 1) * step, step=step)
        return FloatDistribution(float(start), float(start + (n - 1) * step), step=float(step) if n > 1 else None)
    if override.is_interval_sweep():
        low, high, log = value.start, value.end, "log" in value.tags
        if not low < high:
            raise SearchError(f"{key}=interval({low}, {high}): an empty interval; write interval(LOW, HIGH) with "
                              "LOW < HIGH")
        if log and low <= 0:
            raise SearchError(f"{key}=tag(log, interval({low}, {high})): a log scale needs LOW > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise SearchError(f"{key}: not a search dimension; use interval(...), tag(log, interval(...)), choice(...), "
                      "range(...) or a comma list")


def parse(arguments: list[str], per: list[str]) -> tuple[dict, list[str], dict[str, list[str]]]:
    """(search space {name: distribution}, fixed overrides, {per key: its values}) from sweep overrides: a comma list
    on a key of `per` splits the search into one study per value; every other sweep is a search dimension."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except OverrideParseException as err:
        raise SearchError(f"search space: {str(err).strip().splitlines()[0]}") from None
    space, fixed, split = {}, [], {}
    for o in parsed:
        if o.is_sweep_override() and o.key_or_group in per:
            if not o.is_choice_sweep():
                raise SearchError(f"{o.input_line}: list the values of {o.key_or_group} with commas "
                                  f"({o.key_or_group}=a,b): it splits the search, one study per value")
            split[o.key_or_group] = [str(v) for v in o.sweep_string_iterator()]
        elif o.is_sweep_override():
            space[o.get_key_element()] = distribution(o)
        else:
            fixed.append(o.input_line)
    return space, fixed, split


def describe(space: dict) -> dict:
    """The search space as JSON-able data (stored with the study, compared on resume)."""
    from optuna.distributions import distribution_to_json

    return {name: json.loads(distribution_to_json(d)) for name, d in sorted(space.items())}


def default_name(space: dict, fixed: list[str], objectives: list[tuple[str, str]]) -> str:
    """A study name that names the search: the same space, context and metrics give the same name (a rerun
    resumes it)."""
    kept = sorted(f for f in fixed if f.lstrip("+~").split("=")[0].split(".")[0] not in NOT_RESULTS)
    blob = json.dumps({"space": describe(space), "fixed": kept, "objectives": objectives}, sort_keys=True)
    return "search-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


def objectives(metric, direction) -> list[tuple[str, str]]:
    """[(metric, maximize|minimize)] from the sweeper's `metric` and `direction` (each a name or a list)."""
    names = [metric] if isinstance(metric, str) else list(metric or [])
    directions = [direction] if isinstance(direction, str) else list(direction or [])
    known = metrics.by_name()
    if not names:
        raise SearchError(f"hydra.sweeper.metric: name what a trial optimises, one of {', '.join(known)}")
    if len(directions) != len(names):
        raise SearchError(f"hydra.sweeper.direction={directions}: give one direction per metric {names} "
                          "(maximize or minimize)")
    for name, d in zip(names, directions):
        if name not in known:
            raise SearchError(f"hydra.sweeper.metric={name}: not a recorded metric; choose from {', '.join(known)}")
        if d not in ("maximize", "minimize"):
            raise SearchError(f"hydra.sweeper.direction={d}: choose maximize or minimize")
        better = known[name].higher_is_better
        if better is not None and better != (d == "maximize"):
            raise SearchError(f"hydra.sweeper.direction={d} for {name}, which is better "
                              f"{'higher' if better else 'lower'}: write {'maximize' if better else 'minimize'}")
    return list(zip(names, directions))


def value_of(config: dict, key: str) -> str:
    """A config's value at `key` as a study records it: a group option by its name (objective -> sdpo)."""
    node = config
    for part in key.lstrip("+~").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node.get("name") if isinstance(node, dict) else node)


# --- the trial block a trial's config carries ------------------------------------------------------------------------

def override_value(value) -> str:
    """`value` in Hydra's override grammar (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_block(study: str, number: int, url: str, report: str | None, pruner: dict | None) -> list[str]:
    """The overrides that make a cell a trial of `study`: recorded in its config and its runs row."""
    block = {"study": study, "number": number, "storage": url, "report": report, "pruner": pruner}
    return [f"+trial.{k}={override_value(v)}" for k, v in block.items()]


# --- what a trial scored -----------------------------------------------------------------------------------------------

def outcome(eng, study: str, number: int, names: list[str]) -> tuple[str, list[float] | None, int | None, str]:
    """(status of the trial's latest run or 'missing', its validation values of `names`, run id, why) from the
    results database: the sweeper tells Optuna this, whatever the job returned (a skipped trial included)."""
    with Session(eng) as s:
        run = s.execute(select(record.Run.id, record.Run.status, record.Run.error)
                        .where(record.Run.study == study, record.Run.trial == number)
                        .order_by(record.Run.id.desc()).limit(1)).first()
        if run is None:
            return "missing", None, None, "the job recorded no run (its config was refused?)"
        if run.status != "completed":
            return run.status, None, run.id, (run.error or "").split("\n")[0]
        rows = dict(s.execute(select(record.Metric.name, record.Metric.value)
                              .join(record.Evaluation, record.Evaluation.id == record.Metric.evaluation_id)
                              .where(record.Evaluation.run_id == run.id, record.Evaluation.stage == "trained",
                                     record.Metric.eval_set == VALIDATION, record.Metric.name.in_(names))).all())
    values = [rows.get(n) for n in names]
    bad = [n for n, v in zip(names, values) if v is None or not math.isfinite(v)]
    if bad:
        return "failed", None, run.id, f"run {run.id} recorded no finite {bad[0]} on the {VALIDATION} set"
    return "completed", values, run.id, ""


def retry(study, trial) -> None:
    """Run a trial that did not finish (interrupted, or its sweeper died) again: same parameters, a new number."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def remaining(study, n_trials: int) -> int:
    """Trials still to ask for: n_trials minus the finished (complete, pruned) and running ones, every worker's.
    Failed trials do not count; retries wait in the queue and are asked for first."""
    from optuna.trial import TrialState

    counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return n_trials - len(counted)


def settle(study, eng, names: list[str], stale_after: float) -> list[str]:
    """Trials a stopped sweeper left running: tell Optuna what their run recorded (completed, pruned, failed), retry
    interrupted and stale ones, leave the live ones (another worker's). Returns a line per trial settled."""
    import optuna
    from optuna.trial import TrialState

    lines = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        status, values, run_id, why = outcome(eng, study.study_name, t.number, names)
        if status == "running" and record.previous(eng, _hash_of(eng, run_id), stale_after) is None:
            status = "interrupted"  # a killed job: record.previous marked its row
        if status == "completed":
            study.tell(t.number, values)
        elif status == "pruned":
            study.tell(t.number, state=TrialState.PRUNED)
        elif status == "failed":
            study.tell(t.number, state=TrialState.FAIL)
        elif status == "interrupted":
            study.tell(t.number, state=TrialState.FAIL)
            retry(study, t)
        else:
            continue
        lines.append(f"trial {t.number} of {study.study_name}: {status} (run {run_id}), told on resume")
    with quiet():
        optuna.storages.fail_stale_trials(study)  # its sweeper died (no heartbeat): failed, retried
    return lines


def _hash_of(eng, run_id: int) -> str:
    with Session(eng) as s:
        return s.scalar(select(record.Run.config_hash).where(record.Run.id == run_id))


# --- inside the trial: report each step, stop when the pruner says so ----------------------------------------------

class Pruned(Exception):
    """Optuna pruned the running trial: the cell records the run as 'pruned' (not failed, not completed)."""

    run_status = "pruned"


def trial_callbacks(cfg: dict, rows: list[dict]) -> list:
    """Trainer callbacks of a cell: for a search trial that reports a per-step value, a Reporter; else none."""
    spec = cfg.get("trial") or {}
    if not spec.get("report"):
        return []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # ranks would each report and could disagree on pruning
        print("ablate: a trial trained on several processes reports nothing to Optuna and is never pruned", flush=True)
        return []
    from transformers import TrainerCallback

    return [type("TrialReporter", (Reporter, TrainerCallback), {})(spec, cfg["db"]["url"], rows)]


class Reporter:
    """Reports the trial's per-step value (spec.report, a train_steps name such as rollout/reward, read from the
    StepRecorder's rows) to its Optuna study; raises Pruned when the study's pruner stops the trial. Mixed into a
    transformers TrainerCallback by trial_callbacks (transformers loads only where a cell trains)."""

    def __init__(self, spec: dict, db_url: str, rows: list[dict]):
        self.spec, self.db_url, self.rows, self.trial = spec, db_url, rows, None

    def _trial(self):
        import optuna
        from hydra.utils import instantiate

        if self.trial is None:
            url, name = self.spec["storage"], self.spec["study"]
            store = storage(url)
            pruner = instantiate(self.spec["pruner"]) if self.spec.get("pruner") else optuna.pruners.NopPruner()
            study = optuna.load_study(study_name=name, storage=store, pruner=pruner)
            trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(name),
                                                                     self.spec["number"])
            self.trial = optuna.trial.Trial(study, trial_id)
        return self.trial

    def on_log(self, args, state, control, logs=None, **kwargs):
        step, name = state.global_step, self.spec["report"]
        values = [r["value"] for r in self.rows if r["step"] == step and r["name"] == name and r["value"] is not None]
        if not values:
            return
        trial = self._trial()
        trial.report(values[-1], step)
        if trial.should_prune():
            save_steps(self.db_url, self.spec["study"], self.spec["number"], self.rows)
            raise Pruned(f"pruned by Optuna at step {step} ({name}={values[-1]:.4g})")


def save_steps(db_url: str, study: str, number: int, rows: list[dict]) -> None:
    """A pruned trial's training curves so far, on its running run."""
    eng = record.engine(db_url)
    with Session(eng) as s, s.begin():
        run_id = s.scalar(select(record.Run.id).where(record.Run.study == study, record.Run.trial == number,
                                                       record.Run.status == "running").order_by(record.Run.id.desc()))
        if run_id is not None:
            s.add_all(record.TrainStep(run_id=run_id, **row) for row in rows)


# --- use the result: a grid at each objective's best setting ---------------------------------------------------------

def studies(url: str) -> list[str]:
    """Names of the studies in the storage at `url` (none when it does not exist)."""
    import optuna

    store = storage(url, create=False)
    return optuna.get_all_study_names(store) if store is not None else []


def best(study):
    """The trial a tuned grid uses: the best one; of a multi-objective study's Pareto front, the best on its first
    metric (then the next)."""
    if len(study.directions) == 1:
        return study.best_trial
    signs = [1 if d.name == "MAXIMIZE" else -1 for d in study.directions]
    return max(study.best_trials, key=lambda t: [s * v for s, v in zip(signs, t.values)])


def apply_tuned(resolved: dict) -> None:
    """`+tuned=STUDY` (or `+tuned={study: STUDY, storage: URL}`): set the best parameters of the study this cell's
    objective was tuned in (STUDY/OBJECTIVE, matched by what the study recorded) into `resolved`, in place; the
    `tuned` block then records study, trial and parameters."""
    import optuna

    tuned = resolved["tuned"]
    if isinstance(tuned, dict) and "trial" in tuned:
        return  # already applied
    name = tuned if isinstance(tuned, str) else tuned.get("study")
    url = (tuned.get("storage") if isinstance(tuned, dict) else None) or storage_url(resolved["db"]["url"])
    store = storage(url, create=False)
    found = [n for n in (optuna.get_all_study_names(store) if store else []) if n == name or n.startswith(f"{name}/")]
    matches = []
    for n in found:
        study = optuna.load_study(study_name=n, storage=store)
        per = (study.user_attrs.get("ablate") or {}).get("per") or {}
        if all(value_of(resolved, k) == v for k, v in per.items()):
            matches.append(study)
    if not matches:
        objective = resolved["objective"]["name"]
        raise SearchError(f"tuned={name}: no study of it for objective={objective} in {label(url)} (studies: "
                          f"{', '.join(found) or 'none'}); tune it first (docs/search.md)")
    if len(matches) > 1:
        raise SearchError(f"tuned={name}: several studies fit this cell ({', '.join(m.study_name for m in matches)}); "
                          "name one")
    study = matches[0]
    try:
        trial = best(study)
    except ValueError:
        raise SearchError(f"tuned={name}: study {study.study_name} has no completed trial yet") from None
    for key, value in trial.params.items():
        _set(resolved, key.lstrip("+~"), value, study.study_name)
    resolved["tuned"] = {"study": study.study_name, "trial": trial.number, "params": dict(trial.params),
                         "values": list(trial.values), "storage": label(url)}


def _set(config: dict, key: str, value, study: str) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    if isinstance(node.get(last), dict):
        raise SearchError(f"tuned: {study} tuned the config group {key} ({key}={value}); a tuned grid sets values, "
                          f"not groups: give {key}={value} on the command line")
    node[last] = value


def sweep_dir_results(path: Path, lines: dict) -> None:
    """optimization_results.yaml in the sweep folder (as hydra-optuna-sweeper writes it): the best per study."""
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create({"name": "optuna", "studies": lines}), path / "optimization_results.yaml")
