"""Models: load any local Hugging Face folder, or build the `tiny` model locally (never from a hub)."""

import hashlib
import json
import logging
import string
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from ablate import data

log = logging.getLogger(__name__)

# ChatML, as in Qwen and SmolLM2: the tiny model speaks the same format as the real ones.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]  # added but not special, so decoding with skip_special_tokens keeps them


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with ChatML special tokens."""
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL + THINK + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    fast.add_tokens(THINK)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tiny_key(cfg: dict, exclude: frozenset[str]) -> str:
    blob = json.dumps({"build": cfg, "exclude": sorted(exclude)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_tiny(build: dict, cache_dir: str, exclude: frozenset[str] = frozenset()) -> Path:
    """Build (once, cached by config hash) a small Qwen3-architecture model and return its folder.

    The model is initialised randomly, then warm-started with TRL's SFTTrainer on the reference solutions of
    `build.task` (a list of problem specs) for `build.warmup_steps` steps, so that it answers in the task's
    format and rewards carry signal. Problems whose prompt is in `exclude` (the evaluation problems) are left
    out of the warm-start, so evaluation never measures memorisation. warmup_steps=0 keeps it random (tests).
    """
    key = _tiny_key(build, exclude)
    folder = Path(cache_dir).expanduser() / "models" / f"tiny-{key}"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(build["seed"])
    tokenizer = char_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=build["hidden_size"], intermediate_size=build["intermediate_size"],
        num_hidden_layers=build["layers"], num_attention_heads=build["heads"], num_key_value_heads=build["heads"],
        head_dim=build["hidden_size"] // build["heads"], max_position_embeddings=build["max_positions"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if build["warmup_steps"] > 0:
        model = _warm_start(tmp, tokenizer, build, exclude)
        model.save_pretrained(tmp)
    tmp.rename(folder)  # atomic: a half-built model is never picked up
    log.info("built tiny model (%d params) in %s", sum(p.numel() for p in model.parameters()), folder)
    return folder


def warmup_problems(build: dict, exclude: frozenset[str]) -> list[data.Problem]:
    """The warm-start problems: every `build.task` spec, less the excluded (evaluation) prompts."""
    return [p for i, spec in enumerate(build["task"]) for p in data.load(spec, f"model.build.task[{i}]", f"warmup{i}")
            if p.prompt not in exclude]


def _warm_start(folder: Path, tokenizer, build: dict, exclude: frozenset[str]):
    from trl import SFTConfig, SFTTrainer

    problems = warmup_problems(build, exclude)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}],
             "completion": [{"role": "assistant", "content": p.solution}]} for p in problems]
    args = SFTConfig(
        output_dir=str(folder / "sft"), max_steps=build["warmup_steps"], per_device_train_batch_size=build["batch_size"],
        learning_rate=build["learning_rate"], lr_scheduler_type="cosine", warmup_steps=10, logging_steps=50,
        bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", seed=build["seed"],
        use_cpu=not torch.cuda.is_available(), max_length=build["max_positions"], dataset_num_proc=None,
        **build.get("sft", {}),  # any other SFTConfig field, e.g. train_sampling_strategy
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer.model


def resolve_path(model_cfg: dict, cache_dir: str, exclude: frozenset[str] = frozenset()) -> Path | str:
    """The folder (or hub id) to load: builds the tiny model when `model.build` is set."""
    if model_cfg.get("build"):
        return build_tiny(dict(model_cfg["build"]), cache_dir, exclude)
    path = model_cfg.get("path")
    if not path:
        raise ValueError(f"model={model_cfg.get('name')}: set model.path to a local folder or a hub id")
    local = Path(path).expanduser()
    if local.exists():
        return local
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"model.path={path}: no such folder; point it at a saved Hugging Face model")
    return path  # a hub id: transformers resolves it (and fails clearly when offline)


def load(path: Path | str, dtype: str = "float32"):
    """(model, tokenizer) from a folder or hub id; tokenizer left-padded for batched generation."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as err:
        first = str(err).strip().splitlines()[0]
        raise FileNotFoundError(f"model.path={path}: cannot load a model there ({first})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
