"""The bridge from layer updates to ComfyUI weight patches.

A concept (or a fusion of concepts) reaches the model as *patches* on a clone
of the ModelPatcher / CLIP, never as modified weights: ComfyUI applies the
patches when it loads the clone for sampling and removes them when another
clone of the same checkpoint is loaded, so two workflows that share one
loaded checkpoint never see each other's concepts, and no dense copy of any
weight is ever held by the pack. Each update keeps its factored form inside
the patch:

* ``LowRankUpdate``  -> ComfyUI's ``LoRAAdapter`` (up, down, alpha = scale·rank),
  so a concatenated additive fusion is ONE LoRA patch per layer;
* ``KroneckerUpdate`` -> ``LoKrAdapter`` (w1, w2);
* ``DenseUpdate``    -> a ``("diff", (delta,))`` patch.

ComfyUI is imported lazily inside the functions (only ``comfy.weight_adapter``),
so ``omg_core`` stays importable without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from omg_core.model.updates import (
    DenseUpdate,
    KroneckerUpdate,
    LayerPatch,
    LayerUpdate,
    LowRankUpdate,
    as_update_list,
    check_update_finite,
    update_kind,
)


def _lora_patch(update: LowRankUpdate, weight_shape: torch.Size) -> Any:
    from comfy.weight_adapter import LoRAAdapter

    # (up, down, alpha, mid, dora_scale, reshape); alpha=None means alpha/rank = 1.
    return LoRAAdapter(set(), (update.up, update.down, None, None, None, None))


def _lokr_patch(update: KroneckerUpdate, weight_shape: torch.Size) -> Any:
    from comfy.weight_adapter import LoKrAdapter

    # (w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, dora_scale); with full w1/w2 ComfyUI uses alpha 1.
    return LoKrAdapter(set(), (update.w1, update.w2, None, None, None, None, None, None, None))


def _diff_patch(update: DenseUpdate, weight_shape: torch.Size) -> Any:
    return ("diff", (update.delta.reshape(weight_shape),))


# ComfyUI's own patch type for each kind: the factors travel as they are.
_COMFY_PATCHES = {LowRankUpdate: _lora_patch, KroneckerUpdate: _lokr_patch, DenseUpdate: _diff_patch}


def to_comfy_patch(update: LayerUpdate, weight_shape: torch.Size) -> tuple[Any, float]:
    """(patch value for ``add_patches``, strength) for one update.

    The strength carries the update's scale, so factors are passed through
    untouched (no copy, no rescaled tensor).
    """
    kind = update_kind(update)
    if kind not in _COMFY_PATCHES:
        raise ValueError(f"no ComfyUI patch type is known for a {kind.__name__}; add one to _COMFY_PATCHES")
    if update.out_features * update.in_features != math.prod(weight_shape):
        raise _shape_error(update, weight_shape)
    return _COMFY_PATCHES[kind](update, weight_shape), update.scale


def _shape_error(update: LayerUpdate, weight_shape: torch.Size) -> ValueError:
    return ValueError(
        f"a {type(update).__name__} of shape [{update.out_features}, {update.in_features}] does not fit a weight of "
        f"shape {list(weight_shape)}; the concept was made for a different model — load it with this model's family"
    )


def _add_to_patcher(patcher, updates: Mapping[str, LayerPatch], what: str) -> None:
    state = patcher.model_state_dict()
    missing = [k for k in updates if k not in state]
    if missing:
        raise ValueError(
            f"{len(missing)} {what} layer(s) do not exist in this model, e.g. {missing[0]!r}; the concept was bound "
            "to a different model — load it against the model you fuse into (same family and architecture)"
        )
    by_strength: dict[tuple[float, int], dict[str, Any]] = {}
    for key, patch in updates.items():
        for update in as_update_list(patch):
            check_update_finite(key, update)
            value, strength = to_comfy_patch(update, state[key].shape)
            # One add_patches call per distinct strength; keys appear at most
            # once per call, so several updates of one layer are split across calls.
            bucket = 0
            while (strength, bucket) in by_strength and key in by_strength[(strength, bucket)]:
                bucket += 1
            by_strength.setdefault((strength, bucket), {})[key] = value
    for (strength, _), patches in by_strength.items():
        patcher.add_patches(patches, strength_patch=strength)


FUSED_OPTION = "omg_fused_concepts"  # model_options key: names of the concepts fused into a MODEL


def mark_fused(model, names) -> None:
    """Record on a fused clone which concepts it carries, so that routed mode
    can refuse to add them a second time."""
    model.model_options[FUSED_OPTION] = tuple(names)


def fused_concepts(model) -> tuple[str, ...]:
    """The concepts OMG fusion put into ``model`` (empty for a base model)."""
    return tuple(getattr(model, "model_options", {}).get(FUSED_OPTION, ()))


def apply_updates(
    model,
    clip,
    unet: Mapping[str, LayerPatch],
    text_encoder: Mapping[str, LayerPatch],
):
    """Clones of ``model`` (ModelPatcher) and ``clip`` (CLIP) carrying the updates as patches.

    Either input may be None (then None comes back for it). The inputs are
    never modified; an empty update dict still returns a clone, so callers can
    rely on owning what they get.
    """
    model_clone = None
    clip_clone = None
    if model is not None:
        model_clone = model.clone()
        _add_to_patcher(model_clone, unet, "UNet")
    elif unet:
        raise ValueError("UNet updates were given but no MODEL; connect a MODEL input")
    if clip is not None:
        clip_clone = clip.clone()
        _add_to_patcher(clip_clone.patcher, text_encoder, "text-encoder")
    elif text_encoder:
        raise ValueError("text-encoder updates were given but no CLIP; connect a CLIP input")
    return model_clone, clip_clone
