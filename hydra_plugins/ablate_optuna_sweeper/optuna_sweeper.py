"""A Hydra sweeper on current Optuna: `python -m ablate -m hydra/sweeper=optuna ...` (conf/hydra/sweeper/optuna.yaml).

It keeps hydra-optuna-sweeper's config surface (sampler, direction, study_name, storage, n_trials, n_jobs,
max_failure_rate, params and the interval / tag(log, ...) / choice / range grammar) without its optuna<3 pin, and
adds what ablate needs: the recorded metrics a trial is scored on (`metric`, on the validation split), one study per
objective (`per`), a study stored beside the results that a rerun resumes, and pruning from a per-step value
(`report`, `pruner`). Each trial is an ordinary cell (ablate/cell.py) whose config carries a `trial` block; what a
trial scored is read from the results database, not from the job's return value. The science glue is in
ablate/search.py; this module only drives Hydra's launcher, and imports nothing heavy (Hydra scans it at startup).
"""

import functools
import itertools
import logging
import math
import sys
import threading
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _fail(message: str):
    """One line on stderr and exit 2: a search that cannot run stops before any trial runs."""
    print(f"ablate: {message}", file=sys.stderr)
    raise SystemExit(2)


class OptunaSweeper(Sweeper):
    def __init__(self, sampler, direction, storage, study_name, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params, metric, per, validation: int, report, pruner=None) -> None:
        self.sampler_cfg, self.direction, self.metric = sampler, direction, metric
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = OmegaConf.to_container(params) if params else {}
        self.per = list(per or [])
        self.validation, self.report = validation, report
        self.pruner = OmegaConf.to_container(pruner) if pruner else None
        self.config = self.hydra_context = self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    # -- before any trial: the search space, the studies, every check --------------------------------------------------

    def _compose(self, overrides: list[str]) -> dict:
        from hydra.errors import ConfigCompositionException

        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except ConfigCompositionException as err:
            _fail("search: " + _composition_line(err, self.config))
        with open_dict(cfg):
            del cfg["hydra"]  # a job's hydra node resolves only inside the job
        return OmegaConf.to_container(cfg, resolve=True)

    def _plan(self, arguments: list[str]) -> list[dict]:
        """One entry per study: its name, overrides, search space and the resolved config of a sample trial."""
        from ablate import search

        try:
            objectives = search.objectives(self.metric, self.direction)
            space, fixed, split = search.parse([*(f"{k}={v}" for k, v in self.params.items()), *arguments], self.per)
        except search.SearchError as err:
            _fail(f"search: {err}")
        if not space:
            _fail("search: no search space; give one, e.g. 'objective.trainer.learning_rate=tag(log, interval(1e-5, "
                  "1e-3))', or hydra.sweeper.params, or search=rate (conf/search/)")
        if not any(f.lstrip("+").startswith("data.validation=") for f in fixed):  # no data config declares it
            fixed.append(f"++data.validation={self.validation}")
        name = self.study_name or search.default_name(space, fixed, objectives)
        plans = []
        for values in itertools.product(*split.values()):
            per = [f"{k}={v}" for k, v in zip(split, values)]
            sample = self._compose([*fixed, *per, *(f"{k}={_value(_sample(d))}" for k, d in space.items())])
            recorded = {k: search.value_of(sample, k) for k in self.per}
            suffix = "/".join(recorded.values())
            plans.append({"study": f"{name}/{suffix}" if suffix else name, "overrides": [*fixed, *per],
                          "space": space, "per": recorded, "fixed": fixed, "sample": sample, "objectives": objectives})
        for plan in plans:
            self._check(plan)
        return plans

    def _check(self, plan: dict) -> None:
        from ablate import cell, search, validate

        sample = plan["sample"]
        if not sample["data"].get("validation"):
            _fail("search: data.validation=0: trials are scored on a validation split of the training pool; set "
                  "hydra.sweeper.validation=32 (or ++data.validation=32)")
        try:
            validate.check(sample)
            cell.problems(sample)  # the data, the held-out and validation splits, the coverage subset: all fit
            url = self.storage or search.storage_url(sample["db"]["url"])
        except (validate.ConfigError, search.SearchError, ValueError, FileNotFoundError) as err:
            _fail(f"search {plan['study']}: {str(err).strip().splitlines()[0]}")
        plan["storage"] = url
        if self.pruner and len(plan["objectives"]) > 1:
            print(f"ablate: {plan['study']}: Optuna prunes single-objective studies only; its trials run to the end")

    # -- the search -------------------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        from ablate import record

        plans = self._plan(arguments)
        best = {}
        for plan in plans:
            eng = record.engine(plan["sample"]["db"]["url"])
            best[plan["study"]] = self._run(plan, eng)
        from ablate import search

        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        search.sweep_dir_results(Path(self.config.hydra.sweep.dir), best)

    def _study(self, plan: dict):
        import optuna

        from ablate import search

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = search.storage(plan["storage"])
        study = optuna.create_study(study_name=plan["study"], storage=store, load_if_exists=True,
                                    directions=[d for _, d in plan["objectives"]])
        # A fixed sampler seed counts on from the study's trials: a resumed search does not propose again what its
        # first run already tried (a sampler's random start would repeat itself), and a fresh one repeats exactly.
        sampler, plan["points"] = self._sampler(plan["space"], len(study.get_trials(deepcopy=False)))
        study = optuna.load_study(study_name=plan["study"], storage=store, sampler=sampler)
        spec = {"space": search.describe(plan["space"]), "objectives": [list(o) for o in plan["objectives"]],
                "per": plan["per"], "fixed": plan["fixed"]}
        known = study.user_attrs.get("ablate")
        if known is None:
            study.set_user_attr("ablate", spec)
        elif (known["space"], known["objectives"]) != (spec["space"], spec["objectives"]):
            _fail(f"search: study {plan['study']} in {search.label(plan['storage'])} was made for another search "
                  f"(space {known['space']}, objectives {known['objectives']}); name a new one: "
                  "hydra.sweeper.study_name=NAME")
        return study, store

    def _sampler(self, space: dict, offset: int):
        from hydra.utils import instantiate
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        seed = self.sampler_cfg.get("seed")
        sampler = instantiate(self.sampler_cfg, **({"seed": seed + offset} if seed is not None else {}))
        if not isinstance(sampler, functools.partial):
            return sampler, math.inf
        grid = {}  # GridSampler: a partial, completed with the grid of the (discrete) space
        for name, d in space.items():
            if isinstance(d, CategoricalDistribution):
                grid[name] = list(d.choices)
            elif isinstance(d, (IntDistribution, FloatDistribution)) and d.step:
                n = round((d.high - d.low) / d.step) + 1
                grid[name] = [d.low + i * d.step for i in range(n)]
            else:
                _fail(f"search: hydra/sweeper/sampler=grid needs discrete dimensions; {name} is continuous: use "
                      "choice(...) or range(...)")
        return sampler(grid), math.prod(len(v) for v in grid.values())  # each point once

    def _run(self, plan: dict, eng) -> dict:
        from optuna.trial import TrialState

        from ablate import search

        study, store = self._study(plan)
        names = [m for m, _ in plan["objectives"]]
        for line in search.settle(study, eng, names, plan["sample"]["db"]["stale_after_seconds"]):
            print(f"ablate: {line}")
        n_trials = min(self.n_trials, plan["points"])
        todo = search.remaining(study, n_trials)
        print(f"ablate: study {plan['study']} ({search.label(plan['storage'])}): "
              f"{n_trials - todo} of {n_trials} trials done or running, {max(todo, 0)} to run")
        report = self.report if len(plan["objectives"]) == 1 else None
        failed = 0
        while todo > 0:
            with search.quiet():  # Optuna warns that heartbeats are meant for Study.optimize: we beat ourselves
                trials = [study.ask(plan["space"]) for _ in range(min(self.n_jobs, todo))]
            ids = [store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(plan["study"]), t.number)
                   for t in trials]
            batch = [[*plan["overrides"], *(f"{k}={_value(v)}" for k, v in t.params.items()),
                      *search.trial_block(plan["study"], t.number, plan["storage"], report, self.pruner)]
                     for t in trials]
            beat = _Heartbeat(store, ids)
            try:
                with beat:
                    returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            except BaseException:  # Ctrl-C, SIGTERM: these trials run again when the search is rerun
                for t in trials:
                    if study.get_trials(deepcopy=False)[t.number].state == TrialState.RUNNING:
                        study.tell(t, state=TrialState.FAIL)
                        search.retry(study, t)
                raise
            self.job_idx += len(returns)
            failures = 0
            for t in trials:
                status, values, run_id, why = search.outcome(eng, plan["study"], t.number, names)
                shown = _shown(t.params)
                if status == "completed":
                    _tell(study, t, values=values)
                    result = ", ".join(f"{m} {v:.4g}" for m, v in zip(names, values))
                elif status == "pruned":
                    _tell(study, t, state=TrialState.PRUNED)
                    result = "pruned"
                else:
                    _tell(study, t, state=TrialState.FAIL)
                    failures += 1
                    result = f"failed: {why}"
                print(f"ablate: trial {t.number} of {plan['study']}: {shown} -> {result} (run {run_id})")
            failed += failures
            if failures / len(trials) > self.max_failure_rate or failed > n_trials:
                _fail(f"search {plan['study']}: {failures} of {len(trials)} trials failed (hydra.sweeper."
                      f"max_failure_rate={self.max_failure_rate}); see the runs' errors: ablate query runs "
                      f"status=failed")
            todo = search.remaining(study, n_trials)
        return _best(study, names)


