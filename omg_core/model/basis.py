"""The shared orthogonal basis: (seed, slot) -> LoRA down-projection rows.

Concepts trained with down-projections taken from disjoint slots of one
orthonormal basis read from mutually orthogonal input subspaces
(A_i A_jᵀ = 0 exactly), so their updates can simply be added. The basis must
be the same on every machine that trains or loads such a concept, so it is
built in float64 from torch's CPU generator (whose stream is fixed for a
seed) with a sign convention that makes the QR factorisation unique.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=16)
def _orthonormal_basis(seed: int, dim: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    gaussian = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # QR is unique only up to the signs of R's diagonal; fix them positive.
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.T.contiguous()  # rows are the basis vectors


def max_slots(dim: int, rank: int) -> int:
    return dim // rank


def basis_rows(seed: int, slot: int, rank: int, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal rows [rank, dim] for one concept slot.

    Slots are disjoint blocks of ``rank`` rows, so any two slots of the same
    (seed, rank, dim) are exactly orthogonal.
    """
    if rank < 1 or dim < 1:
        raise ValueError(f"rank and dim must be positive (got rank={rank}, dim={dim})")
    slots = max_slots(dim, rank)
    if not 0 <= slot < slots:
        raise ValueError(
            f"slot {slot} is out of range: a {dim}-dimensional layer holds {slots} slots of rank {rank} "
            f"(use a slot from 0 to {slots - 1}, or a smaller rank)"
        )
    rows = _orthonormal_basis(seed, dim)[slot * rank : (slot + 1) * rank]
    return rows.to(dtype).clone()
