"""Additive, least-squares and constrained fusion (pure omg_core)."""

import math

import pytest
import torch
from fusion_helpers import K, V, concept, lowrank, random_concepts, slot_concepts
from hypothesis import given, settings
from hypothesis import strategies as st

from omg_core.model.concept import DenseUpdate, KroneckerUpdate, LowRankUpdate, TokenEmbedding
from omg_core.ops.fusion import dedupe_features, fuse, patch_dense, update_dense

FAST = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")


TE = "clip_l.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"


def _features(concepts, rows, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return {c.name: torch.randn(rows, dim, generator=g, dtype=torch.float64) for c in concepts}


@FAST
@given(
    n=st.integers(1, 5), seed=st.integers(0, 10_000), strengths=st.lists(st.floats(0.1, 2.0), min_size=5, max_size=5)
)
def test_additive_fusion_is_the_exact_sum_in_one_low_rank_patch_per_layer(n, seed, strengths):
    concepts = [c.with_strength(s) for c, s in zip(random_concepts(n, seed=seed), strengths)]
    result = fuse(concepts, "additive")
    for key in (K, V):
        patch = result.unet[key]
        assert isinstance(patch, LowRankUpdate) and patch.rank == sum(c.unet[key].rank for c in concepts)
        expected = sum(c.strength * update_dense(c.unet[key]) for c in concepts)
        torch.testing.assert_close(update_dense(patch), expected, rtol=1e-12, atol=1e-12)


def test_additive_fusion_keeps_lokr_factored_and_sums_dense_updates():
    lokr = KroneckerUpdate(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64), 0.5)
    dense_a, dense_b = (DenseUpdate(torch.randn(16, 48, dtype=torch.float64)) for _ in range(2))
    a = concept("a", {K: lowrank(16, 48, 2, 0), V: dense_a})
    b = concept("b", {K: lokr, V: dense_b}, text_encoder={TE: lowrank(16, 16, 1, 3)})
    c = concept("c", {K: lowrank(16, 48, 3, 1)})
    result = fuse([a, b, c.with_strength(2.0)], "additive")
    k_parts = result.unet[K]
    assert isinstance(k_parts, tuple) and {type(p) for p in k_parts} == {LowRankUpdate, KroneckerUpdate}
    assert any(getattr(p, "w1", None) is lokr.w1 for p in k_parts), "LoKr is passed through, not expanded"
    expected = update_dense(a.unet[K]) + update_dense(lokr) + 2.0 * update_dense(c.unet[K])
    torch.testing.assert_close(patch_dense(k_parts), expected)
    assert isinstance(result.unet[V], DenseUpdate)
    torch.testing.assert_close(update_dense(result.unet[V]), update_dense(dense_a) + update_dense(dense_b))
    assert TE in result.text_encoder and TE not in result.unet


@FAST
@given(n=st.integers(1, 4), seed=st.integers(0, 10_000), lam=st.sampled_from([0.0, 1e-3, 0.1]))
def test_least_squares_is_the_delta_form_normal_equation_solution(n, seed, lam):
    concepts = random_concepts(n, dim=40, seed=seed)
    feats = _features(concepts, 5, 40, seed)
    result = fuse(concepts, "least_squares", features=feats, regularization=lam)
    xs = torch.cat(list(feats.values()))
    gram = xs.T @ xs
    lam_eff = lam * float(gram.trace()) / xs.shape[0]
    for key in (K, V):
        rhs = sum(update_dense(c.unet[key]) @ feats[c.name].T @ feats[c.name] for c in concepts)
        if lam > 0:
            expected = rhs @ torch.linalg.inv(gram + lam_eff * torch.eye(40, dtype=torch.float64))
        else:
            expected = rhs @ torch.linalg.pinv(gram)
        torch.testing.assert_close(patch_dense(result.unet[key]), expected, rtol=1e-6, atol=1e-8)
        assert isinstance(result.unet[key], LowRankUpdate), "low-rank concepts give a factored result"
    assert len(result.fitted_text_layers) == 2


@FAST
@given(n=st.integers(1, 4), seed=st.integers(0, 10_000), method=st.sampled_from(["least_squares", "constrained"]))
def test_fusion_leaves_directions_outside_all_features_unchanged(n, seed, method):
    concepts = random_concepts(n, dim=40, seed=seed)
    g = torch.Generator().manual_seed(seed)
    span = torch.linalg.qr(torch.randn(40, 12, generator=g, dtype=torch.float64))[0].T  # features live here
    feats = {c.name: torch.randn(3, 12, generator=g, dtype=torch.float64) @ span for c in concepts}
    outside = torch.randn(6, 40, generator=g, dtype=torch.float64)
    outside = outside - outside @ span.T @ span
    reg = torch.randn(20, 12, generator=g, dtype=torch.float64) @ span
    result = fuse(concepts, method, features=feats, reg_features=reg)
    for key in (K, V):
        fused = patch_dense(result.unet[key])
        assert (fused @ outside.T).norm() <= 1e-9 * fused.norm() * outside.norm()


