"""Regions: where each region prompt applies, at every attention resolution.

A region is a normalised box (as the web widget writes it) or a MASK, with
its prompt. The UNet attends at several resolutions (64×64, 32×32, … for a
512 px image; 9×15, 5×8, 3×4 for a 72×120 px one), so a region is kept in
image-relative form and turned into cells only when the attention patch
meets a grid (``rasterize``).

Rules, chosen to match Mix-of-Show and written down because every one of them
is easy to get subtly different:

- **Box edges** (Mix-of-Show's rule, at every resolution): on an ``h × w``
  grid a box covers rows ``ceil(y0·h) .. floor(y1·h) - 1`` and columns
  ``ceil(x0·w) .. floor(x1·w) - 1`` — start rounded up, end rounded down, so
  a cell belongs to a box only if it lies wholly inside it. The products are
  rounded to 1e-9 first, so that 0.3 × 10 counts as 3 and not 3.0000000000000004.
  A box thinner than one cell at a coarse grid covers no cell there.
- **Masks** are averaged over each cell (area resampling): a cell half inside
  the mask has coverage 0.5.
- **Feather** makes coverage ramp from 0 at a region's edge to 1 at the
  feather distance inside it (edges on the image border are not feathered),
  so the soft mask never leaves the region's hard support and attention can
  still be computed on the support's bounding box only.
- **Mixing** (per cell, c_i = coverage, w_i = weight, r_i = ratio): region i
  gets the share ``a_i = w_i c_i / max(1, Σ_j w_j c_j)`` and the attention
  output is ``global + Σ_i r_i a_i (region_i − global)``. With hard masks and
  unit weights that is Mix-of-Show exactly: outside every region the global
  output, inside one region ``(1 − r)·global + r·region``, where regions
  overlap the region outputs averaged over the overlap count. A weight below 1
  blends a lone region with the global prompt; weights above 1 only matter
  against overlapping regions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from omg_core.model.concept import Concept

MAX_REGIONS = 16
# Bounds of the mixing numbers (the Mask Region widgets and the box editor use the same): a share
# w·c / Σ w·c must stay finite in the float32 it is computed in, and a feather past the image is no edge.
MAX_WEIGHT = 10.0
MAX_FEATHER = 1024.0
BOX_KEYS = ("x0", "y0", "x1", "y1")
OPTIONAL_BOX_KEYS = ("weight", "ratio", "feather", "label", "concept")
BOXES_FORMAT = '{"version": 1, "boxes": [{"x0": 0.05, "y0": 0.1, "x1": 0.45, "y1": 0.9}, ...]}'
# Widgets round-trip coordinates through floats; a box edge this close to the
# image border is on it.
_EDGE_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class Region:
    """One region: a box ``(x0, y0, x1, y1)`` in 0..1 (x right, y down) or a
    soft ``mask`` [H, W] in 0..1 (feather already applied), and its prompt.

    ``feather`` (boxes only) is the ramp width as a fraction of the image's
    shorter side, so a box means the same at every resolution. ``concept``
    names a concept to bind explicitly (otherwise routed mode binds by trigger
    word).
    """

    prompt: str
    box: tuple[float, float, float, float] | None = None
    mask: torch.Tensor | None = None
    weight: float = 1.0
    ratio: float = 1.0
    feather: float = 0.0
    negative_prompt: str = ""
    label: str = ""
    concept: str | None = None

    @property
    def kind(self) -> str:
        return "box" if self.box is not None else "mask"


@dataclass(frozen=True, eq=False)
class RegionSpec:
    """The regions of one image, in order (region i is drawn as number i+1 in
    palette colour i). ``width``/``height`` in pixels give feather and mask
    aspect their meaning; the grid the UNet actually uses comes from the
    latent at sampling time."""

    width: int
    height: int
    regions: tuple[Region, ...] = ()

    def __len__(self) -> int:
        return len(self.regions)

    @property
    def has_negatives(self) -> bool:
        return any(r.negative_prompt.strip() for r in self.regions)


@dataclass(frozen=True, eq=False)
class RegionCells:
    """A region at one grid size: the bounding rows/cols of its support and its
    share of the attention output there (ratio, weight and overlaps folded in)."""

    index: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    coef: torch.Tensor  # [rows, cols]

    @property
    def area(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


# ----------------------------------------------------------------------------- parsing


def _number(box: dict, key: str, where: str, default: float | None = None) -> float:
    value = box.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}. Expected {BOXES_FORMAT}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {key} is {value} — give it a finite number")
    return value


def parse_boxes(text: str, width: int, height: int) -> list[dict]:
    """The validated boxes of the widget JSON, each with all optional keys filled.

    Feather is converted from pixels (of ``width × height``) to a fraction of
    the shorter side.
    """
    _check_size(width, height)
    try:
        data = json.loads(text) if text.strip() else {"version": 1, "boxes": []}
    except json.JSONDecodeError as e:
        raise ValueError(f"boxes is not valid JSON ({e}). Expected {BOXES_FORMAT}") from e
    except RecursionError:
        raise ValueError(f"boxes is nested too deeply to be region boxes. Expected {BOXES_FORMAT}") from None
    if isinstance(data, list):
        data = {"version": 1, "boxes": data}
    if not isinstance(data, dict) or not isinstance(data.get("boxes"), list):
        raise ValueError(f"boxes must be a JSON object with a 'boxes' list. Expected {BOXES_FORMAT}")
    if data.get("version", 1) != 1:
        raise ValueError(f"boxes has version {data.get('version')!r}; this version of the pack reads version 1")
    if len(data["boxes"]) > MAX_REGIONS:
        raise ValueError(
            f"{len(data['boxes'])} boxes: at most {MAX_REGIONS} regions are supported — merge or delete some boxes"
        )
    out = []
    for i, box in enumerate(data["boxes"]):
        where = f"box {i + 1}"
        if not isinstance(box, dict):
            raise ValueError(f"{where} must be an object with x0, y0, x1, y1. Expected {BOXES_FORMAT}")
        unknown = sorted(set(box) - set(BOX_KEYS) - set(OPTIONAL_BOX_KEYS))
        if unknown:
            raise ValueError(
                f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(BOX_KEYS + OPTIONAL_BOX_KEYS)}"
            )
        missing = [k for k in BOX_KEYS if k not in box]
        if missing:
            raise ValueError(f"{where} is missing {', '.join(missing)}. Expected {BOXES_FORMAT}")
        x0, y0, x1, y1 = (_number(box, k, where) for k in BOX_KEYS)
        for key, value in zip(BOX_KEYS, (x0, y0, x1, y1)):
            if value < -_EDGE_TOLERANCE or value > 1 + _EDGE_TOLERANCE:
                raise ValueError(
                    f"{where}: {key} = {value:g} is outside the image — coordinates are fractions 0..1 of "
                    "width and height; drag the box back inside"
                )
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"{where} has zero area (x0={x0:g}, x1={x1:g}, y0={y0:g}, y1={y1:g}; need x0 < x1 and y0 < y1) — "
                "drag it open or delete it"
            )
        if (x1 - x0) * width < 1 or (y1 - y0) * height < 1:
            raise ValueError(f"{where} is thinner than one pixel at {width}×{height} — drag it open or delete it")
        weight = _number(box, "weight", where, 1.0)
        ratio = _number(box, "ratio", where, 1.0)
        feather = _number(box, "feather", where, 0.0)
        _check_mix(where, weight, ratio, feather)
        label = box.get("label", "")
        concept = box.get("concept")
        if not isinstance(label, str) or (concept is not None and not isinstance(concept, str)):
            raise ValueError(f"{where}: label and concept must be strings")
        out.append(
            dict(
                box=(x0, y0, x1, y1),
                weight=weight,
                ratio=ratio,
                feather=feather / min(width, height),
                label=label,
                concept=concept or None,
            )
        )
    return out


def _check_size(width: int, height: int) -> None:
    if width < 8 or height < 8:
        raise ValueError(f"image size {width}×{height} is too small; width and height are pixels, at least 8")


def _check_mix(where: str, weight: float, ratio: float, feather: float) -> None:
    for name, value in (("weight", weight), ("ratio", ratio), ("feather", feather)):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {name} is {value} — give it a finite number")
    if weight < 0:
        raise ValueError(f"{where}: weight {weight:g} is negative; use 0 to switch the region off")
    if weight > MAX_WEIGHT:
        raise ValueError(
            f"{where}: weight {weight:g} is above {MAX_WEIGHT:g}; weights only matter relative to each other"
        )
    if not 0 <= ratio <= 1:
        raise ValueError(f"{where}: ratio {ratio:g} must be in 0..1 (1 replaces the global prompt, 0 keeps it)")
    if feather < 0:
        raise ValueError(f"{where}: feather {feather:g} must be 0 or more pixels")
    if feather > MAX_FEATHER:
        raise ValueError(f"{where}: feather {feather:g} is above {MAX_FEATHER:g} pixels")


def _prompt_lines(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def regions_from_widgets(
    width: int,
    height: int,
    boxes: str,
    region_prompts: str,
    region_negative_prompts: str = "",
    regions: RegionSpec | None = None,
    detected_boxes=None,
) -> RegionSpec:
    """The OMG Regions node: boxes + one prompt line per box (+ optional
    negative lines), then the boxes of a core ``BOUNDING_BOX`` value
    (``detected_regions``), in front of any regions passed in — so the drawn
    boxes keep the numbers and colours the widget shows."""
    parsed = parse_boxes(boxes, width, height)
    prompts = _prompt_lines(region_prompts)
    negatives = _prompt_lines(region_negative_prompts)
    # Lines after the drawn boxes' belong to the detected boxes, if there are any.
    found = detected_regions(detected_boxes, width, height, prompts[len(parsed) :], negatives[len(parsed) :])
    if found:
        for i, p in enumerate(prompts[len(parsed) :]):
            if not p:
                raise ValueError(
                    f"region_prompts line {len(parsed) + i + 1} is empty: give the detected boxes a prompt"
                )
        prompts, negatives = prompts[: len(parsed)], negatives[: len(parsed)]
        if len(parsed) + len(found) > MAX_REGIONS:
            raise ValueError(
                f"{len(parsed)} drawn and {len(found)} detected boxes: at most {MAX_REGIONS} regions are supported — "
                "lower the detector's max_detections or raise its threshold"
            )
    if len(prompts) != len(parsed):
        raise ValueError(
            f"{len(parsed)} box(es) but {len(prompts)} prompt line(s): write one line per box in region_prompts "
            "(line 1 for box 1, line 2 for box 2, …)"
        )
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"region_prompts line {i + 1} is empty: give box {i + 1} a prompt or delete the box")
    if len(negatives) > len(parsed):
        raise ValueError(
            f"{len(negatives)} negative prompt lines for {len(parsed)} box(es): write at most one line per box "
            "(an empty line keeps the global negative for that box)"
        )
    negatives += [""] * (len(parsed) - len(negatives))
    own = tuple(Region(prompt=p, negative_prompt=n, **b) for p, n, b in zip(prompts, negatives, parsed))
    return combine(RegionSpec(width, height, own + found), regions)


def detected_box_list(value) -> list[dict]:
    """The boxes of a core ``BOUNDING_BOX`` value, as detector nodes (RT-DETR,
    SAM 3, MediaPipe) and Create Bounding Boxes give it: one ``{x, y, width,
    height}`` dict in pixels, a list of them, or a list per image of a batch
    (the first image's boxes are used: one region layout per prompt)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise ValueError(
            f"detected_boxes must be a core BOUNDING_BOX value (boxes in pixels), got {type(value).__name__}"
        )
    if value and all(isinstance(v, list) for v in value):
        value = value[0]
    if not all(isinstance(v, dict) for v in value):
        raise ValueError("detected_boxes must hold {x, y, width, height} boxes in pixels (a core BOUNDING_BOX value)")
    return list(value)


