"""What ablate costs on top of TRL and generate: `python benchmarks/overhead.py [--repeats 3] [overrides...]`.

Pairs, run A B A B ... in one process and reported as medians, their ratio, and the mean of the paired differences
A - B as a share of B with its standard error (these machines are noisy: single runs vary by 10-20%):
  training    ablate's train.train on the default cell (SDPO, 20 steps) vs a plain script that builds TRL's
              SDPOTrainer by hand with the same model, rows, config values, seed and threads;
  evaluation  ablate.evaluate.evaluate on the cell's eval sets vs one batched model.generate per set over the same
              prompts and budget, and vs a per-sample generate loop (why batching matters);
  recording   record.finish_run of one cell's samples, metrics and steps, on SQLite (and PostgreSQL when
              ABLATE_BENCH_PG=postgresql+psycopg://... is set).
Then one cell's wall time broken down into its phases (the steps of cell._run, timed one by one).
Overrides are Hydra's, e.g. `trainer.max_steps=5 eval.k=2` for a quick look.
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ablate import cell, data, evaluate, metrics, models, record, train  # noqa: E402

IMPORTS = time.perf_counter() - T0


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, " \
           f"load {os.getloadavg()[0]:.1f}"


def config(overrides: list[str], tmp: Path) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"db.url=sqlite:///{tmp / 'bench.sqlite'}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def plain_trl(cfg: dict, path, tokenizer, problems, out: str) -> float:
    """The same training written by hand with TRL: SDPOTrainer, the paper's reprompt template, a correctness reward."""
    from datasets import Dataset
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from ablate.grading import reward

    _, kwargs = train.trainer_args(cfg, out)  # the same config values, read once, then TRL alone
    # ablate builds the teacher prompt itself (teacher.template, cut by richness) and passes TRL bare templates;
    # here TRL's own default templates build it, which for richness=high (the whole successful sibling) is the
    # paper's template, character for character: the same teacher prompts, so the same compute.
    if cfg["richness"]["content"] != "solution" or cfg["richness"]["source"] != "sibling":
        sys.exit("overhead.py compares the default cell (richness=high, a sibling's whole solution) only")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("solution_template", "feedback_template")}
    rows = [{"prompt": p.messages(), "answer": p.answer, "grader": p.grader} for p in problems]
    trainer = SDPOTrainer(model=str(path), args=SDPOConfig(**kwargs), reward_funcs=[reward],
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return timed(trainer.train)[0]


def ablate_train(cfg: dict, path, tokenizer, problems, out: str) -> float:
    trainer = train.build_trainer(cfg, path, tokenizer, problems, out, None, [train.StepRecorder()])
    return timed(trainer.train)[0]


def batched_generate(model, tokenizer, suites, ev, per_sample=False) -> float:
    """One model.generate per eval set over every (problem, sample) prompt, or one per sample."""
    start = time.perf_counter()
    torch.manual_seed(ev["seed"])
    sampling = dict(do_sample=True, temperature=ev["temperature"], top_p=ev["top_p"])
    for problems in suites.values():
        texts = [tokenizer.apply_chat_template(p.messages(), add_generation_prompt=True, tokenize=False)
                 for p in problems for _ in range(ev["k"])]
        for chunk in ([[t] for t in texts] if per_sample else [texts]):
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=ev["max_new_tokens"], pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
            tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return time.perf_counter() - start


def pair(name: str, a, b, repeats: int, rows: list) -> None:
    times = {"A": [], "B": []}
    for _ in range(repeats):
        times["A"].append(a())
        times["B"].append(b())
    ma, mb = statistics.median(times["A"]), statistics.median(times["B"])
    diffs = [a - b for a, b in zip(times["A"], times["B"])]  # paired: A and B ran back to back
    mean_b = statistics.mean(times["B"])
    paired = (statistics.mean(diffs) / mean_b, statistics.stdev(diffs) / len(diffs) ** 0.5 / mean_b) \
        if repeats > 1 else (ma / mb - 1, float("nan"))
    rows.append((name, ma, mb, ma / mb, paired))
    print(f"  {name}: A {', '.join(f'{t:.2f}' for t in times['A'])} s | B {', '.join(f'{t:.2f}' for t in times['B'])} s"
          f" -> medians {ma:.2f} / {mb:.2f} = {ma / mb:.3f}x; paired A - B = {100 * paired[0]:+.1f}% "
          f"± {100 * paired[1]:.1f}% of B (mean ± se)", flush=True)


def record_once(url: str, result: dict, steps: list) -> float:
    record.upgrade(url)
    eng = record.engine(url)
    run_id = record.start_run(eng, sweep="bench", config={"seed": time.time()}, seed=0,
                              axes={a: "-" for a in record.AXES})
    base = record.save_evaluation(eng, stage="base", key=None, samples=result["samples"], metrics=result["metrics"],
                                  settings={}, seconds=0.0)
    start = time.perf_counter()
    record.finish_run(eng, run_id, base_evaluation_id=base, train_steps=steps,
                      trained={**result, "settings": {}})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print("machine:", machine(), flush=True)
    rows: list = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        cfg = config(args.overrides, tmp)
        phases = {"imports (torch, transformers, TRL, ablate)": IMPORTS}
        t, (pool, suites) = timed(lambda: cell.problems(cfg))
        cov = cfg["coverage"]
        problems = data.select_coverage(pool, cov["unique"], cov["copies"], cov["seed"])
        phases["config and data"] = t
        path = cell.model_path(cfg, suites)
        t, (model, tokenizer) = timed(lambda: models.load(path, cfg["model"]["dtype"]))
        phases["model load"] = t
        chat = cfg["model"].get("chat_template_kwargs") or {}
        t, base = timed(lambda: evaluate.evaluate(model, tokenizer, suites, cfg["eval"], chat, "base"))
        phases["base evaluation (computed; reused by later cells)"] = t
        print(f"one {cfg['objective']['name']} cell, {cfg['trainer']['max_steps']} steps, eval sets "
              f"{', '.join(f'{k} {len(v)}' for k, v in suites.items())} x k={cfg['eval']['k']}", flush=True)

        print("training (A = ablate, B = plain TRL script):", flush=True)
        pair("training", lambda: ablate_train(cfg, path, tokenizer, problems, str(tmp / "a")),
             lambda: plain_trl(cfg, path, tokenizer, problems, str(tmp / "b")), args.repeats, rows)
        trainer = train.build_trainer(cfg, path, tokenizer, problems, str(tmp / "c"), None,
                                      [recorder := train.StepRecorder()])
        t, _ = timed(trainer.train)
        phases["training"] = t
        trained = trainer.model

        ev = cfg["eval"]
        print("evaluation (A = ablate.evaluate, B = one batched generate per set):", flush=True)
        pair("evaluation", lambda: evaluate.evaluate(trained, tokenizer, suites, ev, chat, "trained")["seconds"],
             lambda: batched_generate(trained, tokenizer, suites, ev), args.repeats, rows)
        small = {k: v[:4] for k, v in suites.items()}
        print("generation on 4 problems per set (A = per-sample generate loop, B = one batched generate):", flush=True)
        pair("per-sample loop", lambda: batched_generate(trained, tokenizer, small, ev, per_sample=True),
             lambda: batched_generate(trained, tokenizer, small, ev), 1, rows)
        t, result = timed(lambda: evaluate.evaluate(trained, tokenizer, suites, ev, chat, "trained"))
        phases["evaluation"] = t

        urls = [f"sqlite:///{tmp / 'rec.sqlite'}"] + ([os.environ["ABLATE_BENCH_PG"]] if "ABLATE_BENCH_PG" in os.environ
                                                      else [])
        for url in urls:
            times = [record_once(url, result, recorder.rows) for _ in range(args.repeats)]
            print(f"recording on {url.split(':')[0]}: {', '.join(f'{x:.3f}' for x in times)} s "
                  f"({len(result['samples'])} samples, {len(result['metrics'])} metrics, {len(recorder.rows)} step rows)")
            phases[f"recording ({url.split(':')[0]})"] = statistics.median(times)
        eng = record.engine(urls[0])
        run_id = record.start_run(eng, sweep="bench", config={"x": 1}, seed=0, axes={a: "-" for a in record.AXES})
        record.finish_run(eng, run_id, base_evaluation_id=None, train_steps=[], trained={**result, "settings": {}})
        t, _ = timed(lambda: cell.summary(eng, run_id))
        phases["summary"] = t
    total = sum(v for k, v in phases.items() if "postgres" not in k)
    print(f"\n{'pair':<18}{'A (s)':>9}{'B (s)':>9}{'A/B':>8}   paired A - B, % of B (mean ± se)")
    for name, a, b, ratio, (d, se) in rows:
        print(f"{name:<18}{a:>9.2f}{b:>9.2f}{ratio:>8.3f}   {100 * d:+.1f} ± {100 * se:.1f}")
    print(f"\none cell's phases (total {total:.1f} s; the base evaluation runs once per model and eval settings):")
    for name, t in phases.items():
        print(f"  {name:<52}{t:>8.2f} s {100 * t / total:>5.1f}%")
    print("metrics recorded per eval set:", ", ".join(metrics.names()))


if __name__ == "__main__":
    main()
