"""The patches that carry out the placement methods of ``omg_core.ops.placement``
on a ComfyUI model: the latent-composition UNet wrapper and the self-attention
layout replacement. The settings, the list of methods and their math are pure
and live there."""

from __future__ import annotations

import torch

from omg_core.bridge.attention_recorder import RECORDER_OPTION
from omg_core.ops.placement import (
    PlacementSettings,
    active_steps,
    apart_bias,
    blend,
    call_groups,
    crop_cells,
    crop_window,
    layout_bias,
    layout_labels,
)
from omg_core.ops.regions import RegionSpec


class LatentComposition:
    """A UNet function wrapper (``ModelPatcher.set_model_unet_function_wrapper``):
    the full pass, then in the early steps each box's own pass on its window,
    with ``region_states[i]`` (a RegionalAttention that gives the whole pass to
    region i) in the transformer options, blended by ``blend``.

    Windows of one size go through the UNet as one batch (``call_groups``) —
    the boxes' rows one after another, each with its own state (``_LayerPatch``
    hands each its rows) — so a placed step costs two UNet calls for most
    layouts: on a GPU the box passes then run side by side, and on a CPU the
    per-call overhead is paid once (``benchmarks.regions`` times both)."""

    def __init__(
        self,
        spec: RegionSpec,
        region_states: dict[int, object],
        settings: PlacementSettings,
        previous=None,
        batched: bool = True,
    ):
        self.spec, self.region_states, self.settings, self.previous = spec, region_states, settings, previous
        self.batched = batched

    def __deepcopy__(self, memo):
        return self

    def _apply(self, apply_model, x, t, c):
        if self.previous is not None:
            return self.previous(apply_model, {"input": x, "timestep": t, "c": c})
        return apply_model(x, t, **c)

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]
        full = self._apply(apply_model, x, t, c)
        options = c.get("transformer_options", {})
        if not active_steps(options.get("sample_sigmas"), options.get("sigmas"), self.settings.steps):
            return full
        h, w = x.shape[-2:]
        boxes = []  # (cells, window, state) in region order
        for index, state in self.region_states.items():
            cells = crop_cells(self.spec.regions[index].box, h, w)
            if cells is not None:
                boxes.append((cells, crop_window(cells, h, w, self.settings.window), state))
        preds: dict[int, torch.Tensor] = {}
        for members in call_groups([window for _, window, _ in boxes], h * w if self.batched else 0):
            batch = self._own_passes(apply_model, x, t, c, [boxes[i] for i in members])
            preds.update(zip(members, batch))
        crops = []
        for i, (cells, (r0, _, c0, _), _) in enumerate(boxes):
            b0, b1, d0, d1 = cells  # the box's cells inside the window
            crops.append((cells, preds[i][..., b0 - r0 : b1 - r0, d0 - c0 : d1 - c0]))
        return blend(full, crops, self.settings.strength)

    def _own_passes(self, apply_model, x, t, c, boxes) -> tuple[torch.Tensor, ...]:
        """The own passes of boxes whose windows have one size, as one UNet call."""
        from omg_core.bridge.attention_patch import REGION_PASS_OPTION

        n, rows, (h, w) = len(boxes), x.shape[0], x.shape[-2:]

        def stacked(value):  # per-sample values (every tensor ComfyUI batches into c), once per box
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows and n > 1:
                return value.repeat(n, *([1] * (value.ndim - 1)))
            return value

        def windows(value):
            return torch.cat([value[..., r0:r1, c0:c1] for _, (r0, r1, c0, c1), _ in boxes])

        options = c.get("transformer_options", {})
        own = {k: v for k, v in options.items() if k != RECORDER_OPTION}  # own passes record nothing
        if "sigmas" in options:
            own["sigmas"] = stacked(options["sigmas"])
        for key in ("cond_or_uncond", "uuids"):  # per batch chunk, as ComfyUI's calc_cond_batch lists them
            if isinstance(options.get(key), list):
                own[key] = options[key] * n
        own[REGION_PASS_OPTION] = tuple(state for _, _, state in boxes)
        # Spatial conditions (inpainting's c_concat) follow the windows; ControlNet residuals are full-size
        # and stay with the full pass.
        crop_c = {k: stacked(v) for k, v in c.items() if k not in ("control", "transformer_options")}
        crop_c["transformer_options"] = own
        if isinstance(c.get("c_concat"), torch.Tensor) and c["c_concat"].shape[-2:] == (h, w):
            crop_c["c_concat"] = windows(c["c_concat"])
        return self._apply(apply_model, windows(x), stacked(t), crop_c).chunk(n)


class LayoutBias:
    """The layout's attention bias per grid, made once and shared by every
    block's ``SelfAttentionLayout`` (at 64×64 cells one bias is 4096² values)."""

    def __init__(self, spec: RegionSpec, strength: float, apart: bool = False):
        self.spec, self.strength, self.apart = spec, strength, apart
        self._bias: dict[tuple, torch.Tensor] = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h: int, w: int, device, dtype) -> torch.Tensor | None:
        """The bias on an h × w grid; None where it would change nothing (one box kept apart from no other),
        so that attention there stays ComfyUI's own, bit for bit."""
        key = (h, w, str(device), dtype)
        if key not in self._bias:
            labels = layout_labels(self.spec, h, w)
            bias = apart_bias(labels) if self.apart else layout_bias(labels, self.strength)
            self._bias[key] = bias.to(device, dtype) if bool((bias != 0).any()) else None
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
        bias = None
        if early and REGION_PASS_OPTION not in extra_options and q.shape[1] == k.shape[1]:
            bias = self.bias(*attention_grid(extra_options, q.shape[1]), q.device, q.dtype)
        if bias is None:
            if self.previous is not None:
                return self.previous(q, k, v, extra_options)
            import comfy.ldm.modules.attention as comfy_attention

            return comfy_attention.optimized_attention(
                q, k, v, heads, attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
            )
        b, n, inner = q.shape
        split = [t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*split, attn_mask=bias)
        return out.transpose(1, 2).reshape(b, n, inner)
