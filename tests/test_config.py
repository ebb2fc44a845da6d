"""Every option of every config group composes and resolves; TRL fields are checked by name."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate import train
from tests.conftest import CONF

# conf/accelerate holds accelerate's own config files (launch.accelerate_config), which Hydra would list as a group.
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name != "accelerate")


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    extra = ["data.source.path=/tmp/x.jsonl"] if (group, option) == ("data", "jsonl") else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}", *extra],
                      return_hydra_config=group in ("grid", "search"))
    if group in ("grid", "search"):  # a preset multirun grid or search space: it sets the sweeper's params
        params = cfg.hydra.sweeper.params
        assert params and all(v for v in params.values())
        for axis, values in params.items():
            if (CONF / axis).is_dir():
                assert set(values.split(",")) <= set(options(axis)), (axis, values)
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[group]  # the group landed and every interpolation resolved
    if group in ("richness", "coverage", "model", "objective"):
        assert resolved[group]["name"] == option
    if group in ("model", "objective"):  # the TRL fields of every model x objective are real fields
        for objective in options("objective"):
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                c = compose(config_name="config", overrides=[f"{group}={option}", f"objective={objective}"])
            cls, kwargs = train.trainer_args(OmegaConf.to_container(c, resolve=True), "/tmp/out")
            cls(**kwargs)  # TRL's own __post_init__ validation


def test_large_models_carry_paper_settings():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        off = compose(config_name="config", overrides=["model=qwen3_8b"])
        on = compose(config_name="config", overrides=["model=qwen3_8b_thinking"])
    assert off.model.chat_template_kwargs.enable_thinking is False
    assert (off.eval.temperature, off.eval.top_p) == (0.7, 0.8)
    assert on.model.chat_template_kwargs.enable_thinking is True
    assert (on.eval.temperature, on.eval.top_p) == (0.6, 0.95)
    assert off.model.trainer.bf16 is True and off.model.trainer.max_steps == 100
    _, kwargs = train.trainer_args(OmegaConf.to_container(off, resolve=True), "/tmp/out")
    assert kwargs["chat_template_kwargs"] == {"enable_thinking": False}  # rollouts match evaluation
    assert kwargs["model_init_kwargs"] == {"dtype": "bfloat16"}


def test_any_trl_field_can_be_added_and_typos_are_named():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ok = compose(config_name="config", overrides=["objective=grpo", "+objective.trainer.warmup_steps=7",
                                                      "objective.trainer.learning_rate=3e-5"])
        bad = compose(config_name="config", overrides=["objective=sdpo", "+objective.trainer.learnin_rate=1"])
    _, kwargs = train.trainer_args(OmegaConf.to_container(ok, resolve=True), "/tmp/out")
    assert kwargs["warmup_steps"] == 7 and kwargs["learning_rate"] == 3e-5
    with pytest.raises(ValueError, match="objective.trainer.learnin_rate: not a field of SDPOConfig; did you mean learning_rate"):
        train.trainer_args(OmegaConf.to_container(bad, resolve=True), "/tmp/out")


def test_richness_source_follows_objective_unless_set():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose(config_name="config", overrides=["objective=sdpo"]).richness.source == "sibling"
        assert compose(config_name="config", overrides=["objective=sdft"]).richness.source == "reference"
        assert compose(config_name="config", overrides=["richness=reference"]).richness.source == "reference"


@pytest.mark.parametrize("model, objective, rate", [("tiny", "grpo", 1e-6), ("tiny", "sdpo", 1e-5),
                                                    ("qwen3_8b", "rlrt", 1e-6), ("testbed", "grpo", 1e-4),
                                                    ("testbed", "sdpo", 1e-4), ("testbed", "sft_guided", 1e-4)])
def test_learning_rate_is_the_models_else_the_papers(model, objective, rate):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}", f"objective={objective}"])
        assert cfg.objective.trainer.learning_rate == rate
        cfg = compose(config_name="config", overrides=[f"model={model}", f"objective={objective}",
                                                       "objective.trainer.learning_rate=3e-3"])
        assert cfg.objective.trainer.learning_rate == 3e-3  # the command line wins


def test_objectives_without_a_teacher_record_no_richness(monkeypatch):
    from ablate import cell, record

    seen = []
    monkeypatch.setattr(cell, "execute", lambda resolved, sweep, body, kind="cell": seen.append(
        (resolved["richness"]["name"], resolved["objective"]["name"], record.config_hash(resolved))))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for objective in ("grpo", "sft_unguided", "sdpo"):
            for richness in ("low", "high"):
                cell.run(compose(config_name="config", overrides=[f"objective={objective}", f"richness={richness}"]))
    hashes = {o: {h for _, oo, h in seen if oo == o} for o in ("grpo", "sft_unguided", "sdpo")}
    assert [r for r, o, _ in seen if o != "sdpo"] == ["-"] * 4 and [r for r, o, _ in seen if o == "sdpo"] == ["low", "high"]
    assert len(hashes["grpo"]) == len(hashes["sft_unguided"]) == 1 and len(hashes["sdpo"]) == 2  # one cell per level
