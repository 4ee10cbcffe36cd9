"""What a model family is, and the UNet layout every family here shares.

A family is told apart by the width of the text features its UNet's
cross-attention reads; that one number is in every adapter file (the input
width of the k/v layers) and in every loaded model (ComfyUI's detected
``context_dim``), so it is the lookup key everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder. ``name`` is ComfyUI's attribute on the CLIP model
    (``clip.cond_stage_model.clip_l``) and ``TokenEmbedding.encoder``."""

    name: str
    label: str
    width: int  # width of its token embeddings and of the features it hands the UNet


@dataclass(frozen=True)
class UnetSection:
    """One of the three parts of the UNet, as ComfyUI names it.

    ``module`` is the root of its module names (``input_blocks.4.1.…``),
    ``name`` the block name ComfyUI's attention patches are keyed by, and
    ``depth_key`` the UNet-config entry giving its transformer depths. The
    input and output parts are numbered blocks; the middle part is one block,
    which patch keys number 0."""

    module: str
    name: str
    depth_key: str
    numbered: bool


CLIP_L = TextEncoder("clip_l", "CLIP-L", 768)
CLIP_G = TextEncoder("clip_g", "CLIP-G", 1280)

# The layers that read the text features: cross-attention key and value.
KV_SUFFIXES = ("attn2.to_k", "attn2.to_v")
# In execution order, which is also the order of Mix-of-Show's layer numbering.
UNET_SECTIONS = (
    UnetSection("input_blocks", "input", "transformer_depth", numbered=True),
    UnetSection("middle_block", "middle", "transformer_depth_middle", numbered=False),
    UnetSection("output_blocks", "output", "transformer_depth_output", numbered=True),
)


@dataclass(frozen=True, eq=False)
class Family:
    """One model family; each exists once, so identity is equality.

    ``name`` is the string stored in ``Concept.family`` and in file headers
    (``omg_family``), so it must never change; ``label`` is what messages call
    the family. ``unet`` is ComfyUI's detected UNet configuration of the
    full-size model (``comfy/model_detection.py``): the architecture facts
    (cross-attention layer counts, parameter shapes) are read from it rather
    than typed in a second time."""

    name: str
    label: str
    context_dim: int
    text_encoders: tuple[TextEncoder, ...]  # in ComfyUI's order; their features are concatenated
    unet: Mapping[str, object]
    kv_suffixes: tuple[str, ...] = KV_SUFFIXES
    unet_sections: tuple[UnetSection, ...] = UNET_SECTIONS

    def unet_config(self) -> dict[str, object]:
        """A fresh copy of ``unet`` to build a model from (ComfyUI may change what it is given)."""
        return copy.deepcopy(dict(self.unet))

    @property
    def cross_attention_sections(self) -> dict[str, int]:
        """Cross-attention layers per UNet section, in execution order."""
        counts = {}
        for section in self.unet_sections:
            depth = self.unet.get(section.depth_key, 0)
            counts[section.name] = sum(depth) if isinstance(depth, (list, tuple)) else max(int(depth), 0)
        return counts

    @property
    def cross_attention_layers(self) -> int:
        return sum(self.cross_attention_sections.values())

    @property
    def cross_attention_spans(self) -> dict[str, tuple[int, int]]:
        """(first layer, layer count) per section, the layers numbered in execution order."""
        spans, first = {}, 0
        for section, count in self.cross_attention_sections.items():
            spans[section] = (first, count)
            first += count
        return spans

    def __repr__(self) -> str:
        return f"Family({self.name!r})"
