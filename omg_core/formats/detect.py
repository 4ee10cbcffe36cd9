"""``read_adapter``: open any supported adapter file and recognise its format from its keys.

File extensions are unreliable (diffusers writes safetensors content under
``.bin`` names; ``.pt``/``.pth``/``.ckpt``/``.bin`` all hold pickles), so the
container is recognised from its first bytes and the format from the names
inside it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import replace
from functools import partial

import torch

from omg_core.formats.adapter_file import (
    AdapterFile,
    check_file_readable,
    concept_name_from_path,
    load_pickle,
    load_safetensors,
)
from omg_core.formats.custom_diffusion import (
    is_custom_diffusion_checkpoint,
    is_custom_diffusion_flat,
    read_custom_diffusion_checkpoint,
    read_custom_diffusion_flat,
    sibling_token_files,
)
from omg_core.formats.edlora import encoder_for_dim, is_edlora, read_edlora
from omg_core.formats.lora import (
    SUPPORTED_FORMATS_HINT,
    apply_peft_scaling,
    looks_like_lora,
    lora_flavour,
    normalise_lora_tensors,
    peft_config,
)
from omg_core.formats.names import unsupported_kind
from omg_core.formats.native import is_native, read_native, split_embeddings
from omg_core.model.concept import TokenEmbedding
from omg_core.model.updates import check_finite


def is_safetensors(path: str | os.PathLike) -> bool:
    """safetensors files start with a little-endian u64 header size and a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < size < os.path.getsize(path)


def load_tensor_file(path: str | os.PathLike) -> tuple[object, dict[str, str]]:
    """(content, safetensors header) of a safetensors file or a weights-only pickle."""
    check_file_readable(path)
    if is_safetensors(path) or str(path).lower().endswith(".safetensors"):
        return load_safetensors(path)
    return load_pickle(path), {}


def _preview(keys) -> str:
    keys = sorted(map(str, keys))
    return ", ".join(keys[:3]) + (f" … ({len(keys)} in all)" if len(keys) > 3 else "")


def _read_flat(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: str | os.PathLike
) -> AdapterFile:
    layers, bundled = split_embeddings(dict(tensors))
    keys = list(layers)
    if not keys and not bundled:
        raise ValueError(f"{os.path.basename(str(path))} contains no tensors: the file is empty or damaged.")
    if is_custom_diffusion_flat(keys):
        token_files = {p: load_tensor_file(p)[0] for p in sibling_token_files(path)}
        for token_file, content in token_files.items():
            if not isinstance(content, Mapping):
                raise ValueError(f"{os.path.basename(token_file)} is not a token embedding file")
        adapter = read_custom_diffusion_flat(layers, path, token_files)
        return replace(adapter, embeddings=adapter.embeddings + bundled)
    if looks_like_lora(keys) or any(unsupported_kind(k) for k in keys):
        flavour = lora_flavour(keys)
        normalised = normalise_lora_tensors(layers, path)
        if flavour == "peft":
            apply_peft_scaling(normalised, peft_config(path, metadata))
        trigger = metadata.get("modelspec.trigger_phrase", "").strip()
        return AdapterFile(
            path=os.fspath(path),
            format=flavour,
            tensors=normalised,
            name=concept_name_from_path(path),
            triggers=tuple(t.strip() for t in trigger.split(",") if t.strip()),
            embeddings=bundled,
            metadata=dict(metadata),
        )
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        raise ValueError(
            f"{os.path.basename(str(path))} looks like a full model checkpoint, not an adapter: load it with "
            "'Load Checkpoint' instead."
        )
    raise ValueError(
        f"{os.path.basename(str(path))} is not a recognised adapter (its tensors are named {_preview(keys)}). "
        f"{SUPPORTED_FORMATS_HINT}."
    )


def _embeddings_only(obj: Mapping, path: str | os.PathLike) -> tuple[TokenEmbedding, ...] | None:
    """A textual-inversion style ``{token: tensor}`` file: not a concept by itself."""
    if (
        obj
        and all(torch.is_tensor(v) and v.ndim <= 2 for v in obj.values())
        and all(str(k).startswith("<") for k in obj)
    ):
        return tuple(
            TokenEmbedding(str(k), encoder_for_dim(v.shape[-1], str(k), path), v.float().reshape(-1, v.shape[-1]))
            for k, v in obj.items()
        )
    return None


def _read_content(obj: object, metadata: Mapping[str, str], path: str | os.PathLike) -> AdapterFile:
    name = os.path.basename(str(path))
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{name} holds a {type(obj).__name__}, not a dictionary of weights: it is not an adapter file."
        )
    # diffusers' save_attn_procs pickles an empty entry for every processor without weights
    # (Custom Diffusion's attn1 processors): they hold nothing to read.
    obj = {k: v for k, v in obj.items() if not (str(k).endswith(".processor") and isinstance(v, Mapping) and not v)}
    if is_edlora(obj):
        return read_edlora(obj, path)
    if is_custom_diffusion_checkpoint(obj):
        return read_custom_diffusion_checkpoint(obj, path)
    if _embeddings_only(obj, path) is not None:
        raise ValueError(
            f"{name} holds only token embeddings ({_preview(obj)}), no layer weights. If it belongs to a Custom "
            "Diffusion concept, keep it beside pytorch_custom_diffusion_weights.* and load that file."
        )
    if all(torch.is_tensor(v) for v in obj.values()):
        return _read_flat(obj, metadata, path)
    if isinstance(obj.get("state_dict"), Mapping) and all(torch.is_tensor(v) for v in obj["state_dict"].values()):
        return _read_flat(obj["state_dict"], {}, path)
    raise ValueError(
        f"{name} is not a recognised adapter (top-level entries: {_preview(obj)}). {SUPPORTED_FORMATS_HINT}."
    )


def _all_tensors(adapter: AdapterFile) -> dict[str, torch.Tensor]:
    out = dict(adapter.tensors)
    out.update({f"embedding {e.token} ({e.encoder})": e.vectors for e in adapter.embeddings})
    return out


def _non_finite_message(path: str | os.PathLike, bad: list[str]) -> str:
    shown = ", ".join(sorted(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return (
        f"{os.path.basename(str(path))} contains NaN or Inf weights ({shown}): the training run diverged or the file "
        "is damaged; use an earlier checkpoint of this concept or retrain it."
    )


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read any supported adapter file into tensors named for ComfyUI's key maps.

    The format is recognised from the keys: native (``omg_version`` header),
    Custom Diffusion (``…_custom_diffusion…`` or full attn2 weights, or the
    original ``delta.ckpt``/``delta.bin`` layouts), Mix-of-Show ED-LoRA
    (``new_concept_embedding``), LyCORIS LoKr (``lokr_w1``…), kohya
    (``lora_unet_…``/``lora_te…``) and diffusers/PEFT (everything else with
    LoRA factor names). Damaged files, code-carrying pickles and NaN/Inf
    weights raise ``ValueError`` with what to do about it.
    """
    check_file_readable(path)
    content, metadata = load_tensor_file(path)
    adapter = read_native(path) if is_native(metadata) else _read_content(content, metadata, path)
    check_finite(_all_tensors(adapter), partial(_non_finite_message, path))
    return adapter
