"""Placement's pure parts: which steps it acts on, which cells a box's crop
holds, and how crop predictions are blended into the full pass."""

import math

import pytest
import torch

from omg_core.ops.placement import (
    PLACEMENTS,
    PlacementSettings,
    active_steps,
    blend,
    call_groups,
    crop_cells,
    crop_window,
    region_alone,
)
from omg_core.ops.regions import Region, RegionSpec


def test_placement_acts_on_the_first_share_of_the_schedule_only():
    sigmas = torch.linspace(14.6, 0.0, 11)  # 10 steps, the last entry 0 as ComfyUI's schedules end
    active = [active_steps(sigmas, sigmas[i : i + 1], 0.3) for i in range(10)]
    assert active == [True] * 3 + [False] * 7
    assert not any(active_steps(sigmas, sigmas[i : i + 1], 0.0) for i in range(10))
    assert all(active_steps(sigmas, sigmas[i : i + 1], 1.0) for i in range(10))
    assert active_steps(sigmas, sigmas[:1], 0.01)  # a share below one step still takes the first step
    assert not active_steps(None, sigmas[:1], 0.5)  # not inside a sampling run: nothing


def test_a_crop_holds_the_cells_wholly_inside_its_box():
    assert crop_cells((0.0, 0.2, 0.42, 0.8), 16, 16) == (4, 12, 0, 6)
    assert crop_cells((0.5, 0.5, 0.55, 0.55), 16, 16) is None  # smaller than one cell


def test_a_crop_window_grows_around_its_box_to_the_least_share_and_stays_inside_the_latent():
    assert crop_window((4, 12, 0, 6), 16, 16, 0.0) == (4, 12, 0, 6)  # share 0: the box's own cells
    assert crop_window((4, 12, 5, 11), 16, 16, 0.5) == (4, 12, 4, 12)  # 6 columns grown to 8, centred
    assert crop_window((4, 12, 0, 6), 16, 16, 0.5) == (4, 12, 0, 8)  # at the left edge: grown inwards
    assert crop_window((10, 16, 13, 16), 16, 16, 0.5) == (8, 16, 8, 16)  # a corner: shifted to fit
    assert crop_window((2, 5, 3, 4), 16, 16, 1.0) == (0, 16, 0, 16)  # share 1: the whole latent
    for cells in [(0, 3, 2, 9), (7, 9, 14, 16), (5, 6, 5, 6)]:
        for share in (0.3, 0.5, 0.75):
            r0, r1, c0, c1 = crop_window(cells, 12, 16, share)
            assert 0 <= r0 <= cells[0] and cells[1] <= r1 <= 12 and 0 <= c0 <= cells[2] and cells[3] <= c1 <= 16
            assert r1 - r0 == max(cells[1] - cells[0], math.ceil(share * 12)) and c1 - c0 == max(
                cells[3] - cells[2], math.ceil(share * 16)
            )


def test_blend_replaces_inside_the_crop_by_strength_and_averages_overlaps():
    full = torch.zeros(2, 4, 8, 8)
    a, b = torch.ones(2, 4, 4, 4), 3 * torch.ones(2, 4, 4, 6)
    out = blend(full, [((0, 4, 0, 4), a), ((0, 4, 2, 8), b)], strength=0.5)
    assert torch.equal(out[..., 4:, :], full[..., 4:, :])  # outside every crop: the full pass
    assert torch.allclose(out[..., :4, :2], torch.full((2, 4, 4, 2), 0.5))  # a alone, half strength
    assert torch.allclose(out[..., :4, 2:4], torch.full((2, 4, 4, 2), 1.0))  # (1 + 3) / 2, half strength
    assert torch.allclose(out[..., :4, 4:], torch.full((2, 4, 4, 4), 1.5))
    assert torch.equal(blend(full, [((0, 4, 0, 4), a)], strength=0.0), full)
    assert blend(full, [], 1.0) is full


