"""One training step per objective on the tiny model changes the parameters; teacher prompts never truncate."""

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from ablate import data, models, train
from tests.conftest import alternating_reward

OBJECTIVES = ["grpo", "sdpo", "sdpo_hybrid", "sdft"]


def _setup(fast_cfg, tmp_path, *overrides):
    cfg = OmegaConf.to_container(fast_cfg(*overrides), resolve=True)
    path = models.resolve_path(cfg["model"], cfg["cache_dir"])
    _, tokenizer = models.load(path)
    problems = data.select_coverage(data.load(cfg["data"]["source"], "data.source"), 8, 1, 0)
    return cfg, path, tokenizer, problems


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_step_changes_parameters(objective, fast_cfg, tmp_path):
    cfg, path, tokenizer, problems = _setup(fast_cfg, tmp_path, f"objective={objective}", "richness=high",
                                            "objective.trainer.learning_rate=1e-2")
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}
    trained, steps = train.train(cfg, path, tokenizer, problems, str(tmp_path / "out"),
                                 reward_funcs=[alternating_reward])
    after = trained.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k].detach().cpu())]
    assert changed, f"{objective}: no parameter changed after one step"
    logged = {r["name"] for r in steps}
    assert "loss" in logged
    if objective != "grpo":  # teacher-context token lengths are logged with TRL's metrics
        assert "teacher/prompt_tokens_mean" in logged
    # epistemic markers of the rollouts, every step
    assert {"rollout/markers_per_response", "rollout/mean_length"} <= logged, logged


def test_sdft_fails_loudly_instead_of_truncating(fast_cfg, tmp_path):
    cfg, path, tokenizer, problems = _setup(fast_cfg, tmp_path, "objective=sdft", "richness=high",
                                            "trainer.max_prompt_length=80")
    with pytest.raises(train.TeacherContextTooLong, match="tokens > max_prompt_length=80"):
        train.train(cfg, path, tokenizer, problems, str(tmp_path / "out"))


def test_sdpo_sibling_context_fails_loudly_instead_of_truncating(fast_cfg, tmp_path):
    cfg, path, tokenizer, problems = _setup(fast_cfg, tmp_path, "objective=sdpo", "richness=high",
                                            "+objective.trainer.max_reprompt_len=90")
    with pytest.raises(train.TeacherContextTooLong, match="tokens > max_prompt_length=90"):
        train.train(cfg, path, tokenizer, problems, str(tmp_path / "out"), reward_funcs=[alternating_reward])
