"""Placement methods: how hard OMG Apply Regional Attention pushes each
concept into its box, on top of confining its prompt there.

Regional attention alone decides *what* each box attends to, but early in
sampling, when the layout of the image forms, nothing makes an object start
inside its box: boxes come out empty, objects form across box edges or in the
background. The methods here act on those early steps only and leave the rest
of the run to regional attention. One list, ``PLACEMENTS``:

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
  object, centred in the box, and later steps join the pieces. Cost: one
  extra UNet pass per box, on the box's share of the latent, in those steps.

Sampling with no regions installs nothing, so it stays bit-identical to plain
sampling. Boxes only: mask regions have no crop and keep plain regional
attention in every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omg_core.bridge.attention_recorder import RECORDER_OPTION
from omg_core.ops.regions import Region, RegionSpec, box_cells

PLACEMENTS = ("attention", "self_attention", "latent_composition")
DEFAULT_PLACEMENT = "latent_composition"  # chosen by the composition benchmark (README, "The toy world")


@dataclass(frozen=True)
class PlacementSettings:
    """``strength`` 0..1: the box prediction's share inside the box;
    ``steps`` 0..1: the share of the schedule (from the first step) it acts on."""

    method: str = DEFAULT_PLACEMENT
    strength: float = 1.0
    steps: float = 0.3

    def __post_init__(self):
        if self.method not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.method!r}")
        for name in ("strength", "steps"):
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


class LatentComposition:
    """A UNet function wrapper (``ModelPatcher.set_model_unet_function_wrapper``):
    the full pass, then in the early steps one pass per box on its crop, with
    ``region_states[i]`` (a RegionalAttention that gives the whole pass to
    region i) in the transformer options, blended by ``blend``."""

    def __init__(self, spec: RegionSpec, region_states: dict[int, object], settings: PlacementSettings, previous=None):
        self.spec, self.region_states, self.settings, self.previous = spec, region_states, settings, previous

    def __deepcopy__(self, memo):
        return self

    def _apply(self, apply_model, x, t, c):
        if self.previous is not None:
            return self.previous(apply_model, {"input": x, "timestep": t, "c": c})
        return apply_model(x, t, **c)

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        from omg_core.bridge.attention_patch import REGION_PASS_OPTION

        x, t, c = args["input"], args["timestep"], args["c"]
        full = self._apply(apply_model, x, t, c)
        options = c.get("transformer_options", {})
        if not active_steps(options.get("sample_sigmas"), options.get("sigmas"), self.settings.steps):
            return full
        h, w = x.shape[-2:]
        crops = []
        for index, state in self.region_states.items():
            cells = crop_cells(self.spec.regions[index].box, h, w)
            if cells is None:
                continue
            r0, r1, c0, c1 = cells
            own = {k: v for k, v in options.items() if k != RECORDER_OPTION}  # a box's own pass records nothing
            own[REGION_PASS_OPTION] = state
            # Spatial conditions (inpainting's c_concat) follow the crop; ControlNet residuals are full-size
            # and stay with the full pass.
            crop_c = {k: v for k, v in c.items() if k != "control"}
            crop_c["transformer_options"] = own
            if isinstance(c.get("c_concat"), torch.Tensor) and c["c_concat"].shape[-2:] == (h, w):
                crop_c["c_concat"] = c["c_concat"][..., r0:r1, c0:c1]
            crops.append((cells, self._apply(apply_model, x[..., r0:r1, c0:c1], t, crop_c)))
        return blend(full, crops, self.settings.strength)


def region_alone(spec: RegionSpec, index: int) -> RegionSpec:
    """Region ``index`` covering a whole crop: its pass attends only to its own prompt."""
    region = spec.regions[index]
    whole = Region(region.prompt, box=(0.0, 0.0, 1.0, 1.0), negative_prompt=region.negative_prompt)
    return RegionSpec(spec.width, spec.height, (whole,))


def layout_labels(spec: RegionSpec, h: int, w: int) -> torch.Tensor:
    """[h·w] the region each cell belongs to (the first whose box or mask
    holds it, by the regions' cell rule; mask cells: coverage above one half),
    -1 for the background."""
    from omg_core.ops.regions import coverage

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


class LayoutBias:
    """The layout's attention bias per grid, made once and shared by every
    block's ``SelfAttentionLayout`` (at 64×64 cells one bias is 4096² values)."""

    def __init__(self, spec: RegionSpec, strength: float):
        self.spec, self.strength = spec, strength
        self._bias: dict[tuple, torch.Tensor] = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        if key not in self._bias:
            self._bias[key] = layout_bias(layout_labels(self.spec, h, w), self.strength).to(device, dtype)
        return self._bias[key]


class SelfAttentionLayout:
    """An ``attn1`` replacement: self-attention confined to the layout in the
    early steps (``PlacementSettings.steps``), plain otherwise; chains to a
    replacement that was there before."""

    def __init__(self, bias: LayoutBias, settings: PlacementSettings, previous=None):
        self.bias, self.settings, self.previous = bias, settings, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        from omg_core.bridge.attention_patch import REGION_PASS_OPTION, attention_grid

        heads = extra_options["n_heads"]
        early = active_steps(extra_options.get("sample_sigmas"), extra_options.get("sigmas"), self.settings.steps)
        if not early or REGION_PASS_OPTION in extra_options or q.shape[1] != k.shape[1]:
            if self.previous is not None:
                return self.previous(q, k, v, extra_options)
            import comfy.ldm.modules.attention as comfy_attention

            return comfy_attention.optimized_attention(
                q, k, v, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
            )
        h, w = attention_grid(extra_options, q.shape[1])
        b, n, inner = q.shape
        split = [t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*split, attn_mask=self.bias(h, w, q.device, q.dtype))
        return out.transpose(1, 2).reshape(b, n, inner)
