"""Box layouts for the composition benchmark: the fixed ones, random ones
nobody tuned for, and a user's own from a JSON file.

A layout is a tuple of boxes ``(x0, y0, x1, y1)`` in 0..1 of the canvas,
optionally with the concept wanted in each box (else the benchmark's seeded
assignment chooses). Fixed layouts are what the example workflows draw; a
method that is only good on them is tuned to them, so the benchmark reports
random layouts beside them, from ``random_layouts`` with a seed stated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BoxN = tuple[float, float, float, float]

# Boxes with gaps between them: touching boxes make touching objects, which
# merge into one blob at this scale. On the 128-px canvas compositions are
# drawn at, a box is about the size of a whole 64-px training image.
FIXED: dict[int, tuple[BoxN, ...]] = {
    1: ((0.25, 0.25, 0.75, 0.75),),
    2: ((0.0, 0.2, 0.42, 0.8), (0.58, 0.2, 1.0, 0.8)),
    3: ((0.0, 0.0, 0.42, 0.42), (0.58, 0.0, 1.0, 0.42), (0.29, 0.58, 0.71, 1.0)),
    4: ((0.0, 0.0, 0.42, 0.42), (0.58, 0.0, 1.0, 0.42), (0.0, 0.58, 0.42, 1.0), (0.58, 0.58, 1.0, 1.0)),
}

# The random generator's rules (README, "The toy world"): each side of a box
# 30-50 % of the canvas side, anywhere on the canvas, and every two boxes at
# least 4 % of the side apart along x or along y.
SIDE_RANGE = (0.30, 0.50)
MIN_GAP = 0.04


@dataclass(frozen=True)
class Layout:
    boxes: tuple[BoxN, ...]
    concepts: tuple[str, ...] | None = None  # the concept for each box, or None: assigned by the benchmark

    def __len__(self) -> int:
        return len(self.boxes)


def fixed_layouts(counts: Sequence[int]) -> list[Layout]:
    return [Layout(FIXED[n]) for n in counts]


def apart(a: BoxN, b: BoxN, gap: float = MIN_GAP) -> bool:
    """Whether two boxes are at least ``gap`` apart along x or along y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def random_layout(n: int, rng: np.random.Generator, tries: int = 10_000) -> Layout:
    """``n`` boxes by the generator's rules (rejection sampling, box by box,
    starting over when a box finds no place)."""
    for _ in range(tries):
        boxes: list[BoxN] = []
        for _ in range(n):
            for _ in range(200):
                w, h = rng.uniform(*SIDE_RANGE, size=2)
                x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
                box = (round(x0, 4), round(y0, 4), round(x0 + w, 4), round(y0 + h, 4))
                if all(apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            return Layout(tuple(boxes))
    raise ValueError(f"no layout of {n} boxes of {SIDE_RANGE} of the side with gaps of {MIN_GAP} was found")


def random_layouts(counts: Sequence[int], per_count: int, seed: int) -> list[Layout]:
    """``per_count`` random layouts for each count, reproducible from ``seed``."""
    rng = np.random.default_rng([seed, 0x1A7])
    return [random_layout(n, rng) for n in counts for _ in range(per_count)]


def read_layouts(path: str | Path, known_concepts: Sequence[str] = ()) -> list[Layout]:
    """Layouts from a JSON file: a list of layouts, each a list of boxes
    ``[x0, y0, x1, y1]`` (0..1) or of ``{"box": [...], "concept": name}``;
    either every box of a layout names its concept or none does."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read layouts from {path}: {e}") from e
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of layouts, each a list of boxes")
    out = []
    for i, layout in enumerate(data):
        where = f"{path}: layout {i + 1}"
        if not isinstance(layout, list) or not layout:
            raise ValueError(f"{where} must be a non-empty list of boxes")
        boxes, names = [], []
        for j, item in enumerate(layout):
            box = item.get("box") if isinstance(item, dict) else item
            names.append(item.get("concept") if isinstance(item, dict) else None)
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise ValueError(f"{where}, box {j + 1}: expected [x0, y0, x1, y1] in 0..1, got {box!r}")
            x0, y0, x1, y1 = (float(v) for v in box)
            if not all(math.isfinite(v) and 0 <= v <= 1 for v in box) or x1 <= x0 or y1 <= y0:
                raise ValueError(f"{where}, box {j + 1}: {box} must lie in 0..1 with x0 < x1 and y0 < y1")
            boxes.append((x0, y0, x1, y1))
        if any(n is not None for n in names):
            if any(n is None for n in names):
                raise ValueError(f"{where}: name the concept of every box or of none")
            unknown = sorted(set(names) - set(known_concepts)) if known_concepts else []
            if unknown:
                raise ValueError(f"{where}: unknown concept(s) {unknown}; the concepts are {list(known_concepts)}")
            if len(set(names)) != len(names):
                raise ValueError(f"{where}: each concept may appear once per layout")
        out.append(Layout(tuple(boxes), tuple(names) if names[0] is not None else None))
    return out


def layouts_json(layouts: Sequence[Layout]) -> list:
    """The JSON ``read_layouts`` reads (for the benchmark's record of what it ran)."""
    return [
        [
            list(b) if lay.concepts is None else {"box": list(b), "concept": c}
            for b, c in zip(lay.boxes, lay.concepts or lay.boxes)
        ]
        for lay in layouts
    ]
