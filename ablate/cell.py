"""One grid cell: data -> teacher context -> base evaluation -> training -> evaluation -> database -> summary."""

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ablate import check_stop, metrics, record, stop_deferred, validate  # light: torch, TRL load only when a cell runs

# What an objective without a teacher (objective.context_source: null, e.g. grpo) records as its richness: every
# richness level is then the same config hash, so a grid runs such a cell once and skips its other levels.
NO_RICHNESS = {"name": "-", "content": "none", "source": None}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _base_key(cfg: dict, model_path) -> str:
    """Base evaluations are shared by every cell with the same model, eval settings and eval problems."""
    blob = {"model": cfg["model"], "model_path": str(model_path), "eval": cfg["eval"],
            "in_domain": {k: cfg["data"][k] for k in ("source", "heldout", "heldout_seed")},
            **({"validation": [cfg["data"]["validation"], cfg["coverage"]["seed"]]} if cfg["data"].get("validation") else {})}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(cfg: DictConfig, sweep: str = "adhoc", output_dir: str | None = None, reward_funcs=None) -> str:
    """Run one cell and record it; returns completed | skipped | failed | interrupted.

    A cell whose config hash already completed is skipped (unless force=true), as is one that a live
    process is running; a running row without a recent heartbeat is stale and the cell runs again.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resolved.get("tuned"):  # +tuned=STUDY: this objective's best setting from a search (ablate/search.py)
        from ablate import search
        try:
            search.apply_tuned(resolved)
        except search.SearchError as err:
            raise validate.ConfigError(str(err)) from None
    validate.check(resolved)  # a bad value: one line, before anything loads or is written
    resolved.pop("probe", None)  # the hint probe's settings: no part of a cell (nor of its config hash)
    if resolved["objective"]["context_source"] is None:
        resolved["richness"] = dict(NO_RICHNESS)
    kind = "trial" if resolved.get("trial") else "cell"  # a trial of a search (hydra/sweeper=optuna, ablate/search.py)
    if _processes(resolved) == 1:
        return execute(resolved, sweep, lambda eng, run_id: _run(resolved, eng, run_id, output_dir, reward_funcs), kind)
    names = _importable(reward_funcs)  # before anything is written: a lambda cannot reach the other processes
    return execute(resolved, sweep, lambda eng, run_id: _spawn(resolved, eng, run_id, output_dir, names), kind)


def execute(resolved: dict, sweep: str, body, kind: str = "cell") -> str:
    """Skip, start, run `body(engine, run_id)` and record a run of `resolved` (a cell, a build or the hint probe:
    `kind`); an axis that does not apply to the kind has name "-"."""
    check_stop()  # a stopped sweep starts no new cell
    if kind in ("build", "probe"):
        resolved.pop("launch", None)  # builds and probes run in one process: no part of their config hash
    db = resolved["db"]
    eng = record.engine(db["url"])
    if record.revision(eng) != record.HEAD:
        record.upgrade(db["url"])
    axes = {a: resolved[a]["name"] for a in record.AXES}
    label = f"{kind} " * (kind != "cell") + " ".join(f"{a}={v}" for a, v in axes.items()) + f" seed={resolved['seed']}"
    if not resolved.get("force"):
        found = record.previous(eng, record.config_hash(resolved), db["stale_after_seconds"])
        if found:
            same = " (richness does not apply to it: one run stands for every level)" if axes["richness"] == "-" else ""
            print(f"ablate: skip {label}: {found[0]} as run {found[1]}{same} (force=true reruns it)")
            return "skipped"
    with stop_deferred():  # a signal now would leave the row 'running' with nobody holding its id
        run_id = record.start_run(eng, sweep=resolved.get("sweep") or sweep, config=resolved, seed=resolved["seed"],
                                  axes=axes, kind=kind)
    try:
        check_stop()  # a signal that came while the row was written
        with record.Heartbeat(eng, run_id, db["heartbeat_seconds"]):
            body(eng, run_id)
        return "completed"
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (see __main__): record, then stop the whole sweep
        with stop_deferred():  # a second signal must not stop the recording of the first
            record.end_run(eng, run_id, "interrupted", f"interrupted ({err or 'SIGINT'})\n" + traceback.format_exc())
        print(f"ablate: run {run_id} interrupted ({label})", file=sys.stderr)
        raise SystemExit(130) from err
    except Exception as err:  # one failing cell must not stop a sweep: record it and move on
        status = getattr(err, "run_status", "failed")  # a search trial its pruner stopped: 'pruned' (ablate/search.py)
        with stop_deferred():  # a stop asked for now: the next cell does not start (check_stop above)
            record.end_run(eng, run_id, status, _one_line(err) + "\n" + traceback.format_exc())
        print(f"ablate: run {run_id} {status}: {_one_line(err)}", file=sys.stderr)
        return status


# conf/accelerate/NAME.yaml: accelerate's own config files (FSDP, DeepSpeed ZeRO-3) for launch.accelerate_config=NAME.
_SOURCE_CONF = Path(__file__).resolve().parent.parent / "conf"
ACCELERATE_CONFIGS = (_SOURCE_CONF if (_SOURCE_CONF / "config.yaml").is_file() else Path(__file__).parent / "conf") / "accelerate"
# How long the ranks get to stop after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 30


class RankFailed(RuntimeError):
    """A rank of a cell on several processes failed: the message names the rank and its error."""


def _processes(resolved: dict) -> int:
    """launch.processes, checked; the `launch` block stays in the config (and its hash) only above 1 process,
    where it changes results (evaluation seeds per rank, a batch per rank): a 1-process cell hashes as before."""
    if "accelerate" in resolved:  # conf/accelerate holds accelerate's files, which Hydra also sees as a group
        raise validate.ConfigError("accelerate=...: conf/accelerate holds accelerate's config files, no part of a "
                                   "cell; choose one with launch.accelerate_config=NAME")
    launch = resolved.pop("launch", None) or {}
    n = launch.get("processes", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise validate.ConfigError(f"launch.processes={n!r}: need a whole number >= 1; e.g. launch.processes=2")
    name = launch.get("accelerate_config")
    if n > 1 and name is not None and not _accelerate_file(name).is_file():
        choices = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise validate.ConfigError(f"launch.accelerate_config={name}: no such file; choose {choices}, a path to an "
                                   "accelerate config file, or null (DDP)")
    if n > 1:
        resolved["launch"] = {"processes": n, "accelerate_config": name}
    return n


def _accelerate_file(name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.suffix in (".yaml", ".yml") else ACCELERATE_CONFIGS / f"{name}.yaml"


def _importable(funcs) -> list[str] | None:
    """module:name of each reward function, for the other processes to import (they cannot receive a closure)."""
    if funcs is None:
        return None
    names = []
    for f in funcs:
        module, name = getattr(f, "__module__", None), getattr(f, "__qualname__", "")
        if not module or module == "__main__" or "<" in name or "." in name:
            raise validate.ConfigError(f"reward function {name or f!r}: with launch.processes > 1 every rank imports "
                                       "it, so it must be a module-level function of an importable module")
        names.append(f"{module}:{name}")
    return names


def _command(launch: dict, spec: Path) -> list[str]:
    """torchrun for DDP (gloo on CPU, NCCL on GPUs); accelerate launch with the config file on GPUs for FSDP and
    ZeRO-3. Never `accelerate launch --cpu --num_processes N`: it starts one process (docs/cluster.md)."""
    import torch

    n, name = str(launch["processes"]), launch["accelerate_config"]
    worker = ["-m", "ablate.launch", str(spec)]
    if name is None:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", n,
                "--max_restarts", "0", *worker]
    if not torch.cuda.is_available():
        raise RuntimeError(f"launch.accelerate_config={name} shards the model over GPUs and this machine has none; "
                           "set launch.accelerate_config=null to run DDP on CPU")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(_accelerate_file(name)),
            "--num_processes", n, "--num_machines", "1", "--main_process_port", "0", *worker]


def _spawn(cfg: dict, eng, run_id: int, output_dir: str | None, reward_funcs: list[str] | None) -> None:
    """The cell's body on launch.processes processes (ablate/launch.py on every rank; rank 0 records the run).
    A failing rank makes the launcher stop the others: the cell fails with that rank's error. SIGTERM or Ctrl-C
    here stops them all and the cell is recorded interrupted."""
    _, suites = problems(cfg)
    model_path(cfg, suites)  # build or convert the model here, once, before the ranks load it from the cache
    with tempfile.TemporaryDirectory(prefix="ablate-ranks-") as tmp:
        spec = Path(tmp) / "cell.json"
        spec.write_text(json.dumps({"config": cfg, "run_id": run_id, "output_dir": output_dir,
                                    "reward_funcs": reward_funcs, "warnings": _warning_filters(), "errors": tmp},
                                   default=str))
        roots = [_module_root(name.split(":")[0]) for name in reward_funcs or []]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*roots, os.environ.get("PYTHONPATH")]))}
        print(f"ablate: run {run_id} on {cfg['launch']['processes']} processes: {' '.join(_command(cfg['launch'], spec))}")
        proc = subprocess.Popen(_command(cfg["launch"], spec), env=env, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:  # KeyboardInterrupt from SIGTERM/SIGINT (see __main__): stop every rank first
            _stop_group(proc)
            raise
        if code != 0:
            raise RankFailed(_rank_error(Path(tmp), code, cfg["launch"]["processes"]))
    from sqlalchemy.orm import Session

    with Session(eng) as s:
        status = s.get(record.Run, run_id).status
    if status != "completed":
        raise RankFailed(f"the ranks exited cleanly but run {run_id} is {status}: rank 0 did not record it")


def _warning_filters() -> list[list]:
    """This process's warning filters (ablate's quiet mode or -v), for the ranks to show the same warnings."""
    return [[action, getattr(message, "pattern", message or ""), f"{category.__module__}:{category.__qualname__}",
             getattr(module, "pattern", module or ""), lineno]
            for action, message, category, module, lineno in warnings.filters]


def _module_root(module: str) -> str | None:
    """The folder to put on the path so that `module` imports in another process."""
    found = importlib.util.find_spec(module)
    if not found or not found.origin:
        return None
    path = Path(found.origin).parent
    for _ in range(module.count(".") + (found.origin.endswith("__init__.py"))):
        path = path.parent
    return str(path)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the launcher's process group (the launcher forwards it to its ranks), SIGKILL after the grace."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _rank_error(folder: Path, code: int, n: int) -> str:
    """The first error a rank reported (the others fail after it, when the launcher stops them), with its
    traceback; or what the launcher's exit code says when no rank could report (killed, out of memory)."""
    reports = sorted((json.loads(f.read_text()) for f in folder.glob("rank*.json")), key=lambda r: r["time"])
    if not reports:
        return (f"the launcher exited with code {code} and no rank of {n} reported an error (killed by a signal, "
                "or out of memory?); see the cell's log")
    first = reports[0]
    return f"rank {first['rank']} of {n}: {first['error']}\n{first['traceback']}"


