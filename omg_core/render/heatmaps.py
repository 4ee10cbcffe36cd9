"""Heatmaps of pairwise concept interference, as ComfyUI IMAGE tensors.

A matrix of numbers is easy to misread in a text box once there are more
than three concepts; a labelled heatmap shows at a glance which pair
collides. Colours and font: ``render.palette``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from omg_core.render.palette import fit_text, scale_colour, text_size
from omg_core.render.palette import font as _font

_BACKGROUND = (255, 255, 255)
_DIAGONAL = (200, 200, 200)


def heatmap(
    matrix: torch.Tensor, labels: list[str], title: str, vmax: float | None = None, note: str = ""
) -> Image.Image:
    """One labelled heatmap; NaN cells (the diagonal) are drawn grey with a dash.

    Rows and columns follow ``labels``; every cell carries its value, and a
    colour bar gives the scale (0 to ``vmax``, default the largest finite value
    but at least 1).
    """
    m = matrix.detach().double().cpu()
    n = m.shape[0]
    finite = m[torch.isfinite(m)]
    if vmax is None:
        vmax = max(1.0, float(finite.max())) if finite.numel() else 1.0
    cell = 64 if n <= 8 else 44
    font, small, big = _font(14), _font(12), _font(17)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = min(150, max(text_size(probe, s, font)[0] for s in labels) + 16)
    top, left = 56, label_w
    bar_h = 14
    width = max(left + n * cell + 16, 360)
    height = top + n * cell + 24 + bar_h + 40 + (18 if note else 0)
    img = Image.new("RGB", (width, height), _BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((8, 6), title, fill=(0, 0, 0), font=big)
    for j, name in enumerate(labels):
        text = fit_text(d, name, small, cell - 4)
        tw, _ = text_size(d, text, small)
        d.text((left + j * cell + (cell - tw) / 2, top - 20), text, fill=(0, 0, 0), font=small)
    for i, name in enumerate(labels):
        text = fit_text(d, name, font, label_w - 12)
        _, th = text_size(d, text, font)
        d.text((6, top + i * cell + (cell - th) / 2 - 2), text, fill=(0, 0, 0), font=font)
        for j in range(n):
            v = float(m[i, j])
            x0, y0 = left + j * cell, top + i * cell
            if math.isnan(v):
                fill, text = _DIAGONAL, "-"
            else:
                fill = scale_colour(v, vmax)
                text = "inf" if math.isinf(v) else f"{v:.2f}" if v < 100 else f"{v:.0f}"
            d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=fill)
            lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
            tw, th = text_size(d, text, font)
            d.text(
                (x0 + (cell - 2 - tw) / 2, y0 + (cell - 2 - th) / 2 - 2),
                text,
                fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
                font=font,
            )
    y = top + n * cell + 16
    bar_w = width - 2 * 24
    for x in range(bar_w):
        d.line([(24 + x, y), (24 + x, y + bar_h)], fill=scale_colour(x / max(bar_w - 1, 1) * vmax, vmax))
    d.text((24, y + bar_h + 4), "0", fill=(0, 0, 0), font=small)
    hi = f"{vmax:.2f}"
    d.text((24 + bar_w - text_size(d, hi, small)[0], y + bar_h + 4), hi, fill=(0, 0, 0), font=small)
    if note:
        d.text((8, y + bar_h + 24), note, fill=(60, 60, 60), font=small)
    return img


def side_by_side(images: list[Image.Image], gap: int = 12) -> Image.Image:
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    out = Image.new("RGB", (width, height), _BACKGROUND)
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def to_comfy_image(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> ComfyUI IMAGE: float32 [1, H, W, 3] in 0..1."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).unsqueeze(0)


def crosstalk_image(report) -> torch.Tensor:
    """The overlap and cross-talk matrices of a ``CrossTalkReport`` as one IMAGE."""
    left = heatmap(report.overlap, report.names, "Input-subspace overlap", vmax=1.0, note="0 = orthogonal")
    right = heatmap(
        report.crosstalk, report.names, "Cross-talk (column on row)", note="relative to the row concept's own effect"
    )
    return to_comfy_image(side_by_side([left, right]))
