"""Evaluation: batched sampling, grading, response lengths, epistemic markers, per-set aggregates."""

import math
import time
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from ablate import check_stop
from ablate.data import Problem
from ablate.grading import exact_match, is_correct
from ablate.markers import count_markers


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


def aggregate(samples: list[dict], eval_set: str) -> list[dict]:
    """Per-eval-set metrics: accuracy (avg@k), pass@k, exact match, length and marker rates, with stderr.

    Standard errors are over problems (the k samples of one problem are averaged first).
    """
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_problem[s["problem_id"]].append(s)
    per_problem_acc = [sum(s["correct"] for s in ss) / len(ss) for ss in by_problem.values()]
    n = len(samples)
    tokens = sum(s["length"] for s in samples)
    values = {
        "accuracy": sum(per_problem_acc) / len(per_problem_acc),
        "accuracy_stderr": _stderr(per_problem_acc),
        "pass_at_k": sum(any(s["correct"] for s in ss) for ss in by_problem.values()) / len(by_problem),
        "exact_match": sum(s["exact_match"] for s in samples) / n,
        "mean_length": tokens / n,
        "markers_per_response": sum(s["markers"] for s in samples) / n,
        "markers_per_1k_tokens": 1000 * sum(s["markers"] for s in samples) / tokens if tokens else None,
        "n_problems": len(by_problem),
        "n_samples": n,
    }
    for word in samples[0]["marker_counts"] if samples else ():
        values[f"marker/{word}"] = sum(s["marker_counts"][word] for s in samples) / n
    return [{"eval_set": eval_set, "name": k, "value": v} for k, v in values.items()]


def _stderr(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def evaluate(model, tokenizer, suites: dict[str, list[Problem]], ev: dict, chat_template_kwargs: dict | None,
             stage: str) -> dict:
    """Sample k responses per problem on every eval set; return samples, metrics and timing."""
    start = time.perf_counter()
    torch.manual_seed(ev["seed"])
    samples, metrics = [], []
    for name, problems in suites.items():
        jobs = [(p, i) for p in problems for i in range(ev["k"])]
        results = generate(model, tokenizer, [p.messages() for p, _ in jobs], temperature=ev["temperature"],
                           top_p=ev["top_p"], max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                           chat_template_kwargs=chat_template_kwargs, desc=f"eval {stage} {name}")
        rows = [{"eval_set": name, "sample_idx": i, **score(text, n, p, ev["markers"]["words"], ev["markers"]["mode"])}
                for (p, i), (text, n) in zip(jobs, results, strict=True)]
        samples += rows
        metrics += aggregate(rows, name)
    return {"samples": samples, "metrics": metrics, "seconds": time.perf_counter() - start}
