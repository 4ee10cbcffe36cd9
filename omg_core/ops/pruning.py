"""Rank pruning: drop the small singular values of a concept's low-rank updates.

A low-rank update ΔW = U·diag(σ)·Vᵀ truncated to the σ_i ≥ t·σ_max is the
closest update of that rank in Frobenius norm (Eckart–Young), and what it
keeps is known exactly: ‖ΔW_kept‖_F / ‖ΔW‖_F = √(Σ_kept σ² / Σ σ²). The form
``svd`` trains its σ explicitly (U and Vᵀ orthonormal throughout), so its
files are already in this form and pruning only drops columns of up and rows
of down: the kept rows are still the concept's basis rows, exactly. Any other
low-rank update is decomposed through its factors (QR of the down-projection,
SVD of an [out, rank] core) — exact too, and its kept rows are combinations
of the original ones. Either way the kept input subspace lies inside the
original one, so a concept that was orthogonal to the others stays so.

Kronecker and dense updates have no σ in their stored form and are kept as
they are. The threshold is relative to each layer's largest σ, so one layer's
scale does not decide how much of another is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from omg_core.model.concept import Concept
from omg_core.model.updates import LayerUpdate, LowRankUpdate
from omg_core.ops.orthogonality import factored_svd

_ORTHO_TOL = 1e-5  # float32 factors of an SVD (QR, basis rows) are orthonormal to ~1e-7


@dataclass(frozen=True)
class LayerPruning:
    """What pruning did to one layer: ranks, ‖ΔW‖_F before, and the share of it kept."""

    key: str
    rank_before: int | None  # None: not a low-rank update, kept whole
    rank_after: int | None
    norm: float
    kept: float  # ‖ΔW_kept‖_F / ‖ΔW‖_F (1 for a layer kept whole)

    @property
    def error(self) -> float:
        """‖ΔW − ΔW_kept‖_F / ‖ΔW‖_F (kept² + error² = 1)."""
        return math.sqrt(max(0.0, 1.0 - self.kept**2))


@dataclass(frozen=True)
class ConceptPruning:
    name: str
    form: str
    layers: tuple[LayerPruning, ...]

    @property
    def kept(self) -> float:
        """Over all layers: √(Σ ‖ΔW_kept‖² / Σ ‖ΔW‖²)."""
        total = sum(p.norm**2 for p in self.layers)
        return math.sqrt(sum((p.kept * p.norm) ** 2 for p in self.layers) / total) if total > 0 else 1.0

    def ranks(self) -> tuple[int, int]:
        """(Σ rank before, Σ rank after) over the low-rank layers."""
        low = [p for p in self.layers if p.rank_before is not None]
        return sum(p.rank_before for p in low), sum(p.rank_after for p in low)


@dataclass
class PruneResult:
    concepts: list[Concept]
    reports: list[ConceptPruning]
    threshold: float
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"Rank pruning: singular values below {self.threshold:g} × each layer's largest dropped"]
        for r in self.reports:
            before, after = r.ranks()
            whole = sum(1 for p in r.layers if p.rank_before is None)
            lines.append(
                f"{r.name} ({r.form}): rank {before} -> {after} over {len(r.layers) - whole} low-rank layers, "
                f"‖ΔW‖ kept {r.kept:.4f} (relative error {math.sqrt(max(0.0, 1 - r.kept**2)):.4f})"
                + (f"; {whole} Kronecker/dense layers kept whole" if whole else "")
            )
            for p in r.layers:
                if p.rank_before is not None:
                    lines.append(f"  {_short(p.key)}: rank {p.rank_before} -> {p.rank_after}, kept {p.kept:.4f}")
        return "\n".join(lines + self.notes)


def _short(key: str) -> str:
    return key.removeprefix("diffusion_model.").removesuffix(".weight")


def check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(
            f"threshold {threshold} must be between 0 and 1: it is a share of each layer's largest singular "
            "value (0 keeps everything, 0.05 drops what is under 5% of it, 1 keeps only the largest)"
        )


def _is_svd(up: torch.Tensor, down: torch.Tensor) -> bool:
    """Whether up @ down already is U·diag(σ)·Vᵀ: orthonormal down rows, orthogonal up columns."""
    gram_d = down @ down.T
    if (gram_d - torch.eye(gram_d.shape[0], dtype=gram_d.dtype)).abs().max() > _ORTHO_TOL:
        return False
    gram_u = up.T @ up
    norms = torch.diagonal(gram_u).clamp_min(0).sqrt()
    off = gram_u - torch.diag(torch.diagonal(gram_u))
    return bool((off.abs() <= _ORTHO_TOL * torch.outer(norms, norms)).all())


def _spectrum(update: LowRankUpdate) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(σ in float64, None) when the stored factors already are an SVD (σ = the
    column norms of up), else (σ, (U, Vt)) of the factors' exact SVD."""
    up, down = update.up_matrix().double(), update.down_matrix().double()
    if _is_svd(up, down):
        return abs(update.scale) * up.norm(dim=0), None
    u, s, vt = factored_svd(update)
    return s, (u, vt)


