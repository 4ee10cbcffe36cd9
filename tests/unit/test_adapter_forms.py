"""The trainer's adapter forms (lora, svd, kronecker), without ComfyUI: each is
orthogonal across slots by construction — whatever its trained parts hold — its
training-time term is the update it saves, it starts at ΔW = 0, the svd form is
an SVD, and kronecker and svd concepts fuse additively, exactly and factored."""

from __future__ import annotations

import math

import pytest
import torch

from omg_core.bridge.train_model import check_layout, make_adapters
from omg_core.bridge.train_report import trainable_parameters
from omg_core.model.basis import basis_rows
from omg_core.model.concept import Concept, LowRankUpdate
from omg_core.model.forms import (
    FORMS,
    input_rows,
    kronecker_shape,
    kronecker_update,
    orthonormal_columns,
    slot_width,
    svd_update,
    trained_numbers,
)
from omg_core.ops.fusion import fuse, patch_dense
from omg_core.pipelines.train import TrainConfig

K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
V = "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_v.weight"


class _Linear:
    def __init__(self, out_features, in_features):
        self.out_features, self.in_features = out_features, in_features


def _layers(context: int) -> dict:
    return {K: _Linear(320, context), V: _Linear(1280, context)}


def _randomised(form: str, context: int, slot: int, seed: int, rank: int = 4) -> dict:
    """The trainer's adapters for ``slot`` with every trained part drawn at random
    (the orthogonality must not depend on what training puts there)."""
    adapters = make_adapters(_layers(context), rank, "basis", 5, slot, seed, "cpu", form)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for a in adapters.values():
            for t in a.parts().values():
                t.copy_(torch.randn(t.shape, generator=g))
    return adapters


def _slot_rows(form: str, slot: int, in_features: int, dtype, rank: int = 4) -> torch.Tensor:
    return basis_rows(5, slot, rank, slot_width(form, in_features), dtype=dtype)


