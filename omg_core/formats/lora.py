"""Flat LoRA-family files: kohya/sd-scripts, diffusers/PEFT and LyCORIS LoKr.

These formats differ only in spelling — module names (``lora_unet_…``,
``unet.…``, ``base_model.model.…``, ``…processor.to_k_lora``) and factor
suffixes (``lora_up/lora_down``, ``lora_B/lora_A``, ``lora.up/lora.down``,
``lokr_w1…``) — so one reader renames every tensor to the spelling ComfyUI's
adapters parse and leaves the numbers untouched. PEFT files store their
scaling (``lora_alpha``/``r``) outside the tensors, in the safetensors header
(``lora_adapter_metadata``) or an ``adapter_config.json`` beside the file;
it becomes per-layer ``.alpha`` tensors so that ComfyUI applies it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import torch

from omg_core.formats.names import (
    comfy_module_name,
    is_text_encoder_name,
    split_lokr_suffix,
    split_lora_suffix,
    unsupported_kind,
)

SUPPORTED_FORMATS_HINT = (
    "OMG reads kohya/sd-scripts and diffusers/PEFT LoRA, LyCORIS LoKr, Mix-of-Show ED-LoRA, "
    "Custom Diffusion and its own native files"
)


def _file(path: str | os.PathLike) -> str:
    return os.path.basename(str(path))


def looks_like_lora(keys: list[str]) -> bool:
    return any(split_lora_suffix(k) or split_lokr_suffix(k) for k in keys if not k.endswith(".alpha"))


def has_lokr(keys: list[str]) -> bool:
    return any(split_lokr_suffix(k) for k in keys)


def lora_flavour(keys: list[str]) -> str:
    """ "lokr", "kohya" or "peft" (diffusers/PEFT spellings) from the tensor names."""
    if has_lokr(keys):
        return "lokr"
    modules = [m[0] for k in keys if (m := split_lora_suffix(k)) and not k.endswith(".alpha")]
    if modules and all(m.startswith(("lora_unet_", "lora_te")) for m in modules):
        return "kohya"
    return "peft"


def normalise_lora_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Rename every tensor to ``<ComfyUI key-map name><ComfyUI suffix>``.

    Tensors whose names no LoRA-family format uses are refused rather than
    dropped: silently loading part of an adapter would change the concept."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        kind = unsupported_kind(key)
        if kind is not None:
            raise ValueError(
                f"{_file(path)} holds {kind} layers (e.g. {key}), which OMG cannot represent as low-rank or Kronecker "
                f"factors; {SUPPORTED_FORMATS_HINT}. Use ComfyUI's LoraLoader for this file instead."
            )
        split = split_lokr_suffix(key) or split_lora_suffix(key)
        name = comfy_module_name(split[0]) if split else None
        if name is None:
            unknown.append(key)
            continue
        out[name + split[1]] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise ValueError(
            f"{_file(path)}: tensor names not used by any supported adapter format: {shown}. {SUPPORTED_FORMATS_HINT}."
        )
    check_ranks(out, path)
    return out


def check_ranks(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Up and down factors must share their rank; a mismatch means a damaged
    file or a broken converter, and would crash deep inside sampling."""
    for key, up in tensors.items():
        pairs = (
            (".lora_up.weight", ".lora_down.weight", 1, 0),
            (".lokr_w1_a", ".lokr_w1_b", 1, 0),
            (".lokr_w2_a", ".lokr_w2_b", 1, 0),
        )
        for up_suffix, down_suffix, up_dim, down_dim in pairs:
            if not key.endswith(up_suffix):
                continue
            base = key[: -len(up_suffix)]
            down = tensors.get(base + down_suffix)
            if down is None:
                raise ValueError(
                    f"{_file(path)}: layer {base} has {up_suffix.strip('.')} but no {down_suffix.strip('.')}: "
                    "the file is incomplete; download or export it again."
                )
            if up.ndim < 2 or down.ndim < 2 or up.shape[up_dim] != down.shape[down_dim]:
                raise ValueError(
                    f"{_file(path)}: rank mismatch in layer {base}: {up_suffix.strip('.')} {tuple(up.shape)} has rank "
                    f"{up.shape[up_dim] if up.ndim >= 2 else '?'} but {down_suffix.strip('.')} {tuple(down.shape)} has "
                    f"rank {down.shape[down_dim] if down.ndim >= 2 else '?'}; the file is damaged or was written by a "
                    "broken converter: export it again."
                )
    for key in tensors:
        if key.endswith(".lora_down.weight") and key[: -len(".lora_down.weight")] + ".lora_up.weight" not in tensors:
            raise ValueError(
                f"{_file(path)}: layer {key[: -len('.lora_down.weight')]} has lora_down but no lora_up: "
                "the file is incomplete; download or export it again."
            )


def _peft_scaling(config: Mapping, component: str) -> tuple[float, float, bool] | None:
    """(lora_alpha, r, use_rslora) for one component of a PEFT config, if stated."""

    def pick(name: str):
        return config.get(f"{component}.{name}", config.get(name))

    alpha, rank = pick("lora_alpha"), pick("r")
    if alpha is None or rank is None:
        return None
    return float(alpha), float(rank), bool(pick("use_rslora") or False)


def peft_config(path: str | os.PathLike, metadata: Mapping[str, str]) -> dict | None:
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None
    sidecar = os.path.join(os.path.dirname(os.path.abspath(path)), "adapter_config.json")
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None
    return None


def apply_peft_scaling(tensors: dict[str, torch.Tensor], config: Mapping | None) -> None:
    """Turn PEFT's lora_alpha/r into ComfyUI ``.alpha`` tensors (ComfyUI scales
    a LoRA by alpha / rank, PEFT by lora_alpha / r, or lora_alpha / sqrt(r)
    with rsLoRA), for layers that carry no alpha of their own."""
    if not config:
        return
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        base = key[: -len(".lora_down.weight")]
        if base + ".alpha" in tensors:
            continue
        component = "text_encoder" if is_text_encoder_name(base) else "unet"
        if base.startswith("lora_te2_"):
            component = "text_encoder_2"
        scaling = _peft_scaling(config, component)
        if scaling is None:
            continue
        alpha, r, rslora = scaling
        rank = tensors[key].shape[0]
        factor = alpha / math.sqrt(r) if rslora else alpha / r
        tensors[base + ".alpha"] = torch.tensor(factor * rank)
