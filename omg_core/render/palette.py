"""The colours and the font every picture of the pack uses.

Region i has the same colour in the widget (``web/omg_regions/boxes.js`` holds
the same eight), the mask preview and the attention maps, so a person matches
them by eye; magnitudes use viridis (perceptually ordered, readable printed
grey). Text is PIL's bundled font, so a picture looks the same on every
machine and needs no plotting library."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw, ImageFont

REGION_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
# Viridis at five stops.
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)


def region_colour(index: int) -> tuple[int, int, int]:
    """Palette colour of region ``index`` (0-based), repeating after eight."""
    h = REGION_PALETTE[index % len(REGION_PALETTE)].lstrip("#")
    return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))


def scale_colour(value: float, vmax: float) -> tuple[int, int, int]:
    """Viridis colour of ``value`` on the scale 0..``vmax`` (clamped)."""
    t = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0)
    pos = t * (len(_VIRIDIS) - 1)
    i = min(int(pos), len(_VIRIDIS) - 2)
    c = _VIRIDIS[i] + (pos - i) * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    return tuple(int(round(x)) for x in c)


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if text_size(draw, text, font)[0] <= width:
        return text
    while len(text) > 1 and text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"
