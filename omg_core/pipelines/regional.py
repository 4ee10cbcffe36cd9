"""Region prompts to text features, and the whole of OMG Apply Regional
Attention: encode the global and region prompts with the right CLIP, bind
concepts in routed mode, install the patch (``omg_core.bridge.attention_patch``).

Talks to ComfyUI's CLIP object (tokenize/encode) and, for routed concepts
with text-side parts, imports ``omg_core.bridge.trigger_tokens`` / ``omg_core.bridge.patching``
lazily — both import ComfyUI.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from omg_core.bridge.attention_patch import (
    MODES,
    RegionPrompt,
    apply_regional_attention,
    check_routable,
    cross_attention_layers,
)
from omg_core.bridge.attention_recorder import AttentionRecorder
from omg_core.model.concept import Concept
from omg_core.ops.layerwise import layer_contexts
from omg_core.ops.placement import PlacementSettings
from omg_core.ops.regions import RegionSpec, bind_regions, region_warnings


def encode_text(clip, text: str, layers=None) -> torch.Tensor:
    """Text features [1, T, D] of a prompt (T a multiple of 77 for long prompts);
    given the model's cross-attention ``layers``, a prompt with layer-wise
    (ED-LoRA) tokens gets per-layer features [L, T, D] (``omg_core.ops.layerwise``)."""
    if layers is not None:
        per_layer = layer_contexts(clip, text, layers)
        if per_layer is not None:
            return per_layer
    return clip.encode_from_tokens(clip.tokenize(text))


def concept_clip(model, clip, concept: Concept):
    """A CLIP that knows one concept's trigger embeddings and text-encoder
    update — what region prompts bound to it are encoded with in routed mode."""
    if concept.embeddings:
        from omg_core.bridge.trigger_tokens import clip_with_embeddings

        clip = clip_with_embeddings(clip, concept.embeddings)
    if concept.text_encoder:
        from omg_core.bridge.patching import apply_updates

        _, clip = apply_updates(model, clip, {}, concept.scaled_text_encoder())
    return clip


def region_clips(model, clip, spec: RegionSpec, mode: str, concepts: Sequence[Concept] | None):
    """(bindings, clips): the concept each region gets (routed mode; None in
    fused mode) and the CLIP its prompts are encoded with. Routed concepts
    are checked against the model before anything is encoded."""
    if not isinstance(spec, RegionSpec):
        raise ValueError("regions must come from an OMG Regions or OMG Mask Region node")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "routed":
        check_routed_inputs(model, spec, concepts)
    bindings = bind_regions(spec, list(concepts or [])) if mode == "routed" else [None] * len(spec)
    layers = cross_attention_layers(model)
    made: dict[int, object] = {}
    for concept in bindings:
        if concept is not None and id(concept) not in made:
            check_routable(concept, layers)
            made[id(concept)] = concept_clip(model, clip, concept)
    return bindings, [clip if c is None else made[id(c)] for c in bindings]


def check_routed_inputs(model, spec: RegionSpec, concepts: Sequence[Concept] | None) -> None:
    """Routed mode gives each region its concept itself: without concepts it
    would sample the base model, and on a fused model every concept would act
    twice — neither can be what was meant."""
    if spec.regions and not concepts:
        raise ValueError(
            "routed mode has no concepts to route: connect the OMG Load Concept chain to the concepts input, "
            "or use mode 'fused' with the model from OMG Fuse Concepts"
        )
    from omg_core.bridge.patching import fused_concepts

    twice = sorted(set(fused_concepts(model)) & {c.name for c in concepts or []})
    if twice:
        raise ValueError(
            f"this MODEL already has {', '.join(twice)} fused in (OMG Fuse Concepts), and routed mode would add "
            "them again inside their regions: connect the checkpoint's MODEL and CLIP for routed mode, or use "
            "mode 'fused' with the fused model"
        )


def regional_warnings(spec: RegionSpec, mode: str, concepts: Sequence[Concept] | None) -> list[str]:
    """What OMG Apply Regional Attention tells the user (console and preview)
    about regions that may not do what was meant (``regions.region_warnings``)."""
    bindings = bind_regions(spec, list(concepts or [])) if mode == "routed" else None
    out = region_warnings(spec, bindings)
    for warning in out:
        logging.warning("OMG Apply Regional Attention: %s", warning)
    return out


def regional_prompting(
    model,
    clip,
    spec: RegionSpec,
    base_prompt: str,
    mode: str = "fused",
    concepts: Sequence[Concept] | None = None,
    recorder: AttentionRecorder | None = None,
    placement: PlacementSettings | None = None,
):
    """What OMG Apply Regional Attention does: the positive CONDITIONING of the
    global prompt and a clone of ``model`` that confines each region's prompt
    to its region. Fused mode encodes everything with ``clip`` (the fused
    CLIP) on ``model`` (the fused model); routed mode expects the base model
    and CLIP and gives each region its own concept (bound by trigger word),
    the global prompt the base model. Prompts with layer-wise (ED-LoRA)
    tokens are encoded once per layer embedding and each cross-attention
    layer reads its own encoding (``omg_core.ops.layerwise``); the positive
    CONDITIONING then carries the ordinary encoding (tokens at their mean)."""
    bindings, clips = region_clips(model, clip, spec, mode, concepts)
    layers = cross_attention_layers(model)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(base_prompt))
    global_layers = layer_contexts(clip, base_prompt, layers)
    prompts = []
    for i, (region, c) in enumerate(zip(spec.regions, clips)):
        negative = region.negative_prompt.strip()
        prompt = RegionPrompt(
            encode_text(c, region.prompt, layers), encode_text(c, negative, layers) if negative else None
        )
        for features, what in ((prompt.cond, "prompt"), (prompt.uncond, "negative prompt")):
            if features is not None and not torch.isfinite(features).all():
                raise ValueError(
                    f"region {i + 1}'s {what} encodes to NaN or infinite features: the CLIP (or a concept's "
                    "text-encoder part) is broken — load the checkpoint's own CLIP, or leave that concept out"
                )
        prompts.append(prompt)
    patched = apply_regional_attention(model, spec, prompts, mode, bindings, recorder, global_layers, placement)
    return patched, positive


def token_positions(clip, prompt: str, word: str) -> list[int]:
    """Positions of ``word``'s tokens in the features of ``prompt`` (the first
    encoder's tokens); empty if the word does not occur."""
    full = [t[0] for chunk in next(iter(clip.tokenize(prompt).values())) for t in chunk]
    word_tokens = next(iter(clip.tokenize(word, return_word_ids=True).values()))
    inner = [t[0] for chunk in word_tokens for t in chunk if t[2] != 0]  # word id 0: start, end, padding
    if not inner:
        return []
    for start in range(len(full) - len(inner) + 1):
        if all(_same(full[start + j], inner[j]) for j in range(len(inner))):
            return list(range(start, start + len(inner)))
    return []


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def concept_tokens(
    model, clip, spec: RegionSpec, mode: str = "fused", concepts: Sequence[Concept] | None = None
) -> dict[str, tuple[int, list[int]]]:
    """For an ``AttentionRecorder``: every concept trigger word that occurs in
    a region prompt, labelled by the word, with its region and token
    positions (found with the CLIP that region is encoded with)."""
    _, clips = region_clips(model, clip, spec, mode, concepts)
    out = {}
    for i, (region, c) in enumerate(zip(spec.regions, clips)):
        for concept in concepts or []:
            for trigger in concept.triggers:
                pos = token_positions(c, region.prompt, trigger)
                if pos and trigger not in out:
                    out[trigger] = (i, pos)
    return out
