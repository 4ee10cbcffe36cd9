"""Bind an adapter file to a loaded model: ``load_concept`` -> Concept.

This module touches ComfyUI (imported inside functions): layer names are
resolved with ComfyUI's own key maps (``comfy.lora.model_lora_keys_unet`` /
``model_lora_keys_clip``) and parsed by ComfyUI's own adapters
(``comfy.lora.load_lora`` + ``comfy.weight_adapter``), so a file loads into
exactly the layers ``LoraLoader`` would patch; the adapters are then turned
into the pack's factored updates. Everything that can be wrong with a file
for a given model is checked here, before any sampling, and reported as a
``ValueError`` that says what to do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import torch

from omg_core.bridge.family import family_of_model, model_context_dim
from omg_core.families import TEXT_ENCODERS, context_label, family_named
from omg_core.formats import AdapterFile, read_adapter
from omg_core.formats.names import FULL_WEIGHT_SUFFIX, LOKR_SUFFIXES
from omg_core.model.concept import Concept, DenseUpdate, KroneckerUpdate, LayerUpdate, LowRankUpdate, TokenEmbedding

_ADAPTER_SUFFIXES = (
    ".lora_up.weight",
    ".lora_down.weight",
    ".lora_mid.weight",
    ".alpha",
    ".dora_scale",
    FULL_WEIGHT_SUFFIX,
    ".diff",
    *LOKR_SUFFIXES,
)


def _label(context_dim: int | None) -> str:
    return context_label(context_dim) or "an unknown model"


def _family_label(name: str) -> str:
    family = family_named(name)
    return family.label if family is not None else name


def check_family(adapter: AdapterFile, model, clip=None) -> None:
    """The cross-attention context width tells the families apart for certain;
    checked first so that a wrong-family file gets this message rather than a
    list of unmatched layers."""
    name = os.path.basename(adapter.path)
    model_dim = model_context_dim(model)
    if adapter.context_dim is not None and model_dim is not None and adapter.context_dim != model_dim:
        target = _label(adapter.context_dim)
        advice = (
            f"load it with an {target} checkpoint"
            if target != "an unknown model"
            else "load it with its own checkpoint"
        )
        raise ValueError(
            f"{name}: this adapter targets {target} (cross-attention context {adapter.context_dim}) but the model is "
            f"{_label(model_dim)} ({model_dim}): {advice}, or pick a concept made for this model."
        )
    adapter_family, family = family_named(adapter.family), family_of_model(model)
    if adapter_family is not None and family is not None and adapter_family is not family:
        raise ValueError(
            f"{name}: this adapter is for {adapter_family.label} but the model is "
            f"{family.label}: load it with an {adapter_family.label} checkpoint."
        )
    if clip is not None:
        for emb in adapter.embeddings:
            encoder = getattr(clip.cond_stage_model, emb.encoder, None)
            if encoder is None:
                present = [e.name for e in TEXT_ENCODERS if getattr(clip.cond_stage_model, e.name, None) is not None]
                raise ValueError(
                    f"{name}: the trigger embedding {emb.token!r} is for text encoder {emb.encoder} "
                    f"({emb.dim}-wide), which this CLIP does not have (it has {', '.join(present) or 'none'}): "
                    "load the concept with the CLIP of the model family it was trained for."
                )


def _layer_bases(tensors: Iterable[str]) -> set[str]:
    bases = set()
    for key in tensors:
        for suffix in _ADAPTER_SUFFIXES:
            if key.endswith(suffix):
                bases.add(key[: -len(suffix)])
                break
    return bases


def _key_map(model, clip) -> dict[str, str]:
    import comfy.lora

    key_map: dict[str, str] = {}
    comfy.lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    return key_map


def base_weight(patcher, key: str) -> torch.Tensor:
    """The model's own weight for ``key``, unpatched even while a patched copy
    is loaded (ComfyUI keeps the original in ``backup`` then)."""
    import comfy.utils

    backup = patcher.backup.get(key)
    weight = backup.weight if backup is not None else comfy.utils.get_attr(patcher.model, key)
    return weight.detach().to("cpu", torch.float32)


def _lora_update(weights: tuple, key: str, name: str) -> LowRankUpdate:
    up, down, alpha, mid, dora_scale, reshape = weights
    if dora_scale is not None:
        raise ValueError(
            f"{name}: layer {key} is a DoRA layer (weight-decomposed), which is not a plain low-rank update; "
            "OMG cannot fuse it. Use ComfyUI's LoraLoader for this file."
        )
    if reshape is not None:
        raise ValueError(f"{name}: layer {key} asks ComfyUI to reshape the model weight, which OMG does not support.")
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise ValueError(
            f"{name}: rank mismatch in layer {key}: up {tuple(up.shape)} vs down {tuple(down.shape)}; "
            "the file is damaged: export it again."
        )
    if mid is not None:  # LoCon/Tucker: fold the middle kernel into the down factor
        folded = torch.mm(
            down.transpose(0, 1).flatten(start_dim=1).float(), mid.transpose(0, 1).flatten(start_dim=1).float()
        )
        down = folded.reshape(down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]).transpose(0, 1)
    scale = float(alpha) / rank if alpha is not None else 1.0
    return LowRankUpdate(up=up, down=down, scale=scale)


def _lokr_update(weights: tuple, key: str, name: str) -> KroneckerUpdate:
    w1, w2, alpha, w1_a, w1_b, w2_a, w2_b, t2, dora_scale = weights
    if dora_scale is not None:
        raise ValueError(f"{name}: layer {key} is a DoRA LoKr layer, which OMG cannot fuse; use LoraLoader instead.")
    dim = None
    if w1 is None:
        dim = w1_b.shape[0]
        w1 = w1_a.float() @ w1_b.float()
    if w2 is None:
        dim = w2_b.shape[0]
        if t2 is None:
            w2 = w2_a.float() @ w2_b.float()
        else:
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", t2.float(), w2_b.float(), w2_a.float())
    # ComfyUI's rule: alpha / rank of the (last) decomposed factor, 1 when both are full.
    scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
    return KroneckerUpdate(w1=w1, w2=w2, scale=scale)


def to_layer_update(patch, key: str, patcher, name: str) -> LayerUpdate:
    """One of ComfyUI's parsed patches as a factored update."""
    import comfy.weight_adapter as wa

    if isinstance(patch, wa.LoRAAdapter):
        return _lora_update(patch.weights, key, name)
    if isinstance(patch, wa.LoKrAdapter):
        return _lokr_update(patch.weights, key, name)
    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] in ("set", "diff"):
        value = patch[1][0].detach().to("cpu", torch.float32)
        if patch[0] == "diff":
            return DenseUpdate(delta=value)
        return DenseUpdate(delta=value - base_weight(patcher, key))
    kind = getattr(patch, "name", None) or (patch[0] if isinstance(patch, tuple) else type(patch).__name__)
    raise ValueError(
        f"{name}: layer {key} is a {kind} adapter, which OMG cannot hold as low-rank, Kronecker or dense update; "
        "use ComfyUI's LoraLoader for this file."
    )