def problems(cfg: dict):
    """(training pool, eval suites by name): the in-domain held-out split plus eval.suites."""
    from ablate import data

    pool, heldout = data.split_heldout(data.load(cfg["data"]["source"], "data.source", cfg["data"]["name"]),
                                       cfg["data"]["heldout"], cfg["data"]["heldout_seed"])
    # A suite set to null is dropped (eval.suites.arith3=null); data.heldout=0 means no in-domain suite,
    # e.g. when the training file is one of the paper's coverage subsets.
    suites = {name: data.load(spec, f"eval.suites.{name}", name) for name, spec in cfg["eval"]["suites"].items()
              if spec is not None}
    suites = {"in_domain": heldout, **suites} if heldout else suites
    validation = data.split_validation(pool, cfg["data"].get("validation") or 0, cfg["coverage"])
    suites = {**suites, data.VALIDATION: validation} if validation else suites  # search trials are scored on it
    if not suites:
        raise ValueError("nothing to evaluate: data.heldout=0 and eval.suites is empty; hold out problems or add a suite")
    return pool, suites


def model_path(cfg: dict, suites: dict):
    """The starting model's folder (or hub id): built or converted once into the cache, never on the evaluation
    problems."""
    from ablate import data, models

    # validation problems come from the training pool, like the training problems: the model is the grid's
    eval_prompts = frozenset(p.prompt for name, problems in suites.items() if name != data.VALIDATION for p in problems)
    return models.resolve_path(cfg["model"], cfg["cache_dir"], exclude=eval_prompts)


