"""Regional cross-attention math: box-cropped computation equals the direct
full-image one, Mix-of-Show's rewrite for one layer, locality."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omg_core.ops.attention import (
    regional_attention,
    regional_attention_reference,
    sdpa_attention,
    token_attention,
)
from omg_core.ops.regions import Region, RegionSpec, coverages, mix_shares, rasterize

HEADS, DIM = 2, 8


def tensors(b, n, t, regions, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, HEADS * DIM, generator=gen, dtype=torch.float64)
    k = torch.randn(b, t, HEADS * DIM, generator=gen, dtype=torch.float64)
    v = torch.randn(b, t, HEADS * DIM, generator=gen, dtype=torch.float64)
    kv = [
        (
            torch.randn(1, t * (1 + i % 2), HEADS * DIM, generator=gen, dtype=torch.float64),
            torch.randn(1, t * (1 + i % 2), HEADS * DIM, generator=gen, dtype=torch.float64),
        )
        for i in range(regions)
    ]
    return q, k, v, kv


box_strategy = st.tuples(st.floats(0, 0.8), st.floats(0, 0.8), st.floats(0.1, 1), st.floats(0.1, 1))


def spec_of(boxes, ratios=None, weights=None, feather=0.0):
    regions = []
    for i, (x0, y0, dx, dy) in enumerate(boxes):
        regions.append(
            Region(
                f"p{i}",
                box=(x0, y0, min(1.0, x0 + dx), min(1.0, y0 + dy)),
                ratio=1.0 if ratios is None else ratios[i],
                weight=1.0 if weights is None else weights[i],
                feather=feather,
            )
        )
    return RegionSpec(64, 64, tuple(regions))


def shares_of(spec, h, w):
    weights = torch.tensor([r.weight for r in spec.regions])
    ratios = torch.tensor([r.ratio for r in spec.regions])
    return mix_shares(coverages(spec, h, w), weights, ratios).double()


@settings(max_examples=25, deadline=None)
@given(
    boxes=st.lists(box_strategy, min_size=1, max_size=5),
    ratios=st.lists(st.floats(0, 1), min_size=5, max_size=5),
    weights=st.lists(st.floats(0, 2), min_size=5, max_size=5),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    batch=st.integers(1, 3),
    feather=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 1000),
)
def test_box_cropped_attention_equals_full_image_masked_attention(boxes, ratios, weights, h, w, batch, feather, seed):
    spec = spec_of(boxes, ratios, weights, feather)
    q, k, v, kv = tensors(batch, h * w, 5, len(boxes), seed)
    cells = rasterize(spec, h, w)
    g = sdpa_attention(q, k, v, HEADS)
    fast = regional_attention(q, g, h, w, cells, [kv[c.index] for c in cells], HEADS)
    slow = regional_attention_reference(q, k, v, shares_of(spec, h, w), kv, HEADS)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_no_regions_returns_the_global_attention_exactly():
    q, k, v, _ = tensors(2, 12, 5, 0, 0)
    g = sdpa_attention(q, k, v, HEADS)
    assert torch.equal(regional_attention(q, g, 3, 4, [], [], HEADS), g)


def test_full_image_region_with_ratio_one_is_attention_to_the_region_prompt():
    q, k, v, kv = tensors(2, 20, 5, 1, 1)
    spec = spec_of([(0.0, 0.0, 1.0, 1.0)])
    g = sdpa_attention(q, k, v, HEADS)
    out = regional_attention(q, g, 4, 5, rasterize(spec, 4, 5), kv, HEADS)
    direct = sdpa_attention(q, kv[0][0].expand(2, -1, -1), kv[0][1].expand(2, -1, -1), HEADS)
    torch.testing.assert_close(out, direct, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(a=box_strategy, b=box_strategy, h=st.integers(2, 12), w=st.integers(2, 12), seed=st.integers(0, 1000))
def test_changing_region_b_leaves_region_a_outside_the_overlap_untouched(a, b, h, w, seed):
    spec = spec_of([a, b])
    q, k, v, kv = tensors(2, h * w, 5, 2, seed)
    _, _, _, other = tensors(2, h * w, 5, 2, seed + 1)
    cells = rasterize(spec, h, w)
    g = sdpa_attention(q, k, v, HEADS)
    one = regional_attention(q, g, h, w, cells, [kv[c.index] for c in cells], HEADS)
    changed = [kv[0], other[1]]
    two = regional_attention(q, g, h, w, cells, [changed[c.index] for c in cells], HEADS)
    cov = coverages(spec, h, w)
    only_a = ((cov[0] > 0) & (cov[1] == 0)).reshape(-1)
    outside = ((cov[0] == 0) & (cov[1] == 0)).reshape(-1)
    assert torch.equal(one[:, only_a], two[:, only_a])
    assert torch.equal(one[:, outside], g[:, outside])


def mix_of_show_rewrite(q, g, h, w, region_list, replace_ratio, heads):
    """Mix-of-Show's region rewrite for one attention layer, written out from
    its definition: boxes [top, left, bottom, right] with start = ceil(t·size),
    end = floor(t·size); outside every box the global output; inside,
    (1 − ratio)·global + ratio·Σ region / overlap count."""
    b, n, c = q.shape
    count = torch.zeros(h, w, dtype=q.dtype)
    edges = []
    for _, _, (top, left, bottom, right) in region_list:
        sh, sw = math.ceil(round(top * h, 9)), math.ceil(round(left * w, 9))
        eh, ew = math.floor(round(bottom * h, 9)), math.floor(round(right * w, 9))
        edges.append((sh, sw, eh, ew))
        count[sh:eh, sw:ew] += 1
    qg, gg = q.view(b, h, w, c), g.view(b, h, w, c)
    new = gg.clone()
    inside = count > 0
    new[:, inside] = (1 - replace_ratio) * gg[:, inside]
    d = c // heads
    for (rk, rv, _), (sh, sw, eh, ew) in zip(region_list, edges):
        if eh <= sh or ew <= sw:
            continue
        qr = qg[:, sh:eh, sw:ew].reshape(b, -1, heads, d).transpose(1, 2)
        kr = rk.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
        vr = rv.expand(b, -1, -1).reshape(b, -1, heads, d).transpose(1, 2)
        probs = torch.softmax(qr @ kr.transpose(-1, -2) / math.sqrt(d), dim=-1)
        region = (probs @ vr).transpose(1, 2).reshape(b, eh - sh, ew - sw, c)
        new[:, sh:eh, sw:ew] += replace_ratio * region / count[sh:eh, sw:ew, None]
    return new.reshape(b, n, c)


@settings(max_examples=25, deadline=None)
@given(
    boxes=st.lists(box_strategy, min_size=1, max_size=4),
    ratio=st.sampled_from([1.0, 0.7]),
    h=st.integers(2, 10),
    w=st.integers(2, 10),
    seed=st.integers(0, 1000),
)
def test_one_attention_layer_matches_mix_of_show_region_rewrite(boxes, ratio, h, w, seed):
    spec = spec_of(boxes, ratios=[ratio] * len(boxes))
    q, k, v, kv = tensors(2, h * w, 6, len(boxes), seed)
    g = sdpa_attention(q, k, v, HEADS)
    cells = rasterize(spec, h, w)
    ours = regional_attention(q, g, h, w, cells, [kv[c.index] for c in cells], HEADS)
    region_list = [(rk, rv, (r.box[1], r.box[0], r.box[3], r.box[2])) for (rk, rv), r in zip(kv, spec.regions)]
    theirs = mix_of_show_rewrite(q, g, h, w, region_list, ratio, HEADS)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)  # shares are float32


def test_token_attention_is_the_softmax_probability_of_those_tokens():
    q, k, _, _ = tensors(1, 6, 5, 0, 3)
    probs = token_attention(q, k, HEADS, [1, 3])
    d = DIM
    qh = q.view(1, 6, HEADS, d).transpose(1, 2)
    kh = k.view(1, 5, HEADS, d).transpose(1, 2)
    full = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1).mean(1)
    torch.testing.assert_close(probs, full[..., [1, 3]].float())


def test_attention_grid_comes_from_the_activations_or_the_latent_halved_with_ceil():
    import pytest

    from omg_core.bridge.attention_patch import attention_grid

    assert attention_grid({"activations_shape": [2, 320, 5, 8]}, 40) == (5, 8)
    latent = {"original_shape": [2, 4, 9, 15]}
    assert [attention_grid(latent, n) for n in (135, 40, 12, 4)] == [(9, 15), (5, 8), (3, 4), (2, 2)]
    with pytest.raises(ValueError, match="cannot tell the attention grid of 77 queries"):
        attention_grid(latent, 77)
