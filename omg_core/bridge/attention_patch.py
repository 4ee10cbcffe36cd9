"""The bridge to ComfyUI for regional attention: cross-attention patches on a
ModelPatcher clone. Imports ComfyUI lazily, inside functions.

Design. The positive CONDITIONING stays an ordinary one (the global prompt);
the region prompts' text features are held by the patch, one ``attn2``
replacement per cross-attention block, found by walking the model (SD1.x/2.x
and SDXL, every transformer depth). Inside a block the patch

1. computes the global attention exactly as ComfyUI would (same kernel, same
   arguments — so "no regions" is bit-identical to plain sampling);
2. for the conditional batch chunks, projects each region's text features
   with this block's own ``to_k``/``to_v`` (so fused weights, LoRA patches and
   lowvram weight casting all apply as they do to the global prompt) and
   attends with only the queries inside the region's bounding box;
3. for the unconditional chunks, does the same with the region's negative
   prompt where one is set (otherwise the global negative stands);
4. mixes the results by the shares of ``omg_core.ops.regions``.

Holding the region features in the patch rather than concatenating them into
the conditioning keeps the positive and negative the same token length:
ComfyUI pads mismatched lengths by repetition (to their LCM) and refuses to
batch cond with uncond when that padding exceeds 4×, so a concatenated layout
would make the uncond pass attend to repeated tokens and, from four regions
on, run cond and uncond as two UNet passes.

*Routed* mode gives each region the cross-attention k/v of its own concept
only: ``k_i = W ctx_i + ΔW_i ctx_i`` with W the (base) model's weight as the
block computes it and ``ΔW_i ctx_i`` precomputed once, so a region's k/v do
not depend on any other concept — zero cross-talk by construction. Inside a
bound region the unconditional half sees its concept too (the global negative
through ``W + ΔW_i``, or the region's own negative prompt), as it does when
the concept is loaded alone: classifier-free guidance then steers by the
concept's own difference, not by the difference from the base model. The raw
negative features come from an ``attn2_patch`` that only notes them down.

A routed concept may also change the block's other attention projections
(self-attention q/k/v/out, cross-attention q/out: a concept trained on every
attention projection). Those act where the concept's region is, by its
coverage (``omg_core.ops.routed_layers``): ComfyUI hands a replacement only
projected q/k/v, so ``attn1_patch``/``attn2_patch`` note the block's input, the
replacements add the q/k/v changes and note the attention output, and the
output patches add the ``to_out`` change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial

import torch

from omg_core.bridge.attention_recorder import RECORDER_OPTION, AttentionRecorder, own_recorder
from omg_core.bridge.placement import LatentComposition, LayoutBias, SelfAttentionLayout
from omg_core.families import UNET_SECTIONS
from omg_core.model.concept import Concept, is_cross_attention_kv
from omg_core.ops.attention import regional_attention, token_attention
from omg_core.ops.layerwise import GlobalLayerContexts, select_layer
from omg_core.ops.placement import PlacementSettings, region_alone
from omg_core.ops.regions import RegionCells, RegionSpec, coverages, rasterize, stretch_warning
from omg_core.ops.routed_layers import ROUTED_PROJECTIONS, add_region_deltas, projection_key, support

MODES = ("fused", "routed")
COND, UNCOND = 0, 1  # indices in ComfyUI's cond_or_uncond (positive, negative)
CONTEXT_OPTION = "omg_attn2_context"  # where the context noter leaves a block's text features
REGION_PASS_OPTION = "omg_region_pass"  # transformer_options key: each box's own-pass RegionalAttention, in row order
# Where the routed-projection patches of one block leave what the next one reads (per block call).
ATTN1_INPUT, ATTN2_INPUT = "omg_attn1_input", "omg_attn2_input"
ATTN_OUTPUT = {"attn1": "omg_attn1_output", "attn2": "omg_attn2_output"}


@dataclass(frozen=True, eq=False)
class CrossAttentionLayer:
    """One cross-attention block of the UNet.

    ``key`` is ComfyUI's patch key (block name, block number, index in the
    block's transformer stack); ``order`` is its position in execution order
    — input blocks, middle, output blocks — which is also Mix-of-Show's
    layer numbering (SD1.5: 0–5 down, 6 middle, 7–15 up)."""

    key: tuple[str, int, int]
    path: str  # e.g. "input_blocks.1.1.transformer_blocks.0.attn2"
    module: torch.nn.Module
    order: int
    heads: int
    context_dim: int


@dataclass(frozen=True, eq=False)
class RegionPrompt:
    """A region's text features: ``cond`` [1, T, D] for the positive branch and
    ``uncond`` (its negative prompt) or None to keep the global negative there.
    Either may be per layer, [L, T, D] with L the model's cross-attention
    layer count: block ``order`` i then reads row i (layer-wise ED-LoRA
    tokens, ``omg_core.ops.layerwise``)."""

    cond: torch.Tensor
    uncond: torch.Tensor | None = None


def cross_attention_layers(model) -> list[CrossAttentionLayer]:
    """Every cross-attention block of a ModelPatcher's UNet, in execution order."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    sections = {s.module: (order, s) for order, s in enumerate(UNET_SECTIONS)}
    unet = model.model.diffusion_model
    found = []
    for name, module in unet.named_modules():
        if not isinstance(module, BasicTransformerBlock) or module.attn2 is None:
            continue
        parts = name.split(".")
        if len(parts) < 3 or parts[-2] != "transformer_blocks" or parts[0] not in sections:
            continue
        section_order, section = sections[parts[0]]
        key = (section.name, int(parts[1]) if section.numbered else 0, int(parts[-1]))
        attn2 = module.attn2
        found.append((section_order, key, f"{name}.attn2", attn2, attn2.heads, attn2.to_k.in_features))
    if not found:
        raise ValueError(
            "regional attention needs a UNet with cross-attention blocks (SD1.x, SD2.x, SDXL); "
            f"this model ({type(model.model).__name__}) has none"
        )
    found.sort(key=lambda f: (f[0], f[1][1], f[1][2]))
    return [
        CrossAttentionLayer(key, path, mod, i, heads, dim) for i, (_, key, path, mod, heads, dim) in enumerate(found)
    ]


