"""The training loss as a picture: what a person checks first after a run
(did it fall, did it settle) without reading numbers."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from omg_core.render.palette import font as _font


def loss_curve_image(losses: list[float], width: int = 640, height: int = 320) -> torch.Tensor:
    """The loss per step (light) and its running mean (dark) as a ComfyUI IMAGE [1, H, W, 3]."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font(10)  # the size load_default() gives
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
