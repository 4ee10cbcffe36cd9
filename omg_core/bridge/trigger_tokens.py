"""Trigger words that reach the text encoder as their learned embeddings.

This module touches ComfyUI (``comfy.sd1_clip``, imported inside functions).
ComfyUI already knows how to put foreign vectors into a prompt: its
tokenizer turns ``embedding:<name>`` into the vectors of a textual-inversion
file (``SDTokenizer._try_get_embedding``), and the text encoder splices them
in place of word tokens. ``clip_with_embeddings`` reuses exactly that path:
the returned CLIP's tokenizer — a copy, since CLIP clones share theirs —
rewrites each trigger word of a prompt to ``embedding:<trigger>`` and answers
the embedding lookup for those names from memory instead of the embeddings
folder. Prompt weighting (``(omgcat:1.2)``), punctuation and every other
ComfyUI prompt feature keep working because nothing else changes.

Layer-wise ED-LoRA tokens ([layers, n, dim]: one embedding per UNet
cross-attention layer) are encoded here with the MEAN over layers, an
approximation — ComfyUI encodes a prompt once for all cross-attention layers.
The tokenizer also records the full layer-wise vectors (``_omg_layerwise``),
and OMG Apply Regional Attention uses them for the exact path
(``omg_core.ops.layerwise``): one encoding per layer, each cross-attention layer
attending to its own — for the global prompt and every region prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import cache

import torch

from omg_core.model.concept import TokenEmbedding
from omg_core.ops.triggers import trigger_pattern

_IDENTIFIER = "embedding:"


def prompt_vectors(embedding: TokenEmbedding) -> torch.Tensor:
    """The [n, dim] vectors one prompt encoding uses for ``embedding``
    (layer-wise tokens: the mean over layers; exact per-layer encoding is
    ``omg_core.ops.layerwise``, used by OMG Apply Regional Attention)."""
    vectors = embedding.vectors.detach().to("cpu", torch.float32)
    return vectors.mean(dim=0) if embedding.layer_wise else vectors


def mark_triggers(text: str, table: Mapping[str, torch.Tensor]) -> str:
    """``text`` with each trigger word turned into ComfyUI's ``embedding:`` syntax
    (a leading space, because ComfyUI only splits ``embedding:`` after whitespace)."""
    if not table:
        return text
    canonical = {k.lower(): k for k in table}
    return trigger_pattern(table).sub(lambda m: f" {_IDENTIFIER}{canonical[m.group(1).lower()]}", text)


_ARITY: dict[type, int] = {}


def _lookup_arity(tokenizer) -> int:
    """How many values the host's ``SDTokenizer._try_get_embedding`` returns,
    read once per tokenizer class from the base method itself: it is asked
    for a name that cannot exist with no embedding folders, which touches no
    file and returns its usual tuple with ``None`` for the embedding."""
    base = tokenizer._omg_base
    if base not in _ARITY:
        probe = copy.copy(tokenizer)
        probe.embedding_directory = []
        _ARITY[base] = len(base._try_get_embedding(probe, "omg-arity-probe"))
    return _ARITY[base]


@cache
def _trigger_tokenizer_class(base: type) -> type:
    """A subclass of one SDTokenizer class that knows a table of trigger vectors."""

    class TriggerTokenizer(base):  # type: ignore[misc, valid-type]
        _omg_base = base

        def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
            return super().tokenize_with_weights(mark_triggers(text, self._omg_triggers), return_word_ids, **kwargs)

        def _try_get_embedding(self, embedding_name: str):
            words = embedding_name.split()
            first = words[0] if words else ""
            for token in sorted(self._omg_triggers, key=len, reverse=True):
                if first.lower().startswith(token.lower()):
                    rest = first[len(token) :]
                    leftover = " ".join([rest, *words[1:]]).strip() if rest else " ".join(words[1:])
                    # (embedding, leftover) up to ComfyUI 0.27, (embedding, name, leftover) since.
                    if _lookup_arity(self) == 3:
                        return self._omg_triggers[token], token, leftover
                    return self._omg_triggers[token], leftover
            return super()._try_get_embedding(embedding_name)

    TriggerTokenizer.__name__ = f"Trigger{base.__name__}"
    TriggerTokenizer.__qualname__ = TriggerTokenizer.__name__
    return TriggerTokenizer


def _with_triggers(sub, table: Mapping[str, torch.Tensor]):
    """A copy of one SDTokenizer that also answers ``table``'s trigger words."""
    for token, vectors in table.items():
        if vectors.shape[-1] != sub.embedding_size:
            raise ValueError(
                f"the embedding of trigger {token!r} is {vectors.shape[-1]}-wide but the {sub.embedding_key} text "
                f"encoder takes {sub.embedding_size}: the concept was made for another model family."
            )
    base = getattr(sub, "_omg_base", type(sub))
    new = copy.copy(sub)
    new.__class__ = _trigger_tokenizer_class(base)
    new._omg_triggers = {**getattr(sub, "_omg_triggers", {}), **table}
    if new.embedding_directory is None:
        new.embedding_directory = []  # ComfyUI only looks embeddings up when a directory list exists
    return new


def tokenizer_with_embeddings(tokenizer, embeddings: Iterable[TokenEmbedding]):
    """A copy of a ComfyUI tokenizer (SD1Tokenizer, SDXLTokenizer…) whose
    sub-tokenizers map trigger words to the given embeddings, by encoder."""
    from comfy.sd1_clip import SDTokenizer

    embeddings = list(embeddings)
    new = copy.copy(tokenizer)
    subs = {name: sub for name, sub in vars(tokenizer).items() if isinstance(sub, SDTokenizer)}
    for emb in embeddings:
        if not any(sub.embedding_key == emb.encoder for sub in subs.values()):
            have = ", ".join(sorted(sub.embedding_key for sub in subs.values())) or "none"
            raise ValueError(
                f"trigger {emb.token!r} has an embedding for {emb.encoder}, which this CLIP does not have "
                f"(it has {have}): use the CLIP of the model family the concept was made for."
            )
        if not emb.token or any(ch.isspace() for ch in emb.token):
            raise ValueError(
                f"trigger {emb.token!r} must be a single word to carry a learned embedding: choose a word without spaces."
            )
    for name, sub in subs.items():
        chosen = [e for e in embeddings if e.encoder == sub.embedding_key]
        table = {e.token: prompt_vectors(e) for e in chosen}
        if table:
            copied = _with_triggers(sub, table)
            # The full layer-wise vectors, for omg_core.ops.layerwise; a token given again as a plain one drops out.
            layerwise = {k: v for k, v in getattr(sub, "_omg_layerwise", {}).items() if k not in table}
            layerwise.update({e.token: e.vectors.detach().to("cpu", torch.float32) for e in chosen if e.layer_wise})
            copied._omg_layerwise = layerwise
            setattr(new, name, copied)
    return new


def clip_with_embeddings(clip, embeddings: Iterable[TokenEmbedding]):
    """A clone of ``clip`` whose prompts turn each trigger word into its learned
    vectors, through ComfyUI's own textual-inversion path; ``clip`` and its
    tokenizer are left untouched."""
    clone = clip.clone()
    clone.tokenizer = tokenizer_with_embeddings(clip.tokenizer, embeddings)
    return clone