def attention_grid(extra_options: dict, n_queries: int) -> tuple[int, int]:
    """The (h, w) attention grid of this block, from the transformer options:
    the activations' shape when present, otherwise the latent's shape halved
    with ceil (stride-2 convolutions) until it holds ``n_queries`` cells."""
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == n_queries:
        return int(shape[2]), int(shape[3])
    original = extra_options.get("original_shape")
    if original is not None and len(original) >= 4:
        h, w = int(original[-2]), int(original[-1])
        while h * w > n_queries:
            h, w = (h + 1) // 2, (w + 1) // 2
        if h * w == n_queries:
            return h, w
    raise ValueError(
        f"cannot tell the attention grid of {n_queries} queries from the transformer options "
        f"(activations {shape}, latent {original}); regional attention supports image UNets only"
    )


class RegionalAttention:
    """State shared by the per-block patches of one regional model.

    Immutable after construction apart from caches that depend only on it, so
    ModelPatcher's deep copies of model options share it (copying would also
    copy the UNet modules it refers to)."""

    def __init__(
        self,
        spec: RegionSpec,
        prompts: Sequence[RegionPrompt],
        routed: dict[tuple[str, int, int], tuple[torch.Tensor | None, torch.Tensor | None]] | None = None,
        recorder: AttentionRecorder | None = None,
        global_layers: GlobalLayerContexts | None = None,
        routed_updates: dict[tuple[str, int], tuple] | None = None,
        projection_updates: dict[tuple[str, str], list[tuple[int, object]]] | None = None,
    ):
        self.spec = spec
        self.global_layers = global_layers
        self.prompts = list(prompts)
        self.routed = routed or {}
        # (block path, region) -> the bound concept's (ΔW_k, ΔW_v), for the global negative in its box
        self.routed_updates = routed_updates or {}
        # (block path, projection) -> [(region, its concept's update)]: routed_layers' projections
        self.projection_updates = projection_updates or {}
        self.recorder = recorder
        self.has_negatives = any(p.uncond is not None for p in self.prompts) or bool(self.routed_updates)
        self._cells: dict[tuple, list[RegionCells]] = {}
        self._warned = False  # the stretched-mask warning is given once
        self._moved: dict[tuple, torch.Tensor] = {}
        self._kv: dict[tuple, tuple] = {}
        self._coverage: dict[tuple, tuple[torch.Tensor, list]] = {}  # grid -> (coverages, their supports)

    def __deepcopy__(self, memo):
        return self

    def project(self, block: str, projection: str, x: torch.Tensor, y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``y`` (the base projection of ``x``) with each bound region's change of ``projection``
        in this block, where the region is (``omg_core.ops.routed_layers``)."""
        updates = self.projection_updates.get((block, projection))
        if not updates:
            return y
        key = (h, w, str(y.device))
        if key not in self._coverage:
            cover = coverages(self.spec, h, w)
            self._coverage[key] = (cover.to(y.device), [support(m) for m in cover])
        cover, cells = self._coverage[key]
        parts = [(cover[i], cells[i], partial(self._delta, (block, i, projection), update)) for i, update in updates]
        return add_region_deltas(y, x, h, w, parts)

    def cells(self, h: int, w: int, device=None, dtype=None) -> list[RegionCells]:
        """The regions on an h × w grid, shares on ``device`` in ``dtype``."""
        key = (h, w, str(device), dtype)
        if key not in self._cells:
            stretched = stretch_warning(self.spec, h, w)
            if stretched and not self._warned:
                logging.warning("OMG Apply Regional Attention: %s", stretched)
                self._warned = True
            self._cells[key] = [
                replace(c, coef=c.coef.to(device=device, dtype=dtype)) for c in rasterize(self.spec, h, w)
            ]
        return self._cells[key]

    def _on(self, name: tuple, tensor: torch.Tensor, device, dtype) -> torch.Tensor:
        key = (*name, str(device), dtype)
        if key not in self._moved:
            self._moved[key] = tensor.to(device=device, dtype=dtype)
        return self._moved[key]

    def region_kv(self, layer: CrossAttentionLayer, index: int, branch: int, device, dtype, version=None):
        """Region ``index``'s k/v in this block, projected with the block's own
        weights as they are now. Kept until those weights change (ComfyUI
        patches weights in place or swaps the parameter; lowvram patches are
        weight functions on the module), so sampling pays the projection once
        per run, not once per step."""
        prompt = self.prompts[index]
        ctx = prompt.cond if branch == COND else prompt.uncond
        if ctx is None:
            return None
        slot = (layer.path, index, branch)
        version = version or self.weights_version(layer, device, dtype)
        cached = self._kv.get(slot)
        if cached is not None and None not in version[:2] and cached[0] == version:
            return cached[1]
        if ctx.shape[0] > 1:  # per-layer features: this block's row
            ctx = self._on(("ctx", index, branch, layer.order), select_layer(ctx, layer), device, dtype)
        else:
            ctx = self._on(("ctx", index, branch), ctx, device, dtype)
        k, v = layer.module.to_k(ctx), layer.module.to_v(ctx)
        dk, dv = self.routed.get(slot, (None, None))
        if dk is not None:
            k = k + dk.to(device=device, dtype=dtype)
        if dv is not None:
            v = v + dv.to(device=device, dtype=dtype)
        self._kv[slot] = (version, (k, v))
        return k, v

    def negative_kv(self, layer: CrossAttentionLayer, index: int, k, v, ctx):
        """The global negative's k/v with region ``index``'s routed concept added
        (None where the region has no concept here): ``k + ΔW_k ctx``."""
        updates = self.routed_updates.get((layer.path, index))
        if updates is None or ctx is None:
            return None
        return tuple(
            base if update is None else base + self._delta((layer.path, index, x), update, ctx).to(base.dtype)
            for base, update, x in zip((k, v), updates, "kv")
        )

    def _delta(self, key: tuple, update, ctx: torch.Tensor) -> torch.Tensor:
        """``ΔW ctx`` on ctx's device, the factors moved there once (low-rank kept low-rank)."""
        x = ctx.float()
        low = update.as_low_rank()
        if low is not None:
            down = self._on(("down", *key), low.down_matrix().float(), x.device, torch.float32)
            up = self._on(("up", *key), low.up_matrix().float(), x.device, torch.float32)
            return low.scale * ((x @ down.T) @ up.T)
        return x @ self._on(("dense", *key), update.dense(), x.device, torch.float32).T

    @staticmethod
    def weights_version(layer: CrossAttentionLayer, device, dtype) -> tuple:
        return (_weights_version(layer.module.to_k), _weights_version(layer.module.to_v), str(device), dtype)

    def attend(self, layer: CrossAttentionLayer, previous, q, k, v, extra_options: dict) -> torch.Tensor:
        import comfy.ldm.modules.attention as comfy_attention

        heads = extra_options["n_heads"]
        attention = partial(
            _call_attention,
            comfy_attention.optimized_attention,
            attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options,
        )
        version = None
        if self.global_layers is not None:  # layer-wise global prompt: this block's own encoding
            version = self.weights_version(layer, q.device, k.dtype)
            k, v = self.global_layers.replace(layer, k, v, extra_options, version)
        g = previous(q, k, v, extra_options) if previous is not None else attention(q, k, v, heads)
        if not self.prompts:
            return g
        h, w = attention_grid(extra_options, q.shape[1])
        cells = self.cells(h, w, g.device, g.dtype)
        kinds = list(extra_options.get("cond_or_uncond") or [COND])
        if not cells or q.shape[0] % len(kinds):
            return g
        rows_per_chunk = q.shape[0] // len(kinds)
        recorder = extra_options.get(RECORDER_OPTION, self.recorder)  # this clone's own (see AttentionRecorder)
        version = version or self.weights_version(layer, q.device, k.dtype)
        out = None
        for chunk, kind in enumerate(kinds):
            if kind not in (COND, UNCOND) or (kind == UNCOND and not self.has_negatives):
                continue
            rows = slice(chunk * rows_per_chunk, (chunk + 1) * rows_per_chunk)
            q_rows = q[rows]
            record = recorder is not None and kind == COND
            if record:
                for label, pos in recorder.wants(None):
                    recorder.add(label, h, w, token_attention(q_rows, k[rows], heads, pos))

            def kv_of(cell, kind=kind, rows=rows):
                kv = self.region_kv(layer, cell.index, kind, q.device, k.dtype, version)
                if kv is None and kind == UNCOND:
                    kv = self.negative_kv(layer, cell.index, k[rows], v[rows], context_rows(extra_options, rows, q))
                return kv

            def note(cell, kv, q_rows=q_rows):
                for label, pos in recorder.wants(cell.index):
                    q_box = q_rows.view(q_rows.shape[0], h, w, -1)[:, slice(*cell.rows), slice(*cell.cols)]
                    probs = token_attention(q_box.reshape(q_rows.shape[0], -1, q.shape[-1]), kv[0], heads, pos)
                    recorder.add(label, h, w, probs, cell)

            mixed = regional_attention(q_rows, g[rows], h, w, cells, kv_of, heads, attention, note if record else None)
            if out is None:
                out = g.clone()
            out[rows] = mixed
        return g if out is None else out


@lru_cache(maxsize=32)
def _probe_vectors(out_features: int, in_features: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(out_features * 7919 + in_features)
    return torch.randn(out_features, generator=gen).to(dtype), torch.randn(in_features, generator=gen).to(dtype)


def _weights_version(linear) -> tuple | None:
    """What a linear layer's output on fixed inputs depends on: its weight's
    identity and a content fingerprint, and the weight functions (lowvram
    LoRA) ComfyUI attached to it. ComfyUI patches weights by swapping the
    parameter or copying into it through ``.data`` (which no version counter
    sees), hence the fingerprint. None — do not cache — for weights off the
    CPU, where the projection is cheap and reading a fingerprint would stall
    the device."""
    w = getattr(linear, "weight", None)
    if w is None or w.device.type != "cpu" or w.ndim != 2:
        return None
    r_out, r_in = _probe_vectors(w.shape[0], w.shape[1], w.dtype)
    fingerprint = float(r_out @ (w.detach() @ r_in))
    return (
        id(w),
        w.data_ptr(),
        fingerprint,
        tuple(map(id, getattr(linear, "weight_function", ()))),
        tuple(map(id, getattr(linear, "bias_function", ()))),
    )


def context_rows(extra_options: dict, rows: slice, q: torch.Tensor) -> torch.Tensor | None:
    """The raw text features of these batch rows, as the context noter left them."""
    ctx = extra_options.get(CONTEXT_OPTION)
    if ctx is None:
        return None
    return ctx[rows] if ctx.shape[0] == q.shape[0] else ctx


def _note_context(n, context, value, extra_options):
    """``attn2_patch``: leaves the block's text features where the replacement reads them."""
    extra_options[CONTEXT_OPTION] = context
    return n, context, value


def _call_attention(fn, q, k, v, heads, attn_precision=None, transformer_options=None):
    return fn(q, k, v, heads, attn_precision=attn_precision, transformer_options=transformer_options)


class _LayerPatch:
    """The ``attn2`` replacement of one block (ComfyUI calls it with projected
    q, k, v); chains to a replacement that was already there."""

    def __init__(self, state: RegionalAttention, layer: CrossAttentionLayer, previous=None):
        self.state, self.layer, self.previous = state, layer, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        x = extra_options.pop(ATTN2_INPUT, None)
        if x is not None:  # routed concepts that change this block's cross-attention q and out
            q = routed_projection(self.state, _block(self.layer), "attn2.to_q", x, q, extra_options)
            out = self._attend(q, k, v, extra_options)
            extra_options[ATTN_OUTPUT["attn2"]] = (self.layer, out)
            return out
        return self._attend(q, k, v, extra_options)

    def _attend(self, q, k, v, extra_options):
        # Boxes' own passes (omg_core.bridge.placement) bring, for each box's rows in turn, the state
        # that gives the whole pass to that region.
        passes = extra_options.get(REGION_PASS_OPTION)
        if passes is None:
            return self.state.attend(self.layer, self.previous, q, k, v, extra_options)
        if len(passes) == 1:
            return passes[0].attend(self.layer, self.previous, q, k, v, extra_options)
        n, rows = len(passes), q.shape[0] // len(passes)
        kinds = list(extra_options.get("cond_or_uncond") or [])
        ctx = extra_options.get(CONTEXT_OPTION)
        out = []
        for i, state in enumerate(passes):
            part = slice(i * rows, (i + 1) * rows)
            own = dict(extra_options)
            if kinds:
                own["cond_or_uncond"] = kinds[i * len(kinds) // n : (i + 1) * len(kinds) // n]
            if ctx is not None and ctx.shape[0] == q.shape[0]:
                own[CONTEXT_OPTION] = ctx[part]
            out.append(state.attend(self.layer, self.previous, q[part], k[part], v[part], own))
        return torch.cat(out)


def check_routable(concept: Concept, layers: Sequence[CrossAttentionLayer]) -> None:
    """Routed mode can give a region this model's attention projections only:
    cross-attention k/v, and the others of ``omg_core.ops.routed_layers``."""
    kv_keys = {f"diffusion_model.{layer.path}.to_{x}.weight" for layer in layers for x in "kv"}
    projections = {projection_key(_block(layer), p) for layer in layers for p in ROUTED_PROJECTIONS}
    others = sorted(k for k in concept.unet if not _is_attention_projection(k))
    if others:
        raise ValueError(
            f"concept '{concept.name}' also changes {len(others)} layer(s) besides attention projections "
            f"(e.g. {others[0]}); routed mode can give a region only its own attention layers — use mode "
            "'fused' for it"
        )
    foreign = sorted(set(concept.unet) - kv_keys - projections)
    if foreign:
        raise ValueError(
            f"concept '{concept.name}' ({concept.family}) has layers this model does not have "
            f"(e.g. {foreign[0]}): it was made for another model family — load one made for this checkpoint"
        )


def _is_attention_projection(key: str) -> bool:
    return is_cross_attention_kv(key) or any(key.endswith(f".{p}.weight") for p in ROUTED_PROJECTIONS)


def _block(layer: CrossAttentionLayer) -> str:
    """The transformer block's path (``layer.path`` is its ``attn2``)."""
    return layer.path.rsplit(".", 1)[0]


def routed_projection_updates(
    layers: Sequence[CrossAttentionLayer], bindings: Sequence[Concept | None]
) -> dict[tuple[str, str], list[tuple[int, object]]]:
    """Per (block, projection): the bound regions' updates of the projections besides attn2 k/v."""
    out: dict[tuple[str, str], list[tuple[int, object]]] = {}
    for index, concept in enumerate(bindings):
        if concept is None:
            continue
        updates = concept.scaled_unet()
        for block in map(_block, layers):
            for projection in ROUTED_PROJECTIONS:
                update = updates.get(projection_key(block, projection))
                if update is not None:
                    out.setdefault((block, projection), []).append((index, update))
    return out


def routed_projection(state, block: str, projection: str, x, y, extra_options: dict):
    """``y`` with the routed projection changes of the state of each row group (a box's own
    passes bring one state per box, ``REGION_PASS_OPTION``), on this block's grid."""
    passes = extra_options.get(REGION_PASS_OPTION) or (state,)
    if not any(s.projection_updates for s in passes) or x.shape[:2] != y.shape[:2]:
        return y
    h, w = attention_grid(extra_options, x.shape[1])
    rows = x.shape[0] // len(passes)
    parts = [
        s.project(block, projection, x[i * rows : (i + 1) * rows], y[i * rows : (i + 1) * rows], h, w)
        for i, s in enumerate(passes)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _note_attn1_input(n, context, value, extra_options):
    """``attn1_patch``: leaves the self-attention's inputs where the routed replacement reads them."""
    extra_options[ATTN1_INPUT] = (n, context, value)
    return n, context, value


def _note_attn2_input(n, context, value, extra_options):
    """``attn2_patch``: leaves the cross-attention's query input for ``_LayerPatch``."""
    extra_options[ATTN2_INPUT] = n
    return n, context, value


class _RoutedSelfAttention:
    """The ``attn1`` replacement of one block when routed concepts change its
    projections: their q/k/v changes go in before the attention (chained to a
    replacement that was there), the output is noted for ``_RoutedOutput``."""

    def __init__(self, state: RegionalAttention, layer: CrossAttentionLayer, previous=None):
        self.state, self.layer, self.previous = state, layer, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        n, context, value = extra_options.pop(ATTN1_INPUT, (None, None, None))
        block = _block(self.layer)
        if n is not None:
            q = routed_projection(self.state, block, "attn1.to_q", n, q, extra_options)
            if context is not None and context.shape[1] == n.shape[1]:  # keys at the queries' positions
                k = routed_projection(self.state, block, "attn1.to_k", context, k, extra_options)
                v = routed_projection(self.state, block, "attn1.to_v", value, v, extra_options)
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            import comfy.ldm.modules.attention as comfy_attention

            out = comfy_attention.optimized_attention(
                q,
                k,
                v,
                extra_options["n_heads"],
                attn_precision=extra_options.get("attn_precision"),
                transformer_options=extra_options,
            )
        extra_options[ATTN_OUTPUT["attn1"]] = (self.layer, out)
        return out


class _RoutedOutput:
    """``attn1_output_patch`` / ``attn2_output_patch``: adds the routed ``to_out`` change to the
    block's attention output, from the attention result its replacement noted."""

    def __init__(self, state: RegionalAttention, kind: str):
        self.state, self.kind = state, kind

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, extra_options):
        noted = extra_options.pop(ATTN_OUTPUT[self.kind], None)
        if noted is None:
            return n
        layer, out = noted
        return routed_projection(self.state, _block(layer), f"{self.kind}.to_out.0", out, n, extra_options)


def routed_deltas(
    layers: Sequence[CrossAttentionLayer], prompts: Sequence[RegionPrompt], bindings: Sequence[Concept | None]
) -> dict[tuple[str, int, int], tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``ΔW_i ctx_i`` for every block and region bound to a concept, for each
    branch: the part of a region's k/v that only its own concept contributes."""
    out = {}
    for index, (prompt, concept) in enumerate(zip(prompts, bindings)):
        if concept is None:
            continue
        check_routable(concept, layers)
        updates = concept.scaled_unet()
        for layer in layers:
            for branch, ctx in ((COND, prompt.cond), (UNCOND, prompt.uncond)):
                if ctx is None:
                    continue
                ctx = select_layer(ctx, layer)
                pair = []
                for x in "kv":
                    update = updates.get(f"diffusion_model.{layer.path}.to_{x}.weight")
                    if update is not None and update.in_features != ctx.shape[-1]:
                        raise ValueError(
                            f"concept '{concept.name}' expects {update.in_features} text features at {layer.path} "
                            f"but the prompt has {ctx.shape[-1]}: the concept was made for another model family"
                        )
                    pair.append(None if update is None else update.apply(ctx.float()))
                if pair != [None, None]:
                    out[(layer.path, index, branch)] = tuple(pair)
    return out


def routed_updates(
    layers: Sequence[CrossAttentionLayer], prompts: Sequence[RegionPrompt], bindings: Sequence[Concept | None]
) -> dict[tuple[str, int], tuple]:
    """(ΔW_k, ΔW_v) of each bound region's concept per block, for the regions
    that keep the global negative (a region negative prompt has its own k/v)."""
    out = {}
    for index, (prompt, concept) in enumerate(zip(prompts, bindings)):
        if concept is None or prompt.uncond is not None:
            continue
        updates = concept.scaled_unet()
        for layer in layers:
            pair = tuple(updates.get(f"diffusion_model.{layer.path}.to_{x}.weight") for x in "kv")
            if pair != (None, None):
                out[(layer.path, index)] = pair
    return out


def apply_regional_attention(
    model,
    spec: RegionSpec,
    prompts: Sequence[RegionPrompt],
    mode: str = "fused",
    bindings: Sequence[Concept | None] | None = None,
    recorder: AttentionRecorder | None = None,
    global_layers: torch.Tensor | None = None,
    placement: PlacementSettings | None = None,
):
    """A clone of ``model`` whose every cross-attention block does regional
    attention; ``prompts[i]`` holds region i's text features. ``placement``
    adds an early-step placement method (``omg_core.ops.placement``). In routed mode
    ``bindings[i]`` is the concept whose k/v update region i gets (or None).
    ``global_layers`` [L, T, D]: the global prompt's per-layer encodings
    (``omg_core.ops.layerwise``), read by block ``order`` i in place of the
    positive conditioning. A ``recorder`` is kept in the clone's transformer
    options and emptied when a sampling run starts, so it holds the maps of
    the latest run with this model (or a clone of it: each clone its own)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if len(prompts) != len(spec):
        raise ValueError(f"{len(prompts)} region prompts for {len(spec)} regions")
    layers = cross_attention_layers(model)
    dim = layers[0].context_dim
    for i, p in enumerate(prompts):
        for t in (p.cond, p.uncond):
            if t is not None and (t.ndim != 3 or t.shape[0] not in (1, len(layers)) or t.shape[-1] != dim):
                raise ValueError(
                    f"region {i + 1}'s text features have shape {tuple(t.shape)} but this model's cross-attention "
                    f"reads [1, tokens, {dim}] (or [{len(layers)}, tokens, {dim}] per layer): encode the region "
                    "prompts with the CLIP of this checkpoint"
                )
    if global_layers is not None and (global_layers.ndim != 3 or global_layers.shape[0] != len(layers)):
        raise ValueError(
            f"the global prompt's per-layer features have shape {tuple(global_layers.shape)} but this model has "
            f"{len(layers)} cross-attention layers: encode them for this model (omg_core.ops.layerwise.layer_contexts)"
        )
    routed = updates = projections = None
    if mode == "routed" and bindings is not None:
        routed = routed_deltas(layers, prompts, bindings)
        updates = routed_updates(layers, prompts, bindings)
        projections = routed_projection_updates(layers, bindings)
    layered = None if global_layers is None else GlobalLayerContexts(global_layers)
    state = RegionalAttention(spec, prompts, routed, recorder, layered, updates, projections)
    clone = model.clone()
    if updates:
        clone.set_model_attn2_patch(_note_context)
    for layer in layers:
        clone.set_model_attn2_replace(_LayerPatch(state, layer, _existing_replace(clone, "attn2", layer)), *layer.key)
    if placement is not None and placement.method == "latent_composition" and placement.strength > 0:
        _add_latent_composition(clone, spec, prompts, layers, routed is not None, bindings, placement)
    layout = _self_attention_layout(spec, placement)
    if layout is not None:
        bias, layout = layout
        for layer in layers:
            previous = _existing_replace(clone, "attn1", layer)
            clone.set_model_attn1_replace(SelfAttentionLayout(bias, layout, previous), *layer.key)
    if projections:
        _add_routed_projections(clone, state, layers)
    if recorder is not None:
        # Last: ComfyUI copies transformer_options whenever a patch is set, and the recorder belongs to the final dict.
        from comfy.patcher_extension import CallbacksMP

        options = clone.model_options.setdefault("transformer_options", {})
        options[RECORDER_OPTION] = recorder
        recorder.owner = options
        clone.add_callback_with_key(CallbacksMP.ON_PRE_RUN, RECORDER_OPTION, _reset_recorder)
    return clone


def _add_routed_projections(clone, state: RegionalAttention, layers) -> None:
    """The patches that give routed regions their concepts' other attention projections."""
    clone.set_model_attn1_patch(_note_attn1_input)
    clone.set_model_attn2_patch(_note_attn2_input)
    for layer in layers:
        previous = _existing_replace(clone, "attn1", layer)
        clone.set_model_attn1_replace(_RoutedSelfAttention(state, layer, previous), *layer.key)
    clone.set_model_attn1_output_patch(_RoutedOutput(state, "attn1"))
    clone.set_model_attn2_output_patch(_RoutedOutput(state, "attn2"))


def _self_attention_layout(
    spec: RegionSpec, placement: PlacementSettings | None
) -> tuple[LayoutBias, PlacementSettings] | None:
    """How the full pass's self-attention is confined to the layout, and over which steps: the
    ``self_attention`` method itself, or latent composition's ``separation`` (boxes kept apart, over
    its own share of the run); None when neither applies."""
    if placement is None or not len(spec):
        return None
    if placement.method == "self_attention" and placement.strength > 0:
        return LayoutBias(spec, placement.strength), placement
    if placement.method == "latent_composition" and placement.separation > 0:
        return LayoutBias(spec, 1.0, apart=True), PlacementSettings("self_attention", steps=placement.separation)
    return None


def _existing_replace(clone, kind: str, layer: CrossAttentionLayer):
    """The ``attn1``/``attn2`` replacement already set for this block (per transformer or per block), to chain to."""
    existing = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return existing.get(layer.key) or existing.get(layer.key[:2])


def _add_latent_composition(clone, spec, prompts, layers, routed, bindings, placement) -> None:
    """Each box region's own pass: a RegionalAttention that gives the whole
    crop to that region (its prompt, and in routed mode its concept alone)."""
    states = {}
    for i, region in enumerate(spec.regions):
        if region.box is None:
            continue
        one, bound = [prompts[i]], [bindings[i]] if routed else None
        states[i] = RegionalAttention(
            region_alone(spec, i),
            one,
            routed_deltas(layers, one, bound) if routed else None,
            None,
            None,
            routed_updates(layers, one, bound) if routed else None,
            routed_projection_updates(layers, bound) if routed else None,
        )
    if states:
        previous = clone.model_options.get("model_function_wrapper")
        clone.set_model_unet_function_wrapper(LatentComposition(spec, states, placement, previous))


def _reset_recorder(patcher) -> None:
    """ON_PRE_RUN callback: empties the recorder of the model about to sample
    (its own one: a clone's first run gets a fresh recorder)."""
    recorder = own_recorder(patcher.model_options.get("transformer_options", {}))
    if recorder is not None:
        recorder.reset()


__all__ = [
    "MODES",
    "CrossAttentionLayer",
    "RegionPrompt",
    "apply_regional_attention",
    "attention_grid",
    "cross_attention_layers",
    "routed_deltas",
]