def detected_regions(value, width: int, height: int, prompts: list[str], negatives: list[str]) -> tuple[Region, ...]:
    """Regions for the boxes of a core ``BOUNDING_BOX`` value (pixels of the
    ``width × height`` image). Box i takes prompt line i; when a detector finds
    more boxes than there are lines, the last line serves the rest — so one
    line puts one concept on every detected face. Boxes are clipped to the
    image; one that lies wholly outside it is an error naming it."""
    boxes = detected_box_list(value)
    if not boxes:
        return ()
    if not prompts:
        raise ValueError(
            f"{len(boxes)} detected box(es) but no prompt line for them: after the drawn boxes' lines, write one "
            "line for the detected boxes (the last line serves every further detected box)"
        )
    out = []
    for i, box in enumerate(boxes):
        where = f"detected box {i + 1}"
        x, y, w, h = (_number(box, k, where) for k in ("x", "y", "width", "height"))
        if w < 0:
            x, w = x + w, -w
        if h < 0:
            y, h = y + h, -h
        x0, y0 = max(x / width, 0.0), max(y / height, 0.0)
        x1, y1 = min((x + w) / width, 1.0), min((y + h) / height, 1.0)
        if (x1 - x0) * width < 1 or (y1 - y0) * height < 1:
            raise ValueError(
                f"{where} ({x:g}, {y:g}, {w:g}×{h:g} px) does not overlap the {width}×{height} image by a pixel: "
                "give OMG Regions the size of the image the boxes were detected on"
            )
        label = box.get("label")
        j = min(i, len(prompts) - 1)
        out.append(
            Region(
                prompt=prompts[j],
                negative_prompt=negatives[j] if j < len(negatives) else "",
                box=(x0, y0, x1, y1),
                label=label if isinstance(label, str) else "",
            )
        )
    return tuple(out)


