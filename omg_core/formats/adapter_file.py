"""The unbound result of reading an adapter file, and the checks every reader shares.

Readers do not bind a file to a model: they translate each format's own key
layout into the names ComfyUI's LoRA key maps know (``lora_unet_…``,
``text_encoders.clip_l.…``, ``diffusion_model.…``, with ComfyUI's adapter
suffixes ``.lora_up.weight``/``.lokr_w1``/``.set_weight``), so that binding can
hand the tensors to ``comfy.lora.load_lora`` and let ComfyUI's own adapters
parse them. Keeping this step free of ComfyUI makes every format's parsing
testable in milliseconds.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch

from omg_core.families import FAMILIES, Family, family_for_context_dim, family_with_encoder
from omg_core.model.concept import TokenEmbedding


@dataclass
class AdapterFile:
    """One adapter file, translated into ComfyUI-loadable tensor names.

    ``tensors`` is what ``comfy.lora.load_lora`` takes: keys are ComfyUI key-map
    names plus adapter suffixes. Full fine-tuned weights (Custom Diffusion) use
    ComfyUI's ``.set_weight`` suffix; binding turns them into differences from
    the model's own weights. ``context_dim`` is the input width of the
    cross-attention k/v layers the file changes (None when it changes none),
    which is what tells an SD1.5 adapter from an SDXL one.
    """

    path: str
    format: str
    tensors: dict[str, torch.Tensor]
    name: str
    triggers: tuple[str, ...] = ()
    embeddings: tuple[TokenEmbedding, ...] = ()
    family: str = "unknown"
    context_dim: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.context_dim is None:
            self.context_dim = cross_attention_context_dim(self.tensors)
        if self.family == "unknown":
            self.family = family_from_dims(self.context_dim, self.embeddings, self.tensors)


def concept_name_from_path(path: str | os.PathLike) -> str:
    base = os.path.basename(str(path))
    for ext in (".safetensors", ".ckpt", ".pth", ".bin", ".pt"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def check_file_readable(path: str | os.PathLike) -> None:
    """Empty and missing files fail before any parser sees them, with a message
    that names the file rather than a library's internal error."""
    if not os.path.isfile(path):
        raise ValueError(f"adapter file not found: {path}. Put the file in ComfyUI's models/loras folder.")
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"{os.path.basename(str(path))} is empty (0 bytes): the download or copy failed; get the file again."
        )


def _kv_input_width(key: str, tensor: torch.Tensor) -> int | None:
    """Input width of a cross-attention k/v layer from one of its stored tensors."""
    if tensor.ndim < 2:
        return None
    if key.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight", "_lora.down.weight")):
        return int(math.prod(tensor.shape[1:]))
    if key.endswith((".set_weight", ".diff")):
        return int(math.prod(tensor.shape[1:]))
    return None


def cross_attention_context_dim(tensors: dict[str, torch.Tensor]) -> int | None:
    """The context width the file's cross-attention k/v layers read (768 for
    SD1.5, 2048 for SDXL), from the down-projection or full-weight shapes.

    LoKr factors are resolved too: the input width is the product of the two
    factors' input widths."""
    widths: set[int] = set()
    lokr_in: dict[str, dict[str, int]] = {}
    for key, tensor in tensors.items():
        low = key.lower()
        if not (("attn2" in low) and ("to_k" in low or "to_v" in low)):
            continue
        width = _kv_input_width(key, tensor)
        if width is not None:
            widths.add(width)
            continue
        for part in ("lokr_w1", "lokr_w2"):
            if key.endswith("." + part) and tensor.ndim >= 2:
                lokr_in.setdefault(key[: -len(part) - 1], {})[part] = int(math.prod(tensor.shape[1:]))
            elif key.endswith("." + part + "_b"):
                lokr_in.setdefault(key[: -len(part) - 3], {})[part] = int(math.prod(tensor.shape[1:]))
    for parts in lokr_in.values():
        if len(parts) == 2:
            widths.add(parts["lokr_w1"] * parts["lokr_w2"])
    known = [w for w in widths if family_for_context_dim(w) is not None]
    if known:
        return max(known)
    return max(widths) if widths else None


def family_from_dims(
    context_dim: int | None, embeddings: tuple[TokenEmbedding, ...] = (), tensors: dict[str, torch.Tensor] | None = None
) -> str:
    """The model family an adapter is for ("unknown" when nothing tells): from
    its cross-attention width, else from a text encoder only one family has
    (only SDXL has CLIP-G) among its layers or tokens."""
    family = family_for_context_dim(context_dim) or _family_from_text_encoders(embeddings, tensors or {})
    return family.name if family is not None else "unknown"


def _family_from_text_encoders(
    embeddings: tuple[TokenEmbedding, ...], tensors: dict[str, torch.Tensor]
) -> Family | None:
    encoders = {e.encoder for e in embeddings}
    for key in tensors:
        if key.startswith("text_encoders."):
            encoders.add(key.split(".")[1])
        elif key.startswith("lora_te2_"):  # kohya's name for the second text encoder of a family
            encoders.update(f.text_encoders[1].name for f in FAMILIES if len(f.text_encoders) > 1)
    found = {family_with_encoder(e) for e in encoders} - {None}
    return found.pop() if len(found) == 1 else None


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata; damaged files become a ValueError that says so."""
    from safetensors import safe_open

    check_file_readable(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ValueError(
            f"{os.path.basename(str(path))} is not a readable safetensors file ({exc}); it is probably truncated "
            "or corrupt: download or copy it again."
        ) from exc
    return tensors, metadata


def load_pickle(path: str | os.PathLike):
    """A PyTorch checkpoint read with ``weights_only=True``.

    Such files are pickles; a pickle may run arbitrary code when loaded, so
    only plain containers of tensors are accepted and anything else is
    refused with an explanation rather than executed."""
    import pickle

    check_file_readable(path)
    name = os.path.basename(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Only a refused global/class means "would run code"; anything else is a damaged stream.
        if not any(mark in str(exc) for mark in ("GLOBAL", "allowlist", "safe_globals")):
            raise ValueError(
                f"{name} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0]}); it is probably truncated "
                "or corrupt: download or copy it again."
            ) from exc
        # Name what the file refers to, never torch's own advice (to allowlist it or load it unsafely).
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        reason = f"it refers to {found.group(1)}, which is not a tensor" if found else "it holds more than tensors"
        raise ValueError(
            f"{name} was refused: loading it would run code stored in the file ({reason}). OMG reads PyTorch "
            "checkpoints as plain tensors only (weights_only=True). Get a safetensors release of this concept, or "
            "convert the file to safetensors with a tool you trust."
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError… for damaged archives
        raise ValueError(
            f"{name} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "it is probably truncated or corrupt: download or copy it again."
        ) from exc
