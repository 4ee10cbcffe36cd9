"""Regions: parsing the widget JSON, the box rule at every resolution, the mix
shares, binding concepts, and the preview picture."""

import json
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omg_core.model.concept import Concept
from omg_core.ops.regions import (
    MAX_REGIONS,
    Region,
    RegionSpec,
    bind_regions,
    box_cells,
    coverage,
    coverages,
    latent_grids,
    mask_region,
    mix_shares,
    parse_boxes,
    rasterize,
    regions_from_widgets,
)
from omg_core.render.palette import REGION_PALETTE as PALETTE
from omg_core.render.palette import region_colour as colour
from omg_core.render.region_images import render_attention_maps, render_preview


def boxes_json(*boxes, **extra):
    return json.dumps({"version": 1, "boxes": [dict(zip(("x0", "y0", "x1", "y1"), b)) | extra for b in boxes]})


TWO = boxes_json((0.05, 0.1, 0.45, 0.9), (0.55, 0.1, 0.95, 0.9))


def test_widget_json_parses_with_defaults_and_prompt_per_line():
    spec = regions_from_widgets(512, 512, TWO, "a omgcat cat\na omgdog dog\n\n")
    assert len(spec) == 2
    a, b = spec.regions
    assert a.box == (0.05, 0.1, 0.45, 0.9) and a.prompt == "a omgcat cat" and b.prompt == "a omgdog dog"
    assert (a.weight, a.ratio, a.feather, a.negative_prompt) == (1.0, 1.0, 0.0, "")


def test_optional_box_keys_are_read_and_feather_is_pixels_of_the_shorter_side():
    text = json.dumps(
        {"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "weight": 2, "ratio": 0.5, "feather": 64}]}
    )
    (box,) = parse_boxes(text, 1024, 512)
    assert box["weight"] == 2 and box["ratio"] == 0.5 and box["feather"] == pytest.approx(64 / 512)


def test_negative_prompt_lines_are_per_box_and_may_be_missing():
    spec = regions_from_widgets(512, 512, TWO, "a\nb", "blurry")
    assert [r.negative_prompt for r in spec.regions] == ["blurry", ""]
    assert spec.has_negatives


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "boxes is not valid JSON"),
        ('{"version": 1}', "must be a JSON object with a 'boxes' list"),
        ('{"version": 2, "boxes": []}', "version 2"),
        (boxes_json((0.1, 0.1, 1.2, 0.5)), r"box 1: x1 = 1.2 is outside the image"),
        (boxes_json((-0.1, 0.1, 0.5, 0.5)), r"x0 = -0.1 is outside the image"),
        (boxes_json((0.3, 0.1, 0.3, 0.5)), "box 1 has zero area"),
        (boxes_json((0.5, 0.6, 0.7, 0.2)), "box 1 has zero area"),
        ('{"version": 1, "boxes": [{"x0": NaN, "y0": 0, "x1": 1, "y1": 1}]}', "x0 is nan"),
        ('{"version": 1, "boxes": [{"x0": "a", "y0": 0, "x1": 1, "y1": 1}]}', "x0 must be a number"),
        ('{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1}]}', "box 1 is missing y1"),
        ('{"version": 1, "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1, "ration": 1}]}', "unknown key.*ration"),
        (boxes_json((0, 0, 1, 1), weight=-1), "weight -1 is negative"),
        (boxes_json((0, 0, 1, 1), ratio=1.5), "ratio 1.5 must be in 0..1"),
        (boxes_json((0.5, 0, 0.5001, 1)), "thinner than one pixel"),
        (boxes_json(*[(0, 0, 1, 1)] * (MAX_REGIONS + 1)), f"{MAX_REGIONS + 1} boxes: at most {MAX_REGIONS}"),
    ],
)
def test_invalid_boxes_are_refused_with_a_message_saying_what_to_do(text, message):
    with pytest.raises(ValueError, match=message):
        parse_boxes(text, 512, 512)


def test_prompt_count_must_match_box_count():
    with pytest.raises(ValueError, match=r"2 box\(es\) but 1 prompt line\(s\): write one line per box"):
        regions_from_widgets(512, 512, TWO, "only one")


def test_empty_prompt_line_in_the_middle_is_refused():
    with pytest.raises(ValueError, match="region_prompts line 1 is empty"):
        regions_from_widgets(512, 512, TWO, "\nb")