def singular_values(update: LowRankUpdate) -> tuple[torch.Tensor, bool]:
    """(σ of ΔW in float64, whether they belong to the stored factors' own
    columns): the column norms of up when the factors already are an SVD,
    else the SVD of the factors' core (sorted, largest first)."""
    s, vectors = _spectrum(update)
    return s, vectors is None


def prune_update(update: LowRankUpdate, threshold: float, key: str = "") -> tuple[LowRankUpdate | None, LayerPruning]:
    """``update`` without its singular values under ``threshold`` × the largest
    (None when nothing is left: the update was zero)."""
    check_threshold(threshold)
    s, vectors = _spectrum(update)  # one decomposition serves the threshold and the truncation
    total = float(s.square().sum())
    keep = (s >= threshold * s.max()) & (s > 0) if s.numel() else s.bool()
    kept = math.sqrt(float(s[keep].square().sum()) / total) if total > 0 else 1.0
    report = LayerPruning(key, update.rank, int(keep.sum()), math.sqrt(total), kept)
    if not bool(keep.any()):
        return None, report
    if vectors is None:  # drop columns of up and rows of down: the kept rows are the stored ones, bit for bit
        index = keep.nonzero().squeeze(1)
        return replace(update, up=update.up[:, index], down=update.down[index]), report
    u, vt = vectors
    k = int(keep.sum())  # svd sorts σ descending, so the kept ones come first
    new_up = (u[:, :k] * s[:k]).to(update.up.dtype)
    new_down = vt[:k].to(update.down.dtype)
    new_down = new_down.reshape(k, *update.down.shape[1:])
    new_up = new_up.reshape(new_up.shape[0], k, *update.up.shape[2:])
    return LowRankUpdate(up=new_up, down=new_down, scale=1.0), report


def _prune_layers(
    layers: Mapping[str, LayerUpdate], threshold: float
) -> tuple[dict[str, LayerUpdate], list[LayerPruning]]:
    out: dict[str, LayerUpdate] = {}
    reports = []
    for key, update in layers.items():
        low = update.as_low_rank()
        if low is None or math.prod(low.up.shape[2:]) != 1:  # no σ in this stored form: kept whole
            out[key] = update
            reports.append(LayerPruning(key, None, None, math.sqrt(float(update.frobenius_norm_sq())), 1.0))
            continue
        pruned, report = prune_update(low, threshold, key)
        if pruned is not None:
            out[key] = pruned
        reports.append(report)
    return out, reports


def prune_concept(concept: Concept, threshold: float) -> tuple[Concept, ConceptPruning]:
    """The concept with every low-rank layer pruned (its strength, triggers and embeddings kept)."""
    check_threshold(threshold)
    unet, unet_reports = _prune_layers(concept.unet, threshold)
    text, text_reports = _prune_layers(concept.text_encoder, threshold)
    metadata = {**concept.metadata, "omg_prune_threshold": f"{threshold:g}"}
    pruned = replace(concept, unet=unet, text_encoder=text, metadata=metadata)
    form = concept.metadata.get("omg_form") or concept.source_format
    return pruned, ConceptPruning(concept.name, form, tuple(unet_reports + text_reports))


def prune_concepts(concepts: Sequence[Concept], threshold: float) -> PruneResult:
    check_threshold(threshold)
    results = [prune_concept(c, threshold) for c in concepts]
    notes = []
    if any(r.form != "svd" for _, r in results):
        notes.append(
            "(concepts not trained in the svd form have their singular values computed from their factors; "
            "their kept down-projections are combinations of the original rows, inside the same input subspace)"
        )
    return PruneResult([c for c, _ in results], [r for _, r in results], threshold, notes)
