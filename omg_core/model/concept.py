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

import math
from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class LowRankUpdate:
    """ΔW = scale · up @ down, for a linear layer ([out, in]).

    ``down`` [rank, in] spans the input subspace the update reads from;
    ``up`` [out, rank] is where it writes. Convolution updates keep their
    trailing kernel dimensions on ``down`` (and ``up`` for kohya's 3x3 case)
    and are flattened by ``dense()``.
    """

    up: torch.Tensor
    down: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    @property
    def in_features(self) -> int:
        return int(math.prod(self.down.shape[1:]))

    def down_matrix(self) -> torch.Tensor:
        return self.down.reshape(self.down.shape[0], -1)

    def up_matrix(self) -> torch.Tensor:
        return self.up.reshape(self.up.shape[0], -1)

    def dense(self) -> torch.Tensor:
        """The [out, in] matrix; only for small layers, tests and SVD."""
        return self.scale * (self.up_matrix().float() @ self.down_matrix().float())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW applied to features x [..., in] without forming ΔW."""
        return self.scale * ((x @ self.down_matrix().to(x.dtype).T) @ self.up_matrix().to(x.dtype).T)

    def scaled(self, factor: float) -> LowRankUpdate:
        return replace(self, scale=self.scale * factor)


@dataclass(frozen=True)
class KroneckerUpdate:
    """ΔW = scale · kron(w1, w2) (LyCORIS LoKr), kept factored.

    Either factor may itself be low-rank (``w1 = w1_a @ w1_b``); the factors
    are stored expanded only when the file stored them so.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    scale: float = 1.0

    @property
    def out_features(self) -> int:
        return self.w1.shape[0] * self.w2.shape[0]

    @property
    def in_features(self) -> int:
        return self.w1.shape[1] * int(math.prod(self.w2.shape[1:]))

    def dense(self) -> torch.Tensor:
        w2 = self.w2.reshape(self.w2.shape[0], -1).float()
        return self.scale * torch.kron(self.w1.float(), w2)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """kron(A, B) x computed as B X Aᵀ on x reshaped to [.., a_in, b_in]."""
        a, b = self.w1.to(x.dtype), self.w2.reshape(self.w2.shape[0], -1).to(x.dtype)
        lead = x.shape[:-1]
        xm = x.reshape(*lead, a.shape[1], b.shape[1])
        y = torch.einsum("ij,...jk,lk->...il", a, xm, b)
        return self.scale * y.reshape(*lead, a.shape[0] * b.shape[0])

    def scaled(self, factor: float) -> KroneckerUpdate:
        return replace(self, scale=self.scale * factor)


@dataclass(frozen=True)
class DenseUpdate:
    """ΔW stored in full (Custom Diffusion's fine-tuned k/v, as a difference)."""

    delta: torch.Tensor
    scale: float = 1.0

    @property
    def out_features(self) -> int:
        return self.delta.shape[0]

    @property
    def in_features(self) -> int:
        return int(math.prod(self.delta.shape[1:]))

    def dense(self) -> torch.Tensor:
        return self.scale * self.delta.reshape(self.delta.shape[0], -1).float()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.delta.reshape(self.delta.shape[0], -1).to(x.dtype).T)

    def scaled(self, factor: float) -> DenseUpdate:
        return replace(self, scale=self.scale * factor)


LayerUpdate = LowRankUpdate | KroneckerUpdate | DenseUpdate


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

    def scaled_unet(self) -> dict[str, LayerUpdate]:
        """UNet updates with the concept strength folded in."""
        return {k: u.scaled(self.strength) for k, u in self.unet.items()}


def is_cross_attention_kv(key: str) -> bool:
    """The layers that read the text features: UNet cross-attention k and v."""
    return ".attn2.to_k." in key or ".attn2.to_v." in key