def test_more_negative_lines_than_boxes_is_refused():
    with pytest.raises(ValueError, match="3 negative prompt lines for 2 box"):
        regions_from_widgets(512, 512, TWO, "a\nb", "x\ny\nz")


def test_extending_beyond_sixteen_regions_is_refused():
    many = regions_from_widgets(512, 512, boxes_json(*[(0, 0, 1, 1)] * 10), "\n".join("p" * 1 for _ in range(10)))
    with pytest.raises(ValueError, match="20 regions: at most 16"):
        regions_from_widgets(512, 512, boxes_json(*[(0, 0, 1, 1)] * 10), "\n".join(["q"] * 10), regions=many)


def test_own_boxes_come_before_extended_regions_so_widget_numbers_hold():
    first = regions_from_widgets(512, 512, boxes_json((0, 0, 0.5, 1)), "upstream")
    spec = regions_from_widgets(512, 512, TWO, "a\nb", regions=first)
    assert [r.prompt for r in spec.regions] == ["a", "b", "upstream"]


@settings(max_examples=200, deadline=None)
@given(
    a=st.integers(0, 999),
    b=st.integers(1, 1000),
    c=st.integers(0, 999),
    d=st.integers(1, 1000),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
)
def test_box_rule_starts_rounded_up_and_ends_rounded_down_at_every_grid(a, b, c, d, h, w):
    """Mix-of-Show's rule: a cell belongs to a box iff it lies wholly inside it
    (computed here exactly with fractions, cell by cell)."""
    x0, x1 = sorted((a, b)) if a != b else (a, a + 1)
    y0, y1 = sorted((c, d)) if c != d else (c, c + 1)
    box = (x0 / 1000, y0 / 1000, x1 / 1000, y1 / 1000)
    fx0, fy0, fx1, fy1 = (Fraction(v, 1000) for v in (x0, y0, x1, y1))
    rows = [i for i in range(h) if Fraction(i, h) >= fy0 and Fraction(i + 1, h) <= fy1]
    cols = [j for j in range(w) if Fraction(j, w) >= fx0 and Fraction(j + 1, w) <= fx1]
    r0, r1, c0, c1 = box_cells(box, h, w)
    assert list(range(r0, r1)) == rows and list(range(c0, c1)) == cols
    assert (r0, r1, c0, c1) == (
        math.ceil(fy0 * h),
        max(math.ceil(fy0 * h), math.floor(fy1 * h)),
        math.ceil(fx0 * w),
        max(math.ceil(fx0 * w), math.floor(fx1 * w)),
    )


def test_float_noise_does_not_move_a_box_edge():
    # 0.3 * 10 == 3.0000000000000004 in floats; the edge is still row 3
    assert box_cells((0.0, 0.3, 1.0, 0.7), 10, 10)[:2] == (3, 7)


def test_attention_grids_of_odd_latents_halve_with_ceil():
    assert latent_grids(9, 15) == [(9, 15), (5, 8), (3, 4), (2, 2)]


def test_overlap_rule_averages_regions_and_ratio_blends_with_global():
    spec = RegionSpec(
        100,
        100,
        (
            Region("a", box=(0.0, 0.0, 0.6, 1.0)),
            Region("b", box=(0.4, 0.0, 1.0, 1.0), ratio=0.5),
        ),
    )
    shares = mix_shares(coverages(spec, 1, 10), torch.ones(2), torch.tensor([1.0, 0.5]))
    assert shares[0, 0].tolist() == [1, 1, 1, 1, 0.5, 0.5, 0, 0, 0, 0]
    assert shares[1, 0].tolist() == [0, 0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5]


@settings(max_examples=60, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0, 3)),
        min_size=1,
        max_size=6,
    ),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    feather=st.floats(0, 0.3),
)
def test_shares_never_exceed_one_and_crops_hold_every_covered_cell(boxes, h, w, feather):
    regions = []
    for x0, y0, dx, dy, weight in boxes:
        regions.append(Region("p", box=(x0, y0, min(1.0, x0 + dx), min(1.0, y0 + dy)), weight=weight, feather=feather))
    spec = RegionSpec(64, 64, tuple(regions))
    cells = rasterize(spec, h, w)
    total = torch.zeros(h, w)
    cov = coverages(spec, h, w)
    for cell in cells:
        full = torch.zeros(h, w)
        full[slice(*cell.rows), slice(*cell.cols)] = cell.coef
        total += full
        region = spec.regions[cell.index]
        assert ((full > 0) <= (cov[cell.index] > 0)).all(), "a share outside the region's support"
        outside = cov[cell.index].clone()
        outside[slice(*cell.rows), slice(*cell.cols)] = 0
        assert (outside == 0).all() or region.weight == 0, "the crop lost covered cells"
    assert (total <= 1 + 1e-6).all()


