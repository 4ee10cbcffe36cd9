"""Concept-token attention maps for a person to look at: which concept
tokens OMG Apply Regional Attention records, and the picture OMG Attention
Maps draws from the latest sampling run.

A picture rather than a number because the question is "did each concept
stay in its box?", and that is answered at a glance even on a small random
model. Reads the recorder from a ModelPatcher's transformer options
(``omg_core.bridge.attention_patch``); imports ComfyUI only through the functions
it calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omg_core.bridge.attention_recorder import AttentionRecorder, own_recorder
from omg_core.model.concept import Concept
from omg_core.ops.regions import RegionSpec
from omg_core.pipelines.regional import concept_tokens
from omg_core.render.region_images import render_attention_maps


def concept_recorder(
    model, clip, spec: RegionSpec, mode: str = "fused", concepts: Sequence[Concept] | None = None
) -> AttentionRecorder:
    """A recorder for every concept trigger word that occurs in a region
    prompt; refused when there is none, since the maps would be empty."""
    tokens = concept_tokens(model, clip, spec, mode, concepts)
    if not tokens:
        triggers = sorted({t for c in concepts or [] for t in c.triggers})
        found = f"the concepts' trigger words ({', '.join(triggers)})" if triggers else "no concepts"
        raise ValueError(
            f"record_attention_maps found no concept token in the region prompts ({found}): connect the "
            "OMG Load Concept chain to the concepts input of OMG Apply Regional Attention and put a trigger "
            "word in each region prompt, or turn record_attention_maps off"
        )
    return AttentionRecorder(tokens, spec)


def model_recorder(model) -> AttentionRecorder:
    """The recorder a model carries, or a ValueError saying how to get one."""
    options = getattr(model, "model_options", {}).get("transformer_options")
    recorder = own_recorder(options) if isinstance(options, dict) else None
    if recorder is None:
        raise ValueError(
            "this model records no attention maps: turn on record_attention_maps on OMG Apply Regional Attention "
            "and connect its MODEL output (the one the KSampler samples with) here"
        )
    return recorder


def attention_maps_image(model, max_side: int = 256) -> torch.Tensor:
    """IMAGE [1, H, W·n + gaps, 3]: one panel per concept token, its
    cross-attention map averaged over heads, layers and the steps of the
    latest sampling run with ``model``, region boxes outlined in the palette
    colours, labelled with the token."""
    recorder = model_recorder(model)
    if recorder.empty:
        raise ValueError(
            "no attention maps were recorded: sample with this MODEL (the output of OMG Apply Regional "
            "Attention with record_attention_maps on) before this node runs — connect that KSampler's LATENT "
            "to samples"
        )
    spec = recorder.spec
    scale = min(1.0, max_side / max(spec.width, spec.height))
    maps = recorder.maps(max(8, round(spec.height * scale)), max(8, round(spec.width * scale)))
    regions = {label: region for label, (region, _) in recorder.tokens.items()}
    return render_attention_maps(maps, spec, regions, max_side)
