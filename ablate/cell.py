"""One grid cell: data -> teacher context -> base evaluation -> training -> evaluation -> database -> summary."""

import hashlib
import json
import sys
import tempfile
import traceback

from omegaconf import DictConfig, OmegaConf

from ablate import check_stop, metrics, record  # light: torch, transformers and TRL load only when a cell actually runs
from ablate import validate

# What an objective without a teacher (objective.context_source: null, e.g. grpo) records as its richness: every
# richness level is then the same config hash, so a grid runs such a cell once and skips its other levels.
NO_RICHNESS = {"name": "-", "content": "none", "source": None}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _base_key(cfg: dict, model_path) -> str:
    """Base evaluations are shared by every cell with the same model, eval settings and eval problems."""
    blob = {"model": cfg["model"], "model_path": str(model_path), "eval": cfg["eval"],
            "in_domain": {k: cfg["data"][k] for k in ("source", "heldout", "heldout_seed")}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(cfg: DictConfig, sweep: str = "adhoc", output_dir: str | None = None, reward_funcs=None) -> str:
    """Run one cell and record it; returns completed | skipped | failed | interrupted.

    A cell whose config hash already completed is skipped (unless force=true), as is one that a live
    process is running; a running row without a recent heartbeat is stale and the cell runs again.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate.check(resolved)  # a bad value: one line, before anything loads or is written
    resolved.pop("probe", None)  # the hint probe's settings: no part of a cell (nor of its config hash)
    if resolved["objective"]["context_source"] is None:
        resolved["richness"] = dict(NO_RICHNESS)
    return execute(resolved, sweep, lambda eng, run_id: _run(resolved, eng, run_id, output_dir, reward_funcs))


def execute(resolved: dict, sweep: str, body, kind: str = "cell") -> str:
    """Skip, start, run `body(engine, run_id)` and record a run of `resolved` (a cell, a build or the hint probe:
    `kind`); an axis that does not apply to the kind has name "-"."""
    check_stop()  # a stopped sweep starts no new cell
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
    run_id = record.start_run(eng, sweep=resolved.get("sweep") or sweep, config=resolved, seed=resolved["seed"],
                              axes=axes, kind=kind)
    try:
        with record.Heartbeat(eng, run_id, db["heartbeat_seconds"]):
            body(eng, run_id)
        return "completed"
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (see __main__): record, then stop the whole sweep
        record.end_run(eng, run_id, "interrupted", f"interrupted ({err or 'SIGINT'})\n" + traceback.format_exc())
        print(f"ablate: run {run_id} interrupted ({label})", file=sys.stderr)
        raise SystemExit(130) from err
    except Exception as err:  # one failing cell must not stop a sweep: record it and move on
        record.end_run(eng, run_id, "failed", _one_line(err) + "\n" + traceback.format_exc())
        print(f"ablate: run {run_id} failed: {_one_line(err)}", file=sys.stderr)
        return "failed"


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
    if not suites:
        raise ValueError("nothing to evaluate: data.heldout=0 and eval.suites is empty; hold out problems or add a suite")
    return pool, suites


def starting_model(cfg: dict, eng, suites: dict):
    """(model path, tokenizer, base evaluation id): builds or converts the model if needed (never on the
    evaluation problems), and evaluates it once per model + eval settings (later cells reuse it)."""
    from ablate import evaluate, models

    eval_prompts = frozenset(p.prompt for problems in suites.values() for p in problems)
    model_path = models.resolve_path(cfg["model"], cfg["cache_dir"], exclude=eval_prompts)
    model, tokenizer = models.load(model_path, cfg["model"]["dtype"])
    key = _base_key(cfg, model_path)
    base_id = record.find_base_evaluation(eng, key)
    if base_id is None:
        base = evaluate.evaluate(model, tokenizer, suites, cfg["eval"], cfg["model"].get("chat_template_kwargs") or {},
                                 "base")
        base_id = record.save_evaluation(eng, stage="base", key=key, samples=base["samples"], metrics=base["metrics"],
                                         settings={"eval": cfg["eval"], "model": cfg["model"]}, seconds=base["seconds"])
    return model_path, tokenizer, base_id


def _run(cfg: dict, eng, run_id: int, output_dir: str | None, reward_funcs) -> None:
    import torch
    from transformers import set_seed

    from ablate import data, evaluate, train

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
    # 4. evaluation of the trained model, then one write of everything
    result = evaluate.evaluate(trained, tokenizer, suites, cfg["eval"], cfg["model"].get("chat_template_kwargs") or {},
                               "trained")
    result["settings"] = {"eval": cfg["eval"]}
    check_stop()  # never record a cell as completed after a stop request
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