def test_feather_ramps_inward_and_never_at_the_image_border():
    full = Region("p", box=(0.0, 0.0, 1.0, 1.0), feather=0.25)
    assert (coverage(full, 16, 16) == 1).all(), "a full-image region must not fade at the image border"
    inner = Region("p", box=(0.25, 0.25, 0.75, 0.75), feather=0.125)
    c = coverage(inner, 16, 16)
    assert c[4, 4] < c[5, 5] < c[6, 6] == 1.0 and c[3, 3] == 0 and c[8, 8] == 1.0


def test_mask_region_coverage_is_area_average_and_feather_is_inward():
    mask = torch.zeros(1, 64, 64)
    mask[0, 16:48, 16:48] = 1
    spec = mask_region(mask, "a mug", feather=8)
    (region,) = spec.regions
    assert (spec.width, spec.height) == (64, 64)
    assert region.mask[32, 32] == 1 and region.mask[16, 16] == pytest.approx(1 / 8) and region.mask[15, 15] == 0
    hard = mask_region(mask, "a mug").regions[0]
    assert coverage(hard, 4, 4)[1:3, 1:3].eq(1).all() and coverage(hard, 4, 4)[0].eq(0).all()
    assert coverage(hard, 3, 3)[1, 1] == 1 and 0 < coverage(hard, 3, 3)[0, 0] < 1


@pytest.mark.parametrize(
    "mask, kwargs, message",
    [
        (torch.zeros(1, 8, 8), {}, "the mask is empty"),
        (torch.ones(2, 8, 8), {}, "batch of 2"),
        (torch.full((8, 8), float("nan")), {}, "NaN"),
        (torch.ones(8, 8), {"prompt": " "}, "prompt is empty"),
        (torch.ones(8, 8), {"ratio": 2.0}, "ratio 2 must be in 0..1"),
        (torch.ones(8, 16), {"regions": RegionSpec(512, 512)}, "does not have the aspect"),
    ],
)
def test_invalid_masks_are_refused_with_a_message(mask, kwargs, message):
    args = {"prompt": "a mug"} | kwargs
    with pytest.raises(ValueError, match=message):
        mask_region(mask, **args)


def concept(name, trigger):
    return Concept(name=name, triggers=(trigger,), family="sd15", source_format="native")


def test_routed_binding_follows_trigger_words():
    spec = RegionSpec(64, 64, tuple(Region(p, box=(0, 0, 1, 1)) for p in ("a omgcat cat", "OMGDOG", "a tree")))
    cat, dog = concept("cat", "omgcat"), concept("dog", "omgdog")
    assert bind_regions(spec, [cat, dog]) == [cat, dog, None]
    assert bind_regions(RegionSpec(64, 64, (Region("omgcatty", box=(0, 0, 1, 1)),)), [cat]) == [None]


def test_a_region_naming_two_concepts_is_refused_in_routed_mode():
    spec = RegionSpec(64, 64, (Region("omgcat and omgdog", box=(0, 0, 1, 1)),))
    with pytest.raises(ValueError, match="region 1 .* names 2 concepts .*'cat', 'dog'.*use mode 'fused'"):
        bind_regions(spec, [concept("cat", "omgcat"), concept("dog", "omgdog")])


def test_explicit_concept_binding_must_name_a_connected_concept():
    spec = RegionSpec(64, 64, (Region("a pet", box=(0, 0, 1, 1), concept="cow"),))
    with pytest.raises(ValueError, match="region 1 names concept 'cow', but the concepts are: cat"):
        bind_regions(spec, [concept("cat", "omgcat")])


