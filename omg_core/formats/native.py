"""The pack's native concept format: a LoRA file that stock ComfyUI loads as is.

A native file is a safetensors file whose tensor names are ComfyUI's generic
LoRA names — ``diffusion_model.<layer>`` for the UNet and
``text_encoders.<clip_l|clip_g>.<layer>`` for the text encoders, each with
``.lora_up.weight``/``.lora_down.weight``/``.alpha`` (Kronecker factors as
``.lokr_w1``/``.lokr_w2``, full differences as ``.diff``) — so that
``LoraLoader`` applies the concept's weights without this pack. Trigger-token
embeddings ride along as bundled embeddings (``bundle_emb.<token>.clip_l`` /
``.clip_g``, [n, dim], or [layers, n, dim] for layer-wise ED-LoRA tokens);
``LoraLoader`` skips them with a "key not loaded" warning, as it does for any
bundled embedding. The concept's identity lives in the safetensors header as
string entries: ``omg_version``, ``omg_name``, ``omg_triggers`` (a JSON list),
``omg_family``, ``omg_rank``, ``omg_source_format`` and, for concepts trained
on the shared orthogonal basis, ``omg_basis_seed``, ``omg_basis_slot`` and
``omg_form`` — the trained adapter form (``omg_core.model.forms``): ``lora``
and ``svd`` (U·diag(σ) folded into the up-projection) are written as LoRA
layers, ``kronecker`` as LoKr ``lokr_w1``/``lokr_w2`` pairs; a file without it
is a ``lora``.

A stored update carries the concept's strength: the file holds the effect the
concept had when saved and reads back at strength 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from omg_core.formats.adapter_file import AdapterFile, concept_name_from_path, load_safetensors
from omg_core.model.concept import Concept, TokenEmbedding
from omg_core.model.updates import DenseUpdate, KroneckerUpdate, LayerUpdate, LowRankUpdate, update_kind

NATIVE_VERSION = "1"
UNET_PREFIX = "diffusion_model."
TEXT_ENCODER_PREFIX = "text_encoders."
EMBEDDING_PREFIX = "bundle_emb."
_EMBEDDING_SUFFIXES = (".clip_l", ".clip_g", ".string_to_param.*")

# Metadata entries the basis seed/slot may arrive under (trainer metadata or extra_metadata).
_BASIS_KEYS = {"omg_basis_seed": ("omg_basis_seed", "basis_seed"), "omg_basis_slot": ("omg_basis_slot", "basis_slot")}


def is_native(metadata: Mapping[str, str]) -> bool:
    return "omg_version" in metadata


def _file_prefix(model_key: str, text_encoder: bool) -> str:
    if not model_key.endswith(".weight"):
        raise ValueError(f"layer key {model_key!r} is not a weight key (it must end in '.weight')")
    base = model_key[: -len(".weight")]
    if text_encoder:
        return TEXT_ENCODER_PREFIX + base
    if not base.startswith(UNET_PREFIX):
        raise ValueError(f"UNet layer key {model_key!r} must start with {UNET_PREFIX!r} (ComfyUI's model key)")
    return base


def _update_tensors(prefix: str, update: LayerUpdate) -> dict[str, torch.Tensor]:
    """One layer in ComfyUI's adapter naming. ComfyUI scales a LoRA by alpha/rank
    and ignores alpha for Kronecker pairs stored in full, so the scale goes into
    alpha for LoRA and into the first factor (or the difference) otherwise."""
    kind = update_kind(update, f"layer {prefix}")
    if kind not in _WRITERS:
        raise ValueError(f"the native format has no tensor names for a {kind.__name__}; add them to _WRITERS")
    return _WRITERS[kind](prefix, update, update.scale)


def _lora_tensors(prefix: str, update: LowRankUpdate, scale: float) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.lora_up.weight": update.up,
        f"{prefix}.lora_down.weight": update.down,
        f"{prefix}.alpha": torch.tensor(float(scale * update.rank)),
    }


def _lokr_tensors(prefix: str, update: KroneckerUpdate, scale: float) -> dict[str, torch.Tensor]:
    return {f"{prefix}.lokr_w1": update.w1 * scale, f"{prefix}.lokr_w2": update.w2}


def _diff_tensors(prefix: str, update: DenseUpdate, scale: float) -> dict[str, torch.Tensor]:
    return {f"{prefix}.diff": update.delta * scale}


# ComfyUI's adapter names for each kind (read back by ``_layer_updates``).
_WRITERS = {LowRankUpdate: _lora_tensors, KroneckerUpdate: _lokr_tensors, DenseUpdate: _diff_tensors}


def native_state_dict(concept: Concept) -> dict[str, torch.Tensor]:
    """The tensors of a native file (ComfyUI LoRA names plus bundled embeddings)."""
    out: dict[str, torch.Tensor] = {}
    for key, update in concept.scaled_unet().items():
        out.update(_update_tensors(_file_prefix(key, text_encoder=False), update))
    for key, update in concept.scaled_text_encoder().items():
        out.update(_update_tensors(_file_prefix(key, text_encoder=True), update))
    for emb in concept.embeddings:
        if emb.encoder not in ("clip_l", "clip_g"):
            raise ValueError(f"embedding for {emb.token!r} names encoder {emb.encoder!r}; use 'clip_l' or 'clip_g'")
        out[f"{EMBEDDING_PREFIX}{emb.token}.{emb.encoder}"] = emb.vectors
    # safetensors refuses views that share storage; files are small, so copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def _as_header_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def native_metadata(concept: Concept, extra_metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    ranks = [low.rank for u in concept.layers().values() if (low := u.as_low_rank()) is not None]
    header = {k: _as_header_value(v) for k, v in concept.metadata.items()}
    header.update({k: _as_header_value(v) for k, v in (extra_metadata or {}).items()})
    for canonical, names in _BASIS_KEYS.items():
        for name in names:
            if name in header:
                header[canonical] = header.pop(name)
                break
    header.update(
        {
            "omg_version": NATIVE_VERSION,
            "omg_name": concept.name,
            "omg_triggers": json.dumps(list(concept.triggers)),
            "omg_family": concept.family,
            "omg_rank": str(max(ranks, default=0)),
            "omg_source_format": concept.source_format,
        }
    )
    return header


def save_native(path: str | os.PathLike, concept: Concept, extra_metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``concept`` as a native file (see the module docstring for the layout).

    ``extra_metadata`` values that are not strings are stored as JSON; pass the
    shared-basis position as ``{"omg_basis_seed": seed, "omg_basis_slot": slot}``.
    The file is written to a temporary name first, so a crash never leaves a
    truncated file under the final name.
    """
    from safetensors.torch import save_file

    tensors = native_state_dict(concept)
    if not tensors:
        raise ValueError(f"concept {concept.name!r} has no layers and no embeddings: there is nothing to save")
    header = native_metadata(concept, extra_metadata)
    path = os.fspath(path)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=header)
    os.replace(tmp, path)


