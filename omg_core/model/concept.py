"""The Concept: what one personalised adapter adds to a model.

A concept is held as per-layer *updates* ΔW in the factored form its file
stored, because the factors are what orthogonality is about (a low-rank
update's input subspace is the row space of its down-projection) and what
keeps additive fusion cheap (a sum of low-rank updates is a concatenation,
never a dense matrix). Layers are keyed by the ComfyUI model key they change
(``diffusion_model.…attn2.to_k.weight``, ``clip_l.transformer.…``), so
concepts read from different file formats line up layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from omg_core.families import KV_SUFFIXES
from omg_core.model.updates import (  # noqa: F401 (re-exported: the kinds are part of what a concept is)
    UPDATE_KINDS,
    DenseUpdate,
    KroneckerUpdate,
    LayerUpdate,
    LowRankUpdate,
)


@dataclass(frozen=True)
class TokenEmbedding:
    """New-token vectors for one trigger word in one text encoder.

    ``vectors`` is [n_vectors, dim] for a textual-inversion style token, or
    [n_layers, n_vectors, dim] for Mix-of-Show's layer-wise ED-LoRA tokens
    (one embedding per UNet cross-attention layer).
    """

    token: str
    encoder: str  # "clip_l" or "clip_g"
    vectors: torch.Tensor

    @property
    def layer_wise(self) -> bool:
        return self.vectors.ndim == 3

    @property
    def dim(self) -> int:
        return self.vectors.shape[-1]


@dataclass(frozen=True)
class Concept:
    """One concept, bound to the layers of a model family.

    ``unet`` and ``text_encoder`` map ComfyUI weight keys to updates; the
    ``strength`` multiplies every update when the concept is applied.
    """

    name: str
    triggers: tuple[str, ...]
    family: str  # "sd15", "sdxl" or "unknown"
    source_format: str
    unet: dict[str, LayerUpdate] = field(default_factory=dict)
    text_encoder: dict[str, LayerUpdate] = field(default_factory=dict)
    embeddings: tuple[TokenEmbedding, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    strength: float = 1.0

    def with_strength(self, strength: float) -> Concept:
        return replace(self, strength=strength)

    def layers(self) -> dict[str, LayerUpdate]:
        return {**self.unet, **self.text_encoder}

    # The strength is applied here and nowhere else: fusion, patches, routed
    # regions and the native writer all read these.
    def scaled_unet(self) -> dict[str, LayerUpdate]:
        """UNet updates with the concept strength folded in."""
        return {k: u.scaled(self.strength) for k, u in self.unet.items()}

    def scaled_text_encoder(self) -> dict[str, LayerUpdate]:
        """Text-encoder updates with the concept strength folded in."""
        return {k: u.scaled(self.strength) for k, u in self.text_encoder.items()}

    def scaled_layers(self) -> dict[str, LayerUpdate]:
        """Every layer update (UNet and text encoder) with the concept strength folded in."""
        return {**self.scaled_unet(), **self.scaled_text_encoder()}


def is_cross_attention_kv(key: str) -> bool:
    """The layers that read the text features: UNet cross-attention k and v."""
    return any(f".{suffix}." in key for suffix in KV_SUFFIXES)
