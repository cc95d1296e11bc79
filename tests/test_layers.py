"""The import layers (docs/architecture.md): every module imports alone, and none imports its own layer's peers out of
order or a higher layer, at module top or inside a function (only a script's ``__main__`` block may)."""
import ast
import subprocess
import sys

import pytest

from .conftest import ROOT

# lower number = lower layer; a module may import only modules of a lower number
LAYERS = {
    "utils.errors": 0, "utils.general": 1, "utils.settings": 1, "utils.runlock": 1, "utils.torch_utils": 2, "utils.shapes": 2,
    "utils.loss": 2, "utils.metrics": 2, "utils.datasets": 3, "utils.memory_format": 3, "utils.my_utils": 3,
    "models": 3,  # models
    "utils.anchors": 4, "utils.sparse": 4,  # sparse codec
    "utils.checkpoint": 5,  # artefacts
    "utils.export": 6, "utils.summary": 6, "utils.evaluation": 6,  # evaluation
    "utils.engine": 7,  # engine
    "utils.pruning": 8, "utils.distill": 9, "utils.cs": 9, "utils.gan": 10,  # techniques
    "train": 11, "prune": 11, "my_kd": 11, "my_kd_gan": 11, "test": 11, "detect": 11, "export": 11,  # scripts
}


def module_path(name):
    return ROOT / (name.replace(".", "/") + ".py")


def project_imports(name):
    """``(imported module, line)`` of every project import in ``name``, outside an ``if __name__ == "__main__"``."""
    tree = ast.parse(module_path(name).read_text())
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.dump(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found += [(c, node.lineno) for c in candidates if c in LAYERS]
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in ROOT.glob("*.py")} | {f"utils.{p.stem}" for p in (ROOT / "utils").glob("*.py")}
    modules -= {"utils.__init__"}
    assert modules == set(LAYERS), f"place these in LAYERS: {sorted(modules ^ set(LAYERS))}"


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_imports_go_only_to_lower_layers(name):
    wrong = [f"line {line}: {other}" for other, line in project_imports(name)
             if other != name and LAYERS[other] >= LAYERS[name]]
    assert not wrong, f"{name} (layer {LAYERS[name]}) imports its layer or a higher one: {wrong}"


def test_each_module_imports_alone():
    """Each module in a fresh interpreter state (project modules dropped from ``sys.modules`` between imports), so
    an import that only works after another module was loaded first fails here."""
    code = (
        "import importlib, sys\n"
        "bad = []\n"
        f"for name in {sorted(LAYERS)!r}:\n"
        "    for m in [m for m in sys.modules if m == 'models' or m.startswith('utils') or m in "
        f"{sorted(n for n in LAYERS if '.' not in n)!r}]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
