"""Placement methods: how hard OMG Apply Regional Attention pushes each
concept into its box, on top of confining its prompt there.

Regional attention alone decides *what* each box attends to, but early in
sampling, when the layout of the image forms, nothing makes an object start
inside its box: boxes come out empty, objects form across box edges or in the
background. The methods here act on those early steps only and leave the rest
of the run to regional attention. One list, ``PLACEMENTS``; the patches that
carry them out are in ``omg_core.bridge.placement``:

- ``attention``: regional attention only — one UNet pass per step.
- ``self_attention`` (the self-attention half of DenseDiffusion's layout
  modulation, Kim et al. 2023): in those early steps a query inside a box
  attends within its own box, and the background within the background,
  ``strength`` being the share of attention weight taken from elsewhere (1:
  none left) — so an object forms where its box is and two boxes do not
  merge into one blob. One UNet pass; the attention in those steps is
  computed with a mask.
- ``latent_composition`` (after MultiDiffusion, Bar-Tal et al. 2023, and the
  noise blending of OMG, Kong et al. 2024): for the first ``steps`` share of
  the schedule each box is also denoised on its own, as a crop of the latent
  with the whole crop given to that region's prompt (routed mode: and only
  its concept), and the box's prediction is blended into the full pass's by
  ``strength``. A box the size of an image the model knows then draws one
  object, centred in the box, and later steps join the pieces. Cost: the
  boxes' windows denoised once more in those steps — one extra UNet call,
  the windows of one size batched together. Its ``separation`` keeps the
  boxes apart in the full pass's self-attention (a box's queries see their
  own box and the background, never another box) over a share of the run
  that may outlast the boxes' own passes: in the later steps the full pass
  alone draws every object, and attention between boxes let one box's
  object lose its small parts to its neighbours' (the house its roof, the
  target its centre). No extra pass: the attention there is computed with a
  mask.

Sampling with no regions installs nothing, so it stays bit-identical to plain
sampling. Boxes only: mask regions have no crop and keep plain regional
attention in every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omg_core.ops.regions import Region, RegionSpec, box_cells, coverage

PLACEMENTS = ("attention", "self_attention", "latent_composition")
DEFAULT_PLACEMENT = "latent_composition"  # chosen by the composition benchmark (README, "The toy world")


@dataclass(frozen=True)
class PlacementSettings:
    """``strength`` 0..1: the box prediction's share inside the box;
    ``steps`` 0..1: the share of the schedule (from the first step) it acts on;
    ``window`` 0..1 (latent composition): each box's own pass denoises at
    least this share of each side of the image around the box (``crop_window``);
    ``separation`` 0..1 (latent composition): the share of the schedule, from
    the first step, in which the full pass's self-attention also keeps each
    box from the others (``apart_bias``: a box's queries see their own box and
    the background, never another box) — once the boxes' own passes stop, the
    full pass alone draws every object, and attention between boxes is what
    would let one box's object take another's parts."""

    method: str = DEFAULT_PLACEMENT
    strength: float = 1.0
    # Chosen by the composition benchmark on random layouts (README, "The toy world"): placement
    # ending at 0.3 of the run left a third of the boxes empty — the later steps wiped out objects
    # not yet formed; at 0.6 with a half-image window most boxes keep theirs.
    steps: float = 0.6
    window: float = 0.5
    # Chosen by the composition benchmark (README, "The toy world"): boxes kept apart over the whole run
    # held more boxes at three and four concepts on the tuning, fixed and random layouts alike.
    separation: float = 1.0

    def __post_init__(self):
        if self.method not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.method!r}")
        for name in ("strength", "steps", "window", "separation"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"placement {name} must be a number in 0..1, got {value!r}")


def active_steps(sample_sigmas: torch.Tensor | None, sigma: torch.Tensor | None, share: float) -> bool:
    """Whether the step at ``sigma`` lies in the first ``share`` of the run's
    schedule ``sample_sigmas`` (falling, the last entry 0). Without a schedule
    (a caller that is not a sampler) nothing is active."""
    if sample_sigmas is None or sigma is None or share <= 0:
        return False
    steps = len(sample_sigmas) - 1
    if steps < 1:
        return False
    last = min(steps - 1, max(0, math.ceil(share * steps) - 1))  # index of the last active step
    return float(sigma.reshape(-1)[0]) >= float(sample_sigmas[last]) * (1 - 1e-6)


def crop_cells(box: tuple[float, float, float, float], h: int, w: int) -> tuple[int, int, int, int] | None:
    """The latent cells a box covers (the regions' box rule), None when it covers none."""
    r0, r1, c0, c1 = box_cells(box, h, w)
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def crop_window(cells: tuple[int, int, int, int], h: int, w: int, share: float) -> tuple[int, int, int, int]:
    """The cells a box's own pass denoises: its ``cells`` grown, centred on
    them, to at least ``share`` of each side of the h × w latent (shifted
    inwards at an edge, never past the latent).

    A box's own pass draws what the model draws for an image of the crop's
    size; a crop far below the sizes it was trained on (a 30 % box is a
    38-px image to a model trained at 64 and 128 px) comes back empty or as a
    smudge. The wider window is denoised with the region's prompt and only
    the box's cells are blended, so the object still forms centred in the box."""
    r0, r1, c0, c1 = cells

    def grow(a: int, b: int, side: int) -> tuple[int, int]:
        want = min(side, max(b - a, math.ceil(share * side - 1e-9)))
        start = min(max(0, (a + b - want) // 2), side - want)
        return start, start + want

    (r0, r1), (c0, c1) = grow(r0, r1, h), grow(c0, c1, w)
    return r0, r1, c0, c1


def blend(full: torch.Tensor, crops: Sequence[tuple[tuple[int, int, int, int], torch.Tensor]], strength: float):
    """``full`` [B, C, H, W] with each crop prediction blended into its cells
    by ``strength``; where crops overlap they are averaged."""
    if not crops:
        return full
    acc = torch.zeros_like(full)
    count = torch.zeros(full.shape[-2:], dtype=full.dtype, device=full.device)
    for (r0, r1, c0, c1), pred in crops:
        acc[..., r0:r1, c0:c1] += pred
        count[r0:r1, c0:c1] += 1
    inside = count > 0
    mixed = full + strength * (acc / count.clamp(min=1) - full)
    return torch.where(inside, mixed, full)


def call_groups(windows, area: int) -> list[list[int]]:
    """The boxes' own passes as UNet calls: indices of windows of one size, in
    order, each call's windows together no larger than ``area`` cells (the
    full latent's: a call never needs more activation memory than the full
    pass); ``area`` 0 gives every window its own call."""
    calls: list[list[int]] = []
    open_calls: dict[tuple[int, int], list[int]] = {}
    for i, (r0, r1, c0, c1) in enumerate(windows):
        size = (r1 - r0, c1 - c0)
        current = open_calls.get(size)
        if current is None or (len(current) + 1) * size[0] * size[1] > area:
            current = open_calls[size] = []
            calls.append(current)
        current.append(i)
    return calls


def region_alone(spec: RegionSpec, index: int) -> RegionSpec:
    """Region ``index`` covering a whole crop: its pass attends only to its own prompt."""
    region = spec.regions[index]
    whole = Region(region.prompt, box=(0.0, 0.0, 1.0, 1.0), negative_prompt=region.negative_prompt)
    return RegionSpec(spec.width, spec.height, (whole,))


def layout_labels(spec: RegionSpec, h: int, w: int) -> torch.Tensor:
    """[h·w] the region each cell belongs to (the first whose box or mask
    holds it, by the regions' cell rule; mask cells: coverage above one half),
    -1 for the background."""
    labels = torch.full((h, w), -1, dtype=torch.long)
    for i in reversed(range(len(spec))):
        labels[coverage(spec.regions[i], h, w) > 0.5] = i
    return labels.reshape(-1)


def layout_bias(labels: torch.Tensor, strength: float) -> torch.Tensor:
    """[N, N] additive attention bias: 0 between cells of the same region (or
    both background), ``log(1 - strength)`` elsewhere (-inf at strength 1)."""
    same = labels[:, None] == labels[None, :]
    off = math.log(1 - strength) if strength < 1 else -math.inf
    return torch.where(same, 0.0, off)


def apart_bias(labels: torch.Tensor) -> torch.Tensor:
    """[N, N] additive attention bias that keeps boxes apart and nothing else:
    -inf from a cell of one region to a cell of another, 0 where either is background
    or both are of the same region."""
    boxed = labels >= 0
    other = boxed[:, None] & boxed[None, :] & (labels[:, None] != labels[None, :])
    return torch.where(other, -math.inf, 0.0)
