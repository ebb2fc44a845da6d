"""One rank of a cell on several processes (launch.processes > 1): `torchrun ... -m ablate.launch SPEC`.

cell.run starts it through torchrun or `accelerate launch` (cell._spawn) and keeps the run's bookkeeping: the
skip check, the running row, the heartbeat and the final status. Every rank runs the cell's body (cell._run):
problems, starting model, training, evaluation sharded over the ranks; rank 0 alone opens the database. A rank
that fails writes its error to SPEC's folder (rankN.json) for the launching process to record, and exits non-zero:
the launcher then stops the other ranks, so nothing waits forever.
"""

import importlib
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK", 0))
    if rank:
        os.environ["TQDM_DISABLE"] = "1"  # one progress bar per cell (rank 0's); read when tqdm is imported
    from ablate import handle_stop_signals

    handle_stop_signals()  # the launcher stops the ranks with SIGTERM: stop as a cell would
    warnings.resetwarnings()  # the launching process's filters, in its order: the same warnings shown or hidden
    for action, message, category, module, lineno in reversed(spec["warnings"]):
        where, _, name = category.partition(":")
        try:
            warnings.filterwarnings(action, message, getattr(importlib.import_module(where), name), module, lineno)
        except (ImportError, AttributeError):  # a warning class this process cannot name: its filter cannot apply
            pass
    try:
        import torch
        from accelerate import PartialState

        from ablate import cell, record

        # The process group (gloo on CPU, NCCL on GPUs) that TRL's trainer and ablate.ranks then share; cpu as in
        # train.trainer_args, so that the trainer's Accelerator agrees with it.
        PartialState(cpu=not torch.cuda.is_available())
        cfg = spec["config"]
        eng = record.engine(cfg["db"]["url"]) if rank == 0 else None
        rewards = None
        if spec["reward_funcs"] is not None:
            rewards = [getattr(importlib.import_module(m), n) for m, n in (f.split(":") for f in spec["reward_funcs"])]
        cell._run(cfg, eng, spec["run_id"], spec["output_dir"], rewards)
    except BaseException as err:  # noqa: BLE001 - the launching process records it; exit non-zero
        text = str(err).strip().splitlines()
        report = {"rank": rank, "time": time.time(), "error": f"{type(err).__name__}: {text[0] if text else ''}",
                  "traceback": traceback.format_exc()}
        Path(spec["errors"], f"rank{rank}.json").write_text(json.dumps(report))
        print(f"ablate: rank {rank}: {report['error']}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
