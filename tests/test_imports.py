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
    {"checks", "config", "tables", "neuron", "evaluation", "progress", "adapters", "factory"},
    {"models", "data", "losses", "runs"},
    {"fisher", "robustness", "pruning", "early_exit", "plots", "stats", "nir", "checkpoints"},
    {"train", "callbacks"},  # neither imports the other at run time: the caller hands callbacks to the loop
    {"experiments", "demo", "tracking"},
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


def _loaded(modules: list[str]) -> dict[str, set[str]]:
    """What importing each module pulls in, each in a fresh interpreter (started together: torch takes seconds)."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('spiketide.')})))")
    procs = {m: subprocess.Popen([sys.executable, "-c", code, m], stdout=subprocess.PIPE, text=True) for m in modules}
    out = {}
    for m, p in procs.items():
        stdout, _ = p.communicate(timeout=300)
        assert p.returncode == 0, m
        out[m] = set(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_fresh_import_pulls_in_no_layer_above():
    names = sorted(LAYER)
    loaded = _loaded([f"spiketide.{n}" for n in names])
    for n in names:
        above = {m for m in loaded[f"spiketide.{n}"] if LAYER.get(m, -1) > LAYER[n]}
        assert not above, f"import spiketide.{n} loads {sorted(above)}, a layer above it"
    # the issue's own example: measuring Fisher information needs neither the training loop nor the data
    assert not loaded["spiketide.fisher"] & {"train", "data", "runs", "callbacks"}


def test_parser_imports_no_torch():
    """`spiketide --help` answers at once: building the whole parser imports neither torch nor numpy."""
    code = ("import sys; from spiketide.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_train_imports_neither_fisher_nor_pruning():
    """The training loop is extended by callbacks; the analyses it would drag in stay out of it."""
    loaded = _loaded(["spiketide.train"])["spiketide.train"]
    assert not loaded & {"fisher", "pruning", "callbacks", "robustness", "plots"}
