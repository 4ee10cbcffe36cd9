"""Rank pruning by a threshold on σ: what is kept is the best approximation of
that rank, the report says exactly how much of ΔW it is, and the kept input
subspace stays inside the concept's slot (so orthogonality survives pruning)."""

from __future__ import annotations

import math

import pytest
import torch

from omg_core.model.basis import basis_rows
from omg_core.model.concept import Concept, KroneckerUpdate, LowRankUpdate
from omg_core.model.forms import orthonormal_columns, svd_update
from omg_core.ops.pruning import prune_concept, prune_concepts, prune_update, singular_values

K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
V = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"


def _svd_form(sigma, slot: int = 2, seed: int = 0) -> LowRankUpdate:
    g = torch.Generator().manual_seed(seed)
    u = orthonormal_columns(torch.randn(320, len(sigma), generator=g))
    return svd_update(u, torch.tensor(sigma), basis_rows(0, slot, len(sigma), 768))


def test_svd_form_pruning_drops_columns_and_keeps_the_basis_rows_bit_for_bit():
    update = _svd_form([3.0, -0.01, 1.0, 0.2, 0.04])
    pruned, report = prune_update(update, 0.05)
    assert (report.rank_before, report.rank_after) == (5, 3)
    assert torch.equal(pruned.down, update.down[[0, 2, 3]]) and torch.equal(pruned.up, update.up[:, [0, 2, 3]])
    expected = math.sqrt((9 + 1 + 0.04) / (9 + 0.0001 + 1 + 0.04 + 0.0016))
    assert report.kept == pytest.approx(expected, rel=1e-6)
    dense, kept = update.dense(torch.float64), pruned.dense(torch.float64)
    assert report.kept == pytest.approx(float(kept.norm() / dense.norm()), rel=1e-6)
    assert report.error == pytest.approx(float((dense - kept).norm() / dense.norm()), rel=1e-4)


def test_any_lora_is_pruned_to_its_best_approximation_inside_its_own_input_subspace():
    g = torch.Generator().manual_seed(1)
    rows = basis_rows(0, 1, 6, 768, dtype=torch.float64)
    mix = torch.randn(6, 6, generator=g, dtype=torch.float64)  # down spans the slot but is not orthonormal
    up = torch.randn(320, 6, generator=g, dtype=torch.float64) * torch.tensor([5, 2, 1, 0.5, 0.01, 0.001])
    update = LowRankUpdate(up=up, down=mix @ rows, scale=0.5)
    s, own = singular_values(update)
    assert not own
    torch.testing.assert_close(s, torch.linalg.svdvals(update.dense(torch.float64))[:6])
    pruned, report = prune_update(update, 0.1)
    k = report.rank_after
    assert k == int((s >= 0.1 * s[0]).sum()) and 0 < k < 6
    u, sv, vh = torch.linalg.svd(update.dense(torch.float64))
    best = (u[:, :k] * sv[:k]) @ vh[:k]  # Eckart–Young: the closest rank-k matrix
    torch.testing.assert_close(pruned.dense(torch.float64), best, rtol=1e-9, atol=1e-9)
    other_slot = basis_rows(0, 2, 6, 768, dtype=torch.float64)
    assert float((pruned.down_matrix() @ other_slot.T).abs().max()) < 1e-12


def test_concept_pruning_reports_every_layer_and_keeps_non_low_rank_layers_whole():
    kron = KroneckerUpdate(torch.randn(8, 8), torch.randn(40, 96))
    concept = Concept(
        "c",
        ("c",),
        "sd15",
        "trained",
        unet={K: _svd_form([2.0, 1.0, 0.001, 0.5]), V: kron},
        metadata={"omg_form": "svd"},
        strength=0.8,
    )
    pruned, report = prune_concept(concept, 0.01)
    assert pruned.strength == 0.8 and pruned.unet[V] is kron and pruned.metadata["omg_prune_threshold"] == "0.01"
    assert pruned.unet[K].rank == 3 and report.ranks() == (4, 3) and report.form == "svd"
    by_key = {p.key: p for p in report.layers}
    assert by_key[V].rank_before is None and by_key[V].kept == 1.0
    total = by_key[K].norm ** 2 + by_key[V].norm ** 2
    assert report.kept == pytest.approx(
        math.sqrt(((by_key[K].kept * by_key[K].norm) ** 2 + by_key[V].norm ** 2) / total)
    )
    table = prune_concepts([concept], 0.01).table()
    assert "c (svd): rank 4 -> 3 over 1 low-rank layers" in table and "1 Kronecker/dense layers kept whole" in table
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k: rank 4 -> 3" in table


def test_threshold_edges():
    update = _svd_form([1.0, 0.5, 0.25])
    assert prune_update(update, 0.0)[1].rank_after == 3
    assert prune_update(update, 1.0)[1].rank_after == 1
    zero = LowRankUpdate(torch.zeros(320, 2), basis_rows(0, 0, 2, 768))
    assert prune_update(zero, 0.5)[0] is None
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="must be between 0 and 1: it is a share of each layer's largest"):
            prune_update(update, bad)