def _updates64(form: str, context: int, slot: int, seed: int, rank: int = 4) -> dict:
    """The same construction in float64 from the start (basis rows too)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, m in _layers(context).items():
        rows = _slot_rows(form, slot, m.in_features, torch.float64, rank)
        if form == "lora":
            out[key] = LowRankUpdate(torch.randn(m.out_features, rank, generator=g, dtype=torch.float64), rows)
        elif form == "svd":
            u = orthonormal_columns(torch.randn(m.out_features, rank, generator=g, dtype=torch.float64))
            out[key] = svd_update(u, torch.randn(rank, generator=g, dtype=torch.float64), rows)
        else:
            s = kronecker_shape(m.out_features, m.in_features)
            w1 = torch.randn(s.out1, s.in1, generator=g, dtype=torch.float64)
            out[key] = kronecker_update(w1, torch.randn(s.out2, rank, generator=g, dtype=torch.float64), rows)
    return out


def _roundoff_bound(update, x: torch.Tensor, rows_dtype, rank: int) -> float:
    """What float error can leave of an exact zero ΔW_j x, x in another slot's span.

    The slot rows are exactly orthonormal only in exact arithmetic; stored in
    ``rows_dtype`` (unit roundoff u_r) each entry is off by at most u_r of itself,
    so for unit rows |p_j·p_i| ≤ 2u_r and ‖P_j P_iᵀ‖ ≤ 2r·u_r, which ΔW_j can
    amplify by at most ‖ΔW_j‖_F. Computing ΔW_j x in x's dtype (u_w) adds the
    dot-product error γ_n ≤ n·u_w per inner product of length n = in + r, for
    at most ‖ΔW_j‖_F‖x‖ in all (‖|A||x|‖ ≤ ‖A‖_F‖x‖)."""
    u_rows, u_work = torch.finfo(rows_dtype).eps / 2, torch.finfo(x.dtype).eps / 2
    n = x.shape[-1] + rank
    norm = math.sqrt(float(update.frobenius_norm_sq()))
    return (2 * rank * u_rows + n * u_work) * norm * float(x.norm(dim=-1).max()) * 1.01


def _in_span(form: str, rows: torch.Tensor, in_features: int, n: int, seed: int) -> torch.Tensor:
    basis = input_rows(form, rows, in_features)
    return torch.randn(n, basis.shape[0], generator=torch.Generator().manual_seed(seed), dtype=rows.dtype) @ basis


@pytest.mark.parametrize("context", [768, 2048])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("slots", [(0, 1), (3, 17), (23, 0)])
def test_cross_talk_between_slots_is_zero_up_to_float32_roundoff(form, context, slots):
    """The trainer's own float32 adapters, trained parts random: ΔW_j x = 0 for x in span(slot_i)."""
    i, j = slots
    a_i, a_j = _randomised(form, context, i, 1), _randomised(form, context, j, 2)
    for key in a_i:
        u_i, u_j = a_i[key].update(), a_j[key].update()
        for own, other, slot in ((u_i, u_j, i), (u_j, u_i, j)):
            x = _in_span(form, _slot_rows(form, slot, own.in_features, torch.float32), own.in_features, 6, slot)
            leak = float(other.apply(x).norm(dim=-1).max())
            assert leak <= _roundoff_bound(other, x, torch.float32, 4), (form, key, leak)
            assert float(own.apply(x).norm()) > 1e4 * leak  # the inputs do reach the concept they belong to
        # and the trainer's term is that update
        x = torch.randn(3, context, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(a_i[key].delta(x), u_i.apply(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("context", [768, 2048])
@pytest.mark.parametrize("form", FORMS)
def test_cross_talk_between_slots_is_zero_up_to_float64_roundoff(form, context):
    a, b = _updates64(form, context, 2, 1), _updates64(form, context, 9, 2)
    for key in a:
        for own, other, slot in ((a[key], b[key], 2), (b[key], a[key], 9)):
            x = _in_span(form, _slot_rows(form, slot, own.in_features, torch.float64), own.in_features, 6, slot)
            leak = float(other.apply(x).norm(dim=-1).max())
            assert leak <= _roundoff_bound(other, x, torch.float64, 4), (form, key, leak)
            assert leak < 1e-11 * float(own.apply(x).norm())
        # orthogonal input subspaces make the updates orthogonal matrices: <ΔW_a, ΔW_b>_F = 0
        wa, wb = a[key].dense(torch.float64), b[key].dense(torch.float64)
        assert abs(float((wa * wb).sum())) < 1e-12 * float(wa.norm() * wb.norm())


def test_lora_and_svd_share_one_slot_system():
    lora, svd = _updates64("lora", 768, 0, 1), _updates64("svd", 768, 1, 2)
    for key in lora:
        x = _in_span("svd", _slot_rows("svd", 1, 768, torch.float64), 768, 4, 0)
        assert float(lora[key].apply(x).norm()) < 1e-11 * float(svd[key].apply(x).norm())


@pytest.mark.parametrize("form", FORMS)
def test_every_form_starts_at_zero_and_reads_only_its_slot(form):
    for key, a in make_adapters(_layers(768), 4, "basis", 5, 3, 0, "cpu", form).items():
        update = a.update()
        assert torch.equal(update.dense(), torch.zeros(update.out_features, update.in_features)), key
        assert all(t.requires_grad for t in a.parts().values())
        rows = _slot_rows(form, 3, update.in_features, torch.float32)
        frozen = a.rows if form != "lora" else a.down
        assert torch.equal(frozen, rows) and not frozen.requires_grad


def test_svd_form_is_a_singular_value_decomposition():
    from omg_core.ops.pruning import singular_values

    for a in _randomised("svd", 768, 4, 3).values():
        update = a.update()
        u = update.up / (a.gain * a.sigma.detach())
        torch.testing.assert_close(u.T @ u, torch.eye(4), atol=1e-5, rtol=0)
        assert torch.equal(update.down, _slot_rows("svd", 4, 768, torch.float32))
        s, own = singular_values(update)
        assert own
        exact = torch.linalg.svdvals(update.dense(torch.float64))[:4]
        torch.testing.assert_close(s.sort(descending=True).values, exact, rtol=1e-5, atol=0)
        torch.testing.assert_close(s, (a.gain * a.sigma.detach()).abs().double(), rtol=1e-5, atol=0)


def test_kronecker_factors_follow_the_context_width_and_comfyuis_kron_layout():
    for out, context, w2 in [(320, 768, (40, 96)), (1280, 768, (160, 96)), (640, 2048, (80, 256))]:
        s = kronecker_shape(out, context)
        assert (s.out1, s.in1, (s.out2, s.in2)) == (8, 8, w2)
    update = _updates64("kronecker", 768, 0, 0)[K]
    x = torch.randn(2, 768, dtype=torch.float64)
    torch.testing.assert_close(update.apply(x), x @ torch.kron(update.w1, update.w2).T)
    with pytest.raises(ValueError, match="input width is 100; train this model with form 'lora' or 'svd'"):
        kronecker_shape(320, 100)


def test_trained_numbers_per_form_on_sd15_shapes():
    assert trained_numbers("lora", 320, 768, 4) == 4 * 320
    assert trained_numbers("lora", 320, 768, 4, free_down=True) == 4 * (320 + 768)
    assert trained_numbers("svd", 320, 768, 4) == 4 * 320 + 4
    assert trained_numbers("kronecker", 320, 768, 4) == 8 * 8 + 40 * 4
    for form in FORMS:
        adapters = _randomised(form, 768, 0, 0)
        counted = sum(t.numel() for a in adapters.values() for t in a.parts().values())
        shapes = {k: (m.out_features, m.in_features) for k, m in _layers(768).items()}
        assert trainable_parameters(shapes, 4, "kv", "basis", form) == counted


def test_kronecker_slots_are_counted_on_the_slot_factor():
    layers = _layers(768)
    check_layout(layers, 4, 23, "basis", "kronecker")
    with pytest.raises(
        ValueError, match=r"slot 24 is out of range: with rank 4, the 96-wide slot factors \(w2\) hold 24"
    ):
        check_layout(layers, 4, 24, "basis", "kronecker")
    check_layout(layers, 4, 191, "basis", "svd")
    with pytest.raises(ValueError, match="rank 100 is too large: the smallest slot factor"):
        check_layout(layers, 100, 0, "basis", "kronecker")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"form": "loha"}, "adapter form 'loha' is unknown"),
        ({"form": "svd", "target": "attention"}, "the svd form trains the cross-attention k/v layers only"),
        ({"form": "kronecker", "down": "free"}, "the kronecker form always reads a slot of the shared basis"),
    ],
)
def test_form_settings_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(trigger="omgcat", class_word="cat", **kw).validate()