def pixel_boxes(spec: RegionSpec) -> list[list[dict]]:
    """The box regions of ``spec`` as a core ``BOUNDING_BOX`` value (one image's
    list of ``{x, y, width, height}`` in pixels, with the region's prompt as
    its label), for core nodes that draw or crop boxes. Mask regions have no
    box and are left out."""
    out = []
    for r in spec.regions:
        if r.box is None:
            continue
        x0, y0, x1, y1 = r.box
        px = round(x0 * spec.width), round(y0 * spec.height)
        out.append(
            {
                "x": px[0],
                "y": px[1],
                "width": round(x1 * spec.width) - px[0],
                "height": round(y1 * spec.height) - px[1],
                "label": r.label or r.prompt,
            }
        )
    return [out]


def combine(first: RegionSpec, then: RegionSpec | None) -> RegionSpec:
    """``first``'s regions followed by ``then``'s, at ``first``'s size."""
    if then is None:
        return first
    if not isinstance(then, RegionSpec):
        raise ValueError(f"regions input must come from an OMG Regions or OMG Mask Region node, got {type(then)}")
    for r in then.regions:
        if r.mask is not None:
            _check_mask_aspect(r.mask, first.width, first.height)
    total = len(first) + len(then)
    if total > MAX_REGIONS:
        raise ValueError(f"{total} regions: at most {MAX_REGIONS} are supported — remove some boxes or masks")
    # Box feather is relative to the shorter side, so it carries over unchanged.
    return RegionSpec(first.width, first.height, first.regions + then.regions)


