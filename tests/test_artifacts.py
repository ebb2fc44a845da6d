"""Built models: deterministic on one machine (fixed threads), keyed by the corpus they saw, and a shipped artifact
with the same recipe is used instead of building."""

import hashlib
import json

import pytest

from ablate import models
from tests.test_world import _testbed_cfg


def _small_build(cfg):
    return {**cfg["model"]["build"], "hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2,
            "warmup_steps": 6, "batch_size": 4, "task": [{**t, "n": 12} for t in cfg["model"]["build"]["task"]]}


def _weights(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_two_builds_of_one_recipe_give_identical_weights(tmp_path):
    build = _small_build(_testbed_cfg())
    a = models.build_tiny(build, str(tmp_path / "a"), name="testbed")
    b = models.build_tiny(build, str(tmp_path / "b"), name="testbed")
    assert a.name == b.name and _weights(a) == _weights(b)
    recipe = json.loads((a / models.RECIPE).read_text())
    assert recipe["build"] == build and recipe["threads"] == build["threads"] and a.name.endswith(recipe["key"])
    # another thread count is another recipe (another key): its floats may differ
    assert models.build_tiny({**build, "threads": 1}, str(tmp_path / "a"), name="testbed").name != a.name


def test_the_key_ignores_evaluation_prompts_the_corpus_never_held(tmp_path):
    cfg = _testbed_cfg()
    build = _small_build(cfg)
    corpus = models.warmup_problems(build, frozenset())
    assert models._tiny_key(build, frozenset({"12+3=?", "unrelated"})) == models._tiny_key(build, frozenset())
    assert models._tiny_key(build, frozenset({corpus[0].prompt})) != models._tiny_key(build, frozenset())


def test_a_shipped_artifact_is_copied_not_rebuilt(tmp_path, monkeypatch):
    build = _small_build(_testbed_cfg())
    made = models.build_tiny(build, str(tmp_path / "maker"), name="testbed")
    shipped = tmp_path / "artifacts"
    (shipped / made.name).mkdir(parents=True)
    for f in made.iterdir():
        if f.is_file():
            (shipped / made.name / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(models, "ARTIFACTS", shipped)
    monkeypatch.setattr(models, "_build", lambda *a: (_ for _ in ()).throw(AssertionError("built, not copied")))
    used = models.build_tiny(build, str(tmp_path / "user"), name="testbed")
    assert used != made and _weights(used) == _weights(made)


@pytest.mark.slow
def test_the_shipped_testbed_model_is_what_its_recipe_builds_here(tmp_path, monkeypatch):
    """On the machine that made it (same CPU model, same torch), `ablate build`'s recipe gives the shipped
    weights bit for bit; elsewhere the floats may differ, which is why the weights are shipped (about 5 minutes)."""
    (shipped,) = [p for p in models.ARTIFACTS.glob("testbed-*") if p.is_dir()]
    recipe = json.loads((shipped / models.RECIPE).read_text())
    if recipe["cpu"] != models._cpu() or recipe["torch"] != models.torch.__version__:
        pytest.skip(f"built on {recipe['cpu']} with torch {recipe['torch']}: bit-identity holds only there")
    monkeypatch.setattr(models, "ARTIFACTS", tmp_path / "none")
    built = models.build_tiny(recipe["build"], str(tmp_path), name=recipe["name"])
    assert built.name == shipped.name and _weights(built) == _weights(shipped)
