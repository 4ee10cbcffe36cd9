"""What a training run costs and how it went: trainable-parameter counts, the loss curve.

The parameter counts are taken from ComfyUI's own UNet built at full SD1.5 /
SDXL size on the ``meta`` device (shapes without memory), so they follow the
real architectures rather than numbers typed in by hand. ComfyUI is imported
lazily, only by ``attention_shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omg_core.bridge.train_model import target_layers
from omg_core.families import FAMILIES, KV_SUFFIXES, family_named
from omg_core.model.forms import trained_numbers


def attention_shapes(family: str) -> dict[str, tuple[int, int]]:
    """(out, in) of every attention projection of the full-size UNet of ``family``."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    found = family_named(family)
    if found is None:
        raise ValueError(f"unknown model family {family!r}; use one of {sorted(f.name for f in FAMILIES)}")
    unet = UNetModel(
        **found.unet_config(), dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init
    )
    return {k: (m.out_features, m.in_features) for k, m in target_layers(unet, "attention").items()}


def _is_kv(key: str) -> bool:
    return key.endswith(tuple(f"{s}.weight" for s in KV_SUFFIXES))


def trainable_parameters(
    shapes: dict[str, tuple[int, int]], rank: int, target: str, down: str, form: str = "lora"
) -> int:
    """Trained numbers of an adapter of ``form`` and ``rank`` on the layers of
    ``target``: for a LoRA the up-projections, plus the down-projections when
    they are not frozen (``forms.trained_numbers`` for the other forms)."""
    total = 0
    for key, (out_features, in_features) in shapes.items():
        if target == "kv" and not _is_kv(key):
            continue
        total += trained_numbers(form, out_features, in_features, rank, free_down=down == "free")
    return total


@dataclass(frozen=True)
class ParameterRow:
    family: str
    blocks: int  # transformer blocks (each has one self- and one cross-attention)
    layers_kv: int
    layers_attention: int
    rank: int
    kv_basis: int  # k/v only, frozen basis down-projections (what this pack trains)
    kv_free: int
    attention_basis: int
    attention_free: int
    kv_svd: int = 0  # k/v only, the svd form (U's free matrix and σ)
    kv_kronecker: int = 0  # k/v only, the kronecker form (w1 and U_B)


def parameter_report(rank: int = 4, families: tuple[str, ...] = tuple(f.name for f in FAMILIES)) -> list[ParameterRow]:
    rows = []
    for family in families:
        shapes = attention_shapes(family)
        rows.append(
            ParameterRow(
                family=family,
                blocks=sum(1 for k in shapes if k.endswith(f"{KV_SUFFIXES[0]}.weight")),
                layers_kv=sum(1 for k in shapes if _is_kv(k)),
                layers_attention=len(shapes),
                rank=rank,
                kv_basis=trainable_parameters(shapes, rank, "kv", "basis"),
                kv_free=trainable_parameters(shapes, rank, "kv", "free"),
                attention_basis=trainable_parameters(shapes, rank, "attention", "basis"),
                attention_free=trainable_parameters(shapes, rank, "attention", "free"),
                kv_svd=trainable_parameters(shapes, rank, "kv", "basis", "svd"),
                kv_kronecker=trainable_parameters(shapes, rank, "kv", "basis", "kronecker"),
            )
        )
    return rows


def format_parameter_report(rows: list[ParameterRow]) -> str:
    lines = [
        "trainable parameters per concept (LoRA rank r; 'basis' trains up-projections only, 'free' both factors;"
        " k/v svd: U's free matrix and σ; k/v kronecker: 8x8 w1 and U_B, ΔW of rank 8r)",
        f"{'model':<6} {'blocks':>6} {'r':>3} {'k/v basis':>11} {'k/v free':>11} {'all-attn basis':>15} "
        f"{'all-attn free':>14} {'k/v : all-attn':>15} {'k/v svd':>11} {'k/v kronecker':>14}",
    ]
    for r in rows:
        lines.append(
            f"{r.family:<6} {r.blocks:>6} {r.rank:>3} {r.kv_basis:>11,} {r.kv_free:>11,} {r.attention_basis:>15,} "
            f"{r.attention_free:>14,} {r.kv_basis / r.attention_basis:>15.3f} {r.kv_svd:>11,} {r.kv_kronecker:>14,}"
        )
    return "\n".join(lines)
