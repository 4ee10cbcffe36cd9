"""Custom Diffusion: fine-tuned cross-attention weights plus a modifier token.

Custom Diffusion (Kumari et al.) fine-tunes the cross-attention k/v (and with
``freeze_model: crossattn`` also q/out) and learns a modifier token (``<new1>``).
It stores the *fine-tuned weights*, not their change, in three layouts:

* diffusers' ``train_custom_diffusion.py``: ``pytorch_custom_diffusion_weights.safetensors``
  (or ``.bin``) with attention-processor names
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight``;
  each modifier token goes to its own file ``<new1>.bin`` = ``{"<new1>": [768]}``
  (safetensors content under a ``.bin`` name when saved safely). Such files
  beside the weights are read too, and tokens embedded in the weights file are
  accepted;
* the original repository's ``delta.ckpt``: ``{'state_dict': {'model.diffusion_model.….attn2.to_k.weight': W, …,
  'embed': [n_tokens, 768]}}`` — the tokens are unnamed rows, read as ``<new1>``,
  ``<new2>``… (the repository's default modifier tokens; the node's trigger
  input renames them);
* the original repository's diffusers variant ``delta.bin``: ``{'unet': {diffusers
  parameter name: W}, 'modifier_token': {token: [768] or [CLIP-L, CLIP-G]}}``.

Its ``compress.py`` replaces each k/v weight by ``{'u': U·S, 'v': Vᵀ}`` with
``W = W_base + u @ v``: those become low-rank updates directly. Full weights
keep ComfyUI's ``.set_weight`` suffix here; binding subtracts the model's own
weight to get the update. Bias changes (``to_out`` bias under
``freeze_model: crossattn``) have no place in a per-layer weight update and
are listed in the metadata as ignored.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping

import torch

from omg_core.formats.adapter_file import AdapterFile, concept_name_from_path
from omg_core.formats.edlora import encoder_for_dim
from omg_core.formats.lora import check_ranks
from omg_core.formats.names import FULL_WEIGHT_SUFFIX, comfy_module_name
from omg_core.model.concept import TokenEmbedding

DIFFUSERS_WEIGHTS_STEM = "pytorch_custom_diffusion_weights"
_CD_MARK = "_custom_diffusion"


def _file(path: str | os.PathLike) -> str:
    return os.path.basename(str(path))


def is_token_key(key: str) -> bool:
    """Modifier tokens are spelled ``<word>`` by every Custom Diffusion trainer."""
    return key.startswith("<") and key.endswith(">") and "." not in key


def is_full_attention_weight(key: str) -> bool:
    return ".attn2." in key and key.endswith(("to_k.weight", "to_v.weight", "to_q.weight", "to_out.0.weight"))


def is_custom_diffusion_flat(keys: list[str]) -> bool:
    layer_keys = [k for k in keys if not is_token_key(k)]
    if any(_CD_MARK in k for k in layer_keys):
        return True
    return bool(layer_keys) and all(is_full_attention_weight(k) or k.endswith(".bias") for k in layer_keys)


def is_custom_diffusion_checkpoint(obj: object) -> bool:
    if not isinstance(obj, Mapping):
        return False
    if isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
        return "embed" in sd or any(".attn2.to_" in str(k) for k in sd)
    return isinstance(obj.get("unet"), Mapping) and (
        "modifier_token" in obj or any(".attn2.to_" in str(k) for k in obj["unet"])
    )


def _layer_name(key: str) -> str | None:
    """Model-side module name of one stored weight (``…attn2.to_k``), or None for a bias."""
    if key.endswith(".bias"):
        return None
    module = key[: -len(".weight")] if key.endswith(".weight") else key
    module = module.replace(_CD_MARK, "")
    return comfy_module_name(module)


def _weights(entries: Mapping[str, object], path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Stored weights -> ComfyUI names: full weights as ``.set_weight``, compressed
    ``{'u', 'v'}`` pairs as LoRA factors (they are the change itself)."""
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in entries.items():
        name = _layer_name(str(key))
        if name is None:
            ignored.append(str(key))
            continue
        if isinstance(value, Mapping) and {"u", "v"} <= set(value):
            out[name + ".lora_up.weight"] = value["u"]
            out[name + ".lora_down.weight"] = value["v"]
        elif torch.is_tensor(value):
            out[name + FULL_WEIGHT_SUFFIX] = value
        else:
            raise ValueError(
                f"{_file(path)}: entry {key!r} is neither a weight tensor nor a compressed {{'u', 'v'}} pair; "
                "the file is damaged or not a Custom Diffusion delta."
            )
    check_ranks(out, path)
    return out, ignored


