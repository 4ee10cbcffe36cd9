"""A fusion result as a standard LoRA file that stock loaders read.

Keys use the kohya naming (``lora_unet_<ldm path>``, ``lora_te_…`` /
``lora_te1_…``/``lora_te2_…`` for SDXL's two text encoders) with
``lora_down``/``lora_up``/``alpha``, which ComfyUI's ``LoraLoader`` maps onto
the model from the model's own keys, so it works for every UNet layout of a
family. Each layer is written as ``up @ down`` with alpha equal to the rank
(scale 1). A low-rank layer within the rank limit is written exactly; a
dense, LoKr or over-rank layer is truncated by SVD, and its relative
Frobenius error is reported — a LoRA file cannot hold more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from omg_core.model.updates import LayerPatch, as_update_list
from omg_core.ops.fusion import FusionResult, patch_dense
from omg_core.ops.orthogonality import thin_svd

# Text-encoder modules that kohya names (ComfyUI's LORA_CLIP_MAP).
_TE_MODULES = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")


@dataclass
class LoraExport:
    """State dict, header metadata and the account of what was truncated."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        exact = sum(1 for e in self.errors.values() if e == 0.0)
        ranks = sorted(set(self.ranks.values()))
        worst = max(self.errors.items(), key=lambda kv: kv[1]) if self.errors else ("", 0.0)
        rank_text = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}" if ranks else "-"
        lines = [
            f"{len(self.ranks)} layers, rank {rank_text}; {exact} written exactly, "
            f"{len(self.errors) - exact} truncated by SVD",
        ]
        if worst[1] > 0:
            mean = sum(self.errors.values()) / len(self.errors)
            lines.append(
                f"relative error of truncated layers: mean {100 * mean:.3f}%, worst {100 * worst[1]:.3f}% "
                f"({worst[0].removesuffix('.weight')})"
            )
        return "\n".join(lines)


def lora_module_name(key: str, two_text_encoders: bool) -> str:
    """The kohya-style module name ComfyUI maps back to ``key``."""
    base = key.removesuffix(".weight")
    if base.startswith("diffusion_model."):
        return "lora_unet_" + base.removeprefix("diffusion_model.").replace(".", "_")
    for encoder, prefix in (("clip_l", "te1" if two_text_encoders else "te"), ("clip_g", "te2")):
        head = f"{encoder}.transformer.text_model.encoder.layers."
        if base.startswith(head):
            layer, _, module = base.removeprefix(head).partition(".")
            if module in _TE_MODULES:
                return f"lora_{prefix}_text_model_encoder_layers_{layer}_{module.replace('.', '_')}"
    return "text_encoders." + base  # ComfyUI's generic name for any other text-encoder weight


def _kernel(patch: LayerPatch) -> tuple[int, ...]:
    return as_update_list(patch)[0].kernel


def lora_factors(patch: LayerPatch, max_rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up [out, r], down [r, in], relative error) with up @ down ≈ ΔW and r ≤ max_rank."""
    updates = as_update_list(patch)
    low = updates[0].as_low_rank() if len(updates) == 1 else None
    if low is not None and low.rank <= max_rank:
        return low.scale * low.up_matrix().float(), low.down_matrix().float(), 0.0
    if low is not None:
        s, vt = thin_svd(low, energy=1.0)  # exact, through the factors
        total = float(s.square().sum())
    else:
        _, s_all, vh = torch.linalg.svd(patch_dense(patch, torch.float32), full_matrices=False)
        s, vt = s_all.double(), vh.double()
        total = float(s.square().sum())
    k = min(max_rank, s.numel())
    kept = float(s[:k].square().sum())
    down = vt[:k]
    up = sum(u.apply(down.to(torch.float64)) for u in updates).T  # ΔW downᵀ
    err = math.sqrt(max(total - kept, 0.0) / total) if total > 0 else 0.0
    return up.float(), down.float(), err


def export_lora(result: FusionResult, max_rank: int, extra_metadata: Mapping[str, str] | None = None) -> LoraExport:
    """Turn every fused layer into kohya LoRA tensors."""
    if max_rank < 1:
        raise ValueError(f"rank must be at least 1 (got {max_rank})")
    layers = result.layers()
    two = any(k.startswith("clip_g.") for k in layers)
    out = LoraExport({}, {})
    for key, patch in sorted(layers.items()):
        up, down, err = lora_factors(patch, max_rank)
        kernel = _kernel(patch)
        name = lora_module_name(key, two)
        rank = down.shape[0]
        if kernel:
            down = down.reshape(rank, -1, *kernel)
            up = up.reshape(up.shape[0], rank, *([1] * len(kernel)))
        out.tensors[f"{name}.lora_up.weight"] = up.contiguous()
        out.tensors[f"{name}.lora_down.weight"] = down.contiguous()
        out.tensors[f"{name}.alpha"] = torch.tensor(float(rank))
        out.ranks[key] = rank
        out.errors[key] = err
    out.metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(out.ranks.values(), default=0)),
        "ss_network_alpha": str(max(out.ranks.values(), default=0)),
        "omg_fusion_method": result.method,
        "omg_concepts": json.dumps(result.names),
        "omg_regularization": repr(result.regularization),
        "omg_max_rank": str(max_rank),
        "omg_max_relative_error": f"{max(out.errors.values(), default=0.0):.6g}",
        **dict(extra_metadata or {}),
    }
    return out
