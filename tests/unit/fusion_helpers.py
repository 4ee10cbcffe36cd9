"""Small concepts built directly from the data model, for the fusion and orthogonality tests."""

from __future__ import annotations

import torch

from omg_core.model.basis import basis_rows
from omg_core.model.concept import Concept, LowRankUpdate

K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
V = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"


def lowrank(out: int, dim: int, rank: int, seed: int, down: torch.Tensor | None = None, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(out, rank, generator=g, dtype=torch.float64)
    if down is None:
        down = torch.randn(rank, dim, generator=g, dtype=torch.float64)
    return LowRankUpdate(up, down.to(torch.float64), scale)


def concept(name: str, layers: dict, family: str = "sd15", **kw) -> Concept:
    return Concept(name=name, triggers=(name,), family=family, source_format="test", unet=layers, **kw)


def slot_concepts(n: int, dim: int = 48, out: int = 16, rank: int = 4, seed: int = 0, keys=(K, V)) -> list[Concept]:
    """Concepts whose down-projections come from disjoint slots of one orthonormal basis."""
    return [
        concept(
            f"c{i}",
            {
                k: lowrank(out, dim, rank, seed * 100 + i * 10 + j, down=basis_rows(seed, i, rank, dim, torch.float64))
                for j, k in enumerate(keys)
            },
        )
        for i in range(n)
    ]


def random_concepts(n: int, dim: int = 48, out: int = 16, rank: int = 4, seed: int = 0, keys=(K, V)) -> list[Concept]:
    return [
        concept(f"c{i}", {k: lowrank(out, dim, rank, seed * 100 + i * 10 + j) for j, k in enumerate(keys)})
        for i in range(n)
    ]
