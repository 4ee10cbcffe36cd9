"""Mix-of-Show ED-LoRA checkpoints.

Mix-of-Show (TencentARC) saves ``{'params': {'new_concept_embedding': {token:
tensor}, 'text_encoder': {...}, 'unet': {...}}}`` with ``torch.save``. Each
concept token (``<potter1>``, ``<potter2>``…) holds one embedding per UNet
cross-attention layer — [16, 768] for SD1.5 — because ED-LoRA feeds a
different text embedding to each of the 16 cross-attention layers; a plain
LoRA run (``enable_edlora: false``) stores [1, 768]. The LoRA factors are
keyed by diffusers module names (``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_down.weight``,
``text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight``), without an
alpha: Mix-of-Show trains with alpha 1 (``up @ down`` added at full scale) and
merges at a user-chosen ``lora_alpha`` (0.6–0.7 in its sample scripts), which
here is the node's strength.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from omg_core.families import FAMILIES, TEXT_ENCODERS, text_encoder_for_width
from omg_core.formats.adapter_file import AdapterFile, concept_name_from_path
from omg_core.formats.lora import normalise_lora_tensors
from omg_core.model.concept import TokenEmbedding


def is_edlora(obj: object) -> bool:
    if not isinstance(obj, Mapping):
        return False
    params = obj.get("params", obj)
    return isinstance(params, Mapping) and "new_concept_embedding" in params


def encoder_for_dim(dim: int, token: str, path: str | os.PathLike) -> str:
    encoder = text_encoder_for_width(dim)
    if encoder is not None:
        return encoder.name
    families = "/".join(f.label for f in FAMILIES)
    widths = ", ".join(f"{e.width} for {e.label}" for e in TEXT_ENCODERS)
    raise ValueError(
        f"{os.path.basename(str(path))}: the embedding of {token!r} has width {dim}, which matches no {families} text "
        f"encoder ({widths}); the file is for another model family."
    )


def _section(params: Mapping, name: str, path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    section = params.get(name) or {}
    if not isinstance(section, Mapping) or not all(torch.is_tensor(v) for v in section.values()):
        raise ValueError(
            f"{os.path.basename(str(path))}: the ED-LoRA section {name!r} must map names to tensors; the file is "
            "damaged or not a Mix-of-Show checkpoint."
        )
    return section


def read_edlora(obj: Mapping, path: str | os.PathLike) -> AdapterFile:
    params = obj.get("params", obj)
    embeddings = []
    for token, value in _section(params, "new_concept_embedding", path).items():
        vectors = value.float()
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)
        if vectors.ndim != 2:
            raise ValueError(
                f"{os.path.basename(str(path))}: the embedding of {token!r} has shape {tuple(value.shape)}; "
                "ED-LoRA stores [layers, dim] per token."
            )
        encoder = encoder_for_dim(vectors.shape[-1], token, path)
        # [layers, dim] -> layer-wise [layers, 1 vector, dim]; a single row is an ordinary token.
        vectors = vectors.unsqueeze(1) if vectors.shape[0] > 1 else vectors
        embeddings.append(TokenEmbedding(token=str(token), encoder=encoder, vectors=vectors))
    flat: dict[str, torch.Tensor] = {}
    for prefix, section in (("unet.", "unet"), ("text_encoder.", "text_encoder")):
        for key, value in _section(params, section, path).items():
            flat[prefix + key] = value
    tensors = normalise_lora_tensors(flat, path)
    return AdapterFile(
        path=os.fspath(path),
        format="edlora",
        tensors=tensors,
        name=concept_name_from_path(path),
        triggers=tuple(e.token for e in embeddings),
        embeddings=tuple(embeddings),
        metadata={"omg_lora_alpha_note": "Mix-of-Show stores no alpha; read at training scale 1"},
    )
