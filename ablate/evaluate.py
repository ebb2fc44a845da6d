"""Evaluation: batched sampling, grading, response lengths, epistemic markers, per-set aggregates."""

import time

import torch
from tqdm.auto import tqdm

from ablate import check_stop, engines, ranks
from ablate.grading import exact_match, is_correct
from ablate.markers import count_markers
from ablate.metrics import aggregate
from ablate.problem import Problem


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str | list[dict]], *, temperature: float, top_p: float, max_new_tokens: int,
             batch_size: int, chat_template_kwargs: dict | None = None, desc: str = "generate") -> list[tuple[str, int]]:
    """(response text, response length in tokens) for each prompt (a user message or a chat), in order."""
    model.eval()
    device = next(model.parameters()).device
    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False, **(chat_template_kwargs or {}))
             for c in chats]
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    out: list[tuple[str, int]] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False):
        check_stop()
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            n = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    return out


def score(completion: str, length: int, problem: Problem, words, mode: str) -> dict:
    """One per-sample record: correctness, length and marker counts."""
    counts = count_markers(completion, words, mode)
    return {"problem_id": problem.id, "completion": completion, "answer": problem.answer,
            "correct": is_correct(completion, problem.answer, problem.grader),
            "exact_match": exact_match(completion, problem.answer, problem.grader),
            "length": length, "markers": sum(counts.values()), "marker_counts": counts}


def evaluate(model, tokenizer, suites: dict[str, list[Problem]], ev: dict, chat_template_kwargs: dict | None,
             stage: str) -> dict:
    """Sample k responses per problem on every eval set; return samples, metrics and timing.

    On several processes (ablate/launch.py) every rank samples and scores its block of the (problem, sample)
    jobs with seed eval.seed + rank, and every rank gets all samples back in the one-process order: each sample
    once. The streams differ from one process's, so launch.processes is part of a cell's config hash."""
    start = time.perf_counter()
    rank, _ = ranks.rank_world()
    torch.manual_seed(ev["seed"] + rank)
    samples, metrics = [], []
    gen = engines.generator(ev, generate)  # eval.engine: hf (generate above) | vllm: the same rows from vLLM
    for name, problems in suites.items():
        jobs, real = ranks.shard([(p, i) for p in problems for i in range(ev["k"])])
        results = gen(model, tokenizer, [p.messages() for p, _ in jobs], temperature=ev["temperature"],
                      top_p=ev["top_p"], max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                      chat_template_kwargs=chat_template_kwargs, desc=f"eval {stage} {name}")
        rows = [{"eval_set": name, "sample_idx": i, **score(text, n, p, ev["markers"]["words"], ev["markers"]["mode"])}
                for (p, i), (text, n) in zip(jobs[:real], results[:real], strict=True)]
        rows = ranks.all_gather(rows)
        samples += rows
        metrics += aggregate(rows, name)
    return {"samples": samples, "metrics": metrics, "seconds": time.perf_counter() - start}


def sample(model, tokenizer, problems: list[Problem], cfg: dict, k: int, seed: int, stage: str,
           eval_set: str) -> tuple[dict, list[list[dict]]]:
    """k scored samples per problem with the eval sampling settings of `cfg`: (evaluation result, samples per
    problem, aligned with `problems`, which may repeat). The hint probe and the SFT sets sample this way."""
    ev = {**cfg["eval"], "k": k, "seed": seed}
    result = evaluate(model, tokenizer, {eval_set: problems}, ev, cfg["model"].get("chat_template_kwargs") or {}, stage)
    samples = result["samples"]
    groups = [samples[i * k:(i + 1) * k] for i in range(len(problems))]
    if len(samples) != k * len(problems) or any(s["problem_id"] != p.id for p, g in zip(problems, groups) for s in g):
        raise RuntimeError("evaluate returned samples out of problem order")
    return result, groups