def _split_embedding_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(EMBEDDING_PREFIX):
        return None
    for suffix in _EMBEDDING_SUFFIXES:
        if key.endswith(suffix):
            token = key[len(EMBEDDING_PREFIX) : -len(suffix)]
            return token, ("clip_g" if suffix == ".clip_g" else "clip_l")
    return None


def split_embeddings(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[TokenEmbedding, ...]]:
    """Separate bundled embeddings (``bundle_emb.<token>.…``) from layer tensors."""
    layers: dict[str, torch.Tensor] = {}
    embeddings = []
    for key, value in tensors.items():
        parsed = _split_embedding_key(key)
        if parsed is None:
            layers[key] = value
        else:
            vectors = value if value.ndim > 1 else value.unsqueeze(0)
            embeddings.append(TokenEmbedding(token=parsed[0], encoder=parsed[1], vectors=vectors))
    return layers, tuple(embeddings)


def _triggers(metadata: Mapping[str, str], path: str | os.PathLike) -> tuple[str, ...]:
    raw = metadata.get("omg_triggers", "[]")
    try:
        triggers = json.loads(raw)
    except json.JSONDecodeError:
        triggers = None
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise ValueError(
            f"{os.path.basename(str(path))}: header entry omg_triggers must be a JSON list of words, got {raw!r}; "
            "set the trigger on the node instead, or re-save the concept."
        )
    return tuple(triggers)


def read_native(path: str | os.PathLike) -> AdapterFile:
    tensors, metadata = load_safetensors(path)
    if not is_native(metadata):
        raise ValueError(
            f"{os.path.basename(str(path))} is not a native OMG concept file (no omg_version in its header)"
        )
    layers, embeddings = split_embeddings(tensors)
    return AdapterFile(
        path=os.fspath(path),
        format="native",
        tensors=layers,
        name=metadata.get("omg_name") or concept_name_from_path(path),
        triggers=_triggers(metadata, path),
        embeddings=embeddings,
        family=metadata.get("omg_family", "unknown"),
        metadata=metadata,
    )


def _layer_updates(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, LayerUpdate], dict[str, LayerUpdate]]:
    """Native tensor names back to model keys, without a model: native names are
    ComfyUI's own keys with a prefix, so no key map is needed."""
    unet: dict[str, LayerUpdate] = {}
    text: dict[str, LayerUpdate] = {}
    bases = {k.rsplit(".", 2)[0] for k in tensors if k.endswith((".lora_up.weight", ".lora_down.weight"))}
    bases |= {k.rsplit(".", 1)[0] for k in tensors if k.endswith((".lokr_w1", ".lokr_w2", ".diff", ".alpha"))}
    for base in sorted(bases):
        if f"{base}.lora_up.weight" in tensors:
            up, down = tensors[f"{base}.lora_up.weight"], tensors[f"{base}.lora_down.weight"]
            alpha = tensors.get(f"{base}.alpha")
            scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
            update: LayerUpdate = LowRankUpdate(up=up, down=down, scale=scale)
        elif f"{base}.lokr_w1" in tensors:
            update = KroneckerUpdate(w1=tensors[f"{base}.lokr_w1"], w2=tensors[f"{base}.lokr_w2"])
        elif f"{base}.diff" in tensors:
            update = DenseUpdate(delta=tensors[f"{base}.diff"])
        else:
            continue
        if base.startswith(TEXT_ENCODER_PREFIX):
            text[base[len(TEXT_ENCODER_PREFIX) :] + ".weight"] = update
        else:
            unet[base + ".weight"] = update
    return unet, text


def read_native_concept(path: str | os.PathLike) -> Concept:
    """A native file as a Concept, without a model (its names are model keys).

    Loading through ``binding.load_concept`` additionally checks the file
    against the model it is meant for; this is for tools and tests that have
    no model at hand."""
    adapter = read_native(path)
    unet, text = _layer_updates(adapter.tensors)
    return Concept(
        name=adapter.name,
        triggers=adapter.triggers,
        family=adapter.family,
        source_format="native",
        unet=unet,
        text_encoder=text,
        embeddings=adapter.embeddings,
        metadata=dict(adapter.metadata),
    )