@FAST
@given(n=st.integers(1, 4), seed=st.integers(0, 10_000), with_reg=st.booleans(), mu=st.sampled_from([1e-3, 1.0]))
def test_constrained_fusion_satisfies_its_constraints_and_is_smallest_on_the_regularisation(n, seed, with_reg, mu):
    concepts = random_concepts(n, dim=40, seed=seed)
    feats = _features(concepts, 4, 40, seed)
    g = torch.Generator().manual_seed(seed + 1)
    reg = torch.randn(60, 40, generator=g, dtype=torch.float64) if with_reg else None
    result = fuse(concepts, "constrained", features=feats, reg_features=reg, regularization=mu)
    assert result.constraint_residual < 1e-8
    xs = torch.cat(list(feats.values()))
    c = torch.eye(40, dtype=torch.float64) if reg is None else reg.T @ reg / 60
    if reg is not None:
        c = c + mu * float(c.trace()) / 40 * torch.eye(40, dtype=torch.float64)
    for key in (K, V):
        fused = patch_dense(result.unet[key])
        for cpt in concepts:
            x = feats[cpt.name]
            torch.testing.assert_close(fused @ x.T, update_dense(cpt.unet[key]) @ x.T, rtol=1e-7, atol=1e-8)
        # Any other solution differs by E with E X = 0 and costs more.
        null = torch.randn(16, 40, generator=g, dtype=torch.float64)
        null = null - null @ torch.linalg.pinv(xs) @ xs
        cost = float(torch.trace(fused @ c @ fused.T))
        assert cost <= float(torch.trace((fused + 1e-2 * null) @ c @ (fused + 1e-2 * null).T)) + 1e-12


def test_orthogonal_concepts_on_their_own_features_fuse_to_the_exact_sum_by_every_method():
    concepts = slot_concepts(3, dim=48, rank=4, seed=4)
    g = torch.Generator().manual_seed(0)
    feats = {c.name: torch.randn(6, 4, generator=g, dtype=torch.float64) @ c.unet[K].down for c in concepts}
    expected = sum(update_dense(c.unet[K]) for c in concepts)
    for method in ("additive", "least_squares", "constrained"):
        result = fuse(concepts, method, features=feats, regularization=0.0 if method == "least_squares" else 1e-3)
        torch.testing.assert_close(patch_dense(result.unet[K]), expected, rtol=1e-7, atol=1e-9)
        assert max(result.fidelity.values()) < 1e-7


def test_features_shared_by_concepts_are_fitted_once_towards_the_mean_target():
    a, b = random_concepts(2, dim=40, seed=7)
    g = torch.Generator().manual_seed(1)
    shared = torch.randn(2, 40, generator=g, dtype=torch.float64)  # BOS, "a photo of"
    own_a, own_b = (
        torch.randn(3, 40, generator=g, dtype=torch.float64),
        torch.randn(3, 40, generator=g, dtype=torch.float64),
    )
    feats = {"c0": torch.cat([shared, own_a, shared]), "c1": torch.cat([shared, own_b])}
    labels = {"c0": ["<bos>", "a", "x1", "x2", "x3", "<bos>", "a"], "c1": ["<bos>", "a", "y1", "y2", "y3"]}
    result = fuse([a, b], "constrained", features=feats, feature_labels=labels)
    fused = patch_dense(result.unet[K])
    # c0 uses the shared rows twice, c1 once: target = (2·ΔW_a + ΔW_b) / 3
    target = (2 * update_dense(a.unet[K]) + update_dense(b.unet[K])) / 3 @ shared.T
    torch.testing.assert_close(fused @ shared.T, target, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(fused @ own_a.T, update_dense(a.unet[K]) @ own_a.T, rtol=1e-7, atol=1e-8)
    fs = result.features
    assert fs.rows.shape[0] == 8 and int(fs.shared().sum()) == 2
    summary = result.summary()
    assert "12 rows given, 8 distinct rows fitted, 2 shared" in summary
    assert "c0: 7 rows -> 5 fitted (3 own, 2 shared)" in summary
    assert "shared positions: <bos>, a" in summary


def test_dedupe_tolerates_rounding_but_keeps_distinct_rows():
    x = torch.randn(4, 10, dtype=torch.float64)
    fs = dedupe_features([x, x + 1e-9, x[:2] * 1.5])
    assert fs.rows.shape[0] == 6
    assert fs.membership.sum(0).allclose(torch.ones(6, dtype=torch.float64))


def test_layers_without_text_features_are_fitted_on_input_subspaces_or_kept():
    a, b = random_concepts(2, dim=40, seed=2)
    conv = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    a = concept("c0", {**a.unet, conv: lowrank(16, 40, 2, 5)}, text_encoder={TE: lowrank(16, 16, 2, 8)})
    b = concept("c1", b.unet, text_encoder={TE: lowrank(16, 16, 2, 9)})
    feats = _features([a, b], 5, 40, 0)
    result = fuse([a, b], "least_squares", features=feats)
    assert result.unet[conv] is not None and conv in result.summed_layers
    torch.testing.assert_close(patch_dense(result.unet[conv]), update_dense(a.unet[conv]))
    assert TE in result.fitted_subspace_layers and set(result.fitted_text_layers) == {K, V}
    assert "fitted on the concepts' own input subspaces" in result.summary()
    assert "self-attention layers are fused in" not in result.summary()
    q = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    with_self = fuse([concept("c2", {**b.unet, q: lowrank(16, 40, 2, 6)}), a], "additive")
    assert "note: 1 self-attention layers are fused in" in with_self.summary()


def test_least_squares_with_lokr_or_dense_concepts_gives_a_dense_update():
    lokr = KroneckerUpdate(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64))
    a = concept("a", {K: lokr})
    b = concept("b", {K: lowrank(16, 48, 2, 1)})
    feats = _features([a, b], 5, 48, 3)
    result = fuse([a, b], "least_squares", features=feats, regularization=0.0)
    assert isinstance(result.unet[K], DenseUpdate)
    for c in (a, b):
        x = feats[c.name]
        torch.testing.assert_close(
            update_dense(result.unet[K]).double() @ x.T, update_dense(c.unet[K]) @ x.T, rtol=1e-4, atol=1e-4
        )