def _concept(name: str, form: str, slot: int, seed: int) -> Concept:
    unet = {k: a.update() for k, a in _randomised(form, 768, slot, seed).items()}
    return Concept(name, (name,), "sd15", "trained", unet=unet, metadata={"omg_form": form})


def test_kronecker_and_svd_concepts_fuse_additively_exactly_and_stay_factored():
    kron, svd = _concept("k", "kronecker", 0, 1), _concept("s", "svd", 5, 2).with_strength(0.7)
    result = fuse([kron, svd], "additive")
    for key in kron.unet:
        patch = result.unet[key]
        kinds = sorted(type(u).__name__ for u in patch)
        assert kinds == ["KroneckerUpdate", "LowRankUpdate"], key
        expected = kron.unet[key].dense(torch.float64) + 0.7 * svd.unet[key].dense(torch.float64)
        torch.testing.assert_close(patch_dense(patch), expected, rtol=1e-6, atol=1e-6)
        (low,) = [u for u in patch if isinstance(u, LowRankUpdate)]
        assert low.rank == 4 and torch.equal(low.down, svd.unet[key].down)  # the svd factors, not a dense sum


def test_the_orthogonality_report_sees_what_each_form_promises():
    """Same-form slots: overlap and cross-talk 0. A kronecker and an svd concept
    live in different slot systems: they overlap, as the README says."""
    from omg_core.ops.orthogonality import cross_talk_report

    same = cross_talk_report([_concept("k0", "kronecker", 0, 1), _concept("k1", "kronecker", 1, 2)])
    assert same.max_overlap() < 1e-10 and same.max_crosstalk() < 1e-6
    svd = cross_talk_report([_concept("s0", "svd", 0, 1), _concept("s1", "svd", 1, 2)])
    assert svd.max_overlap() < 1e-10 and svd.max_crosstalk() < 1e-6
    mixed = cross_talk_report([_concept("k0", "kronecker", 0, 1), _concept("s1", "svd", 1, 2)])
    assert mixed.max_overlap() > 1e-3
