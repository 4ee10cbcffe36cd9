"""Overlap, cross-talk and orthogonalisation of concepts (pure omg_core)."""

import math

import pytest
import torch
from fusion_helpers import K, V, concept, lowrank, random_concepts, slot_concepts
from hypothesis import given, settings
from hypothesis import strategies as st

from omg_core.model.concept import DenseUpdate, KroneckerUpdate, LowRankUpdate
from omg_core.ops.orthogonality import (
    InputSubspace,
    cross_talk_report,
    input_subspace,
    orthogonalize,
    subspace_overlap,
)

FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")


def _offdiag(m):
    return m[~torch.eye(m.shape[0], dtype=torch.bool)]


@FAST
@given(n=st.integers(2, 5), rank=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_basis_slot_concepts_have_zero_overlap_and_zero_crosstalk(n, rank, seed):
    concepts = slot_concepts(n, dim=48, rank=rank, seed=seed)
    report = cross_talk_report(concepts)
    assert _offdiag(report.overlap).abs().max() < 1e-6
    assert _offdiag(report.crosstalk).abs().max() < 1e-6


@FAST
@given(n=st.integers(2, 4), rank=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_orthogonal_concepts_have_zero_crosstalk_on_text_features_inside_their_subspace(n, rank, seed):
    concepts = slot_concepts(n, dim=48, rank=rank, seed=seed)
    g = torch.Generator().manual_seed(seed)
    feats = {c.name: torch.randn(7, rank, generator=g, dtype=torch.float64) @ c.unet[K].down for c in concepts}
    report = cross_talk_report(concepts, features=feats)
    assert _offdiag(report.crosstalk).abs().max() < 1e-6
    assert "text features (7 rows)" in report.feature_sources["c0"]


@FAST
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 8))
def test_overlap_is_one_for_a_subspace_with_itself_and_symmetric_in_the_unit_interval(seed, rank):
    a, b = lowrank(20, 32, rank, seed), lowrank(20, 32, rank + 1, seed + 1)
    sa, sb = input_subspace(a), input_subspace(b)
    assert subspace_overlap(sa, sa) == pytest.approx(1.0, abs=1e-9)
    ab, ba = subspace_overlap(sa, sb), subspace_overlap(sb, sa)
    assert ab == pytest.approx(ba, abs=1e-12)
    assert -1e-12 <= ab <= 1 + 1e-9


def test_input_subspace_of_lora_is_row_space_of_the_product_not_of_a_dead_down_row():
    up = torch.randn(10, 3, dtype=torch.float64)
    up[:, 2] = 0.0  # the third down row is never written anywhere
    down = torch.eye(3, 12, dtype=torch.float64)
    space = input_subspace(LowRankUpdate(up, down))
    assert space.dim == 2
    assert space.rows[:, 2].abs().max() < 1e-12


@FAST
@given(seed=st.integers(0, 10_000), ra=st.integers(1, 3), rb=st.integers(1, 5))
def test_kronecker_overlap_matches_the_expanded_basis(seed, ra, rb):
    g = torch.Generator().manual_seed(seed)
    k1 = KroneckerUpdate(
        torch.randn(4, ra, generator=g) @ torch.randn(ra, 6, generator=g), torch.randn(5, 8, generator=g)
    )
    k2 = KroneckerUpdate(
        torch.randn(4, 6, generator=g), torch.randn(5, rb, generator=g) @ torch.randn(rb, 8, generator=g)
    )
    lr = lowrank(20, 48, 3, seed)
    s1, s2, s3 = input_subspace(k1), input_subspace(k2), input_subspace(lr)
    assert s1.kron is not None and s1.dim == ra * 5
    d1, d2 = InputSubspace(rows=s1.dense_rows()), InputSubspace(rows=s2.dense_rows())
    assert subspace_overlap(s1, s2) == pytest.approx(subspace_overlap(d1, d2), rel=1e-9, abs=1e-12)
    assert subspace_overlap(s1, s3) == pytest.approx(subspace_overlap(d1, s3), rel=1e-9, abs=1e-12)
    assert subspace_overlap(s3, s2) == pytest.approx(subspace_overlap(s3, d2), rel=1e-9, abs=1e-12)


def test_crosstalk_is_relative_to_the_concepts_own_effect():
    down = torch.eye(2, 16, dtype=torch.float64)
    a = concept("a", {K: LowRankUpdate(torch.ones(8, 2, dtype=torch.float64), down)})
    b = concept("b", {K: LowRankUpdate(torch.ones(8, 2, dtype=torch.float64), down, scale=0.5)})
    report = cross_talk_report([a, b])
    assert report.crosstalk[0, 1] == pytest.approx(0.5)
    assert report.crosstalk[1, 0] == pytest.approx(2.0)
    assert report.overlap[0, 1] == pytest.approx(1.0)
    assert math.isnan(report.crosstalk[0, 0])
    table = report.table()
    assert "Cross-talk" in table and "0.500" in table and "2.000" in table


