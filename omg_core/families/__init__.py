"""Every model-family fact, once: one object per family and one list of them.

Like ComfyUI's ``comfy/supported_models.py`` (one class per model, one list),
supporting another family means adding one object to ``FAMILIES``; every
reader, check and message takes its facts from here. Pure data: importable
by every layer, and imports nothing of the pack or of ComfyUI.

Lookups return None for what is not a family here, so each caller decides
what an unknown model means to it (a concept bound to an unknown family,
or a refusal).
"""

from __future__ import annotations

from omg_core.families.family import (
    CLIP_G,
    CLIP_L,
    KV_SUFFIXES,
    UNET_SECTIONS,
    Family,
    TextEncoder,
    UnetSection,
)
from omg_core.families.sd15 import SD15
from omg_core.families.sdxl import SDXL

FAMILIES: tuple[Family, ...] = (SD15, SDXL)
# Every text encoder of any family, once, in the order families list them.
TEXT_ENCODERS: tuple[TextEncoder, ...] = tuple(dict.fromkeys(e for f in FAMILIES for e in f.text_encoders))
# Cross-attention widths of models that are not families here, so that a
# message can say which model a file or checkpoint is for.
OTHER_CONTEXT_LABELS = {1024: "SD2.x"}


def family_named(name: str | None) -> Family | None:
    """The family stored as ``name`` (``Concept.family``, ``omg_family``); None for "unknown"."""
    return next((f for f in FAMILIES if f.name == name), None)


def family_for_context_dim(dim: int | None) -> Family | None:
    """The family whose cross-attention reads ``dim``-wide text features."""
    return next((f for f in FAMILIES if f.context_dim == dim), None)


def family_with_encoder(encoder: str) -> Family | None:
    """The one family that has text encoder ``encoder``; None when no family
    or several have it (CLIP-L tells nothing, CLIP-G means SDXL)."""
    having = [f for f in FAMILIES if any(e.name == encoder for e in f.text_encoders)]
    return having[0] if len(having) == 1 else None


def text_encoder_for_width(width: int) -> TextEncoder | None:
    """The text encoder whose token embeddings are ``width`` wide."""
    return next((e for e in TEXT_ENCODERS if e.width == width), None)


def context_label(dim: int | None) -> str | None:
    """What to call the model a cross-attention width belongs to ("SD1.5", "SD2.x"), or None."""
    family = family_for_context_dim(dim)
    return family.label if family is not None else OTHER_CONTEXT_LABELS.get(dim)


def labels(sep: str = " or ") -> str:
    """The families' labels for a message: "SD1.5 or SDXL"."""
    return sep.join(f.label for f in FAMILIES)


__all__ = [
    "CLIP_G",
    "CLIP_L",
    "FAMILIES",
    "KV_SUFFIXES",
    "OTHER_CONTEXT_LABELS",
    "SD15",
    "SDXL",
    "TEXT_ENCODERS",
    "UNET_SECTIONS",
    "Family",
    "TextEncoder",
    "UnetSection",
    "context_label",
    "family_for_context_dim",
    "family_named",
    "family_with_encoder",
    "labels",
    "text_encoder_for_width",
]
