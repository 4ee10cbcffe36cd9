"""The routed projection change: where a region is, by its coverage; nowhere else."""

from __future__ import annotations

import torch

from omg_core.ops.routed_layers import add_region_deltas, projection_key, support


def _delta(seed: int, n_in: int = 6, n_out: int = 5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    return w, lambda x: x.double() @ w.T


def test_the_change_is_the_coverage_times_the_update_and_zero_outside():
    h, w = 4, 6
    x = torch.randn(2, h * w, 6, dtype=torch.float64)
    y = torch.randn(2, h * w, 5, dtype=torch.float64)
    mask = torch.zeros(h, w, dtype=torch.float64)
    mask[1:3, 2:5] = 1.0
    mask[1, 2] = 0.25  # a partly covered (feathered) cell
    dw, delta = _delta(0)
    out = add_region_deltas(y, x, h, w, [(mask, support(mask), delta)])
    want = y + mask.reshape(1, -1, 1) * (x @ dw.T)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)  # the change is computed in float32
    outside = mask.reshape(-1) == 0
    assert torch.equal(out[:, outside], y[:, outside]), "cells outside the region keep the base projection"


def test_overlapping_regions_each_add_their_own_share():
    h, w = 3, 3
    x = torch.randn(1, 9, 6, dtype=torch.float64)
    y = torch.zeros(1, 9, 5, dtype=torch.float64)
    a, b = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
    a[:, :2], b[:, 1:] = 1.0, 0.5
    (wa, da), (wb, db) = _delta(1), _delta(2)
    out = add_region_deltas(y, x, h, w, [(a, support(a), da), (b, support(b), db)])
    want = a.reshape(1, -1, 1) * (x @ wa.T) + b.reshape(1, -1, 1) * (x @ wb.T)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)  # the change is computed in float32


def test_no_support_computes_nothing_and_returns_the_input():
    y = torch.randn(1, 4, 5)

    def never(x):
        raise AssertionError("a region without cells must not be computed")

    assert add_region_deltas(y, torch.randn(1, 4, 6), 2, 2, [(torch.zeros(2, 2), None, never)]) is y
    assert support(torch.zeros(3, 3)) is None
    m = torch.zeros(3, 4)
    m[1, 2] = 0.1
    assert support(m) == (1, 2, 2, 3)


def test_keys_name_comfyuis_modules():
    assert projection_key("input_blocks.1.1.transformer_blocks.0", "attn1.to_out.0") == (
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight"
    )