def _check_shape(update: LayerUpdate, key: str, weight_shape: torch.Size, name: str) -> None:
    out, inp = weight_shape[0], int(math.prod(weight_shape[1:]))
    if (update.out_features, update.in_features) != (out, inp):
        raise ValueError(
            f"{name}: layer {key} has shape {update.out_features}x{update.in_features} in the file but "
            f"{out}x{inp} in the model: the adapter was made for a different model architecture; "
            "load it with the checkpoint it was trained on."
        )


def parse_triggers(triggers: str | Sequence[str] | None) -> tuple[str, ...]:
    """A trigger override: comma-separated words (or a sequence), blanks dropped."""
    if triggers is None:
        return ()
    items = triggers.split(",") if isinstance(triggers, str) else list(triggers)
    return tuple(dict.fromkeys(t.strip() for t in items if t and t.strip()))


def _rename_embeddings(
    embeddings: tuple[TokenEmbedding, ...], override: tuple[str, ...], name: str
) -> tuple[TokenEmbedding, ...]:
    """Override trigger words for a file that carries token embeddings: the
    i-th word names the i-th token, so the count must match."""
    tokens = list(dict.fromkeys(e.token for e in embeddings))
    if len(override) != len(tokens):
        raise ValueError(
            f"{name} has {len(tokens)} trigger token(s) with learned embeddings ({', '.join(tokens)}), but the "
            f"trigger input gives {len(override)} ({', '.join(override)}): give exactly {len(tokens)} comma-separated "
            "word(s), one per token in that order, or leave the trigger empty to use the file's own tokens."
        )
    for word in override:
        if any(ch.isspace() for ch in word):
            raise ValueError(
                f"trigger {word!r} contains a space; a trigger with a learned embedding must be one word "
                "(e.g. 'mycat'): choose a single word."
            )
    mapping = dict(zip(tokens, override))
    return tuple(TokenEmbedding(mapping[e.token], e.encoder, e.vectors) for e in embeddings)