def test_boxes_passes_share_a_call_per_window_size_within_the_full_latents_area():
    quarter, other = (0, 4, 0, 4), (0, 5, 0, 4)
    four_corners = [quarter, (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]
    assert call_groups(four_corners, 64) == [[0, 1, 2, 3]]  # 4 windows of 16 cells: one call of the full area
    assert call_groups([*four_corners, quarter], 64) == [[0, 1, 2, 3], [4]]  # a fifth would exceed it
    assert call_groups([quarter, other, quarter], 64) == [[0, 2], [1]]  # another size: a call of its own
    assert call_groups([(0, 8, 0, 8)], 16) == [[0]]  # a window larger than the area still gets its call
    assert call_groups(four_corners, 0) == [[0], [1], [2], [3]]  # area 0: a call per box


def test_a_region_alone_covers_its_whole_pass_with_its_own_prompts():
    spec = RegionSpec(
        128, 128, (Region("a", box=(0, 0, 0.4, 0.4)), Region("b", box=(0.5, 0.5, 1, 1), negative_prompt="x"))
    )
    alone = region_alone(spec, 1)
    assert len(alone) == 1 and alone.regions[0].box == (0.0, 0.0, 1.0, 1.0)
    assert (alone.regions[0].prompt, alone.regions[0].negative_prompt) == ("b", "x")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "magic"}, "placement must be one of"),
        ({"strength": float("nan")}, "strength must be a number in 0..1"),
        ({"steps": 1.5}, "steps must be a number in 0..1"),
        ({"window": -0.1}, "window must be a number in 0..1"),
        ({"separation": 2}, "separation must be a number in 0..1"),
    ],
)
def test_placement_settings_refuse_what_they_cannot_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlacementSettings(**kwargs)
    assert "attention" in PLACEMENTS


def test_layout_labels_follow_the_box_rule_and_the_first_region_wins():
    from omg_core.ops.placement import layout_labels

    spec = RegionSpec(64, 64, (Region("a", box=(0, 0, 0.5, 0.5)), Region("b", box=(0.25, 0.25, 1, 1))))
    labels = layout_labels(spec, 4, 4).reshape(4, 4)
    assert labels.tolist() == [[0, 0, -1, -1], [0, 0, 1, 1], [-1, 1, 1, 1], [-1, 1, 1, 1]]


def test_self_attention_layout_keeps_each_query_within_its_own_area():
    """At strength 1 a query in a box attends only to keys in that box, a background query only to the
    background: the output equals attention restricted to those keys; at strength s the others keep 1 - s."""
    from omg_core.bridge.placement import LayoutBias, SelfAttentionLayout
    from omg_core.ops.placement import layout_bias

    spec = RegionSpec(64, 64, (Region("a", box=(0, 0, 0.5, 1)),))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sigmas = torch.linspace(10, 0, 5)
    options = {"n_heads": 2, "original_shape": [2, 4, 4, 4], "sample_sigmas": sigmas, "sigmas": sigmas[:1]}
    layout = SelfAttentionLayout(LayoutBias(spec, 1.0), PlacementSettings("self_attention", 1.0, 0.5))
    out = layout(q, k, v, options)
    inside = torch.tensor([c % 4 < 2 for c in range(16)])
    for rows, keys in ((inside, inside), (~inside, ~inside)):
        qh, kh, vh = (t.reshape(2, -1, 2, 4).transpose(1, 2) for t in (q[:, rows], k[:, keys], v[:, keys]))
        want = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, -1) @ vh
        torch.testing.assert_close(out[:, rows], want.transpose(1, 2).reshape(2, -1, 8), rtol=1e-12, atol=1e-12)
    half = layout_bias(torch.tensor([0, -1]), 0.75)
    assert torch.allclose(half.exp(), torch.tensor([[1.0, 0.25], [0.25, 1.0]]))


def test_apart_bias_cuts_attention_between_boxes_only():
    from omg_core.ops.placement import apart_bias

    bias = apart_bias(torch.tensor([0, 0, 1, -1]))
    inf = -math.inf
    expected = torch.tensor([[0, 0, inf, 0], [0, 0, inf, 0], [inf, inf, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(bias, expected)
