"""The one direction of imports (design.md): no module imports one above it, none hides an import in a function."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "spiketide"

# Lowest first. A module may import only modules of its own or a lower layer.
LAYERS = [
    {"errors"},
    {"neuron", "evaluation", "progress"},
    {"models", "data", "losses", "runs"},
    {"fisher", "robustness", "pruning", "early_exit", "plots"},
    {"callbacks"},
    {"train"},
    {"experiments", "demo"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "spiketide" and len(parts) > 1 else None


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        yield rel.parts[0].removesuffix(".py"), path


def _imports(path: Path):
    """(imported spiketide top-level module, lineno, inside a function?) for every import in the file."""
    tree = ast.parse(path.read_text())
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in funcs for n in ast.walk(f) if n is not f}
    typing_only = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and getattr(b.test, "id", "") == "TYPE_CHECKING"
                   for n in ast.walk(b)}  # never executed: annotations only
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            top = _top(n)
            if top in LAYER:
                yield top, node.lineno, id(node) in inner


def test_every_module_has_a_layer():
    assert {name for name, _ in _modules()} - {"__init__"} <= set(LAYER)


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda v: str(v).rsplit("src/", 1)[-1])
def test_imports_go_down_only(name, path):
    if name == "__init__":
        return
    for top, line, in_function in _imports(path):
        assert LAYER[top] <= LAYER[name], f"{path.name}:{line} imports spiketide.{top}, a layer above {name}"
        if name != "cli":  # the CLI imports lazily to keep --help fast
            assert not in_function, f"{path.name}:{line} imports spiketide.{top} inside a function"


def _loaded(module: str) -> set[str]:
    code = (f"import sys, json, {module}; "
            "print(json.dumps(sorted(m.split('.')[1] for m in sys.modules if m.startswith('spiketide.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("module,forbidden", [
    ("spiketide.fisher", {"train", "data", "runs", "callbacks", "cli", "robustness", "pruning", "experiments"}),
    ("spiketide.neuron", {"models", "data", "losses", "fisher", "train"}),
    ("spiketide.models", {"data", "losses", "fisher", "train", "runs"}),
    ("spiketide.robustness", {"train", "data", "runs", "callbacks", "cli", "experiments"}),
    ("spiketide.early_exit", {"train", "data", "runs", "callbacks", "cli", "experiments", "robustness"}),
    ("spiketide.pruning", {"train", "data", "runs", "callbacks", "cli", "experiments"}),
    ("spiketide.train", {"cli", "experiments", "demo"}),
])
def test_fresh_import_pulls_in_only_lower_layers(module, forbidden):
    assert not (_loaded(module) & forbidden)
