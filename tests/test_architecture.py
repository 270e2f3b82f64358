"""The package's layering, read from its own import statements.

Data flow one way: schedule -> scores -> field -> solvers -> flow (the engine) ->
learning and keeping flows -> NumPyro objects -> inference -> checks -> programs. Every
module of the package must be placed in `LAYERS`; a module may import only modules of
its own or a lower layer, the import graph has no cycle, and no module imports another
module's private (underscore) names. The engine imports nothing from NumPyro, training
or the file system.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "numpyro_inflow"

# Lower number = lower layer. Same-layer imports are allowed (the cycle check still applies).
LAYERS = {
    # shared utilities
    "_version": 0,
    "_checks": 0,
    "_io": 0,
    # the engine
    "schedule": 1,
    "scores": 2,
    "field": 3,
    "solvers": 4,
    "flow": 5,
    # learning and keeping flows
    "nets": 6,
    "denoiser": 7,
    "datasets": 8,
    "checkpoint": 8,
    "persistence": 8,
    "train": 9,
    "pretrained": 9,
    # NumPyro objects and likelihoods
    "numpyro": 10,
    "observations": 11,
    # inference
    "laplace": 12,
    "kernels": 12,
    # checks of inference
    "evaluation": 13,
    "calibration": 13,
    "coverage": 14,
    "diagnostics": 14,
    # programs (they may use the public namespace itself)
    "demo": 15,
    "cli": 16,
}
ENGINE = ("schedule", "scores", "field", "solvers", "flow")
ENGINE_FORBIDDEN = ("numpyro", "optax", "flax", "orbax", "os", "pathlib", "json", "shutil", "tqdm")
PROGRAMS = ("demo", "cli")


def _modules() -> dict[str, ast.Module]:
    return {
        p.stem: ast.parse(p.read_text(), filename=str(p))
        for p in sorted(PACKAGE.glob("*.py"))
        if p.stem != "__init__"
    }


def _imports(name: str, tree: ast.Module):
    """(imported package module or None, external top-level module or None, names) per import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 1:  # from .x import y  /  from . import x
                if node.module:
                    yield node.module.split(".")[0], None, names
                else:
                    for n in names:
                        yield n, None, []
            elif node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top == "numpyro_inflow":
                    sub = node.module.split(".")[1:]
                    yield (sub[0] if sub else "__init__"), None, names
                else:
                    yield None, top, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "numpyro_inflow":
                    yield (parts[1] if len(parts) > 1 else "__init__"), None, []
                else:
                    yield None, parts[0], []


def _graph() -> dict[str, set[str]]:
    return {
        name: {m for m, _, _ in _imports(name, tree) if m is not None and m != name}
        for name, tree in _modules().items()
    }


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(LAYERS))
    assert not missing, f"place these modules in LAYERS (tests/test_architecture.py): {missing}"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for name, deps in graph.items():
        for dep in deps:
            if dep == "__init__":
                if name not in PROGRAMS:
                    found.append(f"{name} -> numpyro_inflow (the public namespace)")
            elif LAYERS[dep] > LAYERS[name]:
                found.append(f"{name} (layer {LAYERS[name]}) -> {dep} (layer {LAYERS[dep]})")
    return found


def test_no_upward_imports():
    upward = _upward(_graph())
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_upward_check_finds_an_upward_import():
    # negative control: the engine importing the NumPyro layer, or the public namespace
    assert _upward({"flow": {"numpyro"}}) == ["flow (layer 5) -> numpyro (layer 10)"]
    assert _upward({"laplace": {"__init__"}}) != []
    assert _upward({"numpyro": {"flow"}, "cli": {"__init__"}}) == []


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detector_finds_a_cycle():
    # negative control for the check above
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_private_names_cross_modules():
    crossing = []
    for name, tree in _modules().items():
        for mod, _, names in _imports(name, tree):
            if mod is None or mod == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.endswith("__")]
            crossing += [f"{name} imports {mod}.{n}" for n in private]
    assert not crossing, "private names used across modules:\n" + "\n".join(crossing)


@pytest.mark.parametrize("name", ENGINE)
def test_engine_knows_no_numpyro_training_or_disk(name):
    tree = _modules()[name]
    bad = sorted({ext for _, ext, _ in _imports(name, tree) if ext in ENGINE_FORBIDDEN})
    assert not bad, f"{name} (engine) imports {bad}"