def test_preview_paints_each_region_in_its_palette_colour():
    spec = regions_from_widgets(256, 128, TWO, "a\nb")
    image = render_preview(spec)
    assert image.shape == (1, 128, 256, 3)
    for i, x in ((0, 64), (1, 192)):
        pixel = image[0, 90, x] * 255
        expected = 0.5 * torch.tensor([32.0] * 3) + 0.5 * torch.tensor(colour(i), dtype=torch.float32)
        assert torch.allclose(pixel, expected, atol=1.5), (i, pixel, expected)
    assert PALETTE[0] == "#e6194b" and colour(8) == colour(0)


def test_attention_map_picture_has_one_panel_per_token():
    spec = regions_from_widgets(64, 64, TWO, "a\nb")
    maps = {"omgcat": torch.rand(8, 8), "omgdog": torch.rand(8, 8)}
    image = render_attention_maps(maps, spec, {"omgcat": 0, "omgdog": 1})
    assert image.shape == (1, 64, 64 * 2 + 4, 3)


def test_mixing_numbers_that_would_not_stay_finite_in_float32_are_refused():
    from omg_core.ops.regions import MAX_FEATHER, MAX_WEIGHT

    for extra, message in (
        ({"weight": 1e39}, f"weight 1e\\+39 is above {MAX_WEIGHT:g}"),
        ({"feather": 5000}, f"feather 5000 is above {MAX_FEATHER:g} pixels"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_boxes(boxes_json((0, 0, 1, 1), **extra), 512, 512)
    with pytest.raises(ValueError, match="weight is nan — give it a finite number"):
        mask_region(torch.ones(8, 8), "p", weight=float("nan"))
    # At the bounds the shares stay finite in float32.
    (box,) = parse_boxes(boxes_json((0, 0, 1, 1), weight=MAX_WEIGHT, feather=MAX_FEATHER), 512, 512)
    cells = rasterize(RegionSpec(512, 512, (Region("p", **box),)), 64, 64)
    assert torch.isfinite(cells[0].coef).all()


def test_deeply_nested_boxes_json_is_a_clear_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_boxes("[" * 100_000 + "]" * 100_000, 512, 512)


def test_warnings_name_regions_without_a_concept_and_boxes_below_one_latent_cell():
    from omg_core.ops.regions import region_warnings

    cat = Concept(name="cat", triggers=("omgcat",), family="sd15", source_format="native")
    spec = regions_from_widgets(512, 512, boxes_json((0, 0, 0.5, 1), (0.6, 0.6, 0.61, 0.61)), "omgcat cat\na bowl")
    routed = region_warnings(spec, bind_regions(spec, [cat]))
    assert len(routed) == 2
    assert "region 2 ('a bowl') names no concept's trigger word: the base model draws it" in routed[0]
    assert "region 2 ('a bowl') covers no whole latent cell (8×8 px) of the 512×512 image" in routed[1]
    fused = region_warnings(spec)
    assert len(fused) == 1 and "covers no whole latent cell" in fused[0]
    assert region_warnings(regions_from_widgets(512, 512, TWO, "a\nb")) == []


def test_preview_notes_are_written_under_the_picture():
    spec = regions_from_widgets(256, 256, TWO, "a\nb")
    plain = render_preview(spec)
    noted = render_preview(spec, notes=["region 2 has no effect: make the box larger"] * 2)
    assert noted.shape[2] == plain.shape[2] and noted.shape[1] > plain.shape[1]
    torch.testing.assert_close(noted[:, : plain.shape[1]], plain)
    assert float(noted[:, plain.shape[1] :].std()) > 0  # text was drawn


def test_a_mask_region_on_a_latent_of_another_aspect_is_named_stretched():
    from omg_core.ops.regions import stretch_warning

    lone = mask_region(torch.ones(64, 64), "p")  # a lone mask region: the image is the mask's 64×64
    assert stretch_warning(lone, 8, 8) is None and stretch_warning(lone, 4, 4) is None
    assert "made for a 64×64 image, but the latent is 16×8 cells" in stretch_warning(lone, 8, 16)
    # Odd latents round up at each stride-2 step; that is not a change of aspect.
    wide = mask_region(torch.ones(72, 120), "p")
    assert all(stretch_warning(wide, h, w) is None for h, w in latent_grids(9, 15))
    boxes = regions_from_widgets(64, 64, TWO, "a\nb")
    assert stretch_warning(boxes, 8, 16) is None  # boxes are fractions of any image
