"""`python -m ablate` / `ablate`: run one cell, or a grid with -m (Hydra multirun).

`ablate probe [overrides]` runs the off-policy hint probe (ablate/probe.py) on the same config;
`ablate build [overrides]` makes and evaluates the starting model once, recorded as a run (ablate/build.py);
`ablate query ...`, `ablate db ...` and `ablate report ...` reach the query, database and report commands.

Quiet by default: library deprecation warnings (FutureWarning, DeprecationWarning, the libraries' UserWarnings)
and transformers' advice are hidden; `-v` / `--verbose` anywhere on the command line, ABLATE_LOG=debug,
hydra.verbose=... or PYTHONWARNINGS shows them.
"""

import os
import sys
import threading
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ablate import handle_stop_signals

# A source checkout reads ./conf; an installed wheel ships it as the package ablate.conf.
_SOURCE_CONF = Path(__file__).resolve().parent.parent / "conf"
CONFIG_PATH = str(_SOURCE_CONF) if (_SOURCE_CONF / "config.yaml").is_file() else "pkg://ablate.conf"


LIBRARIES = r"(transformers|trl|torch|accelerate|peft|datasets|huggingface_hub|tokenizers|math_verify)(\.|$)"
VERBOSE_FLAGS = ("-v", "--verbose")


def quiet(verbose: bool) -> None:
    """Hide library deprecation warnings and advice unless `verbose` (or PYTHONWARNINGS sets its own filters)."""
    if verbose:
        warnings.simplefilter("default")  # every warning once per place, DeprecationWarning included
        return
    if sys.warnoptions:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=LIBRARIES)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")  # a cell's ranks


def _launch(run, cfg: DictConfig) -> str:
    from ablate.validate import ConfigError

    if threading.current_thread() is threading.main_thread():
        # Again in the cell's own process: a submitit job (hydra/launcher=slurm or local) runs this function, not
        # main(), and submitit ignores SIGTERM, so scancel and pre-emption would not stop the cell.
        handle_stop_signals()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep = Path(hc.sweep.dir if multirun else hc.run.dir).as_posix()
    try:
        status = run(cfg, sweep=sweep, output_dir=hc.runtime.output_dir)
    except ConfigError as err:  # nothing was loaded or written: one line; a sweep goes on with its next cell
        if not multirun:
            print(f"ablate: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"ablate: job #{hc.job.num} failed: {err}", file=sys.stderr)
        return "failed"
    if status in ("failed", "interrupted") and not multirun:
        sys.exit(1)
    return status


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _cell(cfg: DictConfig) -> str:
    from ablate import cell  # heavy imports after Hydra has parsed the command line (fast --help)

    return _launch(cell.run, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _probe(cfg: DictConfig) -> str:
    from ablate import probe

    return _launch(probe.run, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _build(cfg: DictConfig) -> str:
    from ablate import build

    return _launch(build.run, cfg)


def main() -> None:
    handle_stop_signals()  # a KeyboardInterrupt: the running cell is recorded as interrupted
    verbose = any(a in VERBOSE_FLAGS for a in sys.argv[1:])
    sys.argv[1:] = [a for a in sys.argv[1:] if a not in VERBOSE_FLAGS]
    quiet(verbose or os.environ.get("ABLATE_LOG", "").lower() in ("debug", "info")
          or any(a.startswith("hydra.verbose=") for a in sys.argv[1:]))
    if len(sys.argv) > 1 and sys.argv[1] in ("query", "db", "report"):
        command, argv = sys.argv[1], sys.argv[2:]
        if command == "query":
            from ablate.query import main as query_main

            sys.exit(query_main(argv))
        if command == "report":
            from ablate.report import main as report_main

            sys.exit(report_main(argv))
        from ablate.record import db_main

        sys.exit(db_main(argv))
    if len(sys.argv) > 1 and sys.argv[1] in ("probe", "build"):  # the same Hydra config and overrides
        command = sys.argv.pop(1)
        (_probe if command == "probe" else _build)()
        return
    _cell()


if __name__ == "__main__":
    main()
