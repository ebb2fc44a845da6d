"""The SFT sets of the paper's Sec. 4: the starting model's own correct responses to the training problems.

`sft_unguided` keeps responses sampled from the plain prompt; `sft_guided` keeps responses sampled while the
model was conditioned on a correct solution (the teacher prompt: `teacher.template`, context cut by richness),
the hint being the model's own first correct unguided response (richness.source=sibling; a problem without one
gets no guided sample, as SDPO gives no loss without a successful sibling) or the dataset's reference solution
(source=reference). Both sets train on the plain student prompt, as in the paper: guided SFT imitates what the
model writes when it already knows the answer.
"""

from ablate import teacher


def build_rows(cfg: dict, model_path, problems: list) -> tuple[list[dict], dict]:
    """(prompt-completion rows for TRL's SFTTrainer, statistics of the set for the train_steps table)."""
    from ablate import models
    from ablate.evaluate import sample

    spec, richness = cfg["objective"]["sft"], cfg["richness"]
    k, keep = spec["samples_per_problem"], spec["max_per_problem"]
    if k < 1 or keep < 1:
        raise ValueError(f"objective.sft.samples_per_problem={k}, objective.sft.max_per_problem={keep}: "
                         "both must be >= 1")
    model, tokenizer = models.load(model_path, cfg["model"]["dtype"])
    groups, sampled = [[] for _ in problems], 0
    if not spec["guided"] or richness["source"] == "sibling":  # a reference-sourced hint needs no unguided pass
        _, groups = sample(model, tokenizer, problems, cfg, k, 2 * cfg["seed"], "sft unguided", "sft")
        sampled = len(problems) * k
    if spec["guided"]:
        hints = [teacher.hint(p, g, richness["source"], "sft unguided")[0] for p, g in zip(problems, groups)]
        pairs = [(p, h) for p, h in zip(problems, hints) if h is not None or richness["content"] == "none"]
        if not pairs:
            raise ValueError(f"objective={cfg['objective']['name']}: no correct unguided response among {sampled} "
                             "to hint with; raise objective.sft.samples_per_problem or set richness.source=reference")
        problems = [p for p, _ in pairs]
        asked = [teacher.hinted(p, h, richness, cfg["teacher"]) for p, h in pairs]
        groups = sample(model, tokenizer, asked, cfg, k, 2 * cfg["seed"] + 1, "sft guided", "sft")[1]
        sampled = len(asked) * k
    del model
    chat = cfg["model"].get("chat_template_kwargs") or {}
    rows, kept = [], []
    for p, g in zip(problems, groups):
        for s in [s for s in g if s["correct"]][:keep]:
            rows.append({"prompt": p.messages(),  # the plain prompt, even for guided
                         "completion": [{"role": "assistant", "content": s["completion"]}],
                         **({"chat_template_kwargs": chat} if chat else {})})
            kept.append(s)
    if not rows:
        raise ValueError(f"objective={cfg['objective']['name']}: none of {sampled} sampled responses is correct, so "
                         "there is nothing to fine-tune on; raise objective.sft.samples_per_problem or start from "
                         "a stronger model")
    stats = {"sft/rows": len(rows), "sft/sampled": sampled,
             "sft/sampled_accuracy": sum(s["correct"] for g in groups for s in g) / max(sampled, 1),
             "sft/mean_length": sum(s["length"] for s in kept) / len(kept),
             "sft/markers_per_response": sum(s["markers"] for s in kept) / len(kept)}
    return rows, stats
