"""What a training run costs and how it went: trainable-parameter counts, the loss curve.

The parameter counts are taken from ComfyUI's own UNet built at full SD1.5 /
SDXL size on the ``meta`` device (shapes without memory), so they follow the
real architectures rather than numbers typed in by hand. ComfyUI is imported
lazily, only by ``attention_shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from omg_core.bridge.train_model import target_layers

# ComfyUI's detected UNet configurations of the full-size models (comfy/model_detection.py).
FULL_UNETS = {
    "sd15": dict(
        model_channels=320,
        in_channels=4,
        out_channels=4,
        num_res_blocks=[2, 2, 2, 2],
        channel_mult=[1, 2, 4, 4],
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        transformer_depth_middle=1,
        num_heads=8,
        context_dim=768,
        use_linear_in_transformer=False,
        use_spatial_transformer=True,
        legacy=False,
        adm_in_channels=None,
        use_temporal_attention=False,
        use_temporal_resblock=False,
        image_size=32,
    ),
    "sdxl": dict(
        model_channels=320,
        in_channels=4,
        out_channels=4,
        num_res_blocks=[2, 2, 2],
        channel_mult=[1, 2, 4],
        transformer_depth=[0, 0, 2, 2, 10, 10],
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
        transformer_depth_middle=10,
        num_head_channels=64,
        context_dim=2048,
        use_linear_in_transformer=True,
        use_spatial_transformer=True,
        legacy=False,
        num_classes="sequential",
        adm_in_channels=2816,
        use_temporal_attention=False,
        use_temporal_resblock=False,
        image_size=32,
    ),
}


def attention_shapes(family: str) -> dict[str, tuple[int, int]]:
    """(out, in) of every attention projection of the full-size UNet of ``family``."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    if family not in FULL_UNETS:
        raise ValueError(f"unknown model family {family!r}; use one of {sorted(FULL_UNETS)}")
    unet = UNetModel(**FULL_UNETS[family], dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)
    return {k: (m.out_features, m.in_features) for k, m in target_layers(unet, "attention").items()}


def _is_kv(key: str) -> bool:
    return key.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))


def trainable_parameters(shapes: dict[str, tuple[int, int]], rank: int, target: str, down: str) -> int:
    """Trained numbers of a LoRA of ``rank`` on the layers of ``target``: the
    up-projections, plus the down-projections when they are not frozen."""
    total = 0
    for key, (out_features, in_features) in shapes.items():
        if target == "kv" and not _is_kv(key):
            continue
        total += rank * out_features + (rank * in_features if down == "free" else 0)
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


def parameter_report(rank: int = 4, families: tuple[str, ...] = ("sd15", "sdxl")) -> list[ParameterRow]:
    rows = []
    for family in families:
        shapes = attention_shapes(family)
        rows.append(
            ParameterRow(
                family=family,
                blocks=sum(1 for k in shapes if k.endswith("attn2.to_k.weight")),
                layers_kv=sum(1 for k in shapes if _is_kv(k)),
                layers_attention=len(shapes),
                rank=rank,
                kv_basis=trainable_parameters(shapes, rank, "kv", "basis"),
                kv_free=trainable_parameters(shapes, rank, "kv", "free"),
                attention_basis=trainable_parameters(shapes, rank, "attention", "basis"),
                attention_free=trainable_parameters(shapes, rank, "attention", "free"),
            )
        )
    return rows


def format_parameter_report(rows: list[ParameterRow]) -> str:
    lines = [
        "trainable parameters per concept (LoRA rank r; 'basis' trains up-projections only, 'free' both factors)",
        f"{'model':<6} {'blocks':>6} {'r':>3} {'k/v basis':>11} {'k/v free':>11} {'all-attn basis':>15} "
        f"{'all-attn free':>14} {'k/v : all-attn':>15}",
    ]
    for r in rows:
        lines.append(
            f"{r.family:<6} {r.blocks:>6} {r.rank:>3} {r.kv_basis:>11,} {r.kv_free:>11,} {r.attention_basis:>15,} "
            f"{r.attention_free:>14,} {r.kv_basis / r.attention_basis:>15.3f}"
        )
    return "\n".join(lines)


def loss_curve_image(losses: list[float], width: int = 640, height: int = 320) -> torch.Tensor:
    """The loss per step (light) and its running mean (dark) as a ComfyUI IMAGE [1, H, W, 3]."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, 12, 24, 28
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    if not losses:
        draw.text((left + 8, top + 8), "no training steps", fill=(0, 0, 0), font=font)
    else:
        values = np.asarray(losses, dtype=np.float64)
        window = max(1, min(50, len(values) // 10))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo if hi > lo else 1.0

        def point(i: float, v: float) -> tuple[float, float]:
            x = left + (width - left - right) * (i / max(1, len(values) - 1))
            return x, top + (height - top - bottom) * (1.0 - (v - lo) / span)

        raw = [point(i, v) for i, v in enumerate(values)]
        mean = [point(i + window - 1, v) for i, v in enumerate(smooth)]
        if len(raw) > 1:
            draw.line(raw, fill=(160, 190, 235), width=1)
        if len(mean) > 1:
            draw.line(mean, fill=(20, 60, 160), width=2)
        for x, y in raw if len(raw) == 1 else ():
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(20, 60, 160))
        draw.text((4, top - 6), f"{hi:.4f}", fill=(0, 0, 0), font=font)
        draw.text((4, height - bottom - 6), f"{lo:.4f}", fill=(0, 0, 0), font=font)
        draw.text((left, height - bottom + 8), "step 1", fill=(0, 0, 0), font=font)
        draw.text((width - right - 60, height - bottom + 8), f"step {len(values)}", fill=(0, 0, 0), font=font)
        draw.text(
            (left + 8, 6),
            f"loss per step, {window}-step running mean (last {smooth[-1]:.4f})",
            fill=(0, 0, 0),
            font=font,
        )
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
