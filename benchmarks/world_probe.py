"""Measure the testbed world's base model: build time, accuracy in- and out-of-domain, the hint probe
(Sec. 3: markers and length with and without a correct solution in the prompt) and whether markers do work.

    python benchmarks/world_probe.py [hydra overrides...]     e.g. model.build.warmup_steps=600

Uses the same code as a cell: data.load, models.resolve_path, evaluate.evaluate, teacher.teacher_prompt.
"""

import re
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate import data, evaluate, models, teacher, world
from ablate.problem import Problem

CONF = Path(__file__).resolve().parent.parent / "conf"
LINE = re.compile(r"(?:(\d+)\? check [^,]*, (ok|wait) )?(\d+)((?:[+-]\d)*)")


def step_stats(samples: list[dict], prompts: dict[str, str]) -> dict:
    """Per step of the responses (parsed until the first malformed line): is the first value right, was it
    flagged (tentative), is the step's final value right."""
    tally = {k: 0 for k in ("steps", "hard", "flagged", "flagged_hard", "flagged_wrong_first", "flagged_fixed",
                            "plain", "plain_wrong", "plain_hard", "plain_hard_wrong")}
    for s in samples:
        value, tail = re.fullmatch(r"(\d+)((?:[+-]\d)*)=\?", prompts[s["problem_id"]]).groups()
        value = int(value)
        body = s["completion"].split("<think>", 1)[-1].split("</think>", 1)[0]
        for line in body.split("="):
            m = LINE.fullmatch(line)
            if not m or len(tail) < 2:
                break
            first, verdict, after, rest = m.groups()
            op, x = tail[0], int(tail[1])
            right, hard = world.apply(value, op, x), world.is_hard(value, op, x)
            tally["steps"] += 1
            tally["hard"] += hard
            if first:
                tally["flagged"] += 1
                tally["flagged_hard"] += hard
                tally["flagged_wrong_first"] += int(first) != right
                tally["flagged_fixed"] += int(first) != right and int(after) == right
            else:
                tally["plain"] += 1
                tally["plain_wrong"] += int(after) != right
                tally["plain_hard"] += hard
                tally["plain_hard_wrong"] += hard and int(after) != right
            value, tail = int(after), rest
    return tally


def summary(samples: list[dict], prompts: dict[str, str]) -> str:
    n = len(samples)
    acc = sum(s["correct"] for s in samples) / n
    flagged = [s for s in samples if "? check" in s["completion"]]  # responses with a tentative step
    plain = [s for s in samples if "? check" not in s["completion"]]
    t = step_stats(samples, prompts)
    rate = lambda a, b: f"{a}/{b}={a / b:.2f}" if b else f"{a}/0"  # noqa: E731
    return (f"acc {acc:.3f}  len {sum(s['length'] for s in samples) / n:.1f}  markers/resp "
            f"{sum(s['markers'] for s in samples) / n:.2f}  | responses with a check: acc "
            f"{sum(s['correct'] for s in flagged) / max(len(flagged), 1):.2f} (n={len(flagged)}), without: acc "
            f"{sum(s['correct'] for s in plain) / max(len(plain), 1):.2f} (n={len(plain)})\n"
            f"    steps {t['steps']}: flagged {rate(t['flagged'], t['steps'])} (hard {rate(t['flagged_hard'], t['hard'])}"
            f" of hard steps); flagged first value wrong {rate(t['flagged_wrong_first'], t['flagged'])}, of those "
            f"corrected {rate(t['flagged_fixed'], t['flagged_wrong_first'])}; unflagged wrong "
            f"{rate(t['plain_wrong'], t['plain'])} (hard {rate(t['plain_hard_wrong'], t['plain_hard'])})")


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["data=world", "eval=world", "model=testbed", *overrides])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(cfg["threads"])
    problems = data.load(cfg["data"]["source"], "data.source", cfg["data"]["name"])
    _, heldout = data.split_heldout(problems, cfg["data"]["heldout"], cfg["data"]["heldout_seed"])
    suites = {"in_domain": heldout, **{k: data.load(v, f"eval.suites.{k}", k) for k, v in cfg["eval"]["suites"].items()}}
    start = time.perf_counter()
    path = models.resolve_path(cfg["model"], cfg["cache_dir"], frozenset(p.prompt for ps in suites.values() for p in ps))
    print(f"model {path} ready in {time.perf_counter() - start:.1f} s")
    model, tok = models.load(path)
    print(f"params {sum(p.numel() for p in model.parameters())}")
    start = time.perf_counter()
    base = evaluate.evaluate(model, tok, suites, cfg["eval"], {}, "base")
    print(f"base evaluation {time.perf_counter() - start:.1f} s")
    prompts = {p.id: p.prompt for ps in suites.values() for p in ps}
    for name in suites:
        print(f"{name:10s}", summary([s for s in base["samples"] if s["eval_set"] == name], prompts))
    # The hint probe: the same problems with a correct solution in the prompt (teacher prompt, by richness).
    # The solution is the model's own correct response where it has one (as SDPO's sibling), else the solver's.
    t = cfg["teacher"]
    for content in ("answer", "solution"):
        hinted = {}
        for name, ps in list(suites.items())[:1]:  # in-domain: hinted prompts are long, so slow to generate
            own = {s["problem_id"]: s["completion"] for s in base["samples"] if s["eval_set"] == name and s["correct"]}
            hinted[name] = [Problem(p.id, teacher.teacher_prompt(p.prompt, own.get(p.id, p.solution), content, p.answer,
                                                                 t["template"], t["answer_template"]), p.answer)
                            for p in ps]
        res = evaluate.evaluate(model, tok, hinted, cfg["eval"], {}, "hinted")
        for name in hinted:
            print(f"hint={content:8s} {name:10s}", summary([s for s in res["samples"] if s["eval_set"] == name], prompts))


if __name__ == "__main__":
    main(sys.argv[1:])