def test_concept_strength_scales_its_crosstalk():
    a, b = random_concepts(2, seed=3)
    base = cross_talk_report([a, b]).crosstalk[0, 1]
    assert cross_talk_report([a, b.with_strength(3.0)]).crosstalk[0, 1] == pytest.approx(3 * float(base), rel=1e-5)


@FAST
@given(
    n=st.integers(2, 4),
    rank=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["symmetric", "sequential"]),
)
def test_orthogonalized_concepts_are_mutually_orthogonal_and_loss_is_their_relative_error(n, rank, seed, method):
    concepts = random_concepts(n, dim=40, rank=rank, seed=seed)
    result = orthogonalize(concepts, method=method)
    report = cross_talk_report(result.concepts)
    assert _offdiag(report.overlap).abs().max() < 1e-8
    assert _offdiag(report.crosstalk).abs().max() < 1e-6
    for old, new in zip(concepts, result.concepts):
        num = sum(float((new.unet[k].dense() - old.unet[k].dense()).square().sum()) for k in old.unet)
        den = sum(float(old.unet[k].dense().square().sum()) for k in old.unet)
        assert result.fidelity_loss[old.name] == pytest.approx(math.sqrt(num / den), rel=1e-5, abs=1e-7)
        assert all(new.unet[k].rank <= old.unet[k].rank for k in old.unet)


def test_sequential_orthogonalization_keeps_the_first_concept_exactly():
    concepts = random_concepts(3, seed=5)
    result = orthogonalize(concepts, method="sequential")
    assert result.fidelity_loss["c0"] == 0.0
    assert torch.equal(result.concepts[0].unet[K].dense(), concepts[0].unet[K].dense())
    assert result.fidelity_loss["c2"] > 0


def test_orthogonalizing_orthogonal_concepts_changes_nothing():
    concepts = slot_concepts(3, seed=2)
    result = orthogonalize(concepts)
    for old, new in zip(concepts, result.concepts):
        assert result.fidelity_loss[old.name] < 1e-7
        torch.testing.assert_close(new.unet[V].dense(), old.unet[V].dense())
    assert "Orthogonalized 3 concepts" in result.table()


def test_layers_of_a_single_concept_are_kept_as_they_are():
    a, b = random_concepts(2, seed=1)
    extra = DenseUpdate(torch.randn(16, 48, dtype=torch.float64))
    a = concept("c0", {**a.unet, "diffusion_model.out.0.weight": extra})
    result = orthogonalize([a, b])
    assert result.concepts[0].unet["diffusion_model.out.0.weight"] is extra
    assert result.concepts[0].metadata["orthogonalized"] == "symmetric"


def test_symmetric_orthogonalization_loses_less_in_total_than_dropping_overlap_from_one():
    concepts = random_concepts(2, dim=12, rank=5, seed=9)
    sym = orthogonalize(concepts, "symmetric").fidelity_loss
    seq = orthogonalize(concepts, "sequential").fidelity_loss
    assert sym["c0"] ** 2 + sym["c1"] ** 2 < seq["c0"] ** 2 + seq["c1"] ** 2


# --------------------------------------------------------------- errors
def test_empty_concept_list_is_refused():
    with pytest.raises(ValueError, match="no concepts were given"):
        cross_talk_report([])
    with pytest.raises(ValueError, match="no concepts were given"):
        orthogonalize([])


def test_mixed_families_are_refused():
    a, b = random_concepts(2)
    b = concept("c1", b.unet, family="sdxl")
    with pytest.raises(ValueError, match="different model families"):
        cross_talk_report([a, b])


def test_duplicate_names_are_refused():
    a, b = random_concepts(2)
    with pytest.raises(ValueError, match="both named 'c0'"):
        cross_talk_report([a, concept("c0", b.unet)])


def test_nan_weights_are_refused():
    a, b = random_concepts(2)
    up = a.unet[K].up.clone()
    up[1, 1] = math.nan
    bad = concept("c0", {K: LowRankUpdate(up, a.unet[K].down)})
    with pytest.raises(ValueError, match="concept 'c0' contains NaN or Inf"):
        orthogonalize([bad, b])


def test_layer_shape_disagreement_is_refused():
    a = concept("a", {K: lowrank(16, 48, 2, 0)})
    b = concept("b", {K: lowrank(16, 40, 2, 1)})
    with pytest.raises(ValueError, match="disagree on the shape of layer"):
        cross_talk_report([a, b])


def test_text_features_of_the_wrong_width_are_refused():
    concepts = random_concepts(2)
    with pytest.raises(ValueError, match="are 30-dimensional but its cross-attention layers read"):
        cross_talk_report(concepts, features={"c0": torch.randn(5, 30)})
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        cross_talk_report(concepts, features={"c0": torch.full((5, 48), math.nan)})


def test_too_many_concepts_for_one_layer_are_refused_with_the_numbers():
    concepts = random_concepts(3, dim=8, rank=3)
    with pytest.raises(ValueError, match="reads 8 input dimensions but the concepts on it need 9"):
        orthogonalize(concepts)
    with pytest.raises(ValueError, match="unknown orthogonalization method"):
        orthogonalize(concepts, method="greedy")
