"""Guided vs unguided SFT sets (the paper's Sec. 4): the model's own correct responses, trained on the plain prompt."""

import re

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from ablate import data, evaluate, grading, models, sft, train

K = 4


def _answer(prompt: str) -> int:
    return eval(re.search(r"What is ([\d +-]+)\?", prompt).group(1))  # noqa: S307 (our own arithmetic prompts)


def stub_generate(seen: list):
    """Unhinted: samples 1 and 3 of each problem are right ("plain"); hinted: samples 0, 1 and 2 ("guided")."""

    def generate(model, tokenizer, prompts, **_):
        prompts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]  # chats: the user message
        seen.append(list(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            idx, ans, hinted = i % K, _answer(prompt), "Correct solution:" in prompt
            right = idx < 3 if hinted else idx % 2 == 1
            said = ans if right else ans + 1
            text = f"<think>{'guided' if hinted else 'plain wait'} {idx}</think>\n\\boxed{{{said}}}"
            out.append((text, len(text)))
        return out

    return generate


def _setup(fast_cfg, *overrides):
    cfg = OmegaConf.to_container(fast_cfg("eval.batch_size=1000", f"objective.sft.samples_per_problem={K}",
                                          *overrides), resolve=True)
    path = models.resolve_path(cfg["model"], cfg["cache_dir"])
    problems = data.select_coverage(data.load(cfg["data"]["source"], "data.source"), 3, 2, 0)  # 3 problems x 2
    return cfg, path, problems


@pytest.mark.parametrize("objective", ["sft_unguided", "sft_guided"])
def test_sets_keep_only_correct_responses_under_the_plain_prompt(objective, fast_cfg, monkeypatch):
    seen = []
    monkeypatch.setattr(evaluate, "generate", stub_generate(seen))
    cfg, path, problems = _setup(fast_cfg, f"objective={objective}", "objective.sft.max_per_problem=2",
                                 "richness=high", "richness.source=sibling")
    rows, stats = sft.build_rows(cfg, path, problems)
    guided = objective == "sft_guided"
    assert len(seen) == (2 if guided else 1)
    assert len(rows) == 2 * len(problems) == stats["sft/rows"]  # 2 correct kept of K per problem occurrence
    plain = {p.prompt: p for p in problems}
    for row in rows:
        prompt, completion = row["prompt"][0]["content"], row["completion"][0]["content"]
        assert prompt in plain  # guided rows too: the hint is never trained on
        assert grading.is_correct(completion, plain[prompt].answer)
        assert ("guided" in completion) == guided
    if guided:  # sampled with the hint: the teacher prompt around the first correct unguided response (sample 1)
        assert all("Correct solution:" in p and "plain wait 1" in p for p in seen[1])
        assert [r["completion"][0]["content"].split("</think>")[0] for r in rows[:2]] == ["<think>guided 0",
                                                                                          "<think>guided 1"]
    assert stats["sft/sampled_accuracy"] == (0.75 if guided else 0.5)
    assert stats["sft/markers_per_response"] == (0.0 if guided else 1.0)  # "wait" in every unguided response


def test_guided_with_reference_solutions_hints_every_problem_without_an_unguided_pass(fast_cfg, monkeypatch):
    seen = []
    monkeypatch.setattr(evaluate, "generate", stub_generate(seen))
    cfg, path, problems = _setup(fast_cfg, "objective=sft_guided", "richness=medium", "richness.source=reference")
    rows, stats = sft.build_rows(cfg, path, problems)
    assert len(seen) == 1 and len(seen[0]) == K * len(problems)
    solutions = [p.solution.split("</think>")[1].strip() for p in problems for _ in range(K)]  # medium: no thinking
    assert all(f"Correct solution:\n\n{s}\n" in prompt for s, prompt in zip(solutions, seen[0], strict=True))
    assert stats["sft/rows"] == 2 * len(problems) and stats["sft/sampled"] == K * len(problems)


def test_no_correct_response_fails_with_one_line(fast_cfg):
    cfg, path, problems = _setup(fast_cfg, "objective=sft_unguided")  # the random tiny model gets nothing right
    with pytest.raises(ValueError, match="none of 24 sampled responses is correct.*samples_per_problem"):
        sft.build_rows(cfg, path, problems)


def test_one_sft_step_changes_parameters(fast_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "generate", stub_generate([]))
    cfg, path, problems = _setup(fast_cfg, "objective=sft_guided", "objective.trainer.learning_rate=1e-2")
    _, tokenizer = models.load(path)
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}
    trained, steps = train.train(cfg, path, tokenizer, problems, str(tmp_path / "out"))
    after = trained.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k].detach().cpu())], "no parameter changed"
    logged = {(r["step"], r["name"]) for r in steps}
    assert {(0, "sft/rows"), (0, "sft/markers_per_response"), (1, "loss")} <= logged, logged
