"""`ablate build [overrides]`: make the starting model (build the tiny/testbed model, or convert a GGUF) once,
evaluate it, and record that as a run of kind "build": the warm-start's loss curve in
train_steps, the starting model's evaluation as its base evaluation (which every later cell reuses).

Cells build the model themselves when it is missing; this command makes the build a visible, recorded step
(the README's first command runs it before the default sweep).
"""

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ablate import cell, check_stop, record, validate


def run(cfg: DictConfig, sweep: str = "adhoc", output_dir: str | None = None) -> str:
    """Build and record; returns completed | skipped | failed | interrupted."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate.check(resolved)  # a bad value: one line, before anything loads or is written
    for unused in ("probe", "objective", "trainer", "richness", "coverage"):  # no part of a build: out of its hash
        resolved.pop(unused, None)
    resolved.update(objective={"name": "-"}, richness={"name": "-"}, coverage={"name": "-"})  # no axis but the model
    return cell.execute(resolved, sweep, lambda eng, run_id: _run(resolved, eng, run_id), kind="build")


def _run(cfg: dict, eng, run_id: int) -> None:
    import torch

    from ablate import models

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    start = time.perf_counter()
    _, suites = cell.problems(cfg)
    path, _, base_id = cell.starting_model(cfg, eng, suites)
    log_file = Path(path) / models.BUILD_LOG if isinstance(path, Path) else None  # a hub id has no build
    log = json.loads(log_file.read_text()) if log_file and log_file.is_file() else []
    steps = [{"step": int(entry.get("step", 0)), "name": f"build/{name}", "value": float(value)}
             for entry in log for name, value in entry.items()
             if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)]
    check_stop()
    record.finish_run(eng, run_id, base_evaluation_id=base_id, train_steps=steps, trained=None)
    print(f"\nablate: model ready in {path} ({time.perf_counter() - start:.0f} s); run {run_id} records its build "
          f"({len(log)} log entries) and starting-model evaluation\n" + cell.summary(eng, run_id))
