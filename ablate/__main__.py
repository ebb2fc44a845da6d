"""`python -m ablate` / `ablate`: run one cell, or a grid with -m (Hydra multirun)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

# A source checkout reads ./conf; an installed wheel ships it as the package ablate.conf.
_SOURCE_CONF = Path(__file__).resolve().parent.parent / "conf"
CONFIG_PATH = str(_SOURCE_CONF) if (_SOURCE_CONF / "config.yaml").is_file() else "pkg://ablate.conf"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _cell(cfg: DictConfig) -> str:
    from ablate import cell  # heavy imports after Hydra has parsed the command line (fast --help)

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep = Path(hc.sweep.dir if multirun else hc.run.dir).as_posix()
    status = cell.run(cfg, sweep=sweep, output_dir=hc.runtime.output_dir)
    if status != "completed" and not multirun:
        sys.exit(1)
    return status


def main() -> None:
    _cell()


if __name__ == "__main__":
    main()
