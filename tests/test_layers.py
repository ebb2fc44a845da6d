"""The code's shape: imports only go down the layers (entry -> run -> train/evaluate -> domain -> store), there is
no import cycle, and every module imports on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ablate"
# top to bottom; a module may import its own layer and the layers below it, never one above
LAYERS = {
    # the commands (query and report read the store; launch is one rank of a cell on several processes)
    "entry": ["ablate.__main__", "ablate.report", "ablate.query", "ablate.launch"],
    "run": ["ablate.cell", "ablate.probe", "ablate.build", "ablate.validate"],
    "train/evaluate": ["ablate.train", "ablate.sft", "ablate.evaluate", "ablate.objectives"],
    "domain": ["ablate.data", "ablate.world", "ablate.models", "ablate.teacher", "ablate.directions", "ablate.search",
               "ablate.engines"],
    "pure domain": ["ablate.problem", "ablate.grading", "ablate.markers", "ablate.metrics", "ablate.stats",
                    "ablate.ranks"],
    "store": ["ablate.record"],
    "root": ["ablate"],
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _layer(module: str) -> int:
    for rank, members in enumerate(LAYERS.values()):
        if any(module == m or (m != "ablate" and module.startswith(m + ".")) for m in members):
            return rank
    raise AssertionError(f"{module}: in no layer; add it to LAYERS in tests/test_layers.py")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """ablate modules that `module` imports, at the top or inside functions."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != module}
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward imports and import cycles in a module -> imported modules graph."""
    found = [f"{m} ({_layer_name(m)}) imports {d} ({_layer_name(d)})" for m, deps in graph.items() for d in deps
             if _layer(d) < _layer(m)]
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            found.append("import cycle: " + " -> ".join([*path, m]))
        elif state.get(m) != 2:
            state[m] = 1
            for d in sorted(graph.get(m, ())):
                visit(d, [*path, m])
            state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    return found


def _layer_name(module: str) -> str:
    return list(LAYERS)[_layer(module)]


def test_imports_go_down_the_layers_without_cycles():
    modules = _modules()
    assert violations({m: _imports(m, p, set(modules)) for m, p in modules.items()}) == []


def test_the_check_finds_upward_imports_and_cycles(tmp_path):
    fake = tmp_path / "teacher.py"
    fake.write_text("def f():\n    from ablate import cell\n")  # a lazy import counts too
    deps = _imports("ablate.teacher", fake, {"ablate.cell", "ablate.teacher"})
    assert violations({"ablate.teacher": deps}) == ["ablate.teacher (domain) imports ablate.cell (run)"]
    with pytest.raises(AssertionError, match="in no layer"):  # a new module must be placed
        _layer("ablate.newmodule")
    assert violations({"ablate.data": {"ablate.world"}, "ablate.world": {"ablate.data"}}) == [
        "import cycle: ablate.data -> ablate.world -> ablate.data"]


@pytest.mark.parametrize("module", sorted(_modules()))
def test_each_module_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
