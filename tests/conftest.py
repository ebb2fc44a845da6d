import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

CONF = Path(__file__).resolve().parent.parent / "conf"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# A cell small enough for a unit test: random tiny model, one step, a handful of eval samples.
FAST = [
    "model.build.warmup_steps=0", "model.max_new_tokens=12", "data.source.n=120", "data.heldout=4",
    "eval.k=2", "eval.suites.arith3.n=3", "trainer.max_steps=1", "trainer.per_device_train_batch_size=4",
    "trainer.num_generations=4", "trainer.max_completion_length=12",
]


def make_cfg(*overrides: str, tmp: Path | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"cache_dir={tmp / 'cache'}", f"db.url=sqlite:///{tmp / 'results.sqlite'}"] if tmp else []
        return compose(config_name="config", overrides=[*FAST, *extra, *overrides])


@pytest.fixture
def fast_cfg(tmp_path):
    return lambda *o: make_cfg(*o, tmp=tmp_path)


def alternating_reward(completions, **_):
    """A reward with signal for a random model: half of each group succeeds."""
    return [float(i % 2) for i in range(len(completions))]
