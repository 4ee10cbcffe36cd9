"""Heatmaps of pairwise concept interference, as ComfyUI IMAGE tensors.

A matrix of numbers is easy to misread in a text box once there are more
than three concepts; a labelled heatmap shows at a glance which pair
collides. Drawn with PIL only (its bundled default font), so the image looks
the same on every machine and needs no plotting library.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Viridis at five stops: perceptually ordered and readable when printed grey.
_STOPS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)
_BACKGROUND = (255, 255, 255)
_DIAGONAL = (200, 200, 200)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def colour(value: float, vmax: float) -> tuple[int, int, int]:
    t = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0)
    pos = t * (len(_STOPS) - 1)
    i = min(int(pos), len(_STOPS) - 2)
    c = _STOPS[i] + (pos - i) * (_STOPS[i + 1] - _STOPS[i])
    return tuple(int(round(x)) for x in c)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _fit(draw, text: str, font, width: int) -> str:
    if _text_size(draw, text, font)[0] <= width:
        return text
    while len(text) > 1 and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


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
    label_w = min(150, max(_text_size(probe, s, font)[0] for s in labels) + 16)
    top, left = 56, label_w
    bar_h = 14
    width = max(left + n * cell + 16, 360)
    height = top + n * cell + 24 + bar_h + 40 + (18 if note else 0)
    img = Image.new("RGB", (width, height), _BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((8, 6), title, fill=(0, 0, 0), font=big)
    for j, name in enumerate(labels):
        text = _fit(d, name, small, cell - 4)
        tw, _ = _text_size(d, text, small)
        d.text((left + j * cell + (cell - tw) / 2, top - 20), text, fill=(0, 0, 0), font=small)
    for i, name in enumerate(labels):
        text = _fit(d, name, font, label_w - 12)
        _, th = _text_size(d, text, font)
        d.text((6, top + i * cell + (cell - th) / 2 - 2), text, fill=(0, 0, 0), font=font)
        for j in range(n):
            v = float(m[i, j])
            x0, y0 = left + j * cell, top + i * cell
            if math.isnan(v):
                fill, text = _DIAGONAL, "-"
            else:
                fill = colour(v, vmax)
                text = "inf" if math.isinf(v) else f"{v:.2f}" if v < 100 else f"{v:.0f}"
            d.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=fill)
            lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
            tw, th = _text_size(d, text, font)
            d.text(
                (x0 + (cell - 2 - tw) / 2, y0 + (cell - 2 - th) / 2 - 2),
                text,
                fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
                font=font,
            )
    y = top + n * cell + 16
    bar_w = width - 2 * 24
    for x in range(bar_w):
        d.line([(24 + x, y), (24 + x, y + bar_h)], fill=colour(x / max(bar_w - 1, 1) * vmax, vmax))
    d.text((24, y + bar_h + 4), "0", fill=(0, 0, 0), font=small)
    hi = f"{vmax:.2f}"
    d.text((24 + bar_w - _text_size(d, hi, small)[0], y + bar_h + 4), hi, fill=(0, 0, 0), font=small)
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