def _check_mask_aspect(mask: torch.Tensor, width: int, height: int) -> None:
    mh, mw = mask.shape[-2:]
    if abs(math.log((mw / mh) / (width / height))) > 0.02:
        raise ValueError(
            f"a mask of {mw}×{mh} does not have the aspect of the {width}×{height} image and would be stretched — "
            "resize the mask to the image's aspect first"
        )


def mask_region(
    mask: torch.Tensor,
    prompt: str,
    weight: float = 1.0,
    feather: float = 0.0,
    ratio: float = 1.0,
    negative_prompt: str = "",
    regions: RegionSpec | None = None,
) -> RegionSpec:
    """The OMG Mask Region node: ``regions`` (if any) followed by this mask.

    Feather (pixels of the mask) is applied here, once, inward from the mask's
    edge; without upstream regions the image size is the mask's size.
    """
    where = "mask region"
    if not prompt.strip():
        raise ValueError("the mask region's prompt is empty: write what belongs inside the mask")
    _check_mix(where, weight, ratio, feather)
    if mask.ndim == 3:
        if mask.shape[0] != 1:
            raise ValueError(f"the mask has a batch of {mask.shape[0]}; connect a single mask per region")
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"expected a MASK of shape [H, W] or [1, H, W], got {tuple(mask.shape)}")
    mask = mask.detach().float().cpu()
    if not torch.isfinite(mask).all():
        raise ValueError("the mask contains NaN or infinite values")
    mask = mask.clamp(0, 1)
    if mask.max() <= 0:
        raise ValueError("the mask is empty (all zero): paint the region or use a box")
    soft = feather_mask(mask, feather)
    region = Region(
        prompt=prompt.strip(), mask=soft, weight=weight, ratio=ratio, negative_prompt=negative_prompt.strip()
    )
    if regions is None:
        return RegionSpec(mask.shape[1], mask.shape[0], (region,))
    _check_mask_aspect(mask, regions.width, regions.height)
    return combine(regions, RegionSpec(regions.width, regions.height, (region,)))


