"""Mix-of-Show's layer-wise concept embeddings (ED-LoRA), exactly.

An ED-LoRA token holds one embedding per UNet cross-attention layer
([16, n, 768] for SD1.5). Mix-of-Show encodes the prompt once per layer, with
that layer's embeddings, and cross-attention layer *i* reads the *i*-th
encoding. Here:

- ``layer_contexts`` encodes a prompt once per DISTINCT set of layer
  embeddings, all variants in one CLIP call (ComfyUI encodes the 77-token
  chunks of a prompt as one batch, so the variants' chunks are simply
  appended and split afterwards), and returns the per-layer text features
  [M, T, D] for the model's M cross-attention layers. A prompt without
  layer-wise tokens returns None without encoding anything: the caller's
  ordinary single encoding stands, so plain prompts cost nothing extra.
- ``GlobalLayerContexts`` is what the regional attention patch
  (``omg_core.bridge.attention_patch``) uses for the global prompt: the positive
  CONDITIONING stays the ordinary encoding (layer-wise tokens at their mean
  over layers), and inside each block the patch replaces the conditional
  chunk's k/v with this layer's own encoding projected by the block's
  ``to_k``/``to_v``. Region prompts carry [M, T, D] features directly
  (``RegionPrompt.cond``), selected per block by ``layer.order``.

Layer numbering is Mix-of-Show's: its attention-processor setup walks
``down_blocks``, ``mid_block``, ``up_blocks``, so on SD1.5 the down blocks are
0–5, the middle block 6 and the up blocks 7–15 — ComfyUI's execution order
(``CrossAttentionLayer.order``).

Models whose cross-attention layer count differs from the token's
(``layer_map``):

- same text width as the token (an SD1.x-layout UNet with fewer or more
  blocks, such as a pruned or tiny SD1.5): each UNet section takes the
  embeddings of the same Mix-of-Show section at the same relative position —
  input layer s of n gets down layer ``floor(s·6/n)``, middle layers get 6,
  output layer s of n gets up layer ``7 + floor(s·9/n)``. An approximation,
  and documented as one: the embeddings were learned for the 16-layer UNet.
- any other model (SDXL: 2048-wide context, 70 layers) is refused with a
  ValueError: Mix-of-Show has no SDXL ED-LoRA, and a 768-wide SD1.5 token
  has no meaningful layer correspondence there.

Talks to ComfyUI's CLIP object (tokenize / encode_from_tokens) and needs the
tokenizer made by ``omg_core.bridge.trigger_tokens.clip_with_embeddings``, which
records the full layer-wise vectors beside the mean it encodes with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from omg_core.families import SD15, SDXL
from omg_core.ops.triggers import trigger_pattern

# Mix-of-Show's ED-LoRA is made for SD1.5: one embedding per SD1.5
# cross-attention layer, by section down 0–5, middle 6, up 7–15.
MIX_OF_SHOW_LAYERS = SD15.cross_attention_layers
_SECTIONS = SD15.cross_attention_spans
COND = 0  # ComfyUI's cond_or_uncond index of the positive branch


def _subtokenizers(tokenizer) -> dict[str, object]:
    return {name: sub for name, sub in vars(tokenizer).items() if hasattr(sub, "embedding_key")}


def layerwise_tables(clip) -> dict[str, dict[str, torch.Tensor]]:
    """The layer-wise trigger vectors ([L, n, dim] by token) a CLIP's tokenizer
    knows, by sub-tokenizer attribute name; empty for a plain CLIP."""
    return {
        name: dict(sub._omg_layerwise)
        for name, sub in _subtokenizers(clip.tokenizer).items()
        if getattr(sub, "_omg_layerwise", None)
    }


def tokens_in_prompt(clip, text: str) -> dict[str, dict[str, torch.Tensor]]:
    """The layer-wise tokens that occur in ``text`` as trigger words."""
    out = {}
    for name, table in layerwise_tables(clip).items():
        found = {m.group(1).lower() for m in trigger_pattern(table).finditer(text)}
        used = {tok: vec for tok, vec in table.items() if tok.lower() in found}
        if used:
            out[name] = used
    return out


def layer_map(layers: Sequence, n_embedding_layers: int, token_dim: int) -> list[int]:
    """For each cross-attention layer (by ``order``), the index of the layer
    embedding it uses (see the module docstring for the rule)."""
    n = len(layers)
    if n == n_embedding_layers:
        return list(range(n))
    context_dim = layers[0].context_dim
    if n_embedding_layers != MIX_OF_SHOW_LAYERS or context_dim != token_dim:
        raise ValueError(
            f"this model has {n} cross-attention layers with {context_dim}-wide text features, but the concept's "
            f"layer-wise (ED-LoRA) tokens hold {n_embedding_layers} layer embeddings {token_dim} wide: Mix-of-Show "
            f"ED-LoRA concepts are made for {SD15.label} ({MIX_OF_SHOW_LAYERS} layers, {SD15.context_dim} wide) and have "
            f"no {SDXL.label} form — use them with an {SD15.label} checkpoint, or use a concept with one embedding per "
            "token on this model."
        )
    by_section: dict[str, list] = {}
    for layer in sorted(layers, key=lambda x: x.order):
        by_section.setdefault(layer.key[0], []).append(layer)
    out = [0] * n
    for section, members in by_section.items():
        start, size = _SECTIONS[section]
        for s, layer in enumerate(members):
            out[layer.order] = start + math.floor(s * size / len(members))
    return out


def _variant_tokenizer(tokenizer, choice: dict[str, dict[str, torch.Tensor]]):
    """A copy of ``tokenizer`` whose named sub-tokenizers use the given
    [n, dim] vectors for the given tokens."""
    new = copy.copy(tokenizer)
    for name, vectors in choice.items():
        sub = copy.copy(getattr(tokenizer, name))
        sub._omg_triggers = {**sub._omg_triggers, **vectors}
        setattr(new, name, sub)
    return new


def layer_contexts(clip, text: str, layers: Sequence) -> torch.Tensor | None:
    """Per-layer text features [M, T, D] of ``text`` for the M cross-attention
    ``layers`` (row i for ``order`` i), or None when the prompt has no
    layer-wise token. One CLIP call encodes every distinct layer variant."""
    used = tokens_in_prompt(clip, text)
    if not used:
        return None
    counts = {vec.shape[0] for table in used.values() for vec in table.values()}
    if len(counts) != 1:
        raise ValueError(
            f"the prompt {text!r} mixes layer-wise tokens with different layer counts ({sorted(counts)}): "
            "use concepts trained for the same model."
        )
    n_embed = counts.pop()
    token_dim = next(vec.shape[-1] for table in used.values() for vec in table.values())
    mapping = layer_map(layers, n_embed, token_dim)
    # Distinct embedding sets among the layers the model uses.
    variants: list[int] = []  # embedding layer index of each distinct variant
    variant_of: dict[int, int] = {}
    for e in sorted(set(mapping)):
        for j, f in enumerate(variants):
            if all(torch.equal(vec[e], vec[f]) for table in used.values() for vec in table.values()):
                variant_of[e] = j
                break
        else:
            variant_of[e] = len(variants)
            variants.append(e)
    token_sets = []
    for e in variants:
        choice = {name: {tok: vec[e] for tok, vec in table.items()} for name, table in used.items()}
        tokenizer = _variant_tokenizer(clip.tokenizer, choice)
        variant = copy.copy(clip)
        variant.tokenizer = tokenizer
        token_sets.append(variant.tokenize(text))
    combined = {key: [chunk for tokens in token_sets for chunk in tokens[key]] for key in token_sets[0]}
    encoded = clip.encode_from_tokens(combined)
    per_variant = encoded.reshape(len(variants), -1, encoded.shape[-1])
    return per_variant[[variant_of[e] for e in mapping]]


class GlobalLayerContexts:
    """The global prompt's per-layer encodings inside the attention patch:
    replaces the conditional chunk's k/v of each block with the block's
    projection of its own layer's encoding (kept until the block's weights
    change, like region k/v)."""

    def __init__(self, contexts: torch.Tensor):
        self.contexts = contexts  # [M, T, D]
        self._kv: dict[tuple, tuple] = {}

    def __deepcopy__(self, memo):
        return self

    def kv(self, layer, device, dtype, version: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._kv.get(layer.path)
        if cached is not None and None not in version[:2] and cached[0] == version:
            return cached[1]
        ctx = self.contexts[layer.order : layer.order + 1].to(device=device, dtype=dtype)
        pair = (layer.module.to_k(ctx), layer.module.to_v(ctx))
        self._kv[layer.path] = (version, pair)
        return pair

    def replace(self, layer, k: torch.Tensor, v: torch.Tensor, extra_options: dict, version: tuple):
        """``(k, v)`` with the conditional chunk's rows replaced by this layer's.

        ComfyUI repeats a shorter context to the LCM of the cond/uncond token
        lengths; the layer's k/v are repeated the same way, which leaves the
        attention unchanged. Rows whose token length is not a multiple of the
        prompt's (another conditioning batched in) are left alone."""
        kinds = list(extra_options.get("cond_or_uncond") or [COND])
        if COND not in kinds or k.shape[0] % len(kinds):
            return k, v
        lk, lv = self.kv(layer, k.device, k.dtype, version)
        if k.shape[1] % lk.shape[1]:
            return k, v
        reps = k.shape[1] // lk.shape[1]
        lk, lv = lk.repeat(1, reps, 1), lv.repeat(1, reps, 1)
        rows_per_chunk = k.shape[0] // len(kinds)
        k, v = k.clone(), v.clone()
        for chunk, kind in enumerate(kinds):
            if kind == COND:
                rows = slice(chunk * rows_per_chunk, (chunk + 1) * rows_per_chunk)
                k[rows] = lk
                v[rows] = lv
        return k, v


def select_layer(features: torch.Tensor, layer) -> torch.Tensor:
    """A [1, T, D] slice of text features that may be per layer ([M, T, D])."""
    return features[layer.order : layer.order + 1] if features.shape[0] > 1 else features


__all__ = [
    "MIX_OF_SHOW_LAYERS",
    "GlobalLayerContexts",
    "layer_contexts",
    "layer_map",
    "layerwise_tables",
    "select_layer",
    "tokens_in_prompt",
]
