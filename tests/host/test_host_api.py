"""Every ComfyUI name the pack touches exists on the host under test.

The pack is tested on several ComfyUI versions (README: "Hosts"); a name that
one of them renamed or dropped fails here, by name, before it fails somewhere
inside a sampling run. The names are read from the pack's own source (imports
from ComfyUI modules and attribute chains on them), so the list cannot fall
behind the code.
"""

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = [
    *REPO.glob("omg_core/**/*.py"),
    *REPO.glob("nodes/*.py"),
    *REPO.glob("scripts/*.py"),
    *REPO.glob("benchmarks/*.py"),
]
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "execution", "server")


def _is_host(module: str) -> bool:
    return module.split(".")[0] in HOST_MODULES


def _attribute_chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def host_names() -> set[str]:
    """Dotted names: ``module`` for imports, ``module:attr.attr`` for what is read from it."""
    names: set[str] = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> host module or module:attr
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _is_host(a.name):
                        names.add(a.name)
                        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _is_host(node.module):
                for a in node.names:
                    names.add(f"{node.module}:{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}:{a.name}"
        for node in ast.walk(tree):
            chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else None
            if not chain or chain[0] not in aliases:
                continue
            module, _, attrs = aliases[chain[0]].partition(":")
            names.add(f"{module}:{'.'.join(filter(None, [attrs, *chain[1:]]))}")
    return names


def _resolve(name: str) -> None:
    """Import the module and walk the attributes, importing submodules on the way."""
    module, _, attrs = name.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attrs.split(".")):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except (AttributeError, ImportError):
            raise AssertionError(f"this ComfyUI has no {name.replace(':', '.')}") from None


def test_the_pack_reads_host_names_from_its_own_source(comfy):
    names = host_names()
    # A few the pack certainly uses, so that a broken reader cannot pass by finding nothing.
    assert {"comfy:lora.model_lora_keys_unet", "comfy:utils.ProgressBar", "comfy_api.latest:io"} <= names, sorted(names)


@pytest.mark.parametrize("name", sorted(host_names()))
def test_every_host_name_the_pack_touches_exists(comfy, name):
    _resolve(name)