def test_larger_regularization_means_less_drift_and_less_fidelity():
    concepts = random_concepts(4, dim=48, seed=11)
    feats = _features(concepts, 6, 48, 2)
    reg = torch.randn(30, 48, dtype=torch.float64)
    small = fuse(concepts, "least_squares", features=feats, reg_features=reg, regularization=1e-4)
    large = fuse(concepts, "least_squares", features=feats, reg_features=reg, regularization=1.0)
    assert large.drift < small.drift
    assert max(large.fidelity.values()) > max(small.fidelity.values())
    assert "drift on regularisation prompts" in small.summary()


def test_embeddings_of_all_concepts_are_carried_to_the_result():
    a, b = random_concepts(2)
    emb = TokenEmbedding("omgcat", "clip_l", torch.zeros(1, 768))
    a = concept("c0", a.unet, embeddings=(emb,))
    assert fuse([a, b]).embeddings == (emb,)


# --------------------------------------------------------------- errors
def test_empty_concept_list_is_refused():
    with pytest.raises(ValueError, match="no concepts were given to fuse"):
        fuse([], "additive")


def test_mixed_families_are_refused():
    a, b = random_concepts(2)
    with pytest.raises(ValueError, match="different model families"):
        fuse([a, concept("x", b.unet, family="sdxl")], "least_squares")


def test_nan_weights_are_refused():
    a, b = random_concepts(2)
    down = a.unet[V].down.clone()
    down[0, 0] = math.inf
    with pytest.raises(ValueError, match="contains NaN or Inf weights on layer"):
        fuse([concept("c0", {V: LowRankUpdate(a.unet[V].up, down)}), b], "additive")


def test_bad_method_and_regularization_are_refused():
    concepts = random_concepts(2)
    with pytest.raises(ValueError, match="unknown fusion method 'gradient'"):
        fuse(concepts, "gradient")
    with pytest.raises(ValueError, match="regularization must be a finite number >= 0"):
        fuse(concepts, "least_squares", regularization=-1.0)
    with pytest.raises(ValueError, match="regularization must be a finite number >= 0"):
        fuse(concepts, "least_squares", regularization=math.nan)


def test_bad_features_are_refused():
    concepts = random_concepts(2, dim=48)
    with pytest.raises(ValueError, match=r"not for \['c1'\]"):
        fuse(concepts, "least_squares", features={"c0": torch.randn(3, 48)})
    with pytest.raises(ValueError, match="different widths"):
        fuse(concepts, "least_squares", features={"c0": torch.randn(3, 48), "c1": torch.randn(3, 40)})
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        fuse(concepts, "least_squares", features={"c0": torch.randn(3, 48), "c1": torch.full((3, 48), math.nan)})
    with pytest.raises(ValueError, match="regularisation features are 40-dimensional"):
        fuse(concepts, "constrained", features=_features(concepts, 3, 48, 0), reg_features=torch.randn(5, 40))


@pytest.mark.parametrize("tol", [1e-9, 1e-4])
def test_every_feature_row_belongs_somewhere_however_many_rows(tol):
    """Above 25 rows torch.cdist may compute distances through a matrix product,
    which leaves a row a little away from itself; each row must still be its
    own match, so no membership is 0/0."""
    gen = torch.Generator().manual_seed(0)
    rows = [
        torch.randn(30, 48, generator=gen, dtype=torch.float64),
        torch.randn(20, 48, generator=gen, dtype=torch.float64),
    ]
    fs = dedupe_features(rows, tol=tol)
    assert torch.isfinite(fs.membership).all()
    assert fs.rows.shape[0] == 50
    assert torch.allclose(fs.membership.sum(0), torch.ones(50, dtype=torch.float64))
