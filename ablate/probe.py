"""The off-policy hint probe (the paper's Sec. 3): regenerate with a correct solution as the hint; no training.

`python -m ablate probe [overrides]`. The probe screens the distinct problems of the coverage subset of the
training pool with `probe.k` unhinted samples each, keeps those whose solve rate lies in
[probe.solve_rate_min, probe.solve_rate_max] (the model solves them sometimes), samples them afresh without a
hint (round 0: the baseline, independent of the selection), then asks them again with a correct solution as
the hint (rounds 1..probe.rounds): the paper's teacher prompt (`teacher.template`), context cut by richness.

Hints: round 1 conditions on the model's own first correct screening response (richness.source=sibling, as
SDPO's teacher) or on the dataset's reference solution (source=reference). Round r >= 2 conditions on round
r-1's first correct response, by sample index rather than the shortest, so that a change in length comes from
the hint and not from picking short responses; a problem round r-1 never solved keeps its previous hint.

It is recorded as a run of kind `probe` (objective "-"; its settings are the run's `probe` config, so they enter
the config hash): one evaluation per stage (`probe_screen`, `probe_round_0`, `probe_round_1`, ...) with per-sample
rows and the usual metrics (accuracy, length, markers) on eval set `probe`. Each round's settings record where
each problem's hint came from.
"""

import sys

from omegaconf import DictConfig, OmegaConf

from ablate import cell, check_stop, record, validate

EVAL_SET = "probe"


def run(cfg: DictConfig, sweep: str = "adhoc", output_dir: str | None = None) -> str:
    """Run the probe for one config and record it; returns completed | skipped | failed | interrupted."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate.check(resolved)  # a bad value: one line, before anything loads or is written
    for unused in ("objective", "trainer"):  # nothing is trained: they would only split the config hash
        resolved.pop(unused)
    resolved["objective"] = {"name": "-"}
    return cell.execute(resolved, sweep, lambda eng, run_id: _run(resolved, eng, run_id), kind="probe")


def check(settings: dict) -> None:
    """One-line errors for probe settings that cannot work."""
    lo, hi = settings["solve_rate_min"], settings["solve_rate_max"]
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"probe.solve_rate_min={lo}, probe.solve_rate_max={hi}: need 0 <= min <= max <= 1")
    if settings["k"] < 1:
        raise ValueError(f"probe.k={settings['k']}: need at least one sample per problem")
    if not 1 <= settings["rounds"] <= 99:  # stage names must fit evaluations.stage (16 characters)
        raise ValueError(f"probe.rounds={settings['rounds']}: choose 1 to 99 hinted rounds")
    if settings["max_problems"] is not None and settings["max_problems"] < 1:
        raise ValueError(f"probe.max_problems={settings['max_problems']}: need >= 1, or null for all")


def _run(cfg: dict, eng, run_id: int) -> None:
    import torch
    from transformers import set_seed

    from ablate import data, models, teacher
    from ablate.evaluate import sample

    settings, richness = cfg["probe"], cfg["richness"]
    check(settings)
    if richness["source"] not in ("sibling", "reference"):
        raise ValueError(f"richness.source={richness['source']!r}: choose sibling or reference")
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    set_seed(cfg["seed"])
    k = settings["k"]
    seeds = iter(range(1000 * cfg["seed"], 1000 * cfg["seed"] + 1000))  # a fresh sampling seed per stage
    # The candidates: the coverage subset of the training pool, as a cell would train on, each problem once.
    problems = data.load(cfg["data"]["source"], "data.source", cfg["data"]["name"])
    pool, heldout = data.split_heldout(problems, cfg["data"]["heldout"], cfg["data"]["heldout_seed"])
    cov = cfg["coverage"]
    candidates = data.select_coverage(pool, cov["unique"], 1, cov["seed"])
    # The same starting model as the cells (the tiny model is built without the evaluation problems).
    suites = [heldout, *(data.load(spec, f"eval.suites.{name}", name) for name, spec in cfg["eval"]["suites"].items())]
    path = models.resolve_path(cfg["model"], cfg["cache_dir"], exclude=frozenset(p.prompt for s in suites for p in s))
    model, tokenizer = models.load(path, cfg["model"]["dtype"])

    results = []

    def keep(stage: str, result: dict, **extra) -> None:
        result["settings"] = {"probe": settings, "eval": cfg["eval"], **extra}
        results.append({"stage": stage, **result})

    screen, groups = sample(model, tokenizer, candidates, cfg, k, next(seeds), "probe_screen", EVAL_SET)
    rates = {p.id: sum(s["correct"] for s in g) / k for p, g in zip(candidates, groups)}
    lo, hi = settings["solve_rate_min"], settings["solve_rate_max"]
    chosen = [(p, g) for p, g in zip(candidates, groups) if lo <= rates[p.id] <= hi][:settings["max_problems"]]
    keep("probe_screen", screen, solve_rates=rates, selected=[p.id for p, _ in chosen])
    if not chosen:
        raise ValueError(f"no problem among {len(candidates)} has a solve rate in [{lo}, {hi}] over k={k} samples; "
                         "widen probe.solve_rate_min/max, raise probe.k or choose a larger coverage")
    hints = {p.id: teacher.hint(p, g, richness["source"], "probe_screen") for p, g in chosen}
    unsolved = [pid for pid, (text, _) in hints.items() if text is None and richness["content"] != "none"]
    if unsolved:
        raise ValueError(f"problem {unsolved[0]}: no correct screening response to hint with; raise "
                         "probe.solve_rate_min above 0 or set richness.source=reference")
    chosen = [p for p, _ in chosen]
    round0, _ = sample(model, tokenizer, chosen, cfg, k, next(seeds), "probe_round_0", EVAL_SET)
    keep("probe_round_0", round0, round=0)
    for r in range(1, settings["rounds"] + 1):
        stage = f"probe_round_{r}"
        asked = [teacher.hinted(p, hints[p.id][0], richness, cfg["teacher"]) for p in chosen]
        result, groups = sample(model, tokenizer, asked, cfg, k, next(seeds), stage, EVAL_SET)
        keep(stage, result, round=r, hints={pid: origin for pid, (_, origin) in hints.items()})
        for p, g in zip(chosen, groups):  # chain: the next round conditions on this round's first correct one
            found = teacher.hint(p, g, "sibling", stage)
            if found[0] is not None:
                hints[p.id] = found
    check_stop()  # never record a run as completed after a stop request
    record.finish_evaluations(eng, run_id, results)
    print("\n" + summary(cfg, run_id, results), file=sys.stdout)


def summary(cfg: dict, run_id: int, results: list[dict]) -> str:
    """One line per stage: problems, accuracy, pass@k, length, markers per response."""
    lines = [f"probe run {run_id} richness={cfg['richness']['name']} coverage={cfg['coverage']['name']} "
             f"model={cfg['model']['name']} seed={cfg['seed']}",
             f"{'stage':<16}{'problems':>10}{'acc':>8}{'pass@k':>8}{'length':>9}{'markers/resp':>14}"]
    for res in results:
        m = {row["name"]: row["value"] for row in res["metrics"]}
        lines.append(f"{res['stage']:<16}{m['n_problems']:>10}{m['accuracy']:>8.3f}{m['pass_at_k']:>8.3f}"
                     f"{m['mean_length']:>9.1f}{m['markers_per_response']:>14.2f}")
    return "\n".join(lines)