def _token_embeddings(token: str, value: object, path: str | os.PathLike) -> list[TokenEmbedding]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in values:
        if not torch.is_tensor(v):
            raise ValueError(f"{_file(path)}: the modifier token {token!r} holds no tensor")
        vectors = v.float().reshape(-1, v.shape[-1])
        out.append(
            TokenEmbedding(token=token, encoder=encoder_for_dim(vectors.shape[-1], token, path), vectors=vectors)
        )
    return out


def _adapter(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], embeddings: list[TokenEmbedding], ignored: list[str]
) -> AdapterFile:
    if not tensors:
        raise ValueError(
            f"{_file(path)} holds no cross-attention weights: a Custom Diffusion delta must contain the fine-tuned "
            "attn2 k/v weights. Check that you picked the weights file, not a token-only file."
        )
    metadata = {"omg_ignored": ", ".join(ignored)} if ignored else {}
    tokens = list(dict.fromkeys(e.token for e in embeddings))
    return AdapterFile(
        path=os.fspath(path),
        format="custom_diffusion",
        tensors=tensors,
        name=concept_name_from_path(path),
        triggers=tuple(tokens),
        embeddings=tuple(embeddings),
        metadata=metadata,
    )


def sibling_token_files(path: str | os.PathLike) -> list[str]:
    """``<token>.bin``/``.safetensors`` files that diffusers' trainer writes beside
    ``pytorch_custom_diffusion_weights.*`` (only for that file name, so that a
    loras folder with many concepts never mixes their tokens)."""
    if not _file(path).startswith(DIFFUSERS_WEIGHTS_STEM):
        return []
    folder = os.path.dirname(os.path.abspath(path))
    # One file per token: diffusers writes <new1>.safetensors or <new1>.bin (both when saved twice);
    # the safetensors one is read when both are there.
    chosen: dict[str, str] = {}
    for ext in ("safetensors", "bin", "pt"):
        for p in glob.glob(os.path.join(glob.escape(folder), f"<*>.{ext}")):
            stem = os.path.splitext(os.path.basename(p))[0]
            if os.path.isfile(p) and stem not in chosen:
                chosen[stem] = p
    return sorted(chosen.values())


def read_custom_diffusion_flat(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, token_files: Mapping[str, Mapping[str, object]]
) -> AdapterFile:
    """diffusers' attention-processor layout (tokens embedded or in ``token_files``)."""
    embeddings: list[TokenEmbedding] = []
    layers = {}
    for key, value in tensors.items():
        if is_token_key(key):
            embeddings += _token_embeddings(key, value, path)
        else:
            layers[key] = value
    for token_file, content in token_files.items():
        for token, value in content.items():
            if not is_token_key(str(token)):
                raise ValueError(
                    f"{_file(token_file)} beside {_file(path)} holds {token!r}, not a <token> embedding; "
                    "move unrelated files out of the concept's folder."
                )
            embeddings += _token_embeddings(str(token), value, token_file)
    out, ignored = _weights(layers, path)
    return _adapter(path, out, embeddings, ignored)


def read_custom_diffusion_checkpoint(obj: Mapping, path: str | os.PathLike) -> AdapterFile:
    """The original repository's ``delta.ckpt`` (compvis names) or ``delta.bin`` (diffusers names)."""
    embeddings: list[TokenEmbedding] = []
    if isinstance(obj.get("state_dict"), Mapping):
        entries = dict(obj["state_dict"])
        embed = entries.pop("embed", None)
        if embed is not None:
            rows = embed.reshape(-1, embed.shape[-1])
            for i, row in enumerate(rows):
                embeddings += _token_embeddings(f"<new{i + 1}>", row, path)
    else:
        if obj.get("text_encoder"):
            raise ValueError(
                f"{_file(path)} contains a fully fine-tuned text encoder, which OMG cannot hold as a per-layer "
                "update; retrain the concept without save_text_encoder, or merge it into a checkpoint."
            )
        entries = dict(obj["unet"])
        for token, value in (obj.get("modifier_token") or {}).items():
            embeddings += _token_embeddings(str(token), value, path)
    out, ignored = _weights(entries, path)
    return _adapter(path, out, embeddings, ignored)
