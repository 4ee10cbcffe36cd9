"""The layer rule of ``omg_core`` (its package docstring): the pure layers —
families, model, ops, formats, render — import neither ComfyUI nor the layers
that talk to it, not even inside a function, so every one of them runs and is
tested without a host. Read from the source (every import statement, wherever
it stands) and checked by importing the pure layers with ComfyUI blocked."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PURE = ("families", "model", "ops", "formats", "render")
HOST = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "execution", "server")
UPPER = ("omg_core.bridge", "omg_core.pipelines", "omg_core.toyworld", "benchmarks", "comfy_host")
# What each layer may import from omg_core besides itself (the order of the package docstring).
ALLOWED = {
    "families": (),
    "model": ("omg_core.families",),
    "ops": ("omg_core.model", "omg_core.families"),
    "formats": ("omg_core.model", "omg_core.families", "omg_core.ops"),
    "render": ("omg_core.model", "omg_core.families", "omg_core.ops"),
}


def imported_names(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return out


def layer_files(layer: str) -> list[Path]:
    return sorted((REPO / "omg_core" / layer).glob("*.py"))


@pytest.mark.parametrize("layer", PURE)
def test_pure_layer_imports_only_layers_below_it(layer):
    if not layer_files(layer):
        pytest.skip(f"omg_core/{layer} does not exist")
    own = f"omg_core.{layer}"
    wrong = []
    for path in layer_files(layer):
        for line, name in imported_names(path):
            top = name.split(".")[0]
            if top in HOST or name.startswith(UPPER):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
            elif name.startswith("omg_core.") and not name.startswith((own, *ALLOWED[layer])):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name} (not below {own})")
    assert not wrong, "\n".join(wrong)


CHECK = """
import importlib, pkgutil, sys
sys.modules.update({name: None for name in %r})  # `import comfy` now raises ImportError
import omg_core
names = []
for layer in %r:
    try:
        package = importlib.import_module("omg_core." + layer)
    except ModuleNotFoundError:
        continue
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
upper = sorted(m for m in sys.modules if m.startswith(("omg_core.bridge", "omg_core.pipelines", "omg_core.toyworld")))
assert not upper, upper
print(len(names))
"""


def test_pure_layers_import_with_comfy_blocked_and_pull_in_no_upper_layer():
    code = CHECK % (HOST, PURE)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip()) >= 20  # the walk found the layers' modules