def load_concept(
    path: str | os.PathLike,
    model,
    clip,
    name: str | None = None,
    triggers: str | Sequence[str] | None = None,
    strength: float = 1.0,
) -> Concept:
    """Read ``path``, check it against ``model``/``clip`` and bind it to their layer keys.

    The inputs are only read, never patched. ``clip`` may be None, in which case
    text-encoder layers are refused. ``triggers`` overrides the file's trigger
    words (comma-separated); for files with learned token embeddings each word
    renames one token, in order.
    """
    import comfy.lora

    if not math.isfinite(strength):
        raise ValueError(f"strength is {strength}: give the concept a finite strength (1 is the file's own)")
    adapter = read_adapter(path)
    file_name = os.path.basename(str(path))
    check_family(adapter, model, clip)
    family = family_of_model(model)  # None: a model of no family here, bound as "unknown"

    key_map = _key_map(model, clip)
    bases = _layer_bases(adapter.tensors)
    unmatched = sorted(b for b in bases if b not in key_map)
    if unmatched:
        te_without_clip = clip is None and all(b.startswith(("lora_te", "text_encoders.")) for b in unmatched)
        if te_without_clip:
            raise ValueError(
                f"{file_name} changes the text encoder but no CLIP was given: connect the CLIP of the checkpoint."
            )
        shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
        if len(unmatched) == len(bases):
            what = f"none of its {len(bases)} layer(s) matches a layer"
        else:
            what = f"{len(unmatched)} of its {len(bases)} layers match no layer"
        raise ValueError(
            f"{file_name}: {what} of this {family.label + ' ' if family is not None else ''}model "
            f"({shown}): the adapter was made for a different model architecture; load it with the checkpoint "
            "it was trained on."
        )
    # Only this file's layers: load_lora tries every adapter kind on every entry it is given.
    patches = comfy.lora.load_lora(adapter.tensors, {b: key_map[b] for b in bases}, log_missing=False)

    unet: dict[str, LayerUpdate] = {}
    text: dict[str, LayerUpdate] = {}
    unet_state = model.model.state_dict()
    clip_state = clip.cond_stage_model.state_dict() if clip is not None else {}
    for key, patch in patches.items():
        if not isinstance(key, str):
            raise ValueError(f"{file_name}: layer {key} patches part of a fused weight, which OMG does not support.")
        is_unet = key in unet_state
        patcher = model if is_unet else clip.patcher
        update = to_layer_update(patch, key, patcher, file_name)
        _check_shape(update, key, (unet_state if is_unet else clip_state)[key].shape, file_name)
        (unet if is_unet else text)[key] = update
    if not unet and not text and not adapter.embeddings:
        raise ValueError(f"{file_name} holds no layers and no trigger embeddings: there is nothing to load.")

    override = parse_triggers(triggers)
    embeddings = adapter.embeddings
    if override and embeddings:
        embeddings = _rename_embeddings(embeddings, override, file_name)
    concept_triggers = override or adapter.triggers
    metadata = dict(adapter.metadata)
    metadata["omg_source_path_name"] = file_name
    return Concept(
        name=name or adapter.name,
        triggers=tuple(concept_triggers),
        family=family.name if family is not None else "unknown",
        source_format=adapter.format,
        unet=unet,
        text_encoder=text,
        embeddings=embeddings,
        metadata=metadata,
        strength=float(strength),
    )


def append_concept(concepts: Sequence[Concept] | None, concept: Concept) -> list[Concept]:
    """A new chain list with ``concept`` at the end (the input list is left alone).

    Two concepts in one chain must not share a trigger word: a prompt could
    not say which one it means, and their embeddings would fight over it."""
    chain = list(concepts or [])
    for other in chain:
        shared = sorted(set(t.lower() for t in other.triggers) & set(t.lower() for t in concept.triggers))
        if shared:
            raise ValueError(
                f"trigger {shared[0]!r} of concept {concept.name!r} is already used by concept {other.name!r} "
                "earlier in the chain: give one of them a different trigger with the node's trigger input."
            )
        if other.family != concept.family and "unknown" not in (other.family, concept.family):
            raise ValueError(
                f"concept {concept.name!r} is bound to {_family_label(concept.family)} but "
                f"{other.name!r} earlier in the chain to {_family_label(other.family)}: "
                "load every concept of a chain with the same checkpoint."
            )
    chain.append(concept)
    return chain
