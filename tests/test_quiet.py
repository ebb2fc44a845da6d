"""Quiet by default: a cell's terminal shows ablate's progress and summary, not library deprecation warnings;
-v (or ABLATE_LOG=debug) shows them."""

import os
import subprocess
import sys
import warnings

from ablate.__main__ import quiet
from tests.conftest import FAST

LIBRARY_WARNINGS = ("FutureWarning", "DeprecationWarning", "UserWarning", "gradient_checkpointing")


def test_a_default_cell_prints_no_library_warnings(tmp_path):
    args = [sys.executable, "-m", "ablate", *FAST, f"cache_dir={tmp_path / 'cache'}",
            f"db.url=sqlite:///{tmp_path / 'results.sqlite'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "ABLATE_LOG", "TRANSFORMERS_VERBOSITY")}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[completed]" in proc.stdout
    shown = [w for w in LIBRARY_WARNINGS if w in proc.stderr or w in proc.stdout]
    assert shown == [], proc.stderr[-3000:]


def _shown(verbose: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:  # restores the filters that quiet() sets
        warnings.resetwarnings()
        quiet(verbose)
        warnings.warn_explicit("`gradient_checkpointing` is deprecated", FutureWarning, "training_args.py", 1,
                               module="transformers.training_args")
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="trl.trainer")
        warnings.warn_explicit("advice", UserWarning, "y.py", 1, module="torch.utils")
    return [str(w.message) for w in seen]


def test_verbose_shows_what_the_default_hides(monkeypatch):
    for name in ("TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS"):  # set, then deleted: recorded, so restored after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "warnoptions", [])
    assert _shown(verbose=False) == []
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"  # and a cell's other processes get the filters:
    assert os.environ["PYTHONWARNINGS"] == "ignore::FutureWarning,ignore::DeprecationWarning"
    assert _shown(verbose=True) == ["`gradient_checkpointing` is deprecated", "old", "advice"]