def starting_model(cfg: dict, eng, suites: dict):
    """(model path, tokenizer, base evaluation id): builds or converts the model if needed (never on the
    evaluation problems), and evaluates it once per model + eval settings (later cells reuse it).

    On several processes every rank loads the model (the launching process built it) and takes its share of
    the base evaluation; rank 0 alone reads and writes the database (`eng` is None on the others), and its
    answer to "is the base evaluation stored?" is every rank's. Other ranks return base id None."""
    from ablate import evaluate, models, ranks

    path = model_path(cfg, suites)
    model, tokenizer = models.load(path, cfg["model"]["dtype"])
    key = _base_key(cfg, path)
    base_id = ranks.from_main(record.find_base_evaluation(eng, key) if ranks.is_main() else None)
    if base_id is None:
        base = evaluate.evaluate(ranks.place(model), tokenizer, suites, cfg["eval"],
                                 cfg["model"].get("chat_template_kwargs") or {}, "base")
        if ranks.is_main():
            base_id = record.save_evaluation(eng, stage="base", key=key, samples=base["samples"],
                                             metrics=base["metrics"], settings={"eval": cfg["eval"], "model": cfg["model"]},
                                             seconds=base["seconds"])
    return path, tokenizer, base_id


def _run(cfg: dict, eng, run_id: int, output_dir: str | None, reward_funcs) -> None:
    """The cell's body, in its own process or on every rank of several (ablate/launch.py; then `eng` is None
    except on rank 0, which alone writes)."""
    import torch
    from transformers import set_seed

    from ablate import data, evaluate, ranks, train

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    set_seed(cfg["seed"])
    # 1. problems: in-domain held-out split, out-of-domain suites, training set by coverage
    pool, suites = problems(cfg)
    cov = cfg["coverage"]
    train_problems = data.select_coverage(pool, cov["unique"], cov["copies"], cov["seed"])
    # 2. the starting model and its evaluation (shared by cells with the same model and eval settings)
    model_path, tokenizer, base_id = starting_model(cfg, eng, suites)
    # 3. training with the objective; the teacher's context by richness
    set_seed(cfg["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        trained, steps = train.train(cfg, model_path, tokenizer, train_problems, output_dir or tmp, reward_funcs)
    digest = ranks.check_replicas(trained)  # several processes with DDP: every rank holds the same weights
    if digest:
        rank, world = ranks.rank_world()
        print(f"ablate: rank {rank} of {world}: trained weights sha256 {digest}")
    # 4. evaluation of the trained model, then one write of everything
    result = evaluate.evaluate(trained, tokenizer, suites, cfg["eval"], cfg["model"].get("chat_template_kwargs") or {},
                               "trained")
    result["settings"] = {"eval": cfg["eval"]}
    check_stop()  # never record a cell as completed after a stop request
    if ranks.is_main():  # rank 0's StepRecorder holds TRL's logged steps (gathered over ranks), once
        record.finish_run(eng, run_id, base_evaluation_id=base_id, train_steps=steps, trained=result)
        print("\n" + summary(eng, run_id))


def summary(eng, run_id: int) -> str:
    """A one-screen summary of a recorded run: per eval set, base -> trained."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    with Session(eng) as s:
        run = s.get(record.Run, run_id)
        trained_id = s.scalar(select(record.Evaluation.id).where(record.Evaluation.run_id == run_id))
        rows = s.execute(select(record.Metric.evaluation_id, record.Metric.eval_set, record.Metric.name,
                                record.Metric.value)
                         .where(record.Metric.evaluation_id.in_([run.base_evaluation_id, trained_id]))).all()
    table: dict = {}
    for ev_id, eval_set, name, value in rows:
        table.setdefault(eval_set, {})[(name, "base" if ev_id == run.base_evaluation_id else "trained")] = value
    cols = [m for m in metrics.METRICS if m.summary]
    lines = [f"run {run.id} [{run.status}] richness={run.richness} coverage={run.coverage} model={run.model} "
             f"objective={run.objective} seed={run.seed} config={run.config_hash}",
             f"{'eval set':<12}" + "".join(f"{m.label:>24}" for m in cols)]
    for eval_set, vals in table.items():
        cells = [f"{metrics.fmt(m.name, vals.get((m.name, 'base'))) + ' -> ':>14}"
                 f"{metrics.fmt(m.name, vals.get((m.name, 'trained'))):<10}" for m in cols]
        lines.append(f"{eval_set:<12}" + "".join(cells))
    return "\n".join(lines)
