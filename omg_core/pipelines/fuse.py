"""Fusing concepts into a model, as OMG Fuse Concepts and OMG Save Fused LoRA
do it and as the composition benchmark measures it: one function each, so
what is measured is what users run.

The least-squares and constrained methods fit each concept on the text
features of its prompts (encoded by the CLIP, with the concept's own text
encoder update); additive needs no features and encodes nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from omg_core.bridge.patching import apply_updates, mark_fused
from omg_core.bridge.text_features import (
    DEFAULT_TEMPLATES,
    REGULARIZATION_PROMPTS,
    clip_with_trigger_embeddings,
    concept_text_features,
    regularization_features,
)
from omg_core.model.concept import Concept
from omg_core.ops.fusion import FusionResult, fuse

Progress = Callable[[int, int], None] | None


def concept_list(concepts) -> list[Concept]:
    if not concepts:
        raise ValueError("no concepts are connected; chain one or more OMG Load Concept nodes into 'concepts'")
    return list(concepts)


def fuse_concepts(
    concepts: Sequence[Concept],
    method: str,
    regularization: float,
    clip=None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    regularization_prompts: Sequence[str] = REGULARIZATION_PROMPTS,
    measure: bool = True,
    progress: Callable[[], Progress] = lambda: None,
) -> FusionResult:
    """The fused layer updates; ``clip`` (optional) encodes the prompts the
    fitting methods fit on. ``progress()`` makes one progress callback per stage."""
    concepts = concept_list(concepts)
    features = labels = reg = None
    if method != "additive" and clip is not None:
        features, labels = concept_text_features(clip, concepts, templates, progress=progress())
        if regularization_prompts:
            reg = regularization_features(clip, regularization_prompts)
    return fuse(
        concepts,
        method,
        features=features,
        regularization=regularization,
        reg_features=reg,
        feature_labels=labels,
        progress=progress(),
        measure=measure,
    )


def fused_model(model, clip, concepts: Sequence[Concept], result: FusionResult):
    """Clones of ``model`` and ``clip`` (None: model only) carrying the fusion,
    the CLIP knowing every trigger embedding, the model marked with the
    concepts it carries (routed regions then refuse to add them again)."""
    concepts = concept_list(concepts)
    if clip is not None:
        clip = clip_with_trigger_embeddings(clip, concepts)
    new_model, new_clip = apply_updates(model, clip, result.unet, result.text_encoder if clip is not None else {})
    mark_fused(new_model, [c.name for c in concepts])
    return new_model, new_clip