def _tell(study, trial, **kwargs) -> None:
    """study.tell; a GridSampler that has run its whole grid asks to stop the study, which only Study.optimize can
    (the trial is told all the same)."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _best(study, names: list[str]) -> dict:
    from optuna.trial import TrialState

    from ablate import search

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        print(f"ablate: study {study.study_name}: no completed trial")
        return {"best_params": None}
    t = search.best(study)
    front = study.best_trials
    print(f"ablate: study {study.study_name}: best trial {t.number}: " + _shown(t.params) + " -> "
          + ", ".join(f"{m} {v:.4g}" for m, v in zip(names, t.values))
          + (f" ({len(front)} trials on the Pareto front)" if len(names) > 1 else "")
          + f"; use it: +tuned={study.study_name.rsplit('/', 1)[0]}")
    return {"best_trial": t.number, "best_params": dict(t.params), "best_values": dict(zip(names, t.values)),
            **({"pareto_front": [{"trial": f.number, "params": dict(f.params), "values": list(f.values)}
                                 for f in front]} if len(names) > 1 else {})}


def _shown(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _sample(d):
    """A value of distribution `d` for composing a sample trial (its low end, or its first choice)."""
    return d.choices[0] if hasattr(d, "choices") else d.low


def _value(v) -> str:
    from ablate import search

    return v if isinstance(v, str) else search.override_value(v)


def _composition_line(err, config: DictConfig) -> str:
    """Hydra's composition error as one line naming the key (and the closest existing one)."""
    import difflib
    import re

    text = str(err).strip()
    found = re.match(r"Could not override '([^']+)'", text)
    if not found:
        return text.splitlines()[0] if text else type(err).__name__
    key = found.group(1)
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(config, parent) if parent else config
    close = difflib.get_close_matches(last, list(node.keys()), n=1) if isinstance(node, DictConfig) else []
    hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
    return f"{key}: no such key in the config{hint}; a new key needs a +: +{key}=..."


class _Heartbeat:
    """Marks the launched trials alive in Optuna's storage while their jobs run: a sweeper that dies leaves them
    silent, and a later sweeper fails and retries them (search.settle)."""

    def __init__(self, store, ids: list[int]):
        from ablate import search

        self.store, self.ids, self.every = store, ids, search.HEARTBEAT_SECONDS
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while True:
            for i in self.ids:
                try:
                    self.store.record_heartbeat(i)
                except Exception:  # a busy database delays a beat; the grace period allows for several
                    pass
            if self.stop.wait(self.every):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
