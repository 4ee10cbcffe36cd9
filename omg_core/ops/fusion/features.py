"""The feature rows a closed-form fusion fits on, de-duplicated across concepts
and prompts (see the package docstring for why shared rows are fitted once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Text-feature rows closer than this (relative distance) are one feature: the
# "a photo of" rows of two concepts differ only by what their text-encoder
# updates do to them, and fitting both exactly would blow up ΔW along their
# tiny difference.
TEXT_DEDUPE_TOL = 1e-2


@dataclass(frozen=True)
class FeatureSet:
    """The distinct feature rows a layer is fitted on, and who uses each.

    ``membership[i, r]`` is the share of row r's occurrences that belong to
    concept i (columns sum to 1): row r is fitted towards
    Σ_i membership[i, r] · ΔW_i x_r.
    """

    rows: torch.Tensor  # [m, n] float64
    membership: torch.Tensor  # [N, m] float64
    given: tuple[int, ...]  # rows given per concept
    labels: tuple[str, ...] = ()

    def shared(self) -> torch.Tensor:
        """Rows used by more than one concept."""
        return (self.membership > 0).sum(0) > 1

    def owned(self, i: int) -> torch.Tensor:
        return self.membership[i] > 0


def dedupe_features(
    per_concept: Sequence[torch.Tensor | None],
    labels: Sequence[Sequence[str] | None] | None = None,
    tol: float = 1e-4,
) -> FeatureSet:
    """Collapse rows that are equal within ``tol`` (relative) across all concepts and prompts."""
    n_concepts = len(per_concept)
    blocks, owners, names = [], [], []
    for i, x in enumerate(per_concept):
        if x is None or x.shape[0] == 0:
            continue
        blocks.append(x.double())
        owners += [i] * x.shape[0]
        lab = labels[i] if labels is not None and labels[i] is not None else None
        names += list(lab) if lab is not None else [""] * x.shape[0]
    if not blocks:
        raise ValueError("no feature rows to fit; give each concept at least one prompt")
    allrows = torch.cat(blocks)
    norms = allrows.norm(dim=1)
    # cdist's matrix-product shortcut (used above 25 rows) leaves a row ~1e-8 from itself, more
    # than a tight tol: then a row matched nothing, not even itself, and its membership was 0/0.
    distance = torch.cdist(allrows, allrows, compute_mode="donot_use_mm_for_euclid_dist")
    close = distance <= tol * torch.maximum(norms[:, None], norms[None, :]).clamp(min=1e-30)
    close.fill_diagonal_(True)
    rep = torch.full((allrows.shape[0],), -1, dtype=torch.long)
    uniques = []
    for r in range(allrows.shape[0]):
        if rep[r] >= 0:
            continue
        members = close[r] & (rep < 0)
        rep[members] = len(uniques)
        uniques.append(r)
    counts = torch.zeros(n_concepts, len(uniques), dtype=torch.float64)
    counts.index_put_((torch.tensor(owners), rep), torch.ones(len(owners), dtype=torch.float64), accumulate=True)
    membership = counts / counts.sum(0, keepdim=True)
    given = tuple(int(x.shape[0]) if x is not None else 0 for x in per_concept)
    return FeatureSet(allrows[uniques], membership, given, tuple(names[r] for r in uniques))
