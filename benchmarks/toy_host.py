"""What the toy-world benchmarks share before they measure: the personal concepts a command
names, and an in-process ComfyUI booted for one-thread CPU timing."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from omg_core.toyworld import scenes as S


def concept_names(text: str) -> list[str]:
    """``--concepts``: comma-separated personal concepts, each one of the toy world's."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(S.PERSONAL_OBJECTS))
    if unknown or not names:
        raise SystemExit(f"--concepts: {unknown or 'none'} not among {', '.join(S.PERSONAL_OBJECTS)}")
    return names


def boot(threads: int, flush_denormal: bool = False) -> None:
    """ComfyUI in this process (no custom nodes), with ``threads`` torch threads (and denormals
    flushed to zero when asked: faster bf16 training on some CPUs, a different rounding)."""
    repo = Path(__file__).resolve().parent.parent
    for p in (repo / "scripts", repo):
        if str(p) not in sys.path:
            sys.path.append(str(p))
    import comfy_host

    torch.set_num_threads(threads)
    if flush_denormal:
        torch.set_flush_denormal(True)
    comfy_host.boot(load_nodes=False)
