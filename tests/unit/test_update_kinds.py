"""The contract every layer update kind keeps, so that code written against the
interface (fusion, orthogonality, patching, the file writers) is right for each
kind without knowing it, and a kind nobody taught the code about is refused
rather than skipped."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from fusion_helpers import K, V, concept, lowrank

from omg_core.model.concept import DenseUpdate, KroneckerUpdate, LowRankUpdate
from omg_core.model.updates import (
    UPDATE_KINDS,
    as_update,
    as_update_list,
    check_update_finite,
    combine_updates,
    update_kind,
)
from omg_core.ops.fusion import add_updates, fuse, patch_dense


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _samples(seed: int) -> dict[type, list]:
    """Linear and convolution examples of every kind (out 12, in 24 = 6 channels x 2x2)."""
    g = _g(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return {
        LowRankUpdate: [LowRankUpdate(r(12, 3), r(3, 24), 0.7), LowRankUpdate(r(12, 2, 1, 1), r(2, 6, 2, 2), 1.3)],
        KroneckerUpdate: [KroneckerUpdate(r(3, 4), r(4, 6), 0.5), KroneckerUpdate(r(2, 3), r(6, 2, 2, 2), 2.0)],
        DenseUpdate: [DenseUpdate(r(12, 24), 0.25), DenseUpdate(r(12, 6, 2, 2), -1.5)],
    }


def _all_samples(seed: int = 0):
    samples = _samples(seed)
    assert set(samples) == set(UPDATE_KINDS), "every kind in UPDATE_KINDS needs examples here"
    return [u for kind in UPDATE_KINDS for u in samples[kind]]


@pytest.mark.parametrize("update", _all_samples(), ids=lambda u: f"{type(u).__name__}{list(u.factors()[-1].shape)}")
def test_every_kind_keeps_the_contract(update):
    dense = update.dense(torch.float64)
    assert dense.shape == (update.out_features, update.in_features) == (12, 24)
    torch.testing.assert_close(update.dense(), dense.float())
    x = torch.randn(5, 24, generator=_g(7), dtype=torch.float64)
    torch.testing.assert_close(update.apply(x), x @ dense.T)
    torch.testing.assert_close(update.scaled(-2.5).dense(torch.float64), -2.5 * dense)
    rebuilt = type(update)(*update.factors(), update.scale)
    torch.testing.assert_close(rebuilt.dense(torch.float64), dense, rtol=0, atol=0)
    assert update.dtype == update.factors()[0].dtype == torch.float64
    # float32 is enough for a norm (a dense update's is taken from its float32 dense()).
    torch.testing.assert_close(update.frobenius_norm_sq(), dense.square().sum(), rtol=1e-6, atol=0)
    assert math.prod(update.dense_shape) == update.out_features * update.in_features
    assert update.kernel == tuple(update.factors()[-1].shape[2:])
    for view in (update.as_low_rank(), update.as_kronecker()):
        if view is not None:
            torch.testing.assert_close(view.dense(torch.float64), dense)
    assert update_kind(update) is type(update) and as_update(update) is update
    assert as_update_list(update) == [update] and as_update_list((update, update)) == [update, update]


@pytest.mark.parametrize("kind", UPDATE_KINDS, ids=lambda k: k.__name__)
def test_combining_a_kind_is_its_exact_sum(kind):
    updates = [*_samples(0)[kind], _samples(1)[kind][0]]  # linear, convolution, linear
    parts = kind.combine(updates)
    assert all(update_kind(p) is kind for p in parts)
    summed = sum(u.dense(torch.float64) for u in updates)
    torch.testing.assert_close(sum(p.dense(torch.float64) for p in parts), summed)


def test_combining_mixed_kinds_keeps_every_update():
    updates = _all_samples(2)
    patch = combine_updates(updates)
    assert {update_kind(p) for p in as_update_list(patch)} == set(UPDATE_KINDS)
    torch.testing.assert_close(patch_dense(patch), sum(u.dense(torch.float64) for u in updates))


@pytest.mark.parametrize("update", _all_samples(), ids=lambda u: type(u).__name__)
def test_non_finite_factors_or_scale_are_refused_for_every_kind(update):
    check_update_finite("layer", update)
    with pytest.raises(ValueError, match="the update has a non-finite scale"):
        check_update_finite("layer", update.scaled(math.inf))
    for i in range(len(update.factors())):
        factors = list(update.factors())
        factors[i] = factors[i].clone()
        factors[i].view(-1)[0] = math.nan
        with pytest.raises(ValueError, match="concept 'x' contains NaN or Inf weights on layer layer"):
            check_update_finite("layer", type(update)(*factors, update.scale), owner="concept 'x'")


@dataclass(frozen=True)
class _DiagonalUpdate:
    """A kind with the whole interface that nobody registered in UPDATE_KINDS."""

    diagonal: torch.Tensor
    scale: float = 1.0

    out_features = property(lambda self: self.diagonal.shape[0])
    in_features = property(lambda self: self.diagonal.shape[0])
    dtype = property(lambda self: self.diagonal.dtype)
    dense_shape = property(lambda self: (self.out_features, self.in_features))
    kernel = ()

    def factors(self):
        return (self.diagonal,)

    def dense(self, dtype=torch.float32):
        return self.scale * torch.diag(self.diagonal.to(dtype))

    def apply(self, x):
        return self.scale * x * self.diagonal.to(x.dtype)

    def scaled(self, factor):
        return replace(self, scale=self.scale * factor)

    def frobenius_norm_sq(self):
        return self.scale**2 * self.diagonal.double().square().sum()

    def as_low_rank(self):
        return None

    def as_kronecker(self):
        return None


def test_an_unknown_kind_is_refused_not_dropped():
    odd = _DiagonalUpdate(torch.ones(12, dtype=torch.float64))
    for convert in (update_kind, as_update, as_update_list, lambda u: as_update_list((u,))):
        with pytest.raises(ValueError, match="_DiagonalUpdate, which is not a layer update kind"):
            convert(odd)
    with pytest.raises(ValueError, match="not a layer update kind"):
        combine_updates([_all_samples()[0], odd])


def test_fusion_with_an_unknown_kind_raises_instead_of_dropping_it():
    odd = _DiagonalUpdate(torch.ones(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="not a layer update kind"):
        add_updates([lowrank(16, 16, 2, 0), odd])
    a = concept("a", {K: lowrank(16, 16, 2, 0), V: lowrank(16, 48, 2, 1)})
    b = concept("b", {K: odd})
    for method in ("additive", "least_squares"):
        with pytest.raises(ValueError, match=f"layer {K} of concept 'b' holds a _DiagonalUpdate"):
            fuse([a, b], method)