def feather_mask(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """Multiply ``mask`` by a ramp that rises from 0 at the edge of its support
    to 1 at ``feather`` pixels inside (Chebyshev distance by repeated 3×3
    erosion; the image border does not count as an edge)."""
    if feather <= 0:
        return mask
    inside = (mask > 0).float()[None, None]
    depth = torch.zeros_like(inside)
    current = inside
    for _ in range(int(math.ceil(feather))):
        depth += current
        if current.sum() == 0:
            break
        # erosion = -maxpool(-x); padding with 1 keeps the image border "inside"
        current = -F.max_pool2d(-F.pad(current, (1, 1, 1, 1), value=1.0), 3, stride=1)
    return mask * (depth[0, 0] / feather).clamp(max=1.0)


# ----------------------------------------------------------------------------- rasterizing


def _round(x: float) -> float:
    return round(x, 9)


def box_cells(box: tuple[float, float, float, float], h: int, w: int) -> tuple[int, int, int, int]:
    """Rows ``r0:r1`` and columns ``c0:c1`` a box covers on an h × w grid
    (start rounded up, end rounded down; possibly empty)."""
    x0, y0, x1, y1 = box
    r0, r1 = math.ceil(_round(y0 * h)), math.floor(_round(y1 * h))
    c0, c1 = math.ceil(_round(x0 * w)), math.floor(_round(x1 * w))
    return r0, max(r0, r1), c0, max(c0, c1)


def coverage(region: Region, h: int, w: int) -> torch.Tensor:
    """Coverage [h, w] in 0..1 of one region on an h × w grid."""
    if region.mask is not None:
        return F.adaptive_avg_pool2d(region.mask[None, None].float(), (h, w))[0, 0].clamp(0, 1)
    out = torch.zeros(h, w)
    r0, r1, c0, c1 = box_cells(region.box, h, w)
    if r1 <= r0 or c1 <= c0:
        return out
    if region.feather <= 0:
        out[r0:r1, c0:c1] = 1.0
        return out
    x0, y0, x1, y1 = region.box
    short = min(h, w)
    cy = (torch.arange(r0, r1, dtype=torch.float64) + 0.5)[:, None]
    cx = (torch.arange(c0, c1, dtype=torch.float64) + 0.5)[None, :]
    inf = torch.tensor(math.inf, dtype=torch.float64)
    # distance to each edge, in fractions of the shorter side; image-border edges do not feather
    d = torch.stack(
        torch.broadcast_tensors(
            (cx - x0 * w) / short if x0 > 0 else inf,
            (x1 * w - cx) / short if x1 < 1 else inf,
            (cy - y0 * h) / short if y0 > 0 else inf,
            (y1 * h - cy) / short if y1 < 1 else inf,
        )
    ).amin(0)
    out[r0:r1, c0:c1] = (d / region.feather).clamp(0, 1).float()
    return out


def coverages(spec: RegionSpec, h: int, w: int) -> torch.Tensor:
    """Coverage [R, h, w] of every region."""
    if not spec.regions:
        return torch.zeros(0, h, w)
    return torch.stack([coverage(r, h, w) for r in spec.regions])


def mix_shares(cov: torch.Tensor, weights: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """Per-region output shares [R, h, w]: ``r_i w_i c_i / max(1, Σ_j w_j c_j)``."""
    weighted = cov * weights[:, None, None]
    return ratios[:, None, None] * weighted / weighted.sum(0).clamp(min=1.0)


def rasterize(spec: RegionSpec, h: int, w: int) -> list[RegionCells]:
    """Every region that covers at least one cell of an h × w grid, cropped to
    the bounding box of its support, with its output share there."""
    if h < 1 or w < 1:
        raise ValueError(f"grid {h}×{w} is empty")
    cov = coverages(spec, h, w)
    if len(cov) == 0:
        return []
    weights = torch.tensor([r.weight for r in spec.regions])
    ratios = torch.tensor([r.ratio for r in spec.regions])
    shares = mix_shares(cov, weights, ratios)
    out = []
    for i in range(len(spec)):
        support = (cov[i] > 0) & (weights[i] > 0)
        if not support.any():
            continue
        rows = torch.nonzero(support.any(1)).flatten()
        cols = torch.nonzero(support.any(0)).flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        out.append(RegionCells(i, (r0, r1), (c0, c1), shares[i, r0:r1, c0:c1].contiguous()))
    return out


def latent_grids(height: int, width: int, levels: int = 4) -> list[tuple[int, int]]:
    """The attention grids of a UNet on an ``height × width`` latent: each
    stride-2 convolution (kernel 3, padding 1) gives ceil(n / 2)."""
    grids = [(height, width)]
    for _ in range(levels - 1):
        h, w = grids[-1]
        grids.append(((h + 1) // 2, (w + 1) // 2))
    return grids


def with_prompts(spec: RegionSpec, prompts: list[str]) -> RegionSpec:
    """The same regions with other prompts (tests and scripted workflows)."""
    if len(prompts) != len(spec):
        raise ValueError(f"{len(prompts)} prompts for {len(spec)} regions")
    return replace(spec, regions=tuple(replace(r, prompt=p) for r, p in zip(spec.regions, prompts)))


def _mentions(prompt: str, trigger: str) -> bool:
    trigger = trigger.strip()
    if not trigger:
        return False
    return re.search(rf"(?<![\w<>]){re.escape(trigger)}(?![\w<>])", prompt, flags=re.IGNORECASE) is not None


def bind_regions(spec: RegionSpec, concepts: Sequence[Concept]) -> list[Concept | None]:
    """The concept each region gets in routed mode: the one it names
    explicitly, else the one whose trigger word its prompt contains, else
    None (the base model). Two concepts in one region is an error — routed
    mode gives a region one concept's weights."""
    by_name = {c.name: c for c in concepts}
    out: list[Concept | None] = []
    for i, region in enumerate(spec.regions):
        if region.concept:
            if region.concept not in by_name:
                names = ", ".join(sorted(by_name)) or "none connected"
                raise ValueError(f"region {i + 1} names concept '{region.concept}', but the concepts are: {names}")
            out.append(by_name[region.concept])
            continue
        hits = [c for c in concepts if any(_mentions(region.prompt, t) for t in c.triggers)]
        if len(hits) > 1:
            names = ", ".join(f"'{c.name}'" for c in hits)
            raise ValueError(
                f"region {i + 1} ('{region.prompt}') names {len(hits)} concepts ({names}); routed mode gives each "
                "region one concept — give each concept its own region, or use mode 'fused'"
            )
        out.append(hits[0] if hits else None)
    return out


LATENT_CELL = 8  # pixels per latent cell (SD1.5 and SDXL autoencoders)


def region_warnings(spec: RegionSpec, bindings: Sequence[Concept | None] | None = None) -> list[str]:
    """What may not be what the user meant, though it can be: a routed region
    that no concept is bound to (drawn by the base model), a box that covers
    no latent cell of the image (it has no effect). ``bindings`` is routed
    mode's concept per region (None in fused mode)."""
    out = []
    grid_h, grid_w = max(1, spec.height // LATENT_CELL), max(1, spec.width // LATENT_CELL)
    for i, region in enumerate(spec.regions):
        name = f"region {i + 1} ('{region.prompt[:40]}')"
        if bindings is not None and bindings[i] is None:
            out.append(
                f"{name} names no concept's trigger word: the base model draws it (routed mode gives a region the "
                "concept whose trigger word its prompt contains)"
            )
        if region.box is not None:
            r0, r1, c0, c1 = box_cells(region.box, grid_h, grid_w)
            if r1 <= r0 or c1 <= c0:
                out.append(
                    f"{name} covers no whole latent cell ({LATENT_CELL}×{LATENT_CELL} px) of the {spec.width}×"
                    f"{spec.height} image and has no effect: make the box larger"
                )
    return out


def stretch_warning(spec: RegionSpec, h: int, w: int) -> str | None:
    """A warning when mask regions meet an attention grid of another aspect
    than the image they were made for (a lone OMG Mask Region takes the mask's
    own size): they are stretched to fit. Boxes are fractions of the image and
    fit any aspect. A grid matches when either side is within one cell of the
    spec's aspect (the UNet's stride-2 steps round sizes up)."""
    if not any(r.mask is not None for r in spec.regions):
        return None
    if abs(w - h * spec.width / spec.height) <= 1 or abs(h - w * spec.height / spec.width) <= 1:
        return None
    return (
        f"the mask regions were made for a {spec.width}×{spec.height} image, but the latent is {w}×{h} cells: "
        "the masks are stretched to its aspect — resize the mask to the image's aspect, or put it after an OMG "
        "Regions node of the image's size"
    )
