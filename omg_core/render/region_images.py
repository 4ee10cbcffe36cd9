"""Pictures of regions: the mask preview and attention-map panels.

A person checks where each region falls on the preview and that each concept
stayed in its box on the attention maps, so both use the widget's colours and
numbers (region i: palette colour i, label i+1). Images are ComfyUI IMAGE
tensors, [1, H, W, 3] floats in 0..1.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from omg_core.ops.regions import RegionSpec, box_cells, coverages
from omg_core.render.palette import font as _font
from omg_core.render.palette import region_colour

_BACKGROUND = (32, 32, 32)


def _preview_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(8, round(width * scale)), max(8, round(height * scale))


def _to_image(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _outline_and_number(draw: ImageDraw.ImageDraw, spec: RegionSpec, cov: torch.Tensor, w: int, h: int) -> None:
    font = _font(max(12, min(w, h) // 12))
    for i, region in enumerate(spec.regions):
        c = region_colour(i)
        if region.box is not None:
            r0, r1, c0, c1 = box_cells(region.box, h, w)
            if r1 > r0 and c1 > c0:
                draw.rectangle([c0, r0, c1 - 1, r1 - 1], outline=c, width=max(2, min(w, h) // 128))
            anchor = (c0 + 4, r0 + 2)
        else:
            ys, xs = torch.nonzero(cov[i] > 0.5, as_tuple=True)
            if len(ys) == 0:
                ys, xs = torch.nonzero(cov[i] > 0, as_tuple=True)
            anchor = (int(xs.float().mean()) - 4, int(ys.float().mean()) - 8) if len(ys) else (4, 4)
        draw.text(anchor, str(i + 1), fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=c)


def render_preview(spec: RegionSpec, max_side: int = 768, notes: list[str] = ()) -> torch.Tensor:
    """Each region filled with its colour (by coverage, half transparent),
    box outlines, and region numbers — as the sampler will see the regions;
    ``notes`` (warnings) are written under the picture, where a person looking
    at where the regions fall will read them."""
    w, h = _preview_size(spec.width, spec.height, max_side)
    canvas = torch.tensor(_BACKGROUND, dtype=torch.float32).expand(h, w, 3).clone()
    cov = coverages(spec, h, w)
    for i in range(len(spec)):
        a = (0.5 * cov[i])[..., None]
        canvas = canvas * (1 - a) + torch.tensor(region_colour(i), dtype=torch.float32) * a
    pil = Image.fromarray(canvas.round().clamp(0, 255).to(torch.uint8).numpy())
    _outline_and_number(ImageDraw.Draw(pil), spec, cov, w, h)
    if notes:
        pil = _with_notes(pil, notes)
    return _to_image(pil)


_NOTE_COLOUR = (255, 200, 60)


def _with_notes(pil: Image.Image, notes: list[str]) -> Image.Image:
    """``pil`` with a strip below it holding each note, wrapped to its width."""
    w = pil.width
    font = _font(max(10, min(16, w // 40)))
    measure = ImageDraw.Draw(pil)
    lines = []
    for note in notes:
        line = "! "
        for word in note.split():
            if measure.textlength(line + word, font=font) > w - 8 and line.strip("! "):
                lines.append(line.rstrip())
                line = "  "
            line += word + " "
        lines.append(line.rstrip())
    step = (getattr(font, "size", 10)) + 4
    out = Image.new("RGB", (w, pil.height + step * len(lines) + 6), _BACKGROUND)
    out.paste(pil, (0, 0))
    draw = ImageDraw.Draw(out)
    for j, line in enumerate(lines):
        draw.text((4, pil.height + 3 + j * step), line, fill=_NOTE_COLOUR, font=font)
    return out


def render_attention_maps(
    maps: dict[str, torch.Tensor], spec: RegionSpec, region_of: dict[str, int | None], max_side: int = 256
) -> torch.Tensor:
    """One panel per label, side by side: the map normalised to its maximum,
    tinted with the colour of the region the token belongs to (white for the
    global prompt), with the region outlines and the label."""
    w, h = _preview_size(spec.width, spec.height, max_side)
    panels = []
    font = _font(max(10, min(w, h) // 14))
    cov = coverages(spec, h, w)
    for label, m in maps.items():
        m = torch.nn.functional.interpolate(m[None, None].float(), (h, w), mode="bilinear")[0, 0]
        m = m / m.max().clamp(min=1e-12)
        region = region_of.get(label)
        tint = torch.tensor(region_colour(region) if region is not None else (255, 255, 255), dtype=torch.float32)
        rgb = m[..., None] * tint
        pil = Image.fromarray(rgb.round().clamp(0, 255).to(torch.uint8).numpy())
        draw = ImageDraw.Draw(pil)
        _outline_and_number(draw, spec, cov, w, h)
        draw.text((4, h - font.size - 6 if hasattr(font, "size") else h - 16), label, fill=(255, 255, 255), font=font)
        panels.append(np.asarray(pil))
    if not panels:
        return render_preview(spec, max_side)
    gap = np.full((h, 4, 3), 255, dtype=np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    return torch.from_numpy(row.astype(np.float32) / 255.0)[None]
